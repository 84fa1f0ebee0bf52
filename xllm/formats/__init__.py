"""Checkpoint formats: one reader per format, all returning a `Checkpoint`.

    gguf.py          GGUF (native; header parsed by gguf_reader.py)
    llama2c.py       llama2.c fp32 checkpoints;  llama2c_int8.py: its version-2 `ak42` int8 files
    hf.py            Hugging Face directories (config.json + safetensors)
    checkpoint.py    Checkpoint / Tensor and their validation;  types.py: GGUF tensor types

The readers import checkpoint.py and types.py, never each other and never this module.
"""
from __future__ import annotations

import os

from .checkpoint import QK, TYPE_NAMES, Checkpoint, Tensor, layer_tensor_shapes, validate_tensors
from .types import F16, F32, Q4_0, Q8_0, row_bytes
from .gguf import open_gguf
from .hf import open_hf_checkpoint
from .llama2c import open_llama2c
from .llama2c_int8 import open_llama2c_int8

__all__ = ["Checkpoint", "Tensor", "open_checkpoint", "layer_tensor_shapes", "validate_tensors",
           "F32", "F16", "Q4_0", "Q8_0", "QK", "TYPE_NAMES", "row_bytes"]


def open_checkpoint(path) -> Checkpoint:
    """Open a GGUF file, a llama2.c checkpoint or a Hugging Face directory."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if os.path.isdir(path):
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
