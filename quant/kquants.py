"""K-quant quantizers (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) in numpy, byte-identical to llama-quantize.

Ports of ggml-quants.c's quantize_row_q{2..6}_K_ref (llama.cpp 0c1e570), which llama-quantize
runs for these types when it has no importance matrix.  A super-block is 256 values; a row
of n values (n a multiple of 256) is n/256 blocks back to back.  Block layouts (ggml-common.h,
little-endian, packed):

    Q2_K  scales u8[16] (low nibble scale, high nibble min) | qs u8[64] (2 bits) | d f16 | dmin f16    84 bytes
    Q3_K  hmask u8[32] (high bit) | qs u8[64] (low 2 bits) | scales u8[12] (6-bit, -32) | d f16     110 bytes
    Q4_K  d f16 | dmin f16 | scales u8[12] (6-bit scales and mins) | qs u8[128] (4 bits)           144 bytes
    Q5_K  d f16 | dmin f16 | scales u8[12] | qh u8[32] (5th bit) | qs u8[128] (low 4 bits)         176 bytes
    Q6_K  ql u8[128] (low 4 bits) | qh u8[64] (high 2 bits) | scales i8[16] | d f16               210 bytes

All blocks of a chunk of rows are quantized at once (see quant.ggml_math for how ggml's
float32 order of operations is kept).  NaN and inf inputs are refused (ValueError).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .ggml_math import (GROUP_MAX_EPS, f32, fp16_round, groups, make_q3_quants, make_qkx2_quants,
                        make_qx_quants, nearest_int, seq_sum, signed_absmax, ungroup)

QK_K = 256
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14

BLOCK_Q2_K = np.dtype([("scales", "u1", (16,)), ("qs", "u1", (64,)), ("d", "<f2"), ("dmin", "<f2")])
BLOCK_Q3_K = np.dtype([("hmask", "u1", (32,)), ("qs", "u1", (64,)), ("scales", "u1", (12,)), ("d", "<f2")])
BLOCK_Q4_K = np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (12,)), ("qs", "u1", (128,))])
BLOCK_Q5_K = np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (12,)), ("qh", "u1", (32,)),
                       ("qs", "u1", (128,))])
BLOCK_Q6_K = np.dtype([("ql", "u1", (128,)), ("qh", "u1", (64,)), ("scales", "i1", (16,)), ("d", "<f2")])
for _dt, _size in ((BLOCK_Q2_K, 84), (BLOCK_Q3_K, 110), (BLOCK_Q4_K, 144), (BLOCK_Q5_K, 176),
                   (BLOCK_Q6_K, 210)):
    assert _dt.itemsize == _size, (_dt, _size)

_CHUNK_VALUES = 1 << 18     # values per pass and thread: some 30 MB of float32 temporaries
THREADS = min(8, os.cpu_count() or 1)       # chunks quantized in parallel


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """qs of Q2_K/Q3_K: for each half of 128 values, byte l holds values l, l+32, l+64, l+96
    in bits 0-1, 2-3, 4-5, 6-7.  L uint8 [nb, 256] (values 0..3) -> [nb, 64]."""
    q = L.reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _requantize(x: np.ndarray, L: np.ndarray, d: np.ndarray, dm, n: int, lo: int, hi: int,
                offset: int) -> np.ndarray:
    """ggml's second pass with the rounded scales: per group of n (d [groups, nb] the group's
    float32 scale, dm its min or None), l = clamp(nearest_int((x + dm) / d)) + offset; groups
    with d == 0 keep the codes of the first pass.  x [nb, k], L uint8 [nb, k]."""
    nb = x.shape[0]
    xg = x.reshape(nb, -1, n)
    dg = d.T[:, :, None]
    v = xg + dm.T[:, :, None] if dm is not None else xg
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(nearest_int(v / dg), lo, hi) + offset
    keep = (dg == 0)
    return np.where(keep, L.reshape(nb, -1, n), q.astype(np.uint8)).reshape(nb, -1)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of Q4_K/Q5_K from 8 six-bit scales and mins ([8, nb] each)."""
    out = np.empty((ls.shape[1], 12), dtype=np.uint8)
    out[:, 0:4] = (ls[0:4] | ((ls[4:8] >> 4) << 6)).T
    out[:, 4:8] = (lm[0:4] | ((lm[4:8] >> 4) << 6)).T
    out[:, 8:12] = ((ls[4:8] & 0xF) | ((lm[4:8] & 0xF) << 4)).T
    return out


def _positive_max(v: np.ndarray) -> np.ndarray:
    """max(0, v over axis 0): ggml's `if (v > m) m = v` from m = +0."""
    m = v.max(axis=0)
    return np.where(m > 0, m, f32(0))


# ----------------------------------------------------------------------------- Q2_K

