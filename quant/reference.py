"""Reference Q8_0 / Q4_0 quantizers in numpy, byte-identical to ggml and to `gguf.quants`, and
`quantize` / `dequantize` for every type the package writes (K-quants: quant.kquants; IQ4_NL,
Q4_1, Q5_0, Q5_1, BF16: quant.legacy).

Block layouts (ggml's block_q8_0 / block_q4_0: 32 values per block, little-endian, packed):

    BLOCK_Q8_0   d: fp16 scale | qs: int8[32]                       34 bytes   x = d * qs[j]
    BLOCK_Q4_0   d: fp16 scale | qs: uint8[16], two nibbles a byte   18 bytes   x = d * (nibble - 8)
                 byte j holds value j in its low nibble and value j + 16 in its high nibble

A row of n values (n a multiple of 32) is n/32 blocks back to back; a matrix is its rows back
to back, so quantized data is uint8 [rows, n/32 * block bytes].

Rounding, as ggml-quants.c's quantize_row_q8_0_ref / quantize_row_q4_0_ref and gguf-py do it,
all in float32:

  Q8_0  amax = max |x| over the block; d = amax / 127; id = 1/d (0 when d == 0);
        q = round-half-away-from-zero(x * id); the stored scale is fp16(d) (round to nearest
        even).  The codes are computed with the float32 d, not with the rounded fp16 one.
  Q4_0  m = the block's value of largest magnitude with its sign (the first one on a tie);
        d = m / -8; id = 1/d; code = min(15, trunc(x * id + 8.5)); stored scale fp16(d).
        m itself becomes code 0 (-8 * d = m) and values close to -m clip to code 15 (+7).

  A block so small that 1/d overflows float32 (max |x| below about 3.7e-37 for Q8_0, 2.4e-38
  for Q4_0) gets all codes 0: ggml and numpy turn the resulting inf/NaN products into 0 on
  x86, and this module does so explicitly.  Its fp16 scale is 0 anyway.  NaN and inf inputs
  are refused (ValueError), they have no meaningful code.  A scale beyond fp16's range (max |x|
  above 127 * 65504 for Q8_0, 8 * 65504 for Q4_0) is stored as inf, as ggml does; callers
  that write files should refuse it (xllm.convert does).

Dequantization is exact in float32 (an int8 times an fp16 fits in 24 bits).  With d32 the
float32 scale and d16 the stored fp16 scale, the error of a value is at most:

  Q8_0  d32/2 + 127 * |d32 - d16|       (about 0.56 * d32 when d16 is a normal fp16)
  Q4_0  d32/2 + 8 * |d32 - d16|, except the clipped values (x * id > 7.5): d32 + 8 * |d32 - d16|
"""
from __future__ import annotations

import numpy as np

from xllm.formats import F16, F32, Q4_0, Q8_0, QK
from xllm.formats.types import type_name

from .kquants import float_rows

BLOCK_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (QK,))])
BLOCK_Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
assert BLOCK_Q8_0.itemsize == 34, BLOCK_Q8_0.itemsize
assert BLOCK_Q4_0.itemsize == 18, BLOCK_Q4_0.itemsize

BLOCKS = {Q8_0: BLOCK_Q8_0, Q4_0: BLOCK_Q4_0}

_CHUNK_VALUES = 1 << 20     # values per pass: bounds the float32 temporaries to a few MB


# ----------------------------------------------------------------------------- helpers

def _float_rows(x, name: str) -> np.ndarray:
    """x as a 2-D view [rows, n] (last axis = rows), checking the row length for 32-blocks."""
    return float_rows(x, QK, name)


def _block_rows(data, block: np.dtype, name: str) -> np.ndarray:
    """Quantized bytes [..., k * block.itemsize] as a structured view [rows, k] of `block`."""
    data = np.asarray(data)
    if data.dtype not in (np.uint8, np.int8):
        raise ValueError(f"{name} data must be uint8 bytes, got dtype {data.dtype}")
    if data.ndim == 0:
        raise ValueError(f"{name} data must be an array of bytes, got a scalar")
    nbytes = data.shape[-1]
    if nbytes == 0 or nbytes % block.itemsize:
        raise ValueError(f"{name} row of {nbytes} bytes is not a whole number of "
                         f"{block.itemsize}-byte blocks")
    rows = np.ascontiguousarray(data.reshape(-1, nbytes)).view(np.uint8)
    return rows.view(block)        # [rows, nbytes // itemsize]


