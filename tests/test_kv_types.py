"""KV cache types (f32, f16, bf16, q8_0): the rounding of each write, attention over every
type against float64 numpy on every SIMD level, the invariants per type, the `auto`
default, the memory they take, and how far each strays from the f32 cache on trained text."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize, quantize

from conftest import KNOWN_IDS, KNOWN_PROMPT
from model_factory import random_checkpoint
from xllm import LLM, SamplingParams
from xllm import _kernels as K
from xllm.config import ModelConfig
from xllm.formats import F32, F16, Q8_0, Checkpoint, Tensor, open_checkpoint
from xllm.kv_types import KV_TYPE_CHOICES, KV_TYPES, bytes_per_token, resolve_kv_type
from xllm.model import Chunk, Model
from xllm.perplexity import evaluate

STORY = Path(__file__).parent / "data" / "story.txt"
NAN16 = {"f16": np.float16(np.nan).view(np.uint16), "bf16": np.uint16(0x7FC0)}


def bf16_rne(x):
    """float32 -> bfloat16 bits, round to nearest even, NaN quiet (numpy, from the definition)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, np.float32))
    return np.where(nan, ((u >> 16) | 64).astype(np.uint16), r)


def stored_values(kv_type, rows, n):
    """float64 values of stored rows (..., row elements) of n values each."""
    if kv_type == "f32":
        return rows.astype(np.float64)
    if kv_type == "f16":
        return rows.astype(np.float64)
    if kv_type == "bf16":
        return (rows.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    flat = dequantize(rows.reshape(-1, rows.shape[-1]), GT.Q8_0)
    return flat.reshape(rows.shape[:-1] + (n,)).astype(np.float64)


# ----------------------------------------------------------------------------- writes

def special_values():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-9, 6, 200),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.99, 65520.0, 1e-8, 6e-8, -3e-5,
                         3.3895314e38, -3.39e38, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -11]])
    return np.concatenate([x[-32:], x[:160]]).astype(np.float32).reshape(6, 32)   # the specials, then random values


def test_f16_write_is_ieee_round_to_nearest_even():
    x = special_values()
    got = K.kv_store_rows("f16", x)
    assert got.dtype == np.float16
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert np.array_equal(got.view(np.uint16)[~np.isnan(x)], want.view(np.uint16)[~np.isnan(x)])
    assert np.isnan(got[np.isnan(x)]).all()


@pytest.mark.parametrize("kv_type", ["f16", "bf16"])
def test_half_writes_same_bits_on_every_level(kv_type):
    """The AVX2/F16C writes (8 values at a time, a scalar tail) give the scalar bits, NaN
    payloads and ties included, at a row length off a multiple of 8."""
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504.0, 65519.99, 65520.0, 1e-8, 6e-8,
                -3e-5, 3.3895314e38, -3.39e38, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -11, 1e-45]
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(3 * 77) * 10.0 ** rng.integers(-9, 6, 3 * 77)).astype(np.float32)
    x[5:5 + len(specials)] = specials
    x[100:108] = np.float32(np.nan)                     # a whole vector of NaN
    x = x.reshape(3, 77)
    x.view(np.uint32)[2, 3] = 0x7fa00001                # a signalling NaN with a payload
    before = K.simd_level()
    try:
        out = {}
        for level in ("scalar", "avx2", "avx512"):
            if K.set_simd_level(level) == level:
                out[level] = K.kv_store_rows(kv_type, x).view(np.uint16)
    finally:
        K.set_simd_level(before)
    assert len(out) > 1 or not K.has_avx2()
    for level, got in out.items():
        assert np.array_equal(got, out["scalar"]), level


