"""Random-weight GGUF models of real models' shapes, for the benchmarks (`python -m
xllm.benchmark make-model`): llama (TinyLlama, Llama 2, Llama 3.2 with its llama3 RoPE scaling),
qwen2 (Qwen2.5) and gpt2 (GPT-2) shapes, every matrix in one type, with a synthetic vocabulary
of the shape's kind and size (SentencePiece-style, or byte-level BPE with the real model's
special tokens) so that llama.cpp's tools run the same files.
"""
from __future__ import annotations

import math
import os
import sys
import zlib
from typing import Dict, Optional

import numpy as np

from .convert import add_model_metadata, atomic_gguf_writer
from .formats import F16, F32, Q4_0, Q8_0, layer_tensor_shapes, row_bytes
from .formats.types import BF16, Q2_K, Q3_K, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, block_layout, \
    is_block_quantized


# Shapes of real models (hyperparameters only; the weights are random).
SHAPES: Dict[str, dict] = {
    "tinyllama-1.1b": dict(dim=2048, hidden_dim=5632, n_layers=22, n_heads=32, n_kv_heads=4,
                           vocab_size=32000, max_seq_len=2048),
    "llama2-7b-layers": dict(dim=4096, hidden_dim=11008, n_layers=2, n_heads=32, n_kv_heads=32,
                             vocab_size=32000, max_seq_len=4096),
    "stories110m": dict(dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12,
                        vocab_size=32000, max_seq_len=1024),
    "tiny": dict(dim=64, hidden_dim=192, n_layers=2, n_heads=4, n_kv_heads=2,
                 vocab_size=512, max_seq_len=256),            # for tests: fits in cache
    # the other families; contexts of at most 8192 keep the KV pool of a benchmark small
    # (the weights, and so the speed per token, do not depend on it)
    "gpt2-124m": dict(dim=768, hidden_dim=3072, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=50257,
                      max_seq_len=1024, family="gpt2", tied_embeddings=True),
    "llama-3.2-1b": dict(dim=2048, hidden_dim=8192, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
                         max_seq_len=8192, rope_theta=500000.0, family="llama3", tied_embeddings=True),
    "qwen2.5-0.5b": dict(dim=896, hidden_dim=4864, n_layers=24, n_heads=14, n_kv_heads=2, vocab_size=151936,
                         max_seq_len=8192, rope_theta=1000000.0, norm_eps=1e-6, family="qwen2",
                         tied_embeddings=True),
    "tiny-gpt2": dict(dim=64, hidden_dim=256, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=1000,
                      max_seq_len=256, family="gpt2", tied_embeddings=True),     # for tests
}
# family -> (architecture switches of config.ModelConfig, synthetic vocabulary kind)
FAMILIES = {
    "llama": ({}, "spm"),
    "llama3": ({"rope_scaling": "llama3"}, "llama3"),         # Llama 3.x: factor 32, 1, 4, 8192
    "qwen2": ({"arch": "qwen2", "rope_style": "neox", "qkv_bias": True}, "qwen2"),
    "gpt2": ({"arch": "gpt2", "norm": "layer", "activation": "gelu_tanh", "position": "learned",
              "qkv_bias": True, "out_bias": True, "ffn_bias": True, "fused_qkv": True}, "gpt2"),
}
LLAMA3_ROPE = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192)
DTYPES = {"f32": F32, "f16": F16, "bf16": BF16, "q8_0": Q8_0, "q4_0": Q4_0, "q4_1": Q4_1, "q5_0": Q5_0,
          "q5_1": Q5_1, "q2_k": Q2_K, "q3_k": Q3_K, "q4_k": Q4_K, "q5_k": Q5_K, "q6_k": Q6_K}
KQUANT_TYPES = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# general.file_type of a model whose every matrix has that type (llama.cpp's LlamaFileType;
# the _S presets for the K types)
_FILE_TYPES = {F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 7, Q5_0: 8, Q5_1: 9, BF16: 32,
               Q2_K: 10, Q3_K: 11, Q4_K: 14, Q5_K: 16, Q6_K: 18}
