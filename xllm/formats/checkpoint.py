"""The one checkpoint type every format reader returns, and its validation.

Every format reader (formats.gguf, .llama2c, .llama2c_int8, .hf) returns a `Checkpoint`: a
`ModelConfig`, the tensors under their GGUF
names (token_embd.weight, blk.N.attn_q.weight, ..., output_norm.weight, output.weight)
in numpy order (rows, cols), and the embedded vocabulary if the file has one.  Nothing is
copied: F32/F16/quantized data stay views of the memory-mapped file.  Every header field,
tensor name, shape and byte size is checked before use; a bad file raises ValueError naming
the file, the field and what was expected versus found.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..config import ModelConfig
from .types import F16, F32, Q4_0, Q8_0, VECTOR_TYPES, check_runnable, row_bytes, type_name

# The types xllm-convert and xllm-quant write today (the kernels run more: ggml_types.RUNNABLE).
TYPE_NAMES = {t: type_name(t) for t in (F32, F16, Q4_0, Q8_0)}
QK = 32                                    # values per Q8_0 / Q4_0 block


@dataclass
class Tensor:
    """One tensor of a checkpoint, a view of the file (never a copy when memory-mapped)."""
    name: str
    ggml_type: int              # a type in types.RUNNABLE (F32, F16, BF16, Q8_0, Q4_0, ...)
    shape: tuple                # logical numpy shape: (n,) or (rows, cols)
    data: np.ndarray            # F32: float32 `shape`; F16: float16 `shape`; others: uint8 (rows, row_bytes)

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
    """GGUF name -> numpy shape, for every tensor a model of `cfg` must have (llama.cpp's
    names: token_embd, position_embd, rope_freqs, blk.N.attn_q / attn_qkv ..., output_norm,
    output; `.bias` next to `.weight` where the architecture has biases)."""
    shapes = {"token_embd.weight": (cfg.vocab_size, cfg.dim)}
    if cfg.position == "learned":
        shapes["position_embd.weight"] = (cfg.max_seq_len, cfg.dim)
    if cfg.rope_scaling == "llama3":
        shapes["rope_freqs.weight"] = (cfg.head_dim // 2,)
    layer_norm = cfg.norm == "layer"

    def add(name, shape, bias):
        shapes[name + ".weight"] = shape
        if bias:
            shapes[name + ".bias"] = (shape[0],)

    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        add(p + "attn_norm", (cfg.dim,), layer_norm)
        if cfg.fused_qkv:
            add(p + "attn_qkv", (cfg.q_dim + 2 * cfg.kv_dim, cfg.dim), cfg.qkv_bias)
        else:
            add(p + "attn_q", (cfg.q_dim, cfg.dim), cfg.qkv_bias)
            add(p + "attn_k", (cfg.kv_dim, cfg.dim), cfg.qkv_bias)
            add(p + "attn_v", (cfg.kv_dim, cfg.dim), cfg.qkv_bias)
        add(p + "attn_output", (cfg.dim, cfg.q_dim), cfg.out_bias)
        add(p + "ffn_norm", (cfg.dim,), layer_norm)
        if cfg.activation == "swiglu":
            add(p + "ffn_gate", (cfg.hidden_dim, cfg.dim), cfg.ffn_bias)
        add(p + "ffn_up", (cfg.hidden_dim, cfg.dim), cfg.ffn_bias)
        add(p + "ffn_down", (cfg.dim, cfg.hidden_dim), cfg.ffn_bias)
    add("output_norm", (cfg.dim,), layer_norm)
    if not cfg.tied_embeddings:
        shapes["output.weight"] = (cfg.vocab_size, cfg.dim)
    return shapes


def validate_tensors(path: str, cfg: ModelConfig, tensors: dict) -> None:
    """Every tensor the config implies is present, with its shape, a supported type and its
    bytes; a tensor the config does not use (a bias the architecture has no place for, a
    tensor of another architecture) is refused rather than ignored."""
    expected = layer_tensor_shapes(cfg)
    for name, shape in expected.items():
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"{path}: missing tensor {name!r} (expected shape {shape})")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
        if len(shape) == 1 and t.ggml_type not in VECTOR_TYPES:
            raise ValueError(f"{path}: 1-D tensor {name!r} is {type_name(t.ggml_type)}, expected F32 or F16")
        check_runnable(t.ggml_type, name, path)
        rows = shape[0] if len(shape) == 2 else 1
        nbytes = rows * row_bytes(t.ggml_type, shape[-1])
        if t.data.nbytes != nbytes:
            raise ValueError(f"{path}: tensor {name!r} holds {t.data.nbytes} bytes, expected {nbytes}")
    extra = sorted(n for n in tensors if n not in expected)
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ValueError(f"{path}: unexpected tensor(s) {extra[:3]}{more} for a {cfg.n_layers}-layer "
                         f"{cfg.arch} model (not supported)")

