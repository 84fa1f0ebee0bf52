"""Each kernel against numpy, through both the AVX2 and the scalar path, at odd sizes."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize, quantize

from xllm import _kernels as K

SIZES = [(1, 7), (7, 33), (33, 100), (100, 64), (29, 300)]     # (rows, cols), none a multiple of 8/32/64 only
TOKENS = [1, 2, 4, 7, 13]


def rel_err(a, ref):
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def vector_levels():
    """The float levels this CPU has: scalar, then avx2 and avx512 where present."""
    return ["scalar"] + (["avx2"] if K.has_avx2() else []) + (["avx512"] if K.has_avx512() else [])


def on_each_level(fn, levels):
    """{level: fn()} with each level in force in turn; the level before is restored."""
    before = K.simd_level()
    try:
        out = {}
        for level in levels:
            K.set_simd_level(level)
            out[level] = fn()
        return out
    finally:
        K.set_simd_level(before)


@pytest.mark.parametrize("rows,cols", SIZES)
@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_matmul_float(simd, rows, cols, T, dtype):
    rng = np.random.default_rng(rows * 1000 + cols + T)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    if dtype == "f16":
        w = w.astype(np.float16)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    for threads in (1, 2):
        y = K.matmul(w, 0 if dtype == "f32" else 1, x, threads)
        assert y.shape == (T, rows) and y.dtype == np.float32
        assert rel_err(y, ref) < 2e-6


@pytest.mark.parametrize("qtype", [GT.Q8_0, GT.Q4_0])
@pytest.mark.parametrize("rows,cols", [(1, 32), (7, 96), (33, 160), (100, 64), (5, 352)])
@pytest.mark.parametrize("T", TOKENS)
def test_matmul_quantized(simd, qtype, rows, cols, T):
    """int8 dot products equal a float64 dot of the dequantized weights with the
    Q8_0-rounded activations."""
    rng = np.random.default_rng(rows + cols + T)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    wq = quantize(w, qtype)
    w64 = dequantize(wq, qtype).astype(np.float64)
    x64 = dequantize(quantize(x, GT.Q8_0), GT.Q8_0).astype(np.float64)
    ref = x64 @ w64.T
    for threads in (1, 2):
        y = K.matmul(wq, int(qtype), x, threads)
        assert rel_err(y, ref) < 1e-6


def test_matmul_q4_0_largest_nibbles_and_activations(simd):
    """Q4_0 nibbles all 15 times activations of one sign at |127|: the int16 sums of a block's
    maddubs outputs the AVX2 tile keeps are at their bound; the result is the float64 dot."""
    rows, cols = 13, 96
    d = np.full((rows, cols // 32, 1), 0.01, np.float16).view(np.uint8)
    wq = np.concatenate([d, np.full((rows, cols // 32, 16), 0xFF, np.uint8)], axis=2).reshape(rows, -1)
    w64 = dequantize(wq, GT.Q4_0).astype(np.float64)
    x = np.stack([np.ones(cols), -np.ones(cols), np.r_[np.ones(48), -np.ones(48)]]).astype(np.float32)
    x64 = dequantize(quantize(x, GT.Q8_0), GT.Q8_0).astype(np.float64)
    assert np.abs(np.rint(x64 * 127)).min() == 127
    for T in (1, 3):
        y = K.matmul(wq, int(GT.Q4_0), x[:T], 1)
        assert rel_err(y, x64[:T] @ w64.T) < 1e-6

@pytest.mark.parametrize("qtype", [0, 1, 8, 2])
def test_matmul_batch_equals_alone_bitwise(simd, qtype):
    """Each token's output row is the same bits alone, inside a batch, on any thread count."""
    rng = np.random.default_rng(qtype)
    w = rng.standard_normal((61, 288)).astype(np.float32)
    data = {0: w, 1: w.astype(np.float16)}.get(qtype)
    if data is None:
        data = quantize(w, GT(qtype))
    x = rng.standard_normal((11, 288)).astype(np.float32)
    batch = K.matmul(data, qtype, x, 2)
    alone = np.stack([K.matmul(data, qtype, x[i:i + 1], 1)[0] for i in range(len(x))])
    assert np.array_equal(batch, alone)


