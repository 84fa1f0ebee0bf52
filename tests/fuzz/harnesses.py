"""One harness per reader of untrusted input.  Each `fuzz_*(data)` takes the fuzzer's bytes.

A checkpoint that loads is also run (one decoder step over a few tokens, when it is small
enough to take milliseconds), so that a header which passes validation but lies about the
tensors would make a kernel read out of bounds — which AddressSanitizer or a segfault reports.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from .contract import Finding, Scratch, expect_documented_error

_scratch = {}
MAX_RUN_PARAMS = 4_000_000       # run a decoder step only on models this small (milliseconds)
MAX_RUN_CONTEXT = 1 << 16
DEFAULT_TIMEOUT = 2              # seconds one input may take (libFuzzer -timeout)


def scratch(suffix: str) -> Scratch:
    if suffix not in _scratch:
        _scratch[suffix] = Scratch(suffix)
    return _scratch[suffix]


def _run_model(ckpt) -> None:
    """One step of 3 tokens through a checkpoint that loaded (the kernels see its tensors)."""
    from xllm.model import Chunk, Model
    cfg = ckpt.config
    params = sum(int(np.prod(t.shape)) for t in ckpt.tensors.values())
    if params > MAX_RUN_PARAMS or cfg.max_seq_len > MAX_RUN_CONTEXT:
        return
    model = Model(ckpt, threads=1, max_batch_tokens=4, kv_blocks=1, block_size=4)
    n = min(3, cfg.max_seq_len)
    ids = [i % cfg.vocab_size for i in range(n)]
    if not model.kv.reserve(0, n):
        raise Finding(f"a fresh KV pool cannot hold {n} positions")
    logits = model.step([Chunk(0, ids, 0, "all")])[0]
    if logits.shape != (n, cfg.vocab_size):
        raise Finding(f"logits of shape {logits.shape}, expected {(n, cfg.vocab_size)}")


def _open_and_run(path: str) -> None:
    from xllm.formats import open_checkpoint
    ckpt = expect_documented_error(open_checkpoint, path, name=path)
    if ckpt is not None:
        expect_documented_error(_run_model, ckpt)


def fuzz_gguf(data: bytes) -> None:
    """GGUF header, metadata, tensor table and tensor byte ranges (formats.gguf_reader + gguf)."""
    _open_and_run(scratch(".gguf").write(data))


def fuzz_llama2c(data: bytes) -> None:
    """llama2.c checkpoints: legacy fp32 and version-2 `ak42` int8 (the magic picks the reader)."""
    _open_and_run(scratch(".bin").write(data))


def _exercise_tokenizer(tok, path) -> None:
    text = "Once upon a time, ñandú 😀 <s> \t\n  end"
    ids = expect_documented_error(tok.encode, text, name=None)
    if ids is None:
        return
    if any(not 0 <= i < tok.vocab_size for i in ids):
        raise Finding(f"{path}: encode produced an id outside [0, {tok.vocab_size})")
    out = expect_documented_error(tok.decode, ids)
    stream = tok.stream_decoder()
    pieces = [expect_documented_error(stream.push, i) or "" for i in ids]
    tail = stream.flush()
    if out is not None and "".join(pieces) + tail != out:
        raise Finding(f"{path}: streamed decode {''.join(pieces) + tail!r} != decode {out!r}")


def fuzz_tokenizer_bin(data: bytes) -> None:
    """llama2.c tokenizer.bin (max token length, then score/length/bytes per token)."""
    from xllm.tokenizer import Tokenizer
    path = scratch(".bin").write(data, os.path.join(scratch(".bin").dir, "tokenizer.bin"))
    tok = expect_documented_error(Tokenizer.from_file, path, name=path)
    if tok is not None:
        _exercise_tokenizer(tok, path)


def fuzz_gguf_vocab(data: bytes) -> None:
    """A GGUF-embedded vocabulary (tokens, scores, types, merges) and the tokenizer built on it."""
    from xllm.tokenizer import load_tokenizer
    path = scratch(".gguf").write(data, os.path.join(scratch(".gguf").dir, "vocab.gguf"))
    tok = expect_documented_error(load_tokenizer, path, name=path)
    if tok is not None:
        _exercise_tokenizer(tok, path)


HF_FRAME = struct.Struct("<I")     # hf inputs: u32 length of config.json, config.json, safetensors file


def fuzz_hf(data: bytes) -> None:
    """An HF directory: config.json and a model.safetensors header (+ data) side by side."""
    if len(data) < HF_FRAME.size:
        return
    n = HF_FRAME.unpack_from(data)[0]
    config, tensors = data[HF_FRAME.size:HF_FRAME.size + n], data[HF_FRAME.size + n:]
    s = scratch("")
    d = os.path.join(s.dir, "hf")
    if not os.path.isdir(d):               # the vocabulary is not fuzzed here (fuzz_gguf_vocab is)
        import shutil
        from .seeds import SHARED
        os.makedirs(d)
        shutil.copy(SHARED / "models" / "tok512.model", os.path.join(d, "tokenizer.model"))
    s.write(config, os.path.join(d, "config.json"))
    s.write(tensors, os.path.join(d, "model.safetensors"))
    _open_and_run(d)


def fuzz_prompts(data: bytes) -> None:
    """The prompts files of xllm-main --file and xllm-benchmark-batch --file."""
    from xllm.benchmark import read_prompts as batch_prompts
    from xllm.cli import read_prompts as main_prompts
    path = scratch(".txt").write(data)
    got = expect_documented_error(main_prompts, path, name=path)
    if got is not None and not all(p.strip() for p in got):
        raise Finding("xllm-main --file kept a blank prompt")
    for errors in ("strict", "replace"):
        pf = expect_documented_error(batch_prompts, path, errors, name=path)
        if pf is not None and len(pf.prompts) != len(pf.lines):
            raise Finding("prompts and line numbers differ in length")


_shipped = {}


def _shipped_tokenizers():
    if not _shipped:
        from xllm.tokenizer import Tokenizer, load_tokenizer
        from .seeds import SHARED
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        _shipped["native"] = load_tokenizer(os.path.join(here, "xllm", "data", "stories260K.gguf"))
        _shipped["sentencepiece"] = Tokenizer.from_file(str(SHARED / "models" / "tok512.model"))
        _shipped["tokenizers"] = Tokenizer.from_file(
            str(SHARED / "fixtures" / "vocab" / "ggml-vocab-gpt-2.gguf"))       # byte-level BPE
    return _shipped.values()


def fuzz_encode_decode(data: bytes) -> None:
    """Tokenizer encode of arbitrary text and decode / streamed decode of arbitrary ids."""
    text = data.decode("utf-8", errors="replace")
    for tok in _shipped_tokenizers():
        ids = tok.encode(text, bos=True, special=len(data) % 2 == 1)
        if any(not 0 <= i < tok.vocab_size for i in ids) or not isinstance(tok.decode(ids), str):
            raise Finding(f"encode of {text!r} gave ids outside the vocabulary or decode no text")
        raw = np.frombuffer(data[: len(data) // 4 * 4], dtype="<i4").tolist()
        expect_documented_error(tok.decode, raw)
        valid = [i % tok.vocab_size for i in raw]
        whole = tok.decode(valid)
        stream = tok.stream_decoder()
        streamed = "".join(stream.push(i) for i in valid) + stream.flush()
        if streamed != whole:
            raise Finding(f"streamed decode {streamed!r} != decode {whole!r}")


CHAT_ORIGIN = "fuzzed.jinja"
CHAT_SPLIT = b"\x00"          # chat_template inputs: template text, NUL, the conversation
CHAT_DEFAULT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}]


def chat_input(data: bytes):
    """(template source, messages, add_generation_prompt, extra variables) of one input.

    After the NUL: JSON -- a list (the messages), or an object with "messages" and any
    template variables (tools, add_generation_prompt, enable_thinking ...), or any other value
    (which must be refused) -- else raw text, one message per \x01-separated part, each
    "role\x02content\x02name" with fields missing where the parts are."""
    source, sep, rest = data.partition(CHAT_SPLIT)
    text = source.decode("utf-8", errors="replace")
    if not sep:
        return text, CHAT_DEFAULT, True, {}
    conv = rest.decode("utf-8", errors="surrogateescape")
    try:
        value = json.loads(conv)
    except (ValueError, RecursionError):
        messages = []
        for part in conv.split("\x01"):
            fields = part.split("\x02")
            message = dict(zip(("role", "content", "name"), fields)) if len(fields) > 1 else {"content": part}
            messages.append(message)
        return text, messages, len(rest) % 2 == 0, {}
    if isinstance(value, dict) and "messages" in value:
        extra = {k: v for k, v in value.items() if k != "messages" and isinstance(k, str) and k.isidentifier()}
        return text, value["messages"], extra.pop("add_generation_prompt", True), extra
    return text, value, True, {}


def fuzz_chat_template(data: bytes) -> None:
    """A chat template (the Jinja text) and the conversation it renders (roles, contents,
    missing fields, odd unicode, template variables): renders, or a ValueError naming it."""
    from xllm.chat import ChatTemplate
    source, messages, add_generation_prompt, extra = chat_input(data)
    template = expect_documented_error(ChatTemplate, source, "<s>", "</s>", CHAT_ORIGIN, name=CHAT_ORIGIN)
    if template is None:
        return
    out = expect_documented_error(lambda: template.render(messages, add_generation_prompt, **extra),
                                  name=CHAT_ORIGIN)
    if out is not None and (not isinstance(out, str) or len(out) > template.limits.max_output):
        raise Finding(f"render gave {type(out).__name__} of length {len(out)}")


HARNESSES = {
    "gguf": fuzz_gguf,
    "llama2c": fuzz_llama2c,
    "tokenizer_bin": fuzz_tokenizer_bin,
    "gguf_vocab": fuzz_gguf_vocab,
    "hf": fuzz_hf,
    "prompts": fuzz_prompts,
    "encode_decode": fuzz_encode_decode,
    "chat_template": fuzz_chat_template,
}


def hf_input(config: dict, safetensors: bytes) -> bytes:
    raw = json.dumps(config).encode()
    return HF_FRAME.pack(len(raw)) + raw + safetensors
