"""The wide kernels of the avx512 and amx levels: AMX int8 tiles for multi-token Q8_0/Q4_0 and
K-quant matmuls and 512-bit float tiles on token pairs.  Each against numpy at odd sizes, and bit for
bit against every other level, each token alone, and one thread (the AMX tests need a CPU
with AMX and are skipped elsewhere; the float ones need AVX-512)."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize, quantize

from test_kquants import K_TYPES, VALUE_BYTES, U, dequantized_activations, random_kquant, split_parts
from xllm import _kernels as K

needs_amx = pytest.mark.skipif(not K.has_amx(), reason="this CPU (or kernel) gives no AMX int8 tiles")
needs_avx512 = pytest.mark.skipif(not K.has_avx512(), reason="this CPU has no AVX-512")


def levels():
    """Every level this CPU has, best first."""
    return [lv for lv in ("amx", "avx512", "avx2", "scalar") if K.set_simd_level(lv) == lv]


@pytest.fixture
def restore_level():
    before = K.simd_level()
    yield
    K.set_simd_level(before)


def on_levels(fn, lvs):
    out = {}
    for lv in lvs:
        assert K.set_simd_level(lv) == lv
        out[lv] = fn()
    return out


def test_amx_switch(restore_level):
    """'amx' is the avx512 level plus the tiles: asked for without AMX it falls back."""
    expect = "amx" if K.has_amx() else ("avx512" if K.has_avx512() else ("avx2" if K.has_avx2() else "scalar"))
    assert K.set_simd_level("amx") == expect == K.simd_level()
    assert K.set_simd_level("avx512") == ("avx512" if K.has_avx512() else K.set_simd_level("avx2"))
    assert set(K.AMX_MIN_TOKENS) == {int(GT.Q8_0), int(GT.Q4_0)} | set(K_TYPES.values())
    assert min(K.AMX_MIN_TOKENS.values()) >= 2


def bf16_bytes(w):
    """Float32 (rows, cols) -> BF16 bytes (round to nearest even), and the exact values."""
    bits = w.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return bits.view(np.uint8).reshape(w.shape[0], -1), (bits.astype(np.uint32) << 16).view(np.float32)


@needs_amx
@pytest.mark.parametrize("qtype", [GT.Q8_0, GT.Q4_0])
@pytest.mark.parametrize("rows,cols", [(1, 32), (13, 96), (16, 64), (37, 352), (100, 2080)])
@pytest.mark.parametrize("extra", [0, 1, 15, 24])
def test_amx_matmul(restore_level, qtype, rows, cols, extra):
    """AMX tiles (from the type's AMX_MIN_TOKENS: 16-token tiles plus a tail, 16-row tiles plus
    a half, k-chunks of 64 blocks plus a rest at 2080 columns) equal a float64 dot of the
    dequantized weights with the Q8_0-rounded activations, and every other level, each token
    alone and 1 thread bit for bit."""
    T = K.AMX_MIN_TOKENS[int(qtype)] + extra
    rng = np.random.default_rng(rows * 7 + cols + T)
    w = quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    x[3] *= 1e-30                                 # tiny and zero activation blocks
    x[5, :32] = 0
    ref = dequantize(quantize(x, GT.Q8_0), GT.Q8_0).astype(np.float64) @ dequantize(w, qtype).astype(np.float64).T
    lvs = levels()
    out = on_levels(lambda: K.matmul(w, int(qtype), x, 2), lvs)
    y = out["amx"]
    assert np.abs(y - ref).max() <= 1e-6 * np.abs(ref).max()
    for lv in lvs:
        assert np.array_equal(out[lv], y), lv
    K.set_simd_level("amx")
    assert np.array_equal(K.matmul(w, int(qtype), x, 1), y)
    alone = np.concatenate([K.matmul(w, int(qtype), x[t:t + 1], 1) for t in range(T)])
    assert np.array_equal(alone, y)


@needs_amx
@pytest.mark.parametrize("qtype", [GT.Q8_0, GT.Q4_0])
def test_amx_extreme_values(restore_level, qtype):
    """Full-scale weights (Q8_0 -127..127 and -128, Q4_0 -8..7) times full-scale activations:
    the int32 block sums stay exact (no saturation) on the tiles as on every other level."""
    rng = np.random.default_rng(1)
    rows, cols, T = 24, 160, max(K.AMX_MIN_TOKENS.values()) + 4     # on the tiles for both types
    w = quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    blocks = w.reshape(rows, cols // 32, -1)
    if qtype == GT.Q8_0:
        blocks[:, :, 2:] = np.where(rng.random((rows, cols // 32, 32)) < 0.5, 0x80, 0x81)   # -128, -127
    else:
        blocks[:, :, 2:] = np.where(rng.random((rows, cols // 32, 16)) < 0.5, 0x00, 0xff)   # -8, 7
    x = np.where(rng.random((T, cols)) < 0.5, -1.0, 1.0).astype(np.float32)             # q = +-127
    xq = dequantize(quantize(x, GT.Q8_0), GT.Q8_0).astype(np.float64)   # 127 * fp16(1/127)
    ref = xq @ dequantize(w, qtype).astype(np.float64).T
    out = on_levels(lambda: K.matmul(w, int(qtype), x, 2), levels())
    assert np.abs(out["amx"] - ref).max() <= 1e-6 * np.abs(ref).max()
    for lv, y in out.items():
        assert np.array_equal(y, out["amx"]), lv


@needs_amx
@pytest.mark.parametrize("name", list(K_TYPES))
@pytest.mark.parametrize("rows,cols", [(1, 256), (13, 768), (16, 1280), (37, 2560)])   # k-chunks of 8 + rest
@pytest.mark.parametrize("extra", [0, 1, 17])
def test_amx_kquant_matmul(restore_level, name, rows, cols, extra):
    """K-quant AMX tiles (two int8 digits of sc * (q - off) per value, simd_amx_kquants.h) from
    the type's AMX_MIN_TOKENS: within the float32 rounding of the block sums of the float64
    dot of gguf's dequantized weights with the Q8_K-rounded activations, and every other
    level, each token alone and 1 thread bit for bit."""
    qtype = K_TYPES[name]
    T = K.AMX_MIN_TOKENS[qtype] + extra
    data = random_kquant(qtype, rows, cols, seed=rows * 11 + cols + T)
    w64 = dequantize(data, GT(qtype)).reshape(rows, cols).astype(np.float64)
    x = np.random.default_rng(rows + T).standard_normal((T, cols)).astype(np.float32)
    x[3] *= 1e-30                                 # tiny and zero activation blocks
    x[5, :256] = 0
    xq = dequantized_activations(x)
    bound = sum(np.abs(xq) @ p.T for p in split_parts(data, qtype, rows, cols)) * U * (cols // 256 + 4) * 2
    lvs = levels()
    out = on_levels(lambda: K.matmul(data, qtype, x, 2), lvs)
    y = out["amx"]
    assert (np.abs(y.astype(np.float64) - xq @ w64.T) <= bound).all()
    for lv in lvs:
        assert np.array_equal(out[lv], y), lv
    K.set_simd_level("amx")
    assert np.array_equal(K.matmul(data, qtype, x, 1), y)
    alone = np.concatenate([K.matmul(data, qtype, x[t:t + 1], 1) for t in range(T)])
    assert np.array_equal(alone, y)


@needs_amx
@pytest.mark.parametrize("name", list(K_TYPES))
def test_amx_kquant_extreme_values(restore_level, name):
    """Every value at its largest and random scales (the widest sc * (q - off), both digits
    at their bounds) times full-scale activations of one sign: the int32 sums stay exact on
    the tiles as on every other level."""
    qtype = K_TYPES[name]
    rows, cols, T = 19, 1024, max(K.AMX_MIN_TOKENS.values()) + 3
    data = random_kquant(qtype, rows, cols, seed=qtype).reshape(rows, cols // 256, -1)
    lo, hi = VALUE_BYTES[qtype]
    data[:, :, lo:hi] = 0xFF
    data = data.reshape(rows, -1)
    x = np.where(np.random.default_rng(2).random((T, 1)) < 0.5, -1.0, 1.0) * np.ones((T, cols))
    x = x.astype(np.float32)
    out = on_levels(lambda: K.matmul(data, qtype, x, 2), levels())
    for lv, y in out.items():
        assert np.array_equal(y, out["scalar"]), lv


@needs_avx512
@pytest.mark.parametrize("wtype", [0, 1, 30])
@pytest.mark.parametrize("rows,cols", [(1, 7), (5, 33), (7, 100), (25, 300), (61, 1030), (6, 2056)])
@pytest.mark.parametrize("T", [2, 3, 8, 9, 17])
def test_float512_matmul(restore_level, wtype, rows, cols, T):
    """512-bit tiles on token pairs (6 rows x 8 tokens, edge tiles of 1-5 rows and 1-3 pairs,
    an odd last token, k-chunks of 1024 plus a rest, an n % 8 tail) equal numpy and the AVX2
    and AVX-512VL 256-bit tiles bit for bit, alone and on 1 or 2 threads."""
    rng = np.random.default_rng(rows * 31 + cols + T)
    w32 = rng.standard_normal((rows, cols)).astype(np.float32)
    if wtype == 0:
        data, wv = w32, w32
    elif wtype == 1:
        data = w32.astype(np.float16)
        wv = data.astype(np.float32)
    else:
        data, wv = bf16_bytes(w32)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    ref = x.astype(np.float64) @ wv.astype(np.float64).T
    out = on_levels(lambda: K.matmul(data, wtype, x, 2), [lv for lv in levels() if lv != "scalar"])
    y = out["avx512"]
    assert np.abs(y - ref).max() <= 2e-6 * max(np.abs(ref).max(), 1e-30) * max(1, cols / 300)
    for lv, v in out.items():
        assert np.array_equal(v, y), lv
    K.set_simd_level("avx512")
    assert np.array_equal(K.matmul(data, wtype, x, 1), y)
    alone = np.concatenate([K.matmul(data, wtype, x[t:t + 1], 1) for t in range(T)])
    assert np.array_equal(alone, y)


@pytest.mark.parametrize("seed", [0, 1])
def test_activation_quantizer_every_level(restore_level, seed):
    """The matmuls' activation blocks (AVX-512 runs of up to 16 blocks at avx512
    and amx, AVX2 at avx2, scalar below) have gguf.quants' Q8_0 bytes, the exact sum of their
    values, and the same bytes on every level, also for exact halves (d = 1), zero,
    subnormal, infinite and NaN inputs; rows of 37 blocks: two full runs and a short one."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((9, 37 * 32)) * rng.choice([1e-3, 1, 50], (9, 1))).astype(np.float32)
    x[5, 21 * 32:22 * 32] = 1e-38                    # subnormal d (fp16 0), infinite 1/d, in the second run
    x[6, 700], x[7, 1100] = -np.inf, np.nan          # in the second run and in the short one
    x[0, :32] = np.arange(32) - 15.5                 # exact halves once scaled: d = 127 / 127
    x[0, 0] = 127
    x[1, :32] = 0
    x[2, :32] = np.where(np.arange(32) % 2, 1e-38, -3e-39)
    finite = x[:2].copy()
    x[3, 5], x[3, 40], x[3, 70] = np.nan, np.inf, -np.inf
    x[4, 96:128] = np.nan
    out = on_levels(lambda: K.quantize_act(x), levels())
    d, sums, qs = out["scalar"]
    for lv, (d2, s2, q2) in out.items():
        assert np.array_equal(d2.view(np.uint32), d.view(np.uint32)) and np.array_equal(s2, sums), lv
        assert np.array_equal(q2, qs), lv
    assert np.array_equal(sums, qs.reshape(9, -1, 32).sum(-1, dtype=np.int32))
    assert d[5, 21] == 0 and not qs[5, 21 * 32:22 * 32].any() and d[6, 700 // 32] == np.inf
    ref = quantize(finite, GT.Q8_0).reshape(2, -1, 34)
    assert np.array_equal(qs[:2].reshape(2, -1, 32).view(np.uint8), ref[:, :, 2:])
    assert np.array_equal(d[:2], ref[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32))
    assert qs[0, 1] == -15 and qs[0, 2] == -14 and qs[0, 16] == 1    # -14.5 -> -15, -13.5 -> -14, 0.5 -> 1


@pytest.mark.parametrize("seed", [0, 1])
def test_kquant_activation_quantizer_every_level(restore_level, seed):
    """The K-quant activation blocks (Q8_K: AVX-512 at avx512 and amx, scalar below) have the
    same bytes on every level: random rows at three scales, a zero block, subnormals, exact
    halves once scaled, ties of +m and -m for the largest magnitude (the earlier one's sign
    sets the scale's), and infinite and NaN values (those blocks take the scalar loop)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((8, 5 * 256)) * rng.choice([1e-3, 1, 50], (8, 1))).astype(np.float32)
    x[0, :256] = 0
    x[1, 256:512] = np.where(np.arange(256) % 2, 1e-38, -3e-39)
    x[2, :256] = (np.arange(256) - 127.5) * (127 / 127.5)       # halves of the scale
    x[3, 300], x[3, 400] = -1e4, 1e4                             # tie, negative first
    x[4, 300], x[4, 400] = 1e4, -1e4                             # tie, positive first
    x[5, 10], x[5, 600], x[5, 1000] = np.inf, -np.inf, np.nan
    x[6, 256:512] = np.nan
    out = on_levels(lambda: K.quantize_q8k(x), levels())
    qs, bsums, d = out["scalar"]
    for lv, (q2, b2, d2) in out.items():
        assert np.array_equal(q2, qs) and np.array_equal(b2, bsums), lv
        assert np.array_equal(d2.view(np.uint32), d.view(np.uint32)), lv
    assert np.array_equal(bsums, qs.reshape(8, -1, 16).sum(-1).astype(np.int16))
    # the scale is -max / 127 of the first largest value: its sign follows that value, and
    # that value always quantizes to -127
    assert d[3, 1] > 0 > d[4, 1] and qs[3, 300] == qs[4, 300] == -127 and qs[3, 400] == qs[4, 400] == 127
