"""Seed corpora: real files from ../shared (whole when small, the header of large ones) and
small files of every format written here, so the fuzzer starts from inputs that load."""
from __future__ import annotations

import io
import struct
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
HEAD_BYTES = 64 << 10          # of a large file, the part that holds its header


def _read(path: Path, limit: int = None) -> bytes:
    data = path.read_bytes()
    return data if limit is None else data[:limit]


def _micro_gguf(ggml_type_name: str = "F32", vocab: bool = True) -> bytes:
    """A 1-layer llama GGUF of a few tens of KB (dim 32), with tok512's vocabulary or 16 tokens."""
    from tests.model_factory import random_checkpoint, write_gguf
    from xllm.config import ModelConfig
    from xllm.formats import F32, Q8_0
    from xllm.tokenizer import Vocab
    cfg = ModelConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=4, n_kv_heads=2,
                      vocab_size=512 if vocab else 16, max_seq_len=32)
    ckpt = random_checkpoint(cfg, {"F32": F32, "Q8_0": Q8_0}[ggml_type_name])
    v = Vocab.from_llama2c(SHARED / "models" / "tok512.bin", 512) if vocab else None
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.gguf"
        write_gguf(p, cfg, ckpt.tensors, v)
        return p.read_bytes()


def _micro_bpe_vocab() -> bytes:
    """A whole byte-level BPE vocabulary ("gpt2"): the 256 byte tokens, a few merges, a
    control and a user-defined token."""
    import gguf
    from xllm.bpe import BYTE_TO_CHAR
    tokens = [BYTE_TO_CHAR[b] for b in range(256)] + ["Ġt", "he", "Ġthe", "<|endoftext|>", "my tok"]
    types = [1] * 259 + [3, 4]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.gguf"
        w = gguf.GGUFWriter(str(p), "gpt2")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(["Ġ t", "h e", "Ġt he"])
        w.add_bos_token_id(259)
        w.add_eos_token_id(259)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        return p.read_bytes()


