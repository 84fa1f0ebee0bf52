"""Q4_1, Q5_0, Q5_1, IQ4_NL and BF16: dequantization bit for bit against gguf.quants, each
kernel against a float64 numpy dot on every SIMD level, the levels bit-identical, and whole
models from llama-quantize's fixture files against tests/reference.py."""
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize, quantize

from model_factory import dequantized64, random_weights
from reference import forward
from xllm import LLM, SamplingParams
from xllm import _kernels as K
from xllm.config import ModelConfig
from xllm.formats import Checkpoint, Tensor, open_checkpoint
from xllm.model import Chunk, Model

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "kquant"
QTYPES = [GT.Q4_1, GT.Q5_0, GT.Q5_1, GT.IQ4_NL]
TYPES = QTYPES + [GT.BF16]
BLOCK_BYTES = {GT.Q4_1: 20, GT.Q5_0: 22, GT.Q5_1: 24, GT.IQ4_NL: 18}


def fixture(name):
    path = FIXTURES / f"tiny256-{name}.gguf"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests need ../shared/fixtures/kquant beside the checkout")
    return path


def random_blocks(qtype, rows, cols, rng):
    """Random bytes of `qtype` with finite fp16 scales and minimums of realistic size."""
    nb = cols // 32
    raw = rng.integers(0, 256, (rows, nb, BLOCK_BYTES[qtype]), dtype=np.uint8)
    d = (rng.standard_normal((rows, nb)) * 0.01).astype(np.float16)
    raw[..., 0:2] = d.view(np.uint8).reshape(rows, nb, 2)
    if qtype in (GT.Q4_1, GT.Q5_1):
        m = (rng.standard_normal((rows, nb)) * 0.1).astype(np.float16)
        raw[..., 2:4] = m.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * BLOCK_BYTES[qtype])


def weights(qtype, rows, cols, seed):
    """Tensor bytes: gguf.quants' quantization where it has one, else random blocks (IQ4_NL)."""
    rng = np.random.default_rng(seed)
    if qtype == GT.IQ4_NL:
        return random_blocks(qtype, rows, cols, rng)
    return quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("name", ["Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "BF16"])
def test_dequantize_fixture_tensors_bit_exact(name):
    """Every matrix of llama-quantize's file dequantizes to gguf.quants' floats, bit for bit."""
    ckpt = open_checkpoint(fixture(name))
    n = 0
    for tname, t in ckpt.tensors.items():
        if len(t.shape) != 2:
            continue
        assert t.ggml_type == int(GT[name]), tname
        rows, cols = t.shape
        ref = dequantize(np.asarray(t.data), GT(t.ggml_type)).reshape(rows, cols)
        assert np.array_equal(bits(K.dequantize(t.data, t.ggml_type, rows, cols)), bits(ref)), tname
        n += 1
    assert n == 16


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_random_blocks_bit_exact(qtype):
    """Arbitrary nibbles, fifth bits, scales and minimums (incl. subnormal fp16 scales)."""
    rng = np.random.default_rng(int(qtype))
    data = random_blocks(qtype, 9, 96, rng)
    data[0, 0:2] = np.array([1], np.uint16).view(np.uint8)       # smallest fp16 subnormal scale
    ref = dequantize(data, qtype)
    assert np.array_equal(bits(K.dequantize(data, int(qtype), 9, 96)), bits(ref))


def test_dequantize_bf16_bit_exact():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000),
                        [0.0, -0.0, np.inf, -np.inf, 1e-40, 3.4e38]]).astype(np.float32)
    data = quantize(x.reshape(1, -1), GT.BF16)
    ref = dequantize(data, GT.BF16)
    assert np.array_equal(bits(K.dequantize(data, int(GT.BF16), 1, x.size)), bits(ref))


