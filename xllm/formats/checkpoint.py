"""The one checkpoint type every format reader returns, and its validation.

Every format reader (formats.gguf, .llama2c, .llama2c_int8, .hf) returns a `Checkpoint`: a
`ModelConfig`, the tensors under their GGUF
llama names (token_embd.weight, blk.N.attn_q.weight, ..., output_norm.weight, output.weight)
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