def _chunks(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_VALUES // max(1, n_cols))
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


def _refuse_non_finite(block_max: np.ndarray, row0: int, blocks_per_row: int, name: str) -> None:
    bad = ~np.isfinite(block_max)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"cannot quantize to {name}: row {row0 + i // blocks_per_row} contains "
                         f"{'NaN' if np.isnan(block_max[i]) else 'inf'}")


def _safe_inverse(d: np.ndarray):
    """id = 1/d in float32 (0 where d == 0, as ggml), and which blocks have a finite id: a
    non-zero d so small that 1/d overflows leaves the block with codes 0 (see the module doc)."""
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    ok = np.isfinite(inv)
    inv[~ok] = 0
    return inv, ok


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """roundf(): nearest integer, halves away from zero, exact in float32 (unlike floor(|v|+0.5))."""
    a = np.abs(v)
    r = np.floor(a)
    r += (a - r >= np.float32(0.5))      # a - floor(a) is exact in float32
    return np.copysign(r, v)


# ----------------------------------------------------------------------------- Q8_0

def _quantize(x, block_dtype, quantize_blocks, name: str) -> np.ndarray:
    """Rows of x in memory-bounded chunks through quantize_blocks(float32 [n, 32], out, row0,
    blocks_per_row); returns the blocks' bytes, shaped like x with the last axis in bytes."""
    rows = _float_rows(x, name)
    n_rows, n = rows.shape
    k = n // QK
    out = np.empty((n_rows, k), dtype=block_dtype)
    for r0, r1 in _chunks(n_rows, n):
        b = np.asarray(rows[r0:r1], dtype=np.float32).reshape(-1, QK)
        quantize_blocks(b, out[r0:r1].reshape(-1), r0, k)
    return out.view(np.uint8).reshape(*np.shape(x)[:-1], k * block_dtype.itemsize)


def _dequantize(data, block_dtype, values, name: str) -> np.ndarray:
    """Blocks' bytes -> float32 values(qs) * d, in memory-bounded chunks of rows."""
    blocks = _block_rows(data, block_dtype, name)
    n_rows, k = blocks.shape
    out = np.empty((n_rows, k, QK), dtype=np.float32)
    for r0, r1 in _chunks(n_rows, k * QK):
        blk = blocks[r0:r1]
        np.multiply(values(blk["qs"]), blk["d"].astype(np.float32)[..., None], out=out[r0:r1])
    return out.reshape(*np.shape(data)[:-1], k * QK)


def _q8_0_blocks(b: np.ndarray, out: np.ndarray, row0: int, blocks_per_row: int) -> None:
    """Quantize float32 blocks b [n, 32] into the BLOCK_Q8_0 array out [n]."""
    amax = np.abs(b).max(axis=1)
    _refuse_non_finite(amax, row0, blocks_per_row, "Q8_0")
    d = amax / np.float32(127)
    inv, _ = _safe_inverse(d)
    out["qs"] = _round_half_away(b * inv[:, None]).astype(np.int8)
    with np.errstate(over="ignore"):        # d > 65504 becomes inf, as in ggml
        out["d"] = d.astype(np.float16)


def quantize_q8_0(x) -> np.ndarray:
    """float [..., n] (n a multiple of 32) -> uint8 [..., n/32 * 34], ggml's Q8_0 bytes."""
    return _quantize(x, BLOCK_Q8_0, _q8_0_blocks, "Q8_0")


def dequantize_q8_0(data) -> np.ndarray:
    """uint8 [..., k*34] Q8_0 bytes -> float32 [..., k*32]."""
    return _dequantize(data, BLOCK_Q8_0, lambda qs: qs, "Q8_0")


# ----------------------------------------------------------------------------- Q4_0