def _q2_k_blocks(x: np.ndarray, out: np.ndarray) -> None:
    nb = x.shape[0]
    xg = groups(x, 16)
    L, scales, mins = make_qkx2_quants(xg, np.abs(xg), 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(16, nb)
    mins = mins.reshape(16, nb)
    L = ungroup(L, nb)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    has_scale, has_min = max_scale > 0, max_min > 0
    sc = np.where(has_scale, nearest_int((f32(15) / max_scale) * scales), 0) & 0xFF
    sc |= np.where(has_min, nearest_int((f32(15) / max_min) * mins) << 4, 0) & 0xFF
    sc = sc.astype(np.uint8)
    d16, d = fp16_round(np.where(has_scale, max_scale / f32(15), f32(0)))
    m16, m = fp16_round(np.where(has_min, max_min / f32(15), f32(0)))
    L = _requantize(x, L, d * (sc & 0xF).astype(np.float32), m * (sc >> 4).astype(np.float32),
                    16, 0, 3, 0)
    out["scales"] = sc.T
    out["qs"] = _pack_2bit(L)
    out["d"] = d16
    out["dmin"] = m16


# ----------------------------------------------------------------------------- Q3_K

def _q3_k_blocks(x: np.ndarray, out: np.ndarray) -> None:
    nb = x.shape[0]
    L, scales = make_q3_quants(groups(x, 16), 4)
    scales = scales.reshape(16, nb)
    L = ungroup(L, nb)
    _, max_scale = signed_absmax(scales)
    nonzero = max_scale != 0
    iscale = f32(-32) / max_scale
    l = nearest_int(iscale * scales)
    l = ((l + 128) & 0xFF) - 128                         # int8_t l = nearest_int(...)
    l = np.where(nonzero, np.clip(l, -32, 31) + 32, 0).astype(np.uint8)
    lo, hi = l & 0xF, l >> 4
    sbytes = np.empty((nb, 12), dtype=np.uint8)
    sbytes[:, 0:8] = (lo[0:8] | (lo[8:16] << 4)).T
    sbytes[:, 8:12] = (hi[0:4] | (hi[4:8] << 2) | (hi[8:12] << 4) | (hi[12:16] << 6)).T
    d16, d = fp16_round(np.where(nonzero, f32(1) / iscale, f32(0)))
    sc = l.astype(np.float32) - f32(32)
    L = _requantize(x, L, d * sc, None, 16, -4, 3, 4)
    high = L > 3
    L = L - (high * np.uint8(4)).astype(np.uint8)
    bits = high.reshape(nb, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    out["hmask"] = np.bitwise_or.reduce(bits, axis=1)
    out["qs"] = _pack_2bit(L)
    out["scales"] = sbytes
    out["d"] = d16


# ----------------------------------------------------------------------------- Q4_K / Q5_K

def _qk_scaled_min(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """The shared first half of Q4_K and Q5_K: per group of 32, weights av_x + |x|,
    make_qkx2_quants, 6-bit scales and mins.  Returns (L, scale bytes, d16, dmin16, d, dm)."""
    nb = x.shape[0]
    xg = groups(x, 32)
    av_x = np.sqrt(seq_sum(xg * xg) / f32(32))
    L, scales, mins = make_qkx2_quants(xg, av_x + np.abs(xg), nmax, rmin, 0.1, nstep, False)
    scales = scales.reshape(8, nb)
    mins = mins.reshape(8, nb)
    L = ungroup(L, nb)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0))
    inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0))
    ls = np.minimum(nearest_int(inv_scale * scales) & 0xFF, 63).astype(np.uint8)   # uint8_t ls
    lm = np.minimum(nearest_int(inv_min * mins) & 0xFF, 63).astype(np.uint8)
    d16, d = fp16_round(max_scale / f32(63))
    m16, m = fp16_round(max_min / f32(63))
    return (L, _pack_scales_k4(ls, lm), d16, m16, d * ls.astype(np.float32),
            m * lm.astype(np.float32))


def _q4_k_blocks(x: np.ndarray, out: np.ndarray) -> None:
    L, sbytes, d16, m16, d, dm = _qk_scaled_min(x, 15, -1.0, 20)
    L = _requantize(x, L, d, dm, 32, 0, 15, 0).reshape(-1, 4, 2, 32)
    out["d"] = d16
    out["dmin"] = m16
    out["scales"] = sbytes
    out["qs"] = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)


def _q5_k_blocks(x: np.ndarray, out: np.ndarray) -> None:
    L, sbytes, d16, m16, d, dm = _qk_scaled_min(x, 31, -0.5, 15)
    L = _requantize(x, L, d, dm, 32, 0, 31, 0).reshape(-1, 4, 2, 32)
    low = L & 0xF
    high = (L >> 4).reshape(-1, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None]
    out["d"] = d16
    out["dmin"] = m16
    out["scales"] = sbytes
    out["qh"] = np.bitwise_or.reduce(high, axis=1)
    out["qs"] = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)


