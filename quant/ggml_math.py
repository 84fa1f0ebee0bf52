"""ggml's float32 building blocks for the K-quant and IQ4_NL quantizers, vectorized across blocks.

Every function works on groups laid out as columns: an array [n, B] holds B groups of n values,
element i of every group in row i.  ggml's loops over a group's elements then become one numpy
operation per element over all B groups, which keeps ggml's order of float32 operations exactly:

  * sums are sequential, element 0 first (`seq_sum`, never numpy's pairwise `sum`);
  * products and sums are evaluated as written in C, left to right, every step rounded to
    float32.  llama-quantize's quantizers live in ggml-base, which is compiled without
    -march flags (x86-64 baseline: SSE2, no FMA), so nothing is contracted into a fused
    multiply-add; the fixtures made by llama-quantize agree bit for bit with this unfused order;
  * ties and "first best" choices follow the C comparisons (strict > / <, first index wins).

The functions port ggml-quants.c (llama.cpp 0c1e570): nearest_int, best_index_int8,
make_qx_quants (rmse_type 1, no weights), make_q3_quants (do_rmse), make_qkx2_quants.
"""
from __future__ import annotations

import numpy as np

f32 = np.float32
GROUP_MAX_EPS = f32(1e-15)
_MAGIC = f32(12582912.0)        # 1.5 * 2^23: adding it rounds to an integer (ties to even)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: the low mantissa bits of v + 1.5*2^23 (round half to even for
    |v| < 2^22; the same bits as ggml beyond that too), as int32."""
    t = np.add(v, _MAGIC, dtype=np.float32)
    return (t.view(np.int32) & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def seq_sum(terms: np.ndarray, from_zero: bool = True) -> np.ndarray:
    """Sum over axis 0 in order (((t0 + t1) + t2) + ...), float32, as a C loop accumulates.
    from_zero: the C accumulator starts at 0 (the result is then never -0)."""
    s = np.add.reduce(terms, axis=0)        # axis 0 of a 2-D array: row by row, not pairwise
    if from_zero:
        s += f32(0)
    return s


def signed_absmax(x: np.ndarray) -> tuple:
    """(amax, max): the largest |x| over axis 0 and the value holding it with its sign, the
    first one on a tie (ggml: `if (ax > amax) { amax = ax; max = x[i]; }` from amax = 0)."""
    ax = np.abs(x)
    idx = np.argmax(ax, axis=0)
    cols = np.arange(x.shape[1])
    return ax[idx, cols], x[idx, cols]


def fp16_round(v: np.ndarray) -> np.ndarray:
    """(float16 bits, float32 value) of GGML_FP32_TO_FP16(v) (round to nearest even)."""
    with np.errstate(over="ignore"):
        h = np.asarray(v, dtype=np.float32).astype(np.float16)
    return h, h.astype(np.float32)


# ----------------------------------------------------------------------------- best_index_int8

def _float_key(v: float) -> int:
    """An integer that orders float32 values as the floats order (both zeros map to 0)."""
    i = int(np.float32(v).view(np.int32))
    return i if i >= 0 else -(i & 0x7FFFFFFF)


def _key_float(k: int) -> np.float32:
    bits = k if k >= 0 else (-k) | 0x80000000
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def index_thresholds(values: np.ndarray) -> np.ndarray:
    """For a sorted table, the float32 thresholds c[m-1] (m = 1..n-1) such that
    best_index_int8(x) == #{m : x >= c[m-1]} for every float32 x (NaN included: n-1).

    ggml picks the lower neighbour a = values[m-1] of x in [a, b) while x - a < b - x in
    float32; both sides are monotonic in x, so the choice flips once, at c[m-1]: the smallest
    float32 in [a, b] where it no longer holds, found by bisection over float32 values."""
    out = []
    for a, b in zip(values[:-1].astype(np.float32), values[1:].astype(np.float32)):
        lo, hi = _float_key(a), _float_key(b)          # P(lo) holds, P(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            x = _key_float(mid)
            if x - a < b - x:
                lo = mid
            else:
                hi = mid
        out.append(_key_float(hi))
    return np.array(out, dtype=np.float32)


def best_index(thresholds: np.ndarray, x: np.ndarray) -> np.ndarray:
    """best_index_int8(n, values, x) for every element of x, given index_thresholds(values)."""
    return np.searchsorted(thresholds, x, side="right")


class HalfStepIndex:
    """best_index_int8 as a table lookup, for tables whose thresholds are multiples of 1/2
    (IQ4_NL's are): x >= c  <=>  floor(2x) >= 2c, so the index is a function of floor(2x)."""

    def __init__(self, values: np.ndarray):
        c2 = index_thresholds(values) * np.float32(2)
        if not (c2 == np.floor(c2)).all():
            raise ValueError("thresholds are not multiples of 1/2")
        self.lo, self.hi = int(c2[0]) - 1, int(c2[-1])
        k = np.arange(self.lo, self.hi + 1, dtype=np.float32)
        self.index = np.searchsorted(c2, k, side="right").astype(np.uint8)
        self.values = values[self.index]

    def _slot(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):   # +-inf clip to the ends
            t = np.multiply(x, np.float32(2))
        np.floor(t, out=t)
        np.clip(t, self.lo, self.hi, out=t)
        t -= np.float32(self.lo)
        return t.astype(np.intp)

    def indices(self, x: np.ndarray) -> np.ndarray:
        return self.index[self._slot(x)]

    def nearest_values(self, x: np.ndarray) -> np.ndarray:
        return self.values[self._slot(x)]


# ----------------------------------------------------------------------------- make_qx_quants

def make_qx_quants(x: np.ndarray, nmax: int) -> tuple:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) on groups x [n, B]:
    (L uint8 [n, B] in 0..2*nmax-1, scale float32 [B])."""
    amax, vmax = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    wx = w * x

    def codes(iscale):
        # |iscale * x| <= nmax + 1 in a group with amax >= GROUP_MAX_EPS (others are dropped),
        # where rint is nearest_int
        lf = np.multiply(x, iscale)
        np.rint(lf, out=lf)
        return np.clip(lf, -nmax, nmax - 1, out=lf)

    def trial(iscale):
        lf = codes(iscale)
        sumlx = seq_sum(wx * lf)
        lf *= w * lf
        return sumlx, seq_sum(lf)              # w*l*l: (w*l)*l == l*(w*l) exactly

    best_iscale = f32(-nmax) / vmax
    sumlx, suml2 = trial(best_iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(f32(nmax) + f32(0.1) * f32(step)) / vmax
        sumlx, suml2 = trial(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_iscale = np.where(better, iscale, best_iscale)     # its codes are recomputed below
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    L = (codes(best_iscale) + f32(nmax)).astype(np.uint8)
    L[:, zero] = 0
    return L, np.where(zero, f32(0), scale)


# ----------------------------------------------------------------------------- make_q3_quants

def make_q3_quants(x: np.ndarray, nmax: int) -> tuple:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) on groups x [n, B]:
    (L uint8 [n, B] in 0..2*nmax-1, scale float32 [B]).

    The coordinate descent visits the elements in order; ggml stops after a pass that
    changes nothing, and such a pass leaves the state as it was, so running all 5 passes
    on every group gives the same result."""
    amax, vmax = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    L = np.clip(np.rint((f32(-nmax) / vmax) * x), -nmax, nmax - 1)      # |.| <= nmax: rint is exact
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * L)
    suml2 = seq_sum(w * L * L)
    for _ in range(5):
        for i in range(x.shape[0]):
            xi, wi, wxi, Li = x[i], w[i], wx[i], L[i]
            slx0 = sumlx - wxi * Li
            sl20 = suml2 - wi * Li * Li
            new = np.clip(nearest_int(xi * sl20 / slx0), -nmax, nmax - 1).astype(np.float32)
            slx = slx0 + wxi * new
            sl2 = sl20 + wi * new * new
            take = ((slx0 > 0) & (new != Li) & (sl2 > 0)
                    & (slx * slx * suml2 > sumlx * sumlx * sl2))
            L[i] = np.where(take, new, Li)
            sumlx = np.where(take, slx, sumlx)
            suml2 = np.where(take, sl2, suml2)
    scale = np.where(suml2 > 0, sumlx / suml2, f32(0))
    L = (L + f32(nmax)).astype(np.uint8)
    L[:, zero] = 0
    return L, np.where(zero, f32(0), scale)


