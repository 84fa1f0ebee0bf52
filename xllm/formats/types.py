"""GGUF tensor types: names, block layouts, and which of them the kernels run.

One table for the loaders, the converter, the quantizer and the error messages, so that a type
is always called by its name (`IQ2_XXS`, not `type 16`).  Block sizes come from gguf's
`GGML_QUANT_SIZES` (values per block, bytes per block), the same table llama.cpp's gguf-py uses.
"""
from __future__ import annotations

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

# GGMLQuantizationType values of the types that have names in this code base.
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = 10, 11, 12, 13, 14, 15
IQ4_NL, BF16 = 20, 30

# Every type GGUF defines, value -> name.
TYPE_NAMES = {int(t): t.name for t in GGMLQuantizationType}
TYPE_BY_NAME = {name: value for value, name in TYPE_NAMES.items()}

# Types whose matrices the decoder step multiplies with (and whose rows it can embed).
RUNNABLE = {F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL}
# Types a 1-D tensor (a norm weight) may have.
VECTOR_TYPES = {F32, F16}


def type_name(ggml_type: int) -> str:
    """The GGUF name of a type value; `type N` only for a value GGUF does not define."""
    return TYPE_NAMES.get(int(ggml_type), f"type {ggml_type}")


def block_layout(ggml_type: int) -> tuple:
    """(values per block, bytes per block) of `ggml_type`; ValueError for an unknown value."""
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(int(ggml_type))]
    except (ValueError, KeyError):
        raise ValueError(f"unknown tensor type {ggml_type}") from None


def is_block_quantized(ggml_type: int) -> bool:
    """True for the block formats (Q*, IQ*, TQ*), False for F32/F16/BF16 and integer types."""
    return block_layout(ggml_type)[0] > 1


def row_bytes(ggml_type: int, n_cols: int) -> int:
    """Bytes of one row of `n_cols` values stored as `ggml_type`."""
    block, size = block_layout(ggml_type)
    if n_cols % block:
        raise ValueError(f"row length {n_cols} is not a multiple of {block} for {type_name(ggml_type)}")
    return n_cols // block * size


def runnable_names() -> list:
    """Sorted names of the types the kernels run, for error messages."""
    return sorted(type_name(t) for t in RUNNABLE)


def check_runnable(ggml_type: int, tensor: str, source: str) -> None:
    """ValueError naming the file, the tensor and the type when the kernels cannot run it."""
    if int(ggml_type) not in RUNNABLE:
        raise ValueError(f"{source}: tensor {tensor!r} has type {type_name(ggml_type)}, which xllm "
                         f"cannot run (supported: {', '.join(runnable_names())})")