def test_bf16_write_is_round_to_nearest_even():
    x = special_values()
    got = K.kv_store_rows("bf16", x)
    assert got.dtype == np.uint16 and np.array_equal(got, bf16_rne(x))
    # ties go to even: 1 + 2^-8 is halfway between two bf16 values
    assert K.kv_store_rows("bf16", np.array([1.0 + 2 ** -8], np.float32))[0] == 0x3F80
    assert K.kv_store_rows("bf16", np.array([1.0 + 3 * 2 ** -8], np.float32))[0] == 0x3F82


def test_q8_0_write_is_ggml_block():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((7, 96)) * rng.uniform(0.01, 100, (7, 1))).astype(np.float32)
    x[3] = 0.0                                          # an all-zero row: scale 0
    got = K.kv_store_rows("q8_0", x)
    assert got.dtype == np.uint8 and got.shape == (7, 3 * 34)
    assert np.array_equal(got, quantize(x, GT.Q8_0))


def test_q8_0_needs_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        K.kv_store_rows("q8_0", np.zeros((1, 40), np.float32))
    with pytest.raises(ValueError, match="'q4_0'"):
        K.kv_store_rows("q4_0", np.zeros((1, 32), np.float32))


def test_type_names_agree_with_the_kernels():
    assert tuple(K.KV_TYPES) == KV_TYPES and KV_TYPE_CHOICES == ("auto",) + KV_TYPES


# ----------------------------------------------------------------------------- attention

# (n_heads, n_kv_heads, head_dim, block_size): odd head sizes where the type allows
# (groups of 4 and 8 query heads per KV head take the kernel that serves 4 heads at once)
SHAPES = {
    "f32": [(4, 2, 8, 16), (3, 1, 20, 5), (2, 2, 70, 7), (8, 2, 16, 16)],
    "f16": [(4, 2, 8, 16), (3, 1, 20, 5), (2, 2, 70, 7), (6, 3, 6, 3), (2, 1, 128, 16),
            (8, 2, 20, 5), (8, 1, 70, 7), (4, 1, 6, 3), (8, 2, 64, 16)],
    "bf16": [(4, 2, 8, 16), (3, 1, 20, 5), (2, 2, 70, 7), (6, 3, 6, 3), (8, 2, 20, 5), (4, 1, 64, 16)],
    "q8_0": [(4, 2, 32, 16), (3, 1, 64, 5), (2, 2, 96, 7), (4, 1, 128, 16), (8, 1, 64, 16), (4, 1, 32, 5),
             (8, 2, 96, 7)],
}
CASES = [(t, *s) for t, shapes in SHAPES.items() for s in shapes]