def _q4_0_blocks(b: np.ndarray, out: np.ndarray, row0: int, blocks_per_row: int) -> None:
    """Quantize float32 blocks b [n, 32] into the BLOCK_Q4_0 array out [n]."""
    imax = np.abs(b).argmax(axis=1)                    # first index of the largest magnitude
    m = b[np.arange(b.shape[0]), imax]                 # ... with its sign
    m[m == 0] = 0       # an all-zero block keeps ggml's initial max = +0 (d = -0), even of -0.0s
    _refuse_non_finite(m, row0, blocks_per_row, "Q4_0")
    d = m / np.float32(-8)
    inv, ok = _safe_inverse(d)
    codes = np.minimum(np.trunc(b * inv[:, None] + np.float32(8.5)), np.float32(15)).astype(np.uint8)
    codes[~ok] = 0
    out["qs"] = codes[:, : QK // 2] | (codes[:, QK // 2:] << np.uint8(4))
    with np.errstate(over="ignore"):        # |d| > 65504 becomes inf, as in ggml
        out["d"] = d.astype(np.float16)


def quantize_q4_0(x) -> np.ndarray:
    """float [..., n] (n a multiple of 32) -> uint8 [..., n/32 * 18], ggml's Q4_0 bytes."""
    return _quantize(x, BLOCK_Q4_0, _q4_0_blocks, "Q4_0")


def dequantize_q4_0(data) -> np.ndarray:
    """uint8 [..., k*18] Q4_0 bytes -> float32 [..., k*32]."""
    def values(qs):     # low nibbles are values 0..15, high nibbles 16..31, both offset by 8
        return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1).astype(np.int8) - np.int8(8)
    return _dequantize(data, BLOCK_Q4_0, values, "Q4_0")


# ----------------------------------------------------------------------------- by type

from . import kquants, legacy  # noqa: E402  (they do not import this module)

# Block layouts of the block types this package writes (for callers that check the scales).
BLOCKS.update(kquants.BLOCKS)
BLOCKS[legacy.IQ4_NL] = legacy.BLOCK_IQ4_NL
BLOCKS[legacy.Q4_1] = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))])
BLOCKS[legacy.Q5_0] = np.dtype([("d", "<f2"), ("qh", "u1", (4,)), ("qs", "u1", (16,))])
BLOCKS[legacy.Q5_1] = np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "u1", (4,)), ("qs", "u1", (16,))])

_QUANTIZE = {Q8_0: quantize_q8_0, Q4_0: quantize_q4_0, legacy.IQ4_NL: legacy.quantize_iq4_nl}
_QUANTIZE.update({t: (lambda x, t=t: kquants.quantize_kquant(x, t)) for t in kquants.BLOCKS})
_QUANTIZE.update({t: (lambda x, t=t: legacy.quantize_with_gguf(x, t))
                  for t in (legacy.Q4_1, legacy.Q5_0, legacy.Q5_1, legacy.BF16)})
_DEQUANTIZE = {Q8_0: dequantize_q8_0, Q4_0: dequantize_q4_0}

# Every type `quantize` writes (bytes identical to llama-quantize's, no importance matrix).
QUANTIZABLE = frozenset({F32, F16} | set(_QUANTIZE))


def _type_name(ggml_type) -> str:
    return type_name(int(ggml_type))


def _quantizable_names() -> list:
    return sorted(_type_name(t) for t in QUANTIZABLE)


def quantize(x, ggml_type) -> np.ndarray:
    """x as stored in a GGUF tensor of `ggml_type`: float32 / float16 arrays, or uint8 bytes
    [..., bytes per row] for the block types and BF16."""
    t = int(ggml_type)
    if t == F32:
        return np.asarray(x, dtype=np.float32)
    if t == F16:
        return np.asarray(x, dtype=np.float16)
    if t in _QUANTIZE:
        return _QUANTIZE[t](x)
    raise ValueError(f"cannot quantize to {_type_name(t)}, expected one of {_quantizable_names()}")


def scales_overflow(data: np.ndarray, ggml_type) -> bool:
    """True when a block's fp16 scale (or min) came out infinite: values too large for the type."""
    block = BLOCKS.get(int(ggml_type))
    if block is None:
        return False
    blocks = np.asarray(data).reshape(-1).view(block)
    return any(np.isinf(blocks[name]).any() for name in block.names if block[name] == np.dtype("<f2"))


def dequantize(data, ggml_type, shape=None) -> np.ndarray:
    """float32 values of GGUF tensor data of `ggml_type`, reshaped to `shape` when given
    (Q8_0/Q4_0 here, the other block types and BF16 through gguf.quants.dequantize)."""
    t = int(ggml_type)
    if t in (F32, F16):
        out = np.asarray(data, dtype=np.float32)
    elif t in _DEQUANTIZE:
        out = _DEQUANTIZE[t](data)
    else:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize as gguf_dequantize
        try:
            qtype = GGMLQuantizationType(t)
            out = np.asarray(gguf_dequantize(np.asarray(data), qtype), dtype=np.float32)
        except (ValueError, NotImplementedError):
            raise ValueError(f"cannot dequantize {_type_name(t)}") from None
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if out.size != int(np.prod(shape)):
            raise ValueError(f"{_type_name(t)} data holds {out.size} values, expected shape {shape}")
        out = out.reshape(shape)
    return out