# fp16 super-scale offsets in a K block, and a typical |scale * value| of random fields
_KQUANT_SUPER_SCALES = {Q2_K: (80, 82), Q3_K: (108,), Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,)}
_KQUANT_TYPICAL = {Q2_K: 14.0, Q3_K: 43.0, Q4_K: 256.0, Q5_K: 512.0, Q6_K: 1350.0}
_KQUANT_MEAN_Q = {Q2_K: 1.5, Q4_K: 7.5, Q5_K: 15.5}
_SHAPE_KEYS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len",
               "norm_eps", "rope_theta")
_FAMILY_KEYS = ("family", "tied_embeddings")


def shape_config(hp: dict, bos_id: Optional[int] = 1, eos_id: Optional[int] = 2):
    """The ModelConfig of resolved hyperparameters: the family's switches, Llama 3's RoPE factors."""
    from .config import ModelConfig, llama3_freq_factors
    family = hp.get("family", "llama")
    if family not in FAMILIES:
        raise ValueError(f"shape family = {family!r}, expected one of {', '.join(FAMILIES)}")
    switches = dict(FAMILIES[family][0])
    if switches.get("rope_scaling") == "llama3":
        r = LLAMA3_ROPE
        head_dim = hp["dim"] // hp["n_heads"]
        switches["rope_freq_factors"] = llama3_freq_factors(head_dim, hp["rope_theta"], r["factor"],
                                                            r["low_freq_factor"], r["high_freq_factor"],
                                                            r["original_context"])
    return ModelConfig(**{k: hp[k] for k in _SHAPE_KEYS}, tied_embeddings=bool(hp.get("tied_embeddings")),
                       bos_id=bos_id, eos_id=eos_id, **switches)


