"""The 32-value block types besides Q8_0/Q4_0: IQ4_NL (ported here) and Q4_1, Q5_0, Q5_1, BF16
through gguf-py.

IQ4_NL  d f16 | qs u8[16], two nibbles a byte (value j low, value j+16 high)      18 bytes
        x = d * KVALUES[nibble], a fixed non-linear table of 16 int8 values.
        Port of ggml-quants.c's quantize_iq4_nl / quantize_row_iq4_nl_impl (super-block 32,
        block 32, ntry 7, no importance matrix: weights x^2), llama.cpp 0c1e570.

gguf-py's `gguf.quants.quantize` writes exactly llama-quantize's bytes for Q4_1, Q5_0, Q5_1
and BF16 (checked on the kquant fixtures); it is used for them, a chunk of rows at a time.
"""
from __future__ import annotations

import numpy as np

from .ggml_math import GROUP_MAX_EPS, HalfStepIndex, f32, fp16_round, seq_sum, signed_absmax
from .kquants import quantize_blocks

IQ4_NL, Q4_1, Q5_0, Q5_1, BF16 = 20, 3, 6, 7, 30
QK4_NL = 32
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                         dtype=np.float32)
BLOCK_IQ4_NL = np.dtype([("d", "<f2"), ("qs", "u1", (QK4_NL // 2,))])
assert BLOCK_IQ4_NL.itemsize == 18
_NEAREST = HalfStepIndex(KVALUES_IQ4NL)       # best_index_int8 over the table

_CHUNK_VALUES = 1 << 20


def _iq4_nl_blocks(b: np.ndarray, out: np.ndarray) -> None:
    """Quantize float32 blocks b [n, 32] into the BLOCK_IQ4_NL array out [n]."""
    x = np.ascontiguousarray(b.T)               # [32, n]: element i of every block in row i
    values = KVALUES_IQ4NL
    w = x * x
    amax, vmax = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS

    def trial(iscale):
        iscale = np.where(zero, f32(0), iscale)    # ggml skips all-zero blocks: no inf * 0
        q = _NEAREST.nearest_values(iscale * x)
        wq = w * q
        return seq_sum(wq * x), seq_sum(wq * q)

    d = -vmax / values[0]
    sumqx, sumq2 = trial(f32(1) / d)
    d = np.where(sumq2 > 0, sumqx / sumq2, f32(0))
    best = d * sumqx
    for itry in range(-7, 8):
        sumqx, sumq2 = trial(f32(itry + int(values[0])) / vmax)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / sumq2, d)
        best = np.where(better, d * sumqx, best)
    d = np.where(zero, f32(0), d)
    d16, _ = fp16_round(d)
    inv = np.where(d != 0, f32(1) / d, f32(0))
    L = _NEAREST.indices(inv * x)        # [32, n]
    out["d"] = d16
    out["qs"] = (L[:16] | (L[16:] << 4)).T


def quantize_iq4_nl(x) -> np.ndarray:
    """float [..., n] (n a multiple of 32) -> uint8 [..., n/32 * 18]: llama-quantize's IQ4_NL bytes."""
    return quantize_blocks(x, IQ4_NL, QK4_NL, BLOCK_IQ4_NL, _iq4_nl_blocks, "IQ4_NL")


def quantize_with_gguf(x, ggml_type: int) -> np.ndarray:
    """gguf.quants.quantize(x, ggml_type) a chunk of rows at a time (bounded temporaries);
    for Q4_1, Q5_0, Q5_1, BF16 the result is llama-quantize's bytes."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    qtype = GGMLQuantizationType(int(ggml_type))
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"cannot quantize a scalar to {qtype.name}, expected rows of values")
    from gguf.constants import GGML_QUANT_SIZES
    block = GGML_QUANT_SIZES[qtype][0]
    n = x.shape[-1]
    if n == 0 or n % block:
        raise ValueError(f"row length {n} is not a multiple of {block}: cannot quantize to "
                         f"{qtype.name} (blocks of {block} values)")
    rows = x.reshape(-1, n).astype(np.float32, copy=False)
    if not np.isfinite(rows).all():
        r = int(np.argmax(~np.isfinite(rows).all(axis=1)))
        raise ValueError(f"cannot quantize to {qtype.name}: row {r} contains "
                         f"{'NaN' if np.isnan(rows[r]).any() else 'inf'}")
    step = max(1, _CHUNK_VALUES // max(1, rows.shape[1]))
    parts = [np.asarray(quantize(rows[r0:r0 + step], qtype)) for r0 in range(0, rows.shape[0], step)]
    out = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    if qtype == GGMLQuantizationType.Q5_0:
        # ggml's max starts at +0 and stays so in an all-zero block: d = +0 / -16 = -0.  gguf-py
        # takes the block's own zero, +0 for a block of -0.0s (llama-quantize writes 0x8000).
        zero = ~rows.reshape(-1, block).any(axis=1)
        out.reshape(-1, GGML_QUANT_SIZES[qtype][1])[zero, 1] |= np.uint8(0x80)
    return out.reshape(*x.shape[:-1], out.shape[-1])