def matmul_reference(qtype, data, x):
    """float64 dot of gguf-dequantized weights with the Q8_0-rounded activations (quantized
    types) or the float32 activations (BF16)."""
    w64 = dequantize(data, qtype).astype(np.float64)
    if qtype == GT.BF16:
        return x.astype(np.float64) @ w64.T
    return dequantize(quantize(x, GT.Q8_0), GT.Q8_0).astype(np.float64) @ w64.T


def rel_err(a, ref):
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows,cols", [(1, 32), (7, 96), (33, 160), (100, 64), (13, 352)])
@pytest.mark.parametrize("T", [1, 2, 3, 5, 13])
def test_matmul_matches_numpy(simd, qtype, rows, cols, T):
    data = weights(qtype, rows, cols, rows * 31 + cols + T)
    x = np.random.default_rng(T).standard_normal((T, cols)).astype(np.float32)
    ref = matmul_reference(qtype, data, x)
    for threads in (1, 2):
        y = K.matmul(data, int(qtype), x, threads)
        assert y.shape == (T, rows) and y.dtype == np.float32
        assert rel_err(y, ref) < 2e-6


@pytest.mark.parametrize("qtype", QTYPES)
def test_simd_levels_bit_identical(qtype):
    """Exact int32 block sums and one float op sequence per block: every level this CPU has
    gives the same bits, one token and several."""
    data = weights(qtype, 45, 288, 3)
    x = np.random.default_rng(4).standard_normal((11, 288)).astype(np.float32)
    before = K.simd_level()
    try:
        levels = [lv for lv in ("scalar", "avx2", "avx512") if K.set_simd_level(lv) == lv]
        outs = []
        for lv in levels:
            K.set_simd_level(lv)
            outs.append((K.matmul(data, int(qtype), x, 2), K.matmul(data, int(qtype), x[:1], 1)))
    finally:
        K.set_simd_level(before)
    for lv, (many, one) in zip(levels[1:], outs[1:]):
        assert np.array_equal(many, outs[0][0]), lv
        assert np.array_equal(one, outs[0][1]), lv


@pytest.mark.parametrize("rows,cols", [(1, 7), (7, 33), (33, 100), (29, 300)])
@pytest.mark.parametrize("T", [1, 4, 7])
def test_matmul_bf16_odd_widths(simd, rows, cols, T):
    """BF16 rows of any length (no blocks): the float tiles' 8-value steps and the tail."""
    rng = np.random.default_rng(rows + cols + T)
    data = quantize(rng.standard_normal((rows, cols)).astype(np.float32), GT.BF16)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    ref = matmul_reference(GT.BF16, data, x)
    for threads in (1, 2):
        assert rel_err(K.matmul(data, int(GT.BF16), x, threads), ref) < 2e-6


@pytest.mark.parametrize("T", [1, 6])
def test_bf16_is_the_f32_matmul_of_its_widened_weights(simd, T):
    """BF16 widens exactly, so on each level it gives the bits of F32 weights of the same values."""
    data = weights(GT.BF16, 29, 263, 10)
    x = np.random.default_rng(11).standard_normal((T, 263)).astype(np.float32)
    w32 = dequantize(data, GT.BF16)
    assert np.array_equal(K.matmul(data, int(GT.BF16), x, 2), K.matmul(w32, 0, x, 2))


@pytest.mark.parametrize("qtype", TYPES)
def test_matmul_batch_equals_alone_bitwise(simd, qtype):
    data = weights(qtype, 61, 288, 6)
    x = np.random.default_rng(7).standard_normal((11, 288)).astype(np.float32)
    batch = K.matmul(data, int(qtype), x, 2)
    alone = np.stack([K.matmul(data, int(qtype), x[i:i + 1], 1)[0] for i in range(len(x))])
    assert np.array_equal(batch, alone)