# ----------------------------------------------------------------------------- Q6_K

def _q6_k_blocks(x: np.ndarray, out: np.ndarray) -> None:
    nb = x.shape[0]
    L, scales = make_qx_quants(groups(x, 16), 32)
    scales = scales.reshape(16, nb)
    L = ungroup(L, nb)
    amax, max_scale = signed_absmax(scales)
    zero = amax < GROUP_MAX_EPS
    iscale = f32(-128) / max_scale
    d16, d = fp16_round(np.where(zero, f32(0), f32(1) / iscale))
    sc = np.minimum(nearest_int(iscale * scales), 127)
    sc = np.where(zero, 0, ((sc + 128) & 0xFF) - 128).astype(np.int8)      # int8_t scales
    L = _requantize(x, L, d * sc.astype(np.float32), None, 16, -32, 31, 32)
    L[zero] = 0
    q = L.reshape(nb, 2, 4, 32)
    lo, hi = q & 0xF, q >> 4
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    out["ql"] = ql.reshape(nb, 128)
    out["qh"] = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    out["scales"] = sc.T
    out["d"] = d16


# ----------------------------------------------------------------------------- driver

BLOCKS = {Q2_K: BLOCK_Q2_K, Q3_K: BLOCK_Q3_K, Q4_K: BLOCK_Q4_K, Q5_K: BLOCK_Q5_K, Q6_K: BLOCK_Q6_K}
_QUANTIZE_BLOCKS = {Q2_K: _q2_k_blocks, Q3_K: _q3_k_blocks, Q4_K: _q4_k_blocks,
                    Q5_K: _q5_k_blocks, Q6_K: _q6_k_blocks}
NAMES = {Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}


def float_rows(x, block_values: int, name: str) -> np.ndarray:
    """x as a 2-D view [rows, n], checking it is numbers in rows of whole blocks."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"cannot quantize a scalar to {name}, expected rows of values")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"cannot quantize dtype {x.dtype} to {name}, expected floating-point values")
    n = x.shape[-1]
    if n == 0 or n % block_values:
        raise ValueError(f"row length {n} is not a multiple of {block_values}: cannot quantize to "
                         f"{name} (blocks of {block_values} values)")
    return x.reshape(-1, n)


def quantize_blocks(x, ggml_type: int, block_values: int, block_dtype: np.dtype, quantize_chunk,
                    name: str) -> np.ndarray:
    """Rows of x [..., n] (n a multiple of block_values) through quantize_chunk(float32
    [blocks, block_values], out structured [blocks]) in memory-bounded chunks of rows;
    returns uint8 [..., n / block_values * block bytes]."""
    x = np.asarray(x)
    rows = float_rows(x, block_values, name)
    n = rows.shape[1]
    k = n // block_values
    out = np.empty((rows.shape[0], k), dtype=block_dtype)
    step = max(1, _CHUNK_VALUES // n)

    def work(r0: int) -> None:
        r1 = min(rows.shape[0], r0 + step)
        b = np.asarray(rows[r0:r1], dtype=np.float32).reshape(-1, block_values)
        bad = ~np.isfinite(b).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            kind = "NaN" if np.isnan(b[i]).any() else "inf"
            raise ValueError(f"cannot quantize to {name}: row {r0 + i // k} contains {kind}")
        with np.errstate(all="ignore"):             # per thread: errstate is thread-local
            quantize_chunk(b, out[r0:r1].reshape(-1))

    starts = range(0, rows.shape[0], step)
    if THREADS > 1 and len(starts) > 1:
        # numpy releases the GIL inside its loops: chunks run side by side on the cores
        with ThreadPoolExecutor(min(THREADS, len(starts))) as pool:
            for _ in pool.map(work, starts):        # re-raises the first failing chunk's error
                pass
    else:
        for r0 in starts:
            work(r0)
    return out.view(np.uint8).reshape(*x.shape[:-1], k * block_dtype.itemsize)


def quantize_kquant(x, ggml_type: int) -> np.ndarray:
    """float [..., n] (n a multiple of 256) -> uint8 [..., n/256 * block bytes]: the bytes
    llama-quantize writes for Q2_K / Q3_K / Q4_K / Q5_K / Q6_K (no importance matrix)."""
    t = int(ggml_type)
    if t not in _QUANTIZE_BLOCKS:
        raise ValueError(f"quantize_kquant: type {t} is not a K-quant, expected one of "
                         f"{sorted(NAMES.values())}")
    return quantize_blocks(x, t, QK_K, BLOCKS[t], _QUANTIZE_BLOCKS[t], NAMES[t])