def paged_pools(kv_type, k, v, block_size, rng, extra=3, n_kv_heads=1):
    """k, v (T, kv_dim) stored in scattered blocks of a pool (blocks, kv heads, positions,
    head row) whose other slots are NaN."""
    T, kv_dim = k.shape
    n_used = -(-T // block_size)
    n_blocks = n_used + extra
    table = rng.permutation(n_blocks)[:n_used].astype(np.int32)
    ks, vs = K.kv_store_rows(kv_type, k), K.kv_store_rows(kv_type, v)
    width = ks.shape[1] // n_kv_heads             # one head's stored row (q8_0: whole blocks)
    pools = []
    for rows in (ks, vs):
        pool = np.zeros((n_blocks, n_kv_heads, block_size, width), rows.dtype)
        if kv_type in NAN16:
            pool.view(np.uint16)[:] = NAN16[kv_type]
        elif kv_type == "q8_0":
            pool.reshape(n_blocks, n_kv_heads, block_size, -1, 34)[..., :2] = np.frombuffer(
                np.float16(np.nan).tobytes(), np.uint8)
        else:
            pool[:] = np.nan
        for p in range(T):
            pool[table[p // block_size], :, p % block_size] = rows[p].reshape(n_kv_heads, width)
        pools.append(pool)
    return pools[0], pools[1], table, ks, vs


def attention64(q, k64, v64, n_heads, n_kv_heads, head_dim, positions):
    group = n_heads // n_kv_heads
    out = np.zeros((len(positions), n_heads * head_dim))
    for i, t in enumerate(positions):
        for h in range(n_heads):
            kvh = h // group
            qh = q[i, h * head_dim:(h + 1) * head_dim].astype(np.float64)
            kh = k64[:t + 1, kvh * head_dim:(kvh + 1) * head_dim]
            vh = v64[:t + 1, kvh * head_dim:(kvh + 1) * head_dim]
            s = kh @ qh / np.sqrt(head_dim)
            p = np.exp(s - s.max())
            out[i, h * head_dim:(h + 1) * head_dim] = (p / p.sum()) @ vh
    return out


@pytest.mark.parametrize("kv_type,n_heads,n_kv_heads,head_dim,block_size", CASES)
@pytest.mark.parametrize("T", [1, 37])
def test_attention_equals_float64_over_stored_values(simd, kv_type, n_heads, n_kv_heads, head_dim, block_size, T):
    """The kernel reads the stored (rounded) keys and values and computes the attention a
    float64 softmax computes over exactly those values; 1 thread == 2 threads bit for bit."""
    rng = np.random.default_rng(head_dim * 100 + block_size + T)
    kv_dim = n_kv_heads * head_dim
    k = (rng.standard_normal((T, kv_dim)) * 2).astype(np.float32)
    v = rng.standard_normal((T, kv_dim)).astype(np.float32)
    q = rng.standard_normal((T, n_heads * head_dim)).astype(np.float32)
    k_pool, v_pool, table, ks, vs = paged_pools(kv_type, k, v, block_size, rng, n_kv_heads=n_kv_heads)
    positions = np.arange(T, dtype=np.int32)
    ref = attention64(q, stored_values(kv_type, ks, kv_dim), stored_values(kv_type, vs, kv_dim),
                      n_heads, n_kv_heads, head_dim, positions)
    one = K.attention(q, k_pool, v_pool, table, positions, n_kv_heads, 1, kv_type)
    err = np.abs(one - ref).max() / np.abs(ref).max()
    assert err < 1e-5, f"{kv_type}: relative error {err:.2e}"
    assert np.array_equal(K.attention(q, k_pool, v_pool, table, positions, n_kv_heads, 2, kv_type), one)
    # each query alone (one decode token) gives the bits it has inside the whole prefill
    for t in {0, T // 2, T - 1}:
        alone = K.attention(q[t:t + 1], k_pool, v_pool, table, positions[t:t + 1], n_kv_heads, 1, kv_type)
        assert np.array_equal(alone[0], one[t])


def test_attention_kernel_reads_the_type_not_a_copy(simd):
    """Changing one stored byte of one key changes the output (the kernel reads the pool)."""
    rng = np.random.default_rng(3)
    k = rng.standard_normal((9, 32)).astype(np.float32)
    q = rng.standard_normal((1, 32)).astype(np.float32)
    k_pool, v_pool, table, _, _ = paged_pools("q8_0", k, k, 4, rng, extra=0)
    pos = np.array([8], np.int32)
    before = K.attention(q, k_pool, v_pool, table, pos, 1, 1, "q8_0")
    v_pool[table[1], 0, 0, 5] ^= 0x7F
    assert not np.array_equal(K.attention(q, k_pool, v_pool, table, pos, 1, 1, "q8_0"), before)


def test_attention_refuses_q8_0_head_sizes():
    pool = np.zeros((2, 2, 4, 17), np.uint8)                    # 2 heads of 16: half a Q8_0 block each
    with pytest.raises(ValueError, match="head_dim a multiple of 32: a head row of 17 bytes"):
        K.attention(np.zeros((1, 32), np.float32), pool, pool, np.array([0], np.int32), np.array([0], np.int32),
                    2, 1, "q8_0")
    with pytest.raises(ValueError, match="'int4'"):
        K.attention(np.zeros((1, 8), np.float32), pool, pool, np.array([0], np.int32), np.array([0], np.int32),
                    1, 1, "int4")


def test_every_level_agrees_with_float64_alike():
    """The levels differ only by summation order: within 1e-6 of each other."""
    levels = ["scalar"] + (["avx2"] if K.has_avx2() else []) + (["avx512"] if K.has_avx512() else [])
    rng = np.random.default_rng(11)
    k = rng.standard_normal((29, 64)).astype(np.float32)
    q = rng.standard_normal((29, 128)).astype(np.float32)
    before = K.simd_level()
    try:
        for kv_type in KV_TYPES:
            k_pool, v_pool, table, _, _ = paged_pools(kv_type, k, k, 8, rng)
            outs = []
            for level in levels:
                K.set_simd_level(level)
                outs.append(K.attention(q, k_pool, v_pool, table, np.arange(29, dtype=np.int32), 1, 1, kv_type))
            for o in outs[1:]:
                assert np.abs(o - outs[0]).max() < 1e-5, kv_type
    finally:
        K.set_simd_level(before)


# ----------------------------------------------------------------------------- the model

CFG = ModelConfig(dim=128, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64)
CFG4 = ModelConfig(dim=256, hidden_dim=96, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=512, max_seq_len=64)


def tokens(n, seed=0):
    return [int(t) for t in np.random.default_rng(seed).integers(0, 512, n)]


def model_logits(model, ids, chunk):
    assert model.kv.reserve(0, len(ids))
    out = [model.step([Chunk(0, ids[s:s + chunk], s, "all")])[0] for s in range(0, len(ids), chunk)]
    model.kv.release(0)
    return np.concatenate(out)


@pytest.mark.parametrize("cfg", [CFG, CFG4], ids=["group2", "group4"])
@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_incremental_equals_recompute_and_threads(simd, kv_type, cfg):
    ckpt = random_checkpoint(cfg, F16, seed=5)
    ids = tokens(40, seed=6)
    model = Model(ckpt, threads=2, max_batch_tokens=64, kv_type=kv_type)
    assert model.kv.kv_type == kv_type
    full = model_logits(model, ids, 64)
    assert np.array_equal(model_logits(model, ids, 1), full)
    assert np.array_equal(model_logits(model, ids, 7), full)
    model.set_threads(1)
    assert np.array_equal(model_logits(model, ids, 64), full)


@pytest.mark.parametrize("cfg", [CFG, CFG4], ids=["group2", "group4"])
@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_alone_equals_in_batch(shared_models, kv_type, cfg):
    """Mixed lengths, more prompts than max_seqs, preemption: each sequence's greedy tokens
    equal its tokens alone."""
    ckpt = random_checkpoint(cfg, Q8_0, seed=9)
    tok = shared_models / "tok512.model"
    prompts = [tokens(n, seed=10 + n) for n in (1, 3, 9, 17, 2, 25)]
    greedy = SamplingParams(max_tokens=16, temperature=0.0)
    solo = LLM(ckpt, tokenizer=tok, threads=2, max_batch_tokens=32, max_seqs=1, kv_type=kv_type)
    alone = [solo.generate([p], greedy)[0].token_ids for p in prompts]
    llm = LLM(ckpt, tokenizer=tok, threads=2, max_batch_tokens=16, max_seqs=4, kv_blocks=10, block_size=4,
              kv_type=kv_type)
    assert [o.token_ids for o in llm.generate(prompts, greedy)] == alone
    assert llm.last_stats["preemptions"] > 0


def test_kv_types_change_the_logits_a_little():
    """Each type is really used: its logits differ from f32's, by about its rounding."""
    ckpt = random_checkpoint(CFG, F32, seed=2)
    ids = tokens(30, seed=3)
    ref = model_logits(Model(ckpt, kv_type="f32"), ids, 30)
    for kv_type, lo, hi in (("f16", 1e-7, 2e-3), ("bf16", 1e-5, 3e-2), ("q8_0", 1e-5, 3e-2)):
        got = model_logits(Model(ckpt, kv_type=kv_type), ids, 30)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert lo < err < hi, (kv_type, err)


def test_auto_follows_the_weights():
    assert resolve_kv_type("auto", CFG, [F32, F32]) == "f32"
    for t in (F16, Q8_0, 30, 12):
        assert resolve_kv_type("auto", CFG, [F32, t]) == "f16"
    assert Model(random_checkpoint(CFG, F32)).kv.kv_type == "f32"
    assert Model(random_checkpoint(CFG, Q8_0)).kv.kv_type == "f16"
    assert Model(random_checkpoint(CFG, Q8_0), kv_type="bf16").kv.kv_type == "bf16"


@pytest.mark.parametrize("bad", ["q4_0", "F16", "", None, 16])
def test_bad_kv_type_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match="expected one of auto, f32, f16, bf16, q8_0"):
        Model(random_checkpoint(CFG, F32), kv_type=bad)


# ----------------------------------------------------------------------------- memory

def test_bytes_per_token_and_pool_arrays():
    L, kv_dim = CFG.n_layers, CFG.kv_dim
    expect = {"f32": 2 * L * kv_dim * 4, "f16": 2 * L * kv_dim * 2, "bf16": 2 * L * kv_dim * 2,
              "q8_0": 2 * L * kv_dim // 32 * 34}
    for kv_type, n in expect.items():
        model = Model(random_checkpoint(CFG, F32), kv_type=kv_type, kv_blocks=3, block_size=8)
        assert bytes_per_token(CFG, kv_type) == n == model.kv.bytes_per_token
        assert model.kv.nbytes == 3 * 8 * n


def test_same_budget_holds_more_tokens():
    """The default pool is a memory budget (max_seqs full f32 contexts, today's pool): the
    same bytes hold 2x the tokens in f16/bf16 and 3.76x in q8_0."""
    ckpt = random_checkpoint(CFG, F32)
    blocks = {t: Model(ckpt, kv_type=t, max_seqs=4).kv.n_blocks for t in KV_TYPES}
    assert blocks["f32"] == 4 * CFG.max_seq_len // 16                      # unchanged for f32
    assert blocks["f16"] == blocks["bf16"] == 2 * blocks["f32"]
    assert blocks["q8_0"] >= 3.5 * blocks["f32"]
    pools = {t: Model(ckpt, kv_type=t, kv_memory=1 << 20).kv for t in KV_TYPES}
    for kv in pools.values():
        assert kv.nbytes <= 1 << 20
    tokens_held = {t: kv.n_blocks * kv.block_size for t, kv in pools.items()}
    assert tokens_held["q8_0"] >= 3.5 * tokens_held["f32"]
    with pytest.raises(ValueError, match="kv_memory = 100 bytes holds no KV block"):
        Model(ckpt, kv_memory=100)


# ----------------------------------------------------------------------------- stories260K

@pytest.fixture(scope="module")
def stories(shared_models):
    return open_checkpoint(str(shared_models / "stories260K.bin"))


def test_stories260k_f16_cache_keeps_the_known_greedy_text(shared_models, stories):
    for kv_type in ("f16", "bf16"):
        llm = LLM(stories, tokenizer=shared_models / "tok512.bin", threads=2, kv_type=kv_type)
        out = llm.generate([KNOWN_PROMPT], SamplingParams(max_tokens=60, temperature=0.0))[0]
        if kv_type == "f16":
            assert out.prompt_token_ids + out.token_ids == KNOWN_IDS
        else:       # bf16's 8-bit mantissa: reported, not pinned beyond the first tokens
            assert (out.prompt_token_ids + out.token_ids)[:20] == KNOWN_IDS[:20]


def test_stories260k_auto_is_todays_f32_bits(shared_models, stories):
    tok = shared_models / "tok512.bin"
    auto = LLM(stories, tokenizer=tok, threads=2)
    assert auto.model.kv.kv_type == "f32" and auto.model.kv.k.dtype == np.float32
    ids = auto.tokenizer.encode(STORY.read_text(), bos=True)[:200]
    f32 = LLM(stories, tokenizer=tok, threads=2, kv_type="f32")
    assert np.array_equal(auto.logits(ids), f32.logits(ids))
    out = auto.generate([KNOWN_PROMPT], SamplingParams(max_tokens=60, temperature=0.0))[0]
    assert out.prompt_token_ids + out.token_ids == KNOWN_IDS


def test_stories260k_refuses_q8_0_naming_head_dim(shared_models, stories):
    with pytest.raises(ValueError, match="head_dim is 8"):
        LLM(stories, tokenizer=shared_models / "tok512.bin", kv_type="q8_0")


def widened_heads(ckpt: Checkpoint, head_dim: int) -> Checkpoint:
    """The same function with every attention head zero-padded to `head_dim` values.

    Head h's pairs (2i, 2i+1) move to pairs (s*i) of the wider head, s = head_dim / old,
    whose RoPE frequency theta^(-2 s i / head_dim) is the old theta^(-2 i / old); the other
    dimensions of q, k and v are zero, and q is scaled by sqrt(head_dim / old) so that the
    softmax scale 1/sqrt(head_dim) is the old one.  A trained model whose heads are whole
    Q8_0 blocks (the real values and zeros): q8_0's rounding of trained keys and values.
    """
    cfg = ckpt.config
    old = cfg.head_dim
    s = head_dim // old
    assert head_dim % old == 0
    dims = np.array([2 * s * (d // 2) + d % 2 for d in range(old)])         # new index of each old dim
    new_cfg = ModelConfig(**{**cfg.__dict__, "head_dim": head_dim})

    def widen_rows(w, n_heads, scale=1.0):                                    # (n_heads*old, cols)
        out = np.zeros((n_heads * head_dim, w.shape[1]), np.float32)
        for h in range(n_heads):
            out[h * head_dim + dims] = w[h * old:(h + 1) * old] * scale
        return out

    tensors = {}
    for name, t in ckpt.tensors.items():
        w = t.to_float32()
        if name.endswith("attn_q.weight"):
            w = widen_rows(w, cfg.n_heads, np.sqrt(head_dim / old))
        elif name.endswith("attn_k.weight") or name.endswith("attn_v.weight"):
            w = widen_rows(w, cfg.n_kv_heads)
        elif name.endswith("attn_output.weight"):
            w = widen_rows(w.T, cfg.n_heads).T.copy()
        tensors[name] = Tensor(name, F32, w.shape, np.ascontiguousarray(w, np.float32))
    return Checkpoint(ckpt.path, new_cfg, tensors, ckpt.vocab, "memory")


def top1_agreement(ckpt, tok, kv_type):
    ref = LLM(ckpt, tokenizer=tok, threads=2, kv_type="f32")
    llm = LLM(ckpt, tokenizer=tok, threads=2, kv_type=kv_type)
    ids = ref.tokenizer.encode(STORY.read_text(), bos=True)
    return evaluate(llm, ids, ckpt.config.max_seq_len, ref)


def test_widened_heads_compute_the_same_function(shared_models, stories):
    tok = shared_models / "tok512.bin"
    wide = widened_heads(stories, 32)
    ids = LLM(stories, tokenizer=tok).tokenizer.encode(STORY.read_text(), bos=True)[:100]
    a = LLM(stories, tokenizer=tok, threads=2).logits(ids)
    b = LLM(wide, tokenizer=tok, threads=2).logits(ids)
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-4
    assert (a.argmax(-1) == b.argmax(-1)).all()


@pytest.mark.parametrize("kv_type,model,floor", [
    ("f16", "stories260K", 0.99), ("bf16", "stories260K", 0.99),
    ("f16", "stories260K-hd32", 0.99), ("bf16", "stories260K-hd32", 0.99), ("q8_0", "stories260K-hd32", 0.97),
])
def test_top1_agreement_with_the_f32_cache_over_story(shared_models, stories, kv_type, model, floor, capsys):
    ckpt = stories if model == "stories260K" else widened_heads(stories, 32)
    r = top1_agreement(ckpt, shared_models / "tok512.bin", kv_type)
    with capsys.disabled():
        print(f"\n  {model} kv {kv_type}: top-1 agreement with f32 {100 * r['top1_agreement']:.2f}% over "
              f"{r['tokens']} tokens, mean KL {r['mean_kl']:.2e}")
    assert r["top1_agreement"] >= floor


# ----------------------------------------------------------------------------- commands

def run_cli(*argv):
    return subprocess.run([sys.executable, "-c", "import sys; from xllm.cli import main; sys.exit(main())", *argv],
                          capture_output=True, text=True, timeout=300)


def test_cli_kv_type(shared_models):
    model, tok = str(shared_models / "stories260K.bin"), str(shared_models / "tok512.bin")
    r = run_cli("--weight", model, "--token", tok, "--prompt", KNOWN_PROMPT, "--steps", "64",
                "--temperature", "0", "--kv-type", "f16")
    assert r.returncode == 0, r.stderr
    r = run_cli("--weight", model, "--token", tok, "--prompt", "x", "--kv-type", "q4")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--kv-type" in r.stderr and "auto, f32, f16, bf16, q8_0" in r.stderr.replace("'", "")
    r = run_cli("--weight", model, "--token", tok, "--prompt", "x", "--kv-type", "q8_0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "head_dim is 8" in r.stderr


@pytest.mark.parametrize("module,main", [("xllm.benchmark", "main"), ("xllm.benchmark", "batch_main"),
                                         ("xllm.perplexity", "main"), ("xllm.serve.cli", "main")])
def test_every_command_has_kv_type(module, main, capsys):
    import importlib
    fn = getattr(importlib.import_module(module), main)
    assert fn(["--weight", "W", "--file", "F", "--kv-type", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'int8'" in err and "q8_0" in err


def test_benchmark_memory_table_shows_the_type(tmp_path, capsys):
    from xllm import benchmark as bm
    path = tmp_path / "m.gguf"          # head_dim 32, kv_dim 32, 2 layers, a synthetic vocabulary
    bm.make_random_model(str(path), dict(dim=64, hidden_dim=96, n_layers=2, n_heads=2, n_kv_heads=1,
                                         vocab_size=300, max_seq_len=64), "q8_0")
    quick = ["--bandwidth-mb", "8", "--probe-iters", "200000", "--threads", "1", "--repeats", "1",
             "--prompt-tokens", "40", "--gen-tokens", "3"]
    assert bm.main(["--weight", str(path), "--kv-type", "q8_0"] + quick) == 0
    assert "KV cache per token (q8_0)" in capsys.readouterr().out
    for kv_type, per_token in (("q8_0", 2 * 2 * 34), ("auto", 2 * 2 * 32 * 2)):
        assert bm.main(["--weight", str(path), "--kv-type", kv_type, "--json"] + quick) == 0
        mem = json.loads(capsys.readouterr().out)["memory"]
        assert mem["kv_type"] == ("f16" if kv_type == "auto" else kv_type)
        assert mem["kv_bytes_per_token"] == per_token


def test_engine_and_perplexity_take_the_type(shared_models, capsys):
    from xllm.engine import Engine
    from xllm import perplexity
    model, tok = str(shared_models / "stories260K.bin"), str(shared_models / "tok512.bin")
    assert Engine.load(model, tokenizer=tok, threads=1, kv_type="bf16").model.kv.kv_type == "bf16"
    assert perplexity.main(["--weight", model, "--token", tok, "--file", str(STORY), "--reference", model,
                            "--kv-type", "f16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["top1_agreement"] == 1.0 and 0 < r["mean_kl"] < 1e-4