@pytest.mark.parametrize("qtype", QTYPES)
def test_panels_are_compact(qtype):
    """A panel holds exactly the bytes of its 8 file rows: a matmul streams no more than the file."""
    data = weights(qtype, 21, 128, 8)
    packed = K.pack(data, int(qtype))
    assert packed.data.nbytes == 24 * data.shape[1]          # 3 panels of 8 rows
    x = np.random.default_rng(9).standard_normal((3, 128)).astype(np.float32)
    assert np.array_equal(K.matmul(packed, int(qtype), x), K.matmul(data, int(qtype), x))


def reorder_high(qh):
    """simd_legacy.h's fifth-bit order: byte i, bit c <- value 4c + i; bit 4 + c <- value 16 + 4c + i."""
    out = np.zeros_like(qh)
    for i in range(4):
        for c in range(4):
            out |= ((qh >> np.uint32(4 * c + i)) & np.uint32(1)) << np.uint32(8 * i + c)
            out |= ((qh >> np.uint32(16 + 4 * c + i)) & np.uint32(1)) << np.uint32(8 * i + 4 + c)
    return out


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("rows", [1, 8, 13])
def test_pack_layout(qtype, rows):
    """Panel blocks of 8 rows: d[8], m[8] (Q4_1, Q5_1), reordered fifth bits h[8] (Q5_0, Q5_1),
    then the nibbles as in Q4_0's panels; missing rows are all zero."""
    cols, bb = 96, BLOCK_BYTES[qtype]
    nb, n_panels = cols // 32, -(-rows // 8)
    data = weights(qtype, rows, cols, rows)
    packed = K.pack_quantized(data, int(qtype), rows, cols)
    blocks = np.zeros((n_panels * 8, nb, bb), np.uint8)
    blocks[:rows] = data.reshape(rows, nb, bb)
    panel = blocks.reshape(n_panels, 8, nb, bb).transpose(0, 2, 1, 3)        # (panel, block, row, bytes)
    has_min, has_high = qtype in (GT.Q4_1, GT.Q5_1), qtype in (GT.Q5_0, GT.Q5_1)
    parts, off = [panel[..., 0:2].reshape(n_panels, nb, 16)], 2
    if has_min:
        parts.append(panel[..., 2:4].reshape(n_panels, nb, 16))
        off = 4
    if has_high:
        qh = np.ascontiguousarray(panel[..., off:off + 4]).view(np.uint32)
        parts.append(reorder_high(qh).view(np.uint8).reshape(n_panels, nb, 32))
        off += 4
    qs = panel[..., off:].reshape(n_panels, nb, 8, 4, 4).transpose(0, 1, 3, 2, 4)
    parts.append(qs.reshape(n_panels, nb, 128))
    assert np.array_equal(packed, np.concatenate(parts, axis=2).reshape(-1))


# ---------------------------------------------------------------------------- whole models

MODEL_FILES = ["Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "BF16"]
IDS = [1, 403, 407, 261, 378, 432, 383, 286, 17, 5, 300, 261, 99, 498, 2, 77, 311]


def all_logits(model, ids, chunk):
    assert model.kv.reserve(0, len(ids))
    out = [model.step([Chunk(0, ids[s:s + chunk], s, "all")])[0] for s in range(0, len(ids), chunk)]
    model.kv.release(0)
    return np.concatenate(out)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_fixture_model_matches_reference(simd, name):
    """llama-quantize's file against the float64 forward on its dequantized weights: the
    quantized types differ by the Q8_0 rounding of activations only (the fixtures' own Q8_0
    and Q4_0 files, on the kernels of those types, are off by 1.9e-2 and 2.4e-2 of the largest
    logit), BF16 by float32 rounding."""
    ckpt = open_checkpoint(fixture(name))
    ref = forward(ckpt.config, dequantized64(ckpt.tensors), IDS)
    model = Model(ckpt, threads=2, max_batch_tokens=32, kv_type="f32")   # exact keys/values, as the reference
    got = all_logits(model, IDS, 32)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < (1e-5 if name == "BF16" else 3e-2), err
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= (1.0 if name == "BF16" else 0.85)
    assert np.array_equal(all_logits(model, IDS, 1), got)         # incremental == recompute
    model.set_threads(1)
    assert np.array_equal(all_logits(model, IDS, 5), got)         # 1 thread == 2 threads


@pytest.mark.parametrize("name", MODEL_FILES)
def test_fixture_model_alone_equals_in_batch(name):
    llm = LLM(str(fixture(name)), threads=2, max_batch_tokens=16, max_seqs=4)
    prompts = [IDS[:n] for n in (1, 4, 9, 17)]
    params = SamplingParams(max_tokens=8, temperature=0.0, stop_at_eos=False)
    batched = [o.token_ids for o in llm.generate(prompts, params)]
    alone = [llm.generate([p], params)[0].token_ids for p in prompts]
    assert batched == alone


# ---------------------------------------------------------------------------- mixed types

MIXED_CFG = ModelConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512,
                        max_seq_len=48, norm_eps=1e-5, rope_theta=1e4, tied_embeddings=False)