# ----------------------------------------------------------------------------- make_qkx2_quants

def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple:
    """make_qkx2_quants on groups x [n, B] with weights w [n, B]:
    (L uint8 [n, B] in 0..nmax, scale float32 [B], the_min float32 [B] (= -min)).

    Each trial's codes are recomputed at the end from the winning trial's (iscale, min)
    rather than kept per trial: the same float32 operations give the same codes."""
    xmin = x.min(axis=0)
    xmax = x.max(axis=0)
    sum_w = seq_sum(w, from_zero=False)         # sum_w = w[0]; sum_w += w[i]
    sum_x = seq_sum(w * x, from_zero=False)
    xmin = np.where(xmin > 0, f32(0), xmin)
    flat = xmax == xmin
    lf = np.empty_like(x)
    tmp = np.empty_like(x)

    def codes(iscale, mn, out):
        """clamp(nearest_int(iscale * (x - mn)), 0, nmax) as float32 into out."""
        np.subtract(x, mn, out=out)
        out *= iscale
        # |iscale * (x - mn)| < 2^22 in every group that counts: rint is nearest_int there
        bound = np.abs(iscale) * np.maximum(np.abs(xmax - mn), np.abs(xmin - mn))
        if ((bound < f32(1 << 21)) | flat).all():
            np.rint(out, out=out)
        else:
            out[...] = nearest_int(out)
        return np.clip(out, 0, nmax, out=out)

    def error(scale, mn):
        """sum of w * |diff| or w * diff^2, diff = scale * l + mn - x, with l = lf."""
        d = np.multiply(lf, scale, out=tmp)
        d += mn
        d -= x
        if use_mad:
            np.abs(d, out=d)
        else:
            d *= d
        d *= w
        return seq_sum(d)

    iscale = f32(nmax) / (xmax - xmin)
    scale = f32(1) / iscale
    codes(iscale, xmin, lf)
    best_error = error(scale, xmin)
    best_iscale, best_mn = iscale, xmin          # the (iscale, min) that made the kept codes
    mn = xmin
    for step in range(nstep + 1):
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (xmax - mn)
        codes(iscale, mn, lf)
        np.multiply(w, lf, out=tmp)                # w * l
        sum_l = seq_sum(tmp)
        sum_xl = seq_sum(tmp * x)
        tmp *= lf
        sum_l2 = seq_sum(tmp)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        clamp = this_min > 0
        this_min = np.where(clamp, f32(0), this_min)
        this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
        cur_error = error(this_scale, this_min)
        better = (D > 0) & (cur_error < best_error)
        best_iscale = np.where(better, iscale, best_iscale)
        best_mn = np.where(better, mn, best_mn)
        best_error = np.where(better, cur_error, best_error)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L = codes(best_iscale, best_mn, lf).astype(np.uint8)
    L[:, flat] = 0
    return L, np.where(flat, f32(0), scale), np.where(flat, -xmin, -mn)


def groups(x: np.ndarray, n: int) -> np.ndarray:
    """Super-blocks x [nb, k] as groups of n: [n, k/n * nb], column j/n*nb + b = group j/n of
    super-block b, so a per-group result reshapes to [k/n, nb]."""
    nb, k = x.shape
    return np.ascontiguousarray(x.reshape(nb, k // n, n).transpose(2, 1, 0)).reshape(n, -1)


def ungroup(L: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of `groups`: [n, k/n * nb] -> [nb, k]."""
    n = L.shape[0]
    return np.ascontiguousarray(L.reshape(n, -1, nb).transpose(2, 1, 0)).reshape(nb, -1)
