"""Open a checkpoint: validate it, memory-map its tensors and name them the GGUF way.

Every format reader returns a `Checkpoint`: a `ModelConfig`, the tensors under their GGUF
llama names (token_embd.weight, blk.N.attn_q.weight, ..., output_norm.weight, output.weight)
in numpy order (rows, cols), and the embedded vocabulary if the file has one.  Nothing is
copied: F32/F16/quantized data stay views of the memory-mapped file.  Every header field,
tensor name, shape and byte size is checked before use; a bad file raises ValueError naming
the file, the field and what was expected versus found.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .config import ModelConfig
from .ggml_types import F16, F32, Q4_0, Q8_0, VECTOR_TYPES, check_runnable, is_block_quantized, \
    row_bytes, type_name

# The types xllm-convert and xllm-quant write today (the kernels run more: ggml_types.RUNNABLE).
TYPE_NAMES = {t: type_name(t) for t in (F32, F16, Q4_0, Q8_0)}
QK = 32                                    # values per Q8_0 / Q4_0 block


@dataclass
class Tensor:
    """One tensor of a checkpoint, a view of the file (never a copy when memory-mapped)."""
    name: str
    ggml_type: int              # F32, F16, Q8_0 or Q4_0
    shape: tuple                # logical numpy shape: (n,) or (rows, cols)
    data: np.ndarray            # F32: float32 `shape`; F16: float16 `shape`; Q8_0/Q4_0: uint8 (rows, row_bytes)

    def to_float32(self) -> np.ndarray:
        """Dequantized float32 copy with the logical shape (for tools and tests, not the hot path)."""
        if self.ggml_type in (F32, F16):
            return np.asarray(self.data, dtype=np.float32).reshape(self.shape)
        from gguf.quants import dequantize
        from gguf import GGMLQuantizationType
        return dequantize(np.asarray(self.data), GGMLQuantizationType(self.ggml_type)).reshape(self.shape)


@dataclass
class Checkpoint:
    path: str
    config: ModelConfig
    tensors: dict                       # GGUF name -> Tensor
    vocab: Optional[object] = None      # tokenizer.Vocab embedded in the file, if any
    file_format: str = "gguf"           # "gguf" | "llama2c" | "hf"
    metadata: dict = field(default_factory=dict)   # extra GGUF key/values worth carrying over
    _keepalive: list = field(default_factory=list, repr=False)


def layer_tensor_shapes(cfg: ModelConfig) -> dict:
    """GGUF name -> numpy shape, for every tensor a llama model of `cfg` must have."""
    shapes = {"token_embd.weight": (cfg.vocab_size, cfg.dim), "output_norm.weight": (cfg.dim,)}
    if not cfg.tied_embeddings:
        shapes["output.weight"] = (cfg.vocab_size, cfg.dim)
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        shapes[p + "attn_norm.weight"] = (cfg.dim,)
        shapes[p + "attn_q.weight"] = (cfg.q_dim, cfg.dim)
        shapes[p + "attn_k.weight"] = (cfg.kv_dim, cfg.dim)
        shapes[p + "attn_v.weight"] = (cfg.kv_dim, cfg.dim)
        shapes[p + "attn_output.weight"] = (cfg.dim, cfg.q_dim)
        shapes[p + "ffn_norm.weight"] = (cfg.dim,)
        shapes[p + "ffn_gate.weight"] = (cfg.hidden_dim, cfg.dim)
        shapes[p + "ffn_up.weight"] = (cfg.hidden_dim, cfg.dim)
        shapes[p + "ffn_down.weight"] = (cfg.dim, cfg.hidden_dim)
    return shapes


def validate_tensors(path: str, cfg: ModelConfig, tensors: dict) -> None:
    """Every tensor the config implies is present, with its shape, a supported type and its bytes."""
    for name, shape in layer_tensor_shapes(cfg).items():
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"{path}: missing tensor {name!r} (expected shape {shape})")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
        if len(shape) == 1 and t.ggml_type not in VECTOR_TYPES:
            raise ValueError(f"{path}: 1-D tensor {name!r} is {type_name(t.ggml_type)}, expected F32 or F16")
        check_runnable(t.ggml_type, name, path)
        rows = shape[0] if len(shape) == 2 else 1
        expected = rows * row_bytes(t.ggml_type, shape[-1])
        if t.data.nbytes != expected:
            raise ValueError(f"{path}: tensor {name!r} holds {t.data.nbytes} bytes, expected {expected}")


def open_checkpoint(path) -> Checkpoint:
    """Open a GGUF file, a llama2.c checkpoint or a Hugging Face directory."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        from .hf_import import open_hf_checkpoint
        return open_hf_checkpoint(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return open_gguf(path)
    if head == b"24ka":                   # llama2.c writes the magic "ak42" as a little-endian uint32
        return open_llama2c_int8(path)
    if len(head) == 4:
        try:
            return open_llama2c(path)
        except ValueError as exc:       # no magic to go by: say what the file is not
            reason = str(exc).removeprefix(f"{path}: ")
            raise ValueError(f"{path}: not a GGUF file (magic {head!r}, expected b'GGUF') nor a "
                             f"llama2.c checkpoint ({reason})") from None
    raise ValueError(f"{path}: file is {len(head)} bytes long, too short to be a checkpoint")


# ----------------------------------------------------------------------------- GGUF

def _field(reader, key, path, required=True, default=None):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ValueError(f"{path}: missing GGUF key {key!r}")
        return default
    try:
        return f.contents()
    except Exception as exc:  # malformed value parts
        raise ValueError(f"{path}: GGUF key {key!r} cannot be read ({exc})") from None


def _int_field(reader, key, path, required=True, default=None):
    value = _field(reader, key, path, required, default)
    if value is None:
        return None
    if isinstance(value, (list, str, bytes)) or isinstance(value, float) and not float(value).is_integer():
        raise ValueError(f"{path}: GGUF key {key!r} = {value!r}, expected an integer")
    return int(value)


def open_gguf(path: str) -> Checkpoint:
    from .gguf_file import GGUFFile
    reader = GGUFFile(path)
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture = {arch!r}, expected 'llama'")
    a = "llama."
    n_heads = _int_field(reader, a + "attention.head_count", path)
    dim = _int_field(reader, a + "embedding_length", path)
    head_dim = _int_field(reader, a + "attention.key_length", path, False,
                          dim // n_heads if n_heads else 0)
    rope_dims = _int_field(reader, a + "rope.dimension_count", path, False, head_dim)
    if rope_dims != head_dim:
        raise ValueError(f"{path}: {a}rope.dimension_count = {rope_dims}, expected the head size "
                         f"{head_dim} (partial rotary embeddings are not supported)")
    scaling = _field(reader, a + "rope.scaling.type", path, False, "none")
    if scaling not in ("none", None):
        raise ValueError(f"{path}: {a}rope.scaling.type = {scaling!r}, expected 'none' (not supported)")
    tensors = {}
    for rt in reader.tensors:      # offsets and sizes already checked against the file
        shape = tuple(int(d) for d in reversed(rt.shape))
        data = rt.data
        if is_block_quantized(rt.tensor_type) and data.ndim == 1:
            data = data.reshape(1, -1)
        tensors[rt.name] = Tensor(rt.name, rt.tensor_type, shape, data)
    vocab_size = _int_field(reader, a + "vocab_size", path, False, None)
    embd = tensors.get("token_embd.weight")
    if vocab_size is None:
        if embd is None:
            raise ValueError(f"{path}: missing tensor 'token_embd.weight'")
        vocab_size = embd.shape[0]
    vocab = None
    if "tokenizer.ggml.tokens" in reader.fields:
        from .tokenizer import Vocab
        vocab = Vocab.from_gguf(reader, path)
    cfg = ModelConfig(
        dim=dim,
        hidden_dim=_int_field(reader, a + "feed_forward_length", path),
        n_layers=_int_field(reader, a + "block_count", path),
        n_heads=n_heads,
        n_kv_heads=_int_field(reader, a + "attention.head_count_kv", path, False, n_heads),
        vocab_size=vocab_size,
        max_seq_len=_int_field(reader, a + "context_length", path),
        head_dim=head_dim,
        norm_eps=float(_field(reader, a + "attention.layer_norm_rms_epsilon", path, False, 1e-5)),
        rope_theta=float(_field(reader, a + "rope.freq_base", path, False, 10000.0)),
        tied_embeddings="output.weight" not in tensors,
        bos_id=_int_field(reader, "tokenizer.ggml.bos_token_id", path, False, 1),
        eos_id=_int_field(reader, "tokenizer.ggml.eos_token_id", path, False, 2),
    ).validate(path)
    validate_tensors(path, cfg, tensors)
    if vocab is not None and len(vocab.pieces) != cfg.vocab_size:
        raise ValueError(f"{path}: the embedded vocabulary has {len(vocab.pieces)} tokens, "
                         f"expected vocab_size {cfg.vocab_size}")
    return Checkpoint(path, cfg, tensors, vocab, "gguf", _keepalive=[reader])


# ----------------------------------------------------------------------------- llama2.c

LLAMA2C_HEADER = struct.Struct("<7i")   # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
LLAMA2C_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def _llama2c_config(path, values, norm_eps=1e-5) -> ModelConfig:
    header = dict(zip(LLAMA2C_FIELDS, values))
    for k, v in header.items():
        if k != "vocab_size" and v <= 0:
            raise ValueError(f"{path}: header field {k} = {v}, expected a positive integer")
    if header["vocab_size"] == 0:
        raise ValueError(f"{path}: header field vocab_size = 0, expected a non-zero integer")
    if header["dim"] % header["n_heads"]:
        raise ValueError(f"{path}: header field dim = {header['dim']} is not divisible by "
                         f"n_heads = {header['n_heads']}")
    return ModelConfig(
        dim=header["dim"], hidden_dim=header["hidden_dim"], n_layers=header["n_layers"],
        n_heads=header["n_heads"], n_kv_heads=header["n_kv_heads"],
        vocab_size=abs(header["vocab_size"]), max_seq_len=header["seq_len"],
        norm_eps=norm_eps, rope_theta=10000.0, tied_embeddings=header["vocab_size"] > 0,
    ).validate(path)


def open_llama2c(path: str) -> Checkpoint:
    """llama2.c legacy fp32 checkpoint: 7-int32 header, then the tensors back to back."""
    size = os.path.getsize(path)
    if size < LLAMA2C_HEADER.size:
        raise ValueError(f"{path}: {size} bytes, too short for the llama2.c header ({LLAMA2C_HEADER.size} bytes)")
    with open(path, "rb") as f:
        values = LLAMA2C_HEADER.unpack(f.read(LLAMA2C_HEADER.size))
    cfg = _llama2c_config(path, values)
    L, d, h, kv, q = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.kv_dim, cfg.q_dim
    # (name in the file, per-layer GGUF name or None for whole-model, shape per layer)
    layout = [
        ("token_embedding_table", "token_embd.weight", None, (cfg.vocab_size, d)),
        ("rms_att_weight", "attn_norm.weight", L, (d,)),
        ("wq", "attn_q.weight", L, (q, d)),
        ("wk", "attn_k.weight", L, (kv, d)),
        ("wv", "attn_v.weight", L, (kv, d)),
        ("wo", "attn_output.weight", L, (d, q)),
        ("rms_ffn_weight", "ffn_norm.weight", L, (d,)),
        ("w1", "ffn_gate.weight", L, (h, d)),
        ("w2", "ffn_down.weight", L, (d, h)),
        ("w3", "ffn_up.weight", L, (h, d)),
        ("rms_final_weight", "output_norm.weight", None, (d,)),
        ("freq_cis", None, None, (cfg.max_seq_len * cfg.head_dim,)),   # two unused legacy RoPE tables
    ]
    if not cfg.tied_embeddings:
        layout.append(("wcls", "output.weight", None, (cfg.vocab_size, d)))
    n_floats = sum(int(np.prod(shape)) * (layers or 1) for _, _, layers, shape in layout)
    expected = LLAMA2C_HEADER.size + 4 * n_floats
    if size != expected:
        raise ValueError(f"{path}: file is {size} bytes, expected {expected} for the header "
                         f"{dict(zip(LLAMA2C_FIELDS, values))} ({'truncated' if size < expected else 'trailing data'})")
    flat = np.memmap(path, dtype=np.float32, mode="r", offset=LLAMA2C_HEADER.size, shape=(n_floats,))
    tensors = {}
    pos = 0
    for _, name, layers, shape in layout:
        n = int(np.prod(shape))
        if layers is None:
            if name is not None:
                tensors[name] = Tensor(name, F32, shape, flat[pos:pos + n].reshape(shape))
            pos += n
        else:
            for i in range(layers):
                full = f"blk.{i}.{name}"
                tensors[full] = Tensor(full, F32, shape, flat[pos:pos + n].reshape(shape))
                pos += n
    validate_tensors(path, cfg, tensors)
    return Checkpoint(path, cfg, tensors, None, "llama2c", _keepalive=[flat])


def open_llama2c_int8(path: str) -> Checkpoint:
    from .llama2c_int8 import open_llama2c_int8 as _open
    return _open(path)