def synthetic_vocab(n: int):
    """A SentencePiece-style vocabulary of exactly `n` pieces that needs no file: <unk>, <s>,
    </s>, the 256 byte tokens, printable ASCII, '▁' + letters/digits, then letter bigrams and
    trigrams with and without '▁' (enough for 32000).  Any text encodes (byte fallback)."""
    from .tokenizer import BYTE, CONTROL, NORMAL, SPACE, UNKNOWN, Vocab
    if n < 259:
        raise ValueError(f"vocab_size = {n}: a synthetic vocabulary needs at least 259 tokens "
                         f"(3 specials + 256 bytes)")
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    seen = set(pieces)

    def gen():
        yield SPACE
        for c in range(33, 127):
            yield chr(c)
        alnum = [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
                [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [str(d) for d in range(10)]
        for c in alnum:
            yield SPACE + c
        low = [chr(c) for c in range(ord("a"), ord("z") + 1)]
        for a in low:
            for b in low:
                yield a + b
                yield SPACE + a + b
        for a in low:
            for b in low:
                for c in low:
                    yield a + b + c
                    yield SPACE + a + b + c
        i = 0
        while True:
            yield f"tok{i}"
            i += 1

    it = gen()
    while len(pieces) < n:
        p = next(it)
        if p not in seen:
            seen.add(p)
            pieces.append(p)
            types.append(NORMAL)
    scores = np.zeros(n, dtype=np.float32)
    scores[259:] = -np.arange(n - 259, dtype=np.float32)       # shorter pieces merge first
    return Vocab(pieces, scores, np.asarray(types, dtype=np.int32), bos_id=1, eos_id=2, unk_id=0)


def _byte_alphabet() -> list:
    """GPT-2's byte-level alphabet (bytes_to_unicode), in its order: the first 256 tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    chars, extra = [chr(b) for b in printable], 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


# The special tokens of the real vocabularies, by id (the rest of Llama 3's 256 are reserved).
_LLAMA3_SPECIALS = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128004: "<|finetune_right_pad_id|>",
                    128006: "<|start_header_id|>", 128007: "<|end_header_id|>", 128008: "<|eom_id|>",
                    128009: "<|eot_id|>", 128010: "<|python_tag|>"}
_QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                   "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                   "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                   "<|repo_name|>", "<|file_sep|>"]


def synthetic_bpe_vocab(kind: str, n: int):
    """A byte-level BPE vocabulary of exactly `n` tokens laid out as the real one of `kind`
    ("gpt2": GPT-2's 50257 with <|endoftext|> last; "llama3": Llama 3's 128000 + 256 specials;
    "qwen2": Qwen2.5's 151643 + 22 added tokens, padded as in its GGUF): the 256 byte tokens,
    then words of letters built by merges (each merge joins a token and a letter), then the
    special tokens with their ids.  Any text encodes; llama.cpp and xllm read it."""
    from .tokenizer import CONTROL, NORMAL, USER_DEFINED, Vocab
    if kind == "gpt2":
        specials = {n - 1: "<|endoftext|>"}
        regular, bos, eos, pre, size = n - 1, n - 1, n - 1, "gpt-2", n
    elif kind == "llama3":
        regular, bos, eos, pre, size = n - 256, n - 256, n - 255, "llama-bpe", n
        reserved = [i for i in range(regular, n) if i not in _LLAMA3_SPECIALS]     # numbered in order
        specials = {**_LLAMA3_SPECIALS, **{i: f"<|reserved_special_token_{k}|>" for k, i in enumerate(reserved)}}
    elif kind == "qwen2":
        regular, pre = 151643, "qwen2"
        specials = {regular + k: t for k, t in enumerate(_QWEN2_SPECIALS)}
        bos = eos = regular
        size = regular + len(_QWEN2_SPECIALS)
    else:
        raise ValueError(f"vocabulary kind {kind!r}, expected gpt2, llama3 or qwen2")
    if regular < 300 or size > n:
        raise ValueError(f"vocab_size = {n}: too small for a synthetic {kind} vocabulary")
    pieces = _byte_alphabet()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    seen, merges, queue, head = set(pieces), [], ["\u0120"] + letters, 0     # 'Ġ': the byte-level space
    while len(pieces) < regular:
        t = queue[head]
        head += 1
        for b in letters:
            if len(pieces) == regular:
                break
            if t + b not in seen:
                seen.add(t + b)
                pieces.append(t + b)
                merges.append(f"{t} {b}")
                queue.append(t + b)
    types = [NORMAL] * regular
    for i in range(regular, size):
        pieces.append(specials[i])
        types.append(USER_DEFINED if specials[i] in ("<tool_call>", "</tool_call>") else CONTROL)
    vocab = Vocab(pieces, None, np.asarray(types, dtype=np.int32), bos_id=bos, eos_id=eos, unk_id=None,
                  model="gpt2", merges=merges, pre=pre, add_bos=(kind == "llama3"))
    return vocab.padded(n) if size < n else vocab


def resolve_shape(shape, n_layers: Optional[int] = None, **overrides) -> dict:
    """Hyperparameters of a named shape (SHAPES) or a dict of them, with overrides."""
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"shape {shape!r}: expected one of {', '.join(SHAPES)} or a dict of "
                             f"{', '.join(_SHAPE_KEYS[:7])}")
        hp = dict(SHAPES[shape])
    elif isinstance(shape, dict):
        unknown = sorted(set(shape) - set(_SHAPE_KEYS) - set(_FAMILY_KEYS))
        if unknown:
            raise ValueError(f"shape has unknown keys {unknown}, expected some of "
                             f"{list(_SHAPE_KEYS + _FAMILY_KEYS)}")
        hp = dict(SHAPES["tiny"])
        hp.update(shape)
        hp.setdefault("n_kv_heads", hp["n_heads"])
    else:
        raise ValueError(f"shape = {shape!r}: expected a name or a dict")
    for k, v in overrides.items():
        if v is not None:
            hp[k] = v
    if n_layers is not None:
        hp["n_layers"] = n_layers
    hp.setdefault("norm_eps", 1e-5)
    hp.setdefault("rope_theta", 10000.0)
    cfg = shape_config(hp).validate("shape")
    if cfg.dim % 32 or cfg.hidden_dim % 32:
        raise ValueError(f"shape: dim = {cfg.dim} and hidden_dim = {cfg.hidden_dim} must be multiples "
                         f"of 32 (32-value quantization blocks)")
    return hp


def _tensor_seed(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def random_kquant_blocks(rng: np.random.Generator, rows: int, cols: int, ggml_type: int,
                         std: float) -> np.ndarray:
    """(rows, row_bytes) uint8 of a K type: random bytes in every field (values, scales,
    mins) and fp16 super-scales that give the values a spread of about `std`.  Valid blocks
    that run exactly like quantized weights (for speed measurements; gguf cannot quantize
    K types, and the quantizer is not needed to time a kernel)."""
    values, size = block_layout(ggml_type)
    nb = cols // values
    raw = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    d = std / _KQUANT_TYPICAL[ggml_type]
    # d, then dmin = d * E[q]: the mins cancel the values' mean (uniform random fields)
    for off, value in zip(_KQUANT_SUPER_SCALES[ggml_type], (d, d * _KQUANT_MEAN_Q.get(ggml_type, 0))):
        raw[:, :, off:off + 2] = np.array([value], dtype=np.float16).view(np.uint8)
    return raw.reshape(rows, nb * size)


def _random_tensor(name: str, shape: tuple, ggml_type: int, seed: int, std: float) -> np.ndarray:
    """Weights ~ N(0, std) (norms: ones) stored as ggml_type, made a few rows at a time;
    K types: random_kquant_blocks."""
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    rows, cols = shape
    rng = _tensor_seed(seed, name)
    if ggml_type in KQUANT_TYPES:
        return random_kquant_blocks(rng, rows, cols, ggml_type, std)
    if ggml_type == F32:
        out = np.empty((rows, cols), dtype=np.float32)
    elif ggml_type == F16:
        out = np.empty((rows, cols), dtype=np.float16)
    else:
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize
        out = np.empty((rows, row_bytes(ggml_type, cols)), dtype=np.uint8)
    step = max(1, (1 << 22) // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        x = rng.standard_normal((r1 - r0, cols), dtype=np.float32)
        x *= std
        if ggml_type in (F32, F16):
            out[r0:r1] = x
        else:
            out[r0:r1] = quantize(x, GGMLQuantizationType(ggml_type))
    return out


def _vector(name: str, cfg) -> np.ndarray:
    """A 1-D tensor: norm weights ones, biases zeros, rope_freqs Llama 3's factors."""
    if name == "rope_freqs.weight":
        return np.asarray(cfg.rope_freq_factors, dtype=np.float32)
    n = layer_tensor_shapes(cfg)[name][0]
    return np.zeros(n, np.float32) if name.endswith(".bias") else np.ones(n, np.float32)


def make_random_model(path, shape="tinyllama-1.1b", dtype: str = "f32", n_layers: Optional[int] = None,
                      seed: int = 0, vocab=None, std: float = 0.02, progress: Optional[bool] = None) -> str:
    """Write a GGUF file of a real model's shape with random weights ~ N(0, std).

    shape: a name in SHAPES ("tinyllama-1.1b", "llama-3.2-1b", "qwen2.5-0.5b", "gpt2-124m", ...)
    or a dict of hyperparameters (and `family`: llama, llama3, qwen2 or gpt2); dtype: a key of DTYPES ("f32", "q8_0", "q5_1", "q4_k", ...; K types as
    random_kquant_blocks) for every matrix (norms
    stay f32); n_layers overrides the shape's; vocab: a tokenizer file (sentencepiece .model,
    llama2.c tokenizer.bin, GGUF), a tokenizer.Vocab, or None for a synthetic vocabulary of
    the right size and kind (SentencePiece-style for llama, byte-level BPE for the others).
    Norms are ones, biases zeros, learned positions N(0, std) in F32 (F16/BF16 files: that
    type), Llama 3's rope_freqs its real factors.  Tensors are made and written one at a time (memory: one tensor), to a
    temporary file renamed into place at the end.  Returns the path.
    """
    from gguf import GGMLQuantizationType, GGUFValueType
    path = os.fspath(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype = {dtype!r}, expected one of {', '.join(DTYPES)}")
    if n_layers is not None and (not isinstance(n_layers, int) or n_layers < 1):
        raise ValueError(f"n_layers = {n_layers!r}, expected a positive integer")
    if not (isinstance(std, (int, float)) and std > 0 and math.isfinite(std)):
        raise ValueError(f"std = {std!r}, expected a positive number")
    hp = resolve_shape(shape, n_layers)
    from .tokenizer import Tokenizer, Vocab
    if vocab is None:
        kind = FAMILIES[hp.get("family", "llama")][1]
        vocab = synthetic_vocab(hp["vocab_size"]) if kind == "spm" else synthetic_bpe_vocab(kind, hp["vocab_size"])
    elif not isinstance(vocab, Vocab):
        vocab = Tokenizer.from_file(os.fspath(vocab)).vocab
    if len(vocab.pieces) != hp["vocab_size"]:
        raise ValueError(f"the vocabulary has {len(vocab.pieces)} tokens, the shape has vocab_size "
                         f"{hp['vocab_size']}")
    cfg = shape_config(hp, vocab.bos_id, vocab.eos_id)
    gtype = DTYPES[dtype]
    if gtype in KQUANT_TYPES and (cfg.dim % 256 or cfg.hidden_dim % 256):
        raise ValueError(f"dtype = {dtype!r}: dim = {cfg.dim} and hidden_dim = {cfg.hidden_dim} must be "
                         f"multiples of 256 (K-quant blocks)")
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"{path}: directory {out_dir} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected an output file name")

    shapes = layer_tensor_shapes(cfg)
    head = [n for n in ("token_embd.weight", "position_embd.weight", "rope_freqs.weight") if n in shapes]
    tail = [n for n in ("output_norm.weight", "output_norm.bias", "output.weight") if n in shapes]
    order = head + sorted((n for n in shapes if n.startswith("blk.")),
                          key=lambda n: (int(n.split(".")[1]), n)) + tail
    # learned positions are not quantized (llama-quantize keeps position_embd as it is)
    types = {n: (F32 if len(shapes[n]) == 1 or (n == "position_embd.weight" and gtype not in (F16, BF16))
                 else gtype) for n in order}
    bar = None
    try:
        with atomic_gguf_writer(path, cfg.arch) as writer:
            name = shape if isinstance(shape, str) else "custom"
            add_model_metadata(writer, cfg, f"random-{name}-{dtype}")
            writer.add_file_type(_FILE_TYPES[gtype])
            if is_block_quantized(gtype):
                writer.add_quantization_version(2)
            writer.add_key_value("xllm.random.seed", int(seed), GGUFValueType.UINT32)
            vocab.add_to_gguf(writer)
            for n in order:
                shp, t = shapes[n], types[n]
                if len(shp) == 1:
                    writer.add_tensor_info(n, shp, np.dtype(np.float32), 4 * shp[0])
                elif t in (F32, F16):
                    dt = np.dtype(np.float32 if t == F32 else np.float16)
                    writer.add_tensor_info(n, shp, dt, shp[0] * shp[1] * dt.itemsize)
                else:
                    nb = shp[0] * row_bytes(t, shp[1])
                    writer.add_tensor_info(n, (shp[0], nb // shp[0]), np.dtype(np.uint8), nb,
                                           raw_dtype=GGMLQuantizationType(t))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            if progress is None:
                progress = sys.stderr.isatty()
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=len(order), unit="tensor", desc=os.path.basename(path), leave=False)
            for n in order:
                data = _vector(n, cfg) if len(shapes[n]) == 1 else _random_tensor(n, shapes[n], types[n], seed, std)
                writer.write_tensor_data(data)
                del data
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return path