MIX = [GT.Q4_1, GT.BF16, GT.Q5_0, GT.IQ4_NL, GT.F32, GT.Q5_1, GT.Q8_0, GT.F16, GT.Q4_0]


def quantize_iq4_nl(a):
    """Valid IQ4_NL blocks (gguf-py has no IQ4_NL quantizer): d = max|w| / 127, each value
    the nearest table entry of w / d."""
    rows, cols = a.shape
    blocks = a.reshape(rows, cols // 32, 32).astype(np.float32)
    d = (np.abs(blocks).max(-1) / 127).astype(np.float16)
    table = np.array(K_VALUES, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d[..., None] > 0, blocks / d[..., None].astype(np.float32), 0)
    idx = np.abs(ratio[..., None] - table).argmin(-1).astype(np.uint8)
    qs = idx[..., :16] | (idx[..., 16:] << 4)
    out = np.concatenate([d[..., None].view(np.uint8).reshape(rows, -1, 2), qs], axis=-1)
    return out.reshape(rows, -1)


K_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def mixed_checkpoint(seed=0):
    """Every matrix of the model in another type, norms F32: Q, K and V (and gate and up)
    share one fused matmul across float and quantized types."""
    tensors = {}
    matrices = 0
    for name, a in random_weights(MIXED_CFG, seed).items():
        if a.ndim == 1:
            tensors[name] = Tensor(name, int(GT.F32), a.shape, a)
            continue
        t = MIX[matrices % len(MIX)]
        matrices += 1
        if t == GT.F32:
            data = a
        elif t == GT.F16:
            data = a.astype(np.float16)
        elif t == GT.IQ4_NL:
            data = quantize_iq4_nl(a)
        else:
            data = quantize(a, t)
        tensors[name] = Tensor(name, int(t), a.shape, data)
    assert {t.ggml_type for t in tensors.values()} == {int(t) for t in MIX}
    return Checkpoint("<mixed>", MIXED_CFG, tensors, None, "memory")


def test_iq4_nl_test_quantizer_round_trips():
    a = np.random.default_rng(12).standard_normal((3, 64)).astype(np.float32)
    w = dequantize(quantize_iq4_nl(a), GT.IQ4_NL)
    assert np.abs(w - a).max() < 0.15 * np.abs(a).max()


def test_mixed_types_model(simd):
    ckpt = mixed_checkpoint()
    ids = list(np.random.default_rng(13).integers(0, 512, 30))
    ref = forward(MIXED_CFG, dequantized64(ckpt.tensors), ids)
    model = Model(ckpt, threads=2, max_batch_tokens=32)
    got = all_logits(model, ids, 32)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 1e-2, err                                          # measured 3.9e-3
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    assert np.array_equal(all_logits(model, ids, 1), got)
    model.set_threads(1)
    assert np.array_equal(all_logits(model, ids, 7), got)