def test_matmul_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        K.matmul(np.zeros((2, 34), np.uint8), 8, np.zeros((1, 33), np.float32))
    with pytest.raises(ValueError, match="bytes"):
        K.matmul(np.zeros((2, 3), np.float32), 0, np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="unsupported"):
        K.matmul(np.zeros((2, 4), np.float32), 16, np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        K.matmul(np.zeros((2, 4), np.float64), 0, np.zeros((1, 4), np.float32))


def test_quantize_q8_0_matches_gguf():
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal(256), np.zeros(256), np.r_[1e4, np.ones(255)],
            -np.abs(rng.standard_normal(256)) * 100, rng.standard_normal(256) * 1e-3,
            np.tile([0.5, -0.5, 1.5, -2.5], 64), np.r_[np.full(31, 0.0), -3.0, rng.standard_normal(224)]]
    x = np.stack(rows).astype(np.float32)
    assert np.array_equal(K.quantize_q8_0(x), quantize(x, GT.Q8_0))


@pytest.mark.parametrize("gtype,ours", [(GT.F16, 1), (GT.Q8_0, 8), (GT.Q4_0, 2)])
def test_dequantize(gtype, ours):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 96)).astype(np.float32)
    data = w.astype(np.float16) if gtype == GT.F16 else quantize(w, gtype)
    ref = data.astype(np.float32) if gtype == GT.F16 else dequantize(data, gtype)
    assert np.array_equal(K.dequantize(data, ours, 5, 96), ref)


def test_fp16_conversion_all_values():
    bits = np.arange(1 << 16, dtype=np.uint16)
    ref = bits.view(np.float16).astype(np.float32)
    ours = K.fp16_to_fp32(bits)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))
    rng = np.random.default_rng(3)
    f = np.concatenate([rng.standard_normal(100000) * 10.0 ** rng.integers(-9, 6, 100000),
                        [0.0, -0.0, 65504, 65519.99, 65520, 1e6, -1e6, 6e-8, 2.98e-8, 2.99e-8, 3e-5, np.inf, -np.inf]]
                       ).astype(np.float32)
    with np.errstate(over="ignore"):           # numpy warns when it rounds to inf
        ref16 = f.astype(np.float16).view(np.uint16)
    assert np.array_equal(K.fp32_to_fp16(f), ref16)


@pytest.mark.parametrize("T,dim", [(1, 7), (3, 64), (5, 100), (2, 2051)])
def test_rmsnorm(simd, T, dim):
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((T, dim)).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    assert rel_err(K.rmsnorm(x, w, 1e-5), ref) < 1e-6


