"""The KV cache's storage types: names, the `auto` default, bytes per token, what is refused.

    f32   4 bytes a value: the exact cache (the llama2.c and transformers comparisons)
    f16   2 bytes, IEEE half rounded to nearest even (llama.cpp's default cache type)
    bf16  2 bytes, bfloat16 rounded to nearest even
    q8_0  34 bytes per 32 values: ggml's Q8_0 block (an F16 scale, 32 int8), as llama.cpp's
          -ctk q8_0 -ctv q8_0; head_dim must be a multiple of 32

`auto` follows the weights, as vLLM's default does: f32 for a model whose matrices are all
F32, f16 for any other.  The kernels (simd_kv.h) read each type directly.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .config import ModelConfig

KV_TYPES = ("f32", "f16", "bf16", "q8_0")           # the kernels' _kernels.KV_TYPES, in this order
KV_TYPE_CHOICES = ("auto",) + KV_TYPES              # what --kv-type / LLM(kv_type=) accept
F32_TYPE = 0                                        # GGUF's type id of F32 tensors


def check_kv_type(kv_type) -> str:
    if not isinstance(kv_type, str) or kv_type not in KV_TYPE_CHOICES:
        raise ValueError(f"kv_type = {kv_type!r}, expected one of {', '.join(KV_TYPE_CHOICES)}")
    return kv_type


def resolve_kv_type(kv_type, config: ModelConfig, matrix_types: Iterable[int]) -> str:
    """The concrete type for `kv_type` ("auto": f32 when every matrix is F32, else f16);
    ValueError for an unknown name or q8_0 with a head_dim that is not a multiple of 32."""
    check_kv_type(kv_type)
    if kv_type == "auto":
        kv_type = "f32" if all(t == F32_TYPE for t in matrix_types) else "f16"
    if kv_type == "q8_0" and config.head_dim % 32:
        raise ValueError(f"kv_type q8_0 needs head_dim a multiple of 32 (ggml's Q8_0 block); "
                         f"this model's head_dim is {config.head_dim}")
    return kv_type


def row_elements(kv_type: str, kv_dim: int) -> int:
    """Elements (of the type's storage dtype) of one position's kv_dim keys or values."""
    from . import _kernels       # imported on use: the CLIs' parsers need only the names
    return _kernels.kv_row_elements(kv_type, kv_dim)


def storage_dtype(kv_type: str):
    from . import _kernels
    return _kernels.KV_TYPES[kv_type][1]


def bytes_per_token(config: ModelConfig, kv_type: str) -> int:
    """K and V bytes one position takes across all layers."""
    itemsize = np.dtype(storage_dtype(kv_type)).itemsize
    return 2 * config.n_layers * row_elements(kv_type, config.kv_dim) * itemsize


def add_kv_type_option(parser) -> None:
    """--kv-type, the same on every command that runs a model."""
    parser.add_argument("--kv-type", choices=KV_TYPE_CHOICES, default="auto",
                        help="KV cache type: auto (f32 for F32 weights, else f16), f32, f16, bf16 or "
                             "q8_0 (head_dim a multiple of 32) (default auto)")