def _micro_llama2c(int8: bool) -> bytes:
    """llama2.c files of dim 32: fp32 (run.c) or version-2 ak42 with group size 32 (runq.c)."""
    dim, hidden, layers, heads, kv, vocab, seq = 32, 64, 1, 4, 4, 16, 8
    rng = np.random.default_rng(0)
    shapes = [(vocab, dim), (layers, dim), (layers, dim, dim), (layers, dim, dim), (layers, dim, dim),
              (layers, dim, dim), (layers, dim), (layers, hidden, dim), (layers, dim, hidden),
              (layers, hidden, dim), (dim,), (seq * dim // heads,)]
    out = io.BytesIO()
    if not int8:
        out.write(struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq))
        for s in shapes:
            out.write(rng.standard_normal(s).astype("<f4").tobytes())
        return out.getvalue()
    header = struct.pack("<Ii7iBi", 0x616B3432, 2, dim, hidden, layers, heads, kv, vocab, seq, 1, 32)
    out.write(header.ljust(256, b"\0"))
    norms = [(layers, dim), (layers, dim), (dim,)]
    for s in norms:
        out.write(np.ones(s, "<f4").tobytes())
    for s in [(vocab, dim), (layers, dim, dim), (layers, dim, dim), (layers, dim, dim), (layers, dim, dim),
              (layers, hidden, dim), (layers, dim, hidden), (layers, hidden, dim)]:
        n = int(np.prod(s))
        out.write(rng.integers(-127, 128, n, dtype=np.int8).tobytes())
        out.write(np.full(n // 32, 0.01, "<f4").tobytes())
    return out.getvalue()


def _micro_hf() -> bytes:
    from tests.fuzz.harnesses import hf_input
    from tests.hf_fixtures import make_hf_dir
    import json
    with tempfile.TemporaryDirectory() as d:
        m = make_hf_dir(d, "gqa", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
        cfg = json.loads((m.path / "config.json").read_text())
        return hf_input(cfg, (m.path / "model.safetensors").read_bytes())


# templates that loop, grow and recurse: the fuzzer starts next to every bound of the sandbox
CHAT_STRESS = [
    "{% for a in range(300) %}{% for b in range(300) if b > a + 290 %}{{ b }}{% endfor %}{% endfor %}",
    "{% set ns = namespace(x=[]) %}{% for i in range(40) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ ns.x|length }}",
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(9) }}",
    "{{ 'ab' * 1000 ~ 9 ** 99 ~ '%5d|%-3s' % (7, 'x') ~ '{:>9}'.format(messages[0].role) }}",
    "{{ (messages|map(attribute='content')|join('|'))|replace('|', '||')|center(99)|indent(2) }}",
    "{% for m in messages recursive %}{{ m.content|tojson(indent=2) }}{% if m.tool_calls %}{{ loop(m.tool_calls) }}{% endif %}{% endfor %}",
    "{{ messages[::-1][0].content[1:5] }}{{ {(1, 2): messages|length}|dictsort }}{{ lipsum(1, false, 5, 9)|wordcount }}",
    "{% if messages[0].role == 'system' and 'x' in messages[0].content %}{{ raise_exception('no system') }}{% endif %}"
    "{{ strftime_now('%d %b %Y') }}{% set x %}{{ messages|tojson }}{% endset %}{{ x|length }}",
]


def _chat_seeds() -> list:
    import json
    conversations = [
        b"",
        json.dumps([{"role": "user", "content": "Hi \u00e9\u4e2d\ud83d\ude00 \u0000\ud800 <s></s>"}]).encode(),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                                 {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
                                     "name": "get_weather", "arguments": {"city": "Paris"}}}]},
                                 {"role": "tool", "content": "sunny"}],
                    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
                    "add_generation_prompt": False, "enable_thinking": True, "date_string": "1 Jan 2000"}).encode(),
        b"user\x02Hello\x01assistant\x02Hi!\x02bot\x01user\x01\x02",
        b'[{"content": "no role"}, {"role": 7, "content": [1, {"type": "text", "text": "parts"}]}]',
    ]
    templates = sorted((SHARED / "fixtures" / "templates").glob("*.jinja"))
    out = [path.read_bytes() for path in templates]
    for i, source in enumerate(out[:] + [t.encode() for t in CHAT_STRESS]):
        out.append(source + b"\x00" + conversations[i % len(conversations)])
    return out


def seeds(name: str, whole: bool = False) -> list:
    """Seed inputs of harness `name`; `whole` adds the real checkpoints entire (1 MB each:
    slower per input, for long runs)."""
    models, fixtures = SHARED / "models", SHARED / "fixtures"
    if name == "gguf":
        return [_micro_gguf("F32"), _micro_gguf("Q8_0", vocab=False),
                _read(fixtures / "kquant" / "tiny256-Q8_0.gguf", HEAD_BYTES)] + \
            ([_read(ROOT / "xllm" / "data" / "stories260K.gguf"),
              _read(fixtures / "kquant" / "tiny256-Q4_K_M.gguf")] if whole else [])
    if name == "llama2c":
        return [_micro_llama2c(False), _micro_llama2c(True), _read(models / "stories260K.bin", HEAD_BYTES)] + \
            ([_read(models / "stories260K.bin")] if whole else [])
    if name == "tokenizer_bin":
        return [_read(models / "tok512.bin"), _read(models / "aidreams260K_tok512.bin"),
                _read(models / "tokenizer.bin", HEAD_BYTES)]
    if name == "gguf_vocab":
        return [_micro_gguf("F32"), _read(fixtures / "vocab" / "ggml-vocab-llama-spm.gguf", HEAD_BYTES),
                _read(fixtures / "vocab" / "ggml-vocab-gpt-2.gguf", HEAD_BYTES), _micro_bpe_vocab()]
    if name == "hf":
        return [_micro_hf()]
    if name == "prompts":
        return [_read(ROOT / "benchmarks" / "prompts.txt"), b"\n\n  \r\nhello\r\n\xff\xfeworld\n", b""]
    if name == "encode_decode":
        return [_read(ROOT / "tests" / "data" / "story.txt"), "ñandú 😀 <s></s> \t\n".encode(),
                bytes(range(256))]
    if name == "chat_template":
        return _chat_seeds()
    raise KeyError(name)