def test_rmsnorm_same_bits_on_every_level():
    """The squares are summed by FMA in 8 lanes on the scalar and the AVX2 path alike, reduced in
    one order, the tail after: every level gives the same bits (rows of 2051: a tail of 3)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 2051)) * 10.0 ** rng.uniform(-3, 3, (4, 2051))).astype(np.float32)
    w = rng.standard_normal(2051).astype(np.float32)
    levels = vector_levels()
    out = on_each_level(lambda: K.rmsnorm(x, w, 1e-5), levels)
    for level in levels:
        assert np.array_equal(out[level], out["scalar"]), level


@pytest.mark.parametrize("theta", [1e4, 5e5])
@pytest.mark.parametrize("n_heads,head_dim", [(1, 2), (3, 10), (4, 64)])
def test_rope(theta, n_heads, head_dim):
    from reference import rope
    rng = np.random.default_rng(head_dim)
    pos = np.array([0, 1, 5, 77, 300], dtype=np.int32)
    x = rng.standard_normal((5, n_heads * head_dim)).astype(np.float32)
    ref = rope(x.astype(np.float64).reshape(5, n_heads, head_dim), pos, theta).reshape(5, -1)
    assert rel_err(K.rope(x.copy(), pos, n_heads, head_dim, theta), ref) < 1e-5


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("head_dim", [2, 10, 34, 64, 128])
def test_rope_exact_float32_on_every_level(neox, head_dim):
    """Each pair is (x0 c - x1 s, x0 s + x1 c) with every product rounded to float32 before
    the sum (numpy's float32 arithmetic, no FMA), bit for bit on every level; head sizes off
    a multiple of 8 (16 for the halves) take the scalar tail."""
    rng = np.random.default_rng(head_dim + neox)
    n_heads, pos = 3, np.array([0, 1, 5, 77, 300], dtype=np.int32)
    x = (rng.standard_normal((5, n_heads * head_dim)) * 10.0 ** rng.uniform(-2, 2, (5, n_heads * head_dim))
         ).astype(np.float32)
    table = K.rope_table(301, head_dim, 1e4)[pos]                      # (T, half, 2)
    c, s = table[:, None, :, 0], table[:, None, :, 1]
    h = x.reshape(5, n_heads, head_dim)
    x0, x1 = (h[..., :head_dim // 2], h[..., head_dim // 2:]) if neox else (h[..., 0::2], h[..., 1::2])
    r0, r1 = x0 * c - x1 * s, x0 * s + x1 * c                          # float32 throughout
    want = np.concatenate([r0, r1], -1) if neox else np.stack([r0, r1], -1)
    want = want.reshape(5, -1)
    out = on_each_level(lambda: K.rope(x.copy(), pos, n_heads, head_dim, 1e4, neox), vector_levels())
    for level, got in out.items():
        assert np.array_equal(got, want), level


@pytest.mark.parametrize("n", [1, 7, 33, 100])
def test_softmax_swiglu_add(simd, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 5).astype(np.float32)
    e = np.exp(x.astype(np.float64) - x.max())
    assert rel_err(K.softmax(x), e / e.sum()) < 1e-6
    g, u = rng.standard_normal((2, n)).astype(np.float32)
    g64 = g.astype(np.float64)
    assert rel_err(K.swiglu(g, u), g64 / (1 + np.exp(-g64)) * u) < 1e-6
    assert np.array_equal(K.add(g, u), g + u)


def test_swiglu_extremes_and_paths_agree():
    """silu over the whole float range: within 4e-7 of float64 (Cephes expf, 2 ulp; values
    under 1e-36 may flush to zero), and the same bits on the scalar and AVX2 paths."""
    rng = np.random.default_rng(0)
    g = np.concatenate([rng.standard_normal(997) * 10, [0.0, -0.0, 87.0, 88.0, 89.0, 100.0, 1e30, -87.0,
                        -88.0, -89.0, -100.0, -1e30, 1e-30, -1e-30, 3e-45, 0.5, -0.5]]).astype(np.float32)
    u = np.ones_like(g)
    g64 = g.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = g64 / (1 + np.exp(-g64))
    before = K.simd_level()
    try:
        out = {}
        for level in ["scalar"] + (["avx2"] if K.has_avx2() else []):
            K.set_simd_level(level)
            out[level] = K.swiglu(g, u)
    finally:
        K.set_simd_level(before)
    y = out["scalar"]
    assert np.all(np.isfinite(y))
    assert np.all(np.abs(y - ref) <= 4e-7 * np.abs(ref) + 1e-36)
    for level, v in out.items():
        assert np.array_equal(v, y), level


@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim", [(4, 4, 16), (8, 2, 10), (6, 3, 64), (1, 1, 2)])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_attention_paged(simd, n_heads, n_kv_heads, head_dim, block_size):
    """Causal GQA attention over scattered blocks equals a dense float64 softmax."""
    rng = np.random.default_rng(n_heads * head_dim + block_size)
    T = 37
    kv_dim = n_kv_heads * head_dim
    n_blocks = -(-T // block_size) + 5
    table = rng.permutation(n_blocks)[: -(-T // block_size)].astype(np.int32)  # scattered blocks
    k = rng.standard_normal((T, kv_dim)).astype(np.float32)
    v = rng.standard_normal((T, kv_dim)).astype(np.float32)
    # (blocks, kv heads, positions, head_dim): each block's positions per KV head
    k_pool = np.full((n_blocks, n_kv_heads, block_size, head_dim), np.nan, np.float32)   # unused slots poison
    v_pool = np.full((n_blocks, n_kv_heads, block_size, head_dim), np.nan, np.float32)
    for p in range(T):
        k_pool[table[p // block_size], :, p % block_size] = k[p].reshape(n_kv_heads, head_dim)
        v_pool[table[p // block_size], :, p % block_size] = v[p].reshape(n_kv_heads, head_dim)
    q = rng.standard_normal((T, n_heads * head_dim)).astype(np.float32)
    positions = np.arange(T, dtype=np.int32)
    group = n_heads // n_kv_heads
    ref = np.zeros((T, n_heads * head_dim))
    for t in range(T):
        for h in range(n_heads):
            qh = q[t, h * head_dim:(h + 1) * head_dim].astype(np.float64)
            kh = k[:t + 1, (h // group) * head_dim:(h // group + 1) * head_dim].astype(np.float64)
            vh = v[:t + 1, (h // group) * head_dim:(h // group + 1) * head_dim].astype(np.float64)
            s = kh @ qh / np.sqrt(head_dim)
            p = np.exp(s - s.max())
            ref[t, h * head_dim:(h + 1) * head_dim] = (p / p.sum()) @ vh
    for threads in (1, 2):
        out = K.attention(q, k_pool, v_pool, table, positions, n_kv_heads, threads)
        assert rel_err(out, ref) < 1e-5


def test_attention_rejects_missing_block():
    q = np.zeros((1, 8), np.float32)
    pool = np.zeros((2, 1, 4, 8), np.float32)
    with pytest.raises(ValueError, match="no block"):
        K.attention(q, pool, pool, np.array([0], np.int32), np.array([4], np.int32), 1)
    with pytest.raises(ValueError, match="outside the pool"):
        K.attention(q, pool, pool, np.array([5], np.int32), np.array([0], np.int32), 1)


def test_simd_switch():
    before = K.simd_level()
    assert K.set_simd_level("scalar") == "scalar"
    assert K.set_simd_level("avx2") == ("avx2" if K.has_avx2() else "scalar")
    assert K.set_simd_level("avx512") == ("avx512" if K.has_avx512() else K.set_simd_level("avx2"))
    with pytest.raises(ValueError, match="'sse'"):
        K.set_simd_level("sse")
    K.set_simd_level(before)


@pytest.mark.parametrize("ggml_type", [0, 1, 30])
@pytest.mark.parametrize("cols", [203, 256])
def test_float_paths_same_bits(ggml_type, cols):
    """F32/F16/BF16: every (row, token) dot product keeps 8 lanes accumulated by FMA in k order
    and reduced once in a fixed order, so the AVX2 tiles, the 512-bit paired tiles and the
    vector reduction give the same bits at any batch and thread count (101 rows: two whole
    row groups and a part, 5 rows past a multiple of 8; 203 columns: a tail of 3).  The scalar
    loop rounds the product before adding (no FMA), so it matches within rounding
    (test_matmul_float) and is bit-compared only with itself across threads."""
    rng = np.random.default_rng(ggml_type + cols)
    w = rng.standard_normal((101, cols)).astype(np.float32)
    data = {0: w, 1: w.astype(np.float16), 30: (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)}[ggml_type]
    x = rng.standard_normal((13, cols)).astype(np.float32)
    levels = vector_levels()
    out = on_each_level(lambda: [[K.matmul(data, ggml_type, x[:n], threads) for threads in (1, 2)]
                                 for n in (1, 2, 3, 7, 13)], levels)
    for level in levels:
        for n, (one, two) in zip((1, 2, 3, 7, 13), out[level]):
            assert np.array_equal(one, two), (level, n)          # 1 thread == 2 threads
            assert np.array_equal(one[:1], out[level][0][0]), (level, n)   # alone == in a batch
    for level in levels[2:]:
        for p, q in zip(out["avx2"], out[level]):
            assert np.array_equal(p[0], q[0]), level


def test_float_lane_reduction_order(simd):
    """With 8 columns each lane holds one rounded product on every path, so the result is the
    fixed-order reduction ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) of float32 products, bit for
    bit: the vector reduction (8 rows at a time) and the scalar one for the rows left over.
    Magnitudes from 1e-4 to 1e4 make any other order round differently."""
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((101, 8)) * 10.0 ** rng.uniform(-4, 4, (101, 8))).astype(np.float32)
    x = (rng.standard_normal((13, 8)) * 10.0 ** rng.uniform(-4, 4, (13, 8))).astype(np.float32)
    l = x[:, None, :] * w[None, :, :]                        # (T, rows, 8) float32 products
    ref = ((l[..., 0] + l[..., 4]) + (l[..., 2] + l[..., 6])) + ((l[..., 1] + l[..., 5]) + (l[..., 3] + l[..., 7]))
    for T in (1, 2, 7, 13):
        assert np.array_equal(K.matmul(w, 0, x[:T], 2), ref[:T]), T


@pytest.mark.parametrize("qtype", [GT.Q8_0, GT.Q4_0])
def test_quantized_paths_same_bits(qtype):
    """Every path computes each block's exact int32 sum, then acc = fma(sum, d_w * d_x, acc):
    AMX tiles (49 tokens), vpdpbusd on 512-bit two-panel tiles of up to 8 tokens and on 256-bit
    one-panel tiles (avx512; 37 rows end in one panel), maddubs/madd (avx2) and the scalar loop
    give identical results."""
    rng = np.random.default_rng(5)
    w = quantize(rng.standard_normal((37, 320)).astype(np.float32), qtype)
    x = rng.standard_normal((49, 320)).astype(np.float32)
    levels = ["scalar"] + (["avx2"] if K.has_avx2() else []) + (["avx512"] if K.has_avx512() else []) \
        + (["amx"] if K.has_amx() else [])
    if len(levels) == 1:
        pytest.skip("this CPU has only the scalar path")
    before = K.simd_level()
    try:
        out = {}
        for level in levels:
            K.set_simd_level(level)
            out[level] = [K.matmul(w, int(qtype), x[:n], 2) for n in (1, 4, 6, 9, 17, 33, 49)]
    finally:
        K.set_simd_level(before)
    for level in levels[1:]:
        for p, q in zip(out["scalar"], out[level]):
            assert np.array_equal(p, q), level


@pytest.mark.parametrize("qtype", [GT.Q8_0, GT.Q4_0])
@pytest.mark.parametrize("rows,cols", [(1, 32), (31, 96), (32, 64), (61, 288), (200, 160)])
def test_gemv_panels_same_bits(simd, qtype, rows, cols):
    """A one-token matmul gives the same bits whether it streams one panel at a time or four
    side by side (the Intel decode path), on any thread count, and equals the float64 dot."""
    rng = np.random.default_rng(rows * cols)
    w = quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    ref = dequantize(quantize(x, GT.Q8_0), GT.Q8_0).astype(np.float64) @ \
        dequantize(w, qtype).astype(np.float64).T
    before = K.gemv_panels()
    try:
        out = {}
        for n in (1, 4):
            assert K.set_gemv_panels(n) == n
            out[n] = [K.matmul(w, int(qtype), x, threads) for threads in (1, 2)]
    finally:
        K.set_gemv_panels(before)
    for y in out[1] + out[4]:
        assert np.array_equal(y, out[1][0])
    assert rel_err(out[4][0], ref) < 1e-6


def test_set_gemv_panels_rejects_other_counts():
    with pytest.raises(ValueError, match="GEMV panels 3"):
        K.set_gemv_panels(3)


@pytest.mark.parametrize("qtype", [GT.Q8_0, GT.Q4_0])
@pytest.mark.parametrize("rows", [1, 8, 13, 24])
def test_pack_quantized_layout(qtype, rows):
    """Panels of 8 rows, block by block: 8 fp16 scales, then 4-byte groups of the 8 rows side
    by side (Q8_0 values stored as w + 128); missing rows have scale 0 and value 0."""
    rng = np.random.default_rng(rows)
    cols = 96
    q = quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    block = 34 if qtype == GT.Q8_0 else 18
    nb, n_panels = cols // 32, -(-rows // 8)
    packed = K.pack_quantized(q, int(qtype), rows, cols)
    assert packed.dtype == np.uint8 and packed.nbytes == n_panels * 8 * q.shape[1]
    assert packed.ctypes.data % 64 == 0
    blocks = np.zeros((n_panels * 8, nb, block), np.uint8)
    blocks[rows:, :, 2:] = 0 if qtype == GT.Q8_0 else 0x88
    blocks[:rows] = q.reshape(rows, nb, block)
    groups = (block - 2) // 4
    panel = blocks.reshape(n_panels, 8, nb, block).transpose(0, 2, 1, 3)      # (panel, block, row, bytes)
    scales = panel[..., :2].reshape(n_panels, nb, 16)
    values = panel[..., 2:].reshape(n_panels, nb, 8, groups, 4).transpose(0, 1, 3, 2, 4)
    values = values.reshape(n_panels, nb, groups * 32)
    if qtype == GT.Q8_0:
        values = values ^ 0x80
    expected = np.concatenate([scales, values], axis=2).reshape(-1)
    assert np.array_equal(packed, expected)


def test_release_file_pages_leaves_memory_arrays_alone(tmp_path):
    """Only read-only file mappings are released: an array in memory keeps its values."""
    a = np.arange(1 << 20, dtype=np.uint8)
    K._release_file_pages(a)
    assert np.array_equal(a, np.arange(1 << 20, dtype=np.uint8))
    path = tmp_path / "w.bin"
    path.write_bytes(a.tobytes())
    m = np.memmap(path, dtype=np.uint8, mode="r")
    K._release_file_pages(m[4096:])
    assert np.array_equal(m, a)                 # pages fault back in from the file
    w = np.memmap(path, dtype=np.uint8, mode="r+")
    K._release_file_pages(w)
    assert np.array_equal(w, a)

@pytest.mark.parametrize("qtype", [GT.Q8_0, GT.Q4_0])
def test_matmul_on_packed_weights(qtype):
    """K.pack repacks once (benchmarks): the same results as repacking inside matmul, and a
    mismatched type or width is refused by name."""
    rng = np.random.default_rng(9)
    w = quantize(rng.standard_normal((19, 64)).astype(np.float32), qtype)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    packed = K.pack(w, int(qtype))
    assert np.array_equal(K.matmul(packed, int(qtype), x), K.matmul(w, int(qtype), x))
    other = GT.Q4_0 if qtype == GT.Q8_0 else GT.Q8_0
    with pytest.raises(ValueError, match="packed weights are type"):
        K.matmul(packed, int(other), x)
    with pytest.raises(ValueError, match="packed weights are type"):
        K.matmul(packed, int(qtype), x[:, :32])
    with pytest.raises(ValueError, match="not a quantized type"):
        K.pack(w, 0)
