"""K-quant tensor types (Q2_K..Q6_K): dequantization against gguf.quants bit for bit, the
Q8_K activation quantizer against a numpy port of ggml's quantize_row_q8_K_ref, each kernel
against a float64 dot at odd sizes on every SIMD level, and whole models from the
llama-quantize fixtures against tests/reference.py."""
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

from model_factory import dequantized64
from reference import forward
from xllm import LLM, _kernels
from xllm.formats import open_checkpoint

KQUANT = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "kquant"
K_TYPES = {"Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
BLOCK_BYTES = {10: 84, 11: 110, 12: 144, 13: 176, 14: 210}
# byte offsets of the fp16 super-scales in each block: (d, dmin or None)
SUPER_SCALES = {10: (80, 82), 11: (108, None), 12: (0, 2), 13: (0, 2), 14: (208, None)}
K_FILES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M"]
U = 2.0 ** -24                                   # float32 unit roundoff


def fixture(name):
    path = KQUANT / f"tiny256-{name}.gguf"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests need ../shared/fixtures/kquant beside the checkout")
    return path


def levels():
    out = ["scalar"]
    if _kernels.has_avx2():
        out.append("avx2")
    if _kernels.has_avx512():
        out.append("avx512")
    if _kernels.has_amx():        # K-quant AMX tiles from AMX_MIN_TOKENS (16 for Q3_K/Q6_K) tokens
        out.append("amx")
    return out


def at_level(level, fn):
    before = _kernels.simd_level()
    try:
        assert _kernels.set_simd_level(level) == level
        return fn()
    finally:
        _kernels.set_simd_level(before)


# ---------------------------------------------------------------------------- dequantization

@pytest.mark.parametrize("name", K_FILES)
def test_dequantize_equals_gguf_bit_for_bit(name):
    """Every tensor of every K fixture: the kernels' row dequantizer (the embedding lookup)
    gives gguf.quants' float32 values, bit for bit."""
    seen = set()
    for t in GGUFReader(str(fixture(name))).tensors:
        if len(t.shape) != 2:
            continue
        cols, rows = int(t.shape[0]), int(t.shape[1])
        data = np.ascontiguousarray(t.data)
        oracle = gguf_dequantize(data, t.tensor_type).reshape(rows, cols)
        got = _kernels.dequantize(data, int(t.tensor_type), rows, cols)
        assert np.array_equal(got.view(np.uint32), oracle.view(np.uint32)), t.name
        seen.add(int(t.tensor_type))
    assert seen & set(K_TYPES.values()), f"{name}: no K-quant tensor"


def random_kquant(ggml_type, rows, cols, seed):
    """Random bytes in every field (all scale and value patterns), finite fp16 super-scales."""
    rng = np.random.default_rng(seed)
    nb = cols // 256
    raw = rng.integers(0, 256, (rows, nb, BLOCK_BYTES[ggml_type]), dtype=np.uint8)
    for off in SUPER_SCALES[ggml_type]:
        if off is not None:
            h = (rng.uniform(0.2, 1.0, (rows, nb)) * 1e-2).astype(np.float16)
            raw[:, :, off:off + 2] = h.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("ggml_type", list(K_TYPES.values()))
def test_dequantize_random_blocks_equals_gguf(ggml_type):
    data = random_kquant(ggml_type, 9, 768, seed=ggml_type)
    oracle = gguf_dequantize(data, GGMLQuantizationType(ggml_type)).reshape(9, 768)
    got = _kernels.dequantize(data, ggml_type, 9, 768)
    assert np.array_equal(got.view(np.uint32), oracle.view(np.uint32))


# ---------------------------------------------------------------------------- activations

def q8k_reference(x):
    """numpy port of ggml's quantize_row_q8_K_ref: float32 rows (multiple of 256) ->
    (qs int8 (rows, cols), bsums int16 (rows, cols/16), d float32 (rows, cols/256))."""
    x = np.asarray(x, dtype=np.float32)
    rows, cols = x.shape
    blk = x.reshape(-1, 256)
    j = np.argmax(np.abs(blk), axis=1)             # the first |max|, as the strict '>' scan finds
    mx = blk[np.arange(len(blk)), j]
    zero = mx == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127.0) / np.where(zero, np.float32(1), mx))
        d = np.where(zero, np.float32(0), np.float32(1.0) / np.where(zero, np.float32(1), iscale))
    v = np.rint(iscale[:, None].astype(np.float32) * blk)      # nearest_int: round half to even
    qs = np.minimum(v, 127).astype(np.int8)
    bsums = qs.reshape(-1, 16, 16).astype(np.int32).sum(-1).astype(np.int16)
    return qs.reshape(rows, cols), bsums.reshape(rows, cols // 16), d.astype(np.float32).reshape(rows, cols // 256)


def test_activation_quantizer_matches_ggml_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 768)).astype(np.float32) * np.float32(3.0)
    x[1, 256:512] = 0.0                                   # an all-zero block
    x[2, :256] = np.round(x[2, :256] * 4) / 4              # ties after scaling
    x[3, 10] = -50.0                                       # a negative extreme
    x[4] = np.float32(1e-30) * x[4]                        # tiny values
    qs, bsums, d = _kernels.quantize_q8k(x)
    rq, rb, rd = q8k_reference(x)
    assert np.array_equal(qs, rq)
    assert np.array_equal(bsums, rb)
    assert np.array_equal(d.view(np.uint32), rd.view(np.uint32))


def dequantized_activations(x):
    qs, _, d = _kernels.quantize_q8k(x)
    T, cols = x.shape
    return (qs.reshape(T, cols // 256, 256).astype(np.float64) * d[:, :, None]).reshape(T, cols)


# ---------------------------------------------------------------------------- kernels

def split_parts(data, ggml_type, rows, cols):
    """|d sc q| and |dmin mn| parts of the weights (through gguf.quants with dmin or d zeroed):
    the magnitudes the kernel's block sums are made of, for a sound error bound."""
    qt = GGMLQuantizationType(ggml_type)
    d_off, m_off = SUPER_SCALES[ggml_type]
    if m_off is None:
        return [np.abs(gguf_dequantize(data, qt).reshape(rows, cols).astype(np.float64))]
    parts = []
    for zero in (m_off, d_off):
        z = data.reshape(rows, cols // 256, -1).copy()
        z[:, :, zero:zero + 2] = 0
        parts.append(np.abs(gguf_dequantize(z.reshape(rows, -1), qt).reshape(rows, cols).astype(np.float64)))
    return parts


# the value bytes of each type's block (qs; with qh / hmask): all bits set is the largest value
VALUE_BYTES = {10: (16, 80), 11: (0, 96), 12: (16, 144), 13: (16, 176), 14: (0, 192)}


@pytest.mark.parametrize("ggml_type", list(K_TYPES.values()))
def test_kernel_largest_values_and_activations(ggml_type):
    """Every value at its largest (all value bits set) times activations of one sign at
    |127|: the int16 partial sums the AVX2 kernels keep (XLLM_KP_RUN16) at their bound.
    Every level gives the scalar path's bits and the float64 dot within its rounding."""
    rows, cols = 19, 1024
    data = random_kquant(ggml_type, rows, cols, seed=ggml_type).reshape(rows, cols // 256, -1)
    lo, hi = VALUE_BYTES[ggml_type]
    data[:, :, lo:hi] = 0xFF
    data = data.reshape(rows, -1)
    w64 = gguf_dequantize(data, GGMLQuantizationType(ggml_type)).reshape(rows, cols).astype(np.float64)
    parts = split_parts(data, ggml_type, rows, cols)
    x = np.stack([np.ones(cols), -np.ones(cols), np.r_[np.ones(cols // 2), -np.ones(cols // 2)]]).astype(np.float32)
    qs, _, _ = _kernels.quantize_q8k(x)
    assert np.abs(qs.astype(np.int32)).min() == 127
    xq = dequantized_activations(x)
    expected = xq @ w64.T
    bound = sum(np.abs(xq) @ p.T for p in parts) * U * (cols // 256 + 4) * 2
    first = at_level("scalar", lambda: _kernels.matmul(data, ggml_type, x))
    for level in levels():
        for T in (1, 3):
            y = at_level(level, lambda: _kernels.matmul(data, ggml_type, x[:T]))
            assert (np.abs(y.astype(np.float64) - expected[:T]) <= bound[:T]).all(), (level, T)
            assert np.array_equal(y, first[:T]), (level, T)

@pytest.mark.parametrize("ggml_type", list(K_TYPES.values()))
@pytest.mark.parametrize("rows,cols", [(1, 256), (7, 768), (37, 512), (5, 2560)])   # 2560: k-chunks of 8 blocks
def test_kernel_matches_float64_dot(ggml_type, rows, cols):
    """y = x W^T for 1, 2, 3, 5 and 17 tokens on every SIMD level: within the float32
    rounding of the block sums of the float64 dot of gguf's dequantized weights with the
    dequantized activations; all levels, thread counts and token counts give the same bits."""
    data = random_kquant(ggml_type, rows, cols, seed=rows * 31 + ggml_type)
    w64 = gguf_dequantize(data, GGMLQuantizationType(ggml_type)).reshape(rows, cols).astype(np.float64)
    parts = split_parts(data, ggml_type, rows, cols)
    x = np.random.default_rng(rows + cols).standard_normal((17, cols)).astype(np.float32)
    xq = dequantized_activations(x)
    expected = xq @ w64.T
    bound = sum(np.abs(xq) @ p.T for p in parts) * U * (cols // 256 + 4) * 2
    first = at_level("scalar", lambda: _kernels.matmul(data, ggml_type, x))
    before = _kernels.gemv_panels()
    try:
        for level in levels():
            for T in (1, 2, 3, 5, 17):
                for threads in (1, 2):
                    # one token: also the decode path that streams the panels side by side
                    for panels in ((1, 4) if T == 1 else (before,)):
                        _kernels.set_gemv_panels(panels)
                        y = at_level(level, lambda: _kernels.matmul(data, ggml_type, x[:T], threads=threads))
                        err = np.abs(y.astype(np.float64) - expected[:T])
                        assert (err <= bound[:T]).all(), (level, T, float((err - bound[:T]).max()))
                        assert np.array_equal(y, first[:T]), (level, T, threads, panels)
    finally:
        _kernels.set_gemv_panels(before)


def test_kernel_rejects_bad_rows():
    with pytest.raises(ValueError, match="multiple of 256"):
        _kernels.matmul(np.zeros((2, 144), np.uint8), 12, np.zeros((1, 128), np.float32))
    with pytest.raises(ValueError, match="bytes"):
        _kernels.matmul(np.zeros((2, 140), np.uint8), 12, np.zeros((1, 256), np.float32))


# ---------------------------------------------------------------------------- whole models

def ids(n, seed):
    return [int(i) for i in np.random.default_rng(seed).integers(0, 512, n)]


# |x * iscale - (n + 1/2)| below which float32 noise may round either way: the engine's
# matmul inputs differ from the float64 ones by ~1e-7 relative, x * iscale by ~127 times that
TIE_MARGIN = 5e-5


def near_tie_rows(x32, scaled):
    """Rows of a matmul input with a value whose scaled form is within TIE_MARGIN of a
    rounding tie (scaled = x * the quantizer's 1/scale, in float64)."""
    frac = np.abs(scaled - np.floor(scaled) - 0.5)
    return np.unique(np.argwhere(frac.reshape(len(x32), -1) < TIE_MARGIN)[:, 0])


class RoundedInput:
    """W^T for tests/reference.py whose left operand is first rounded the way the engine
    quantizes a matmul's activations for this weight type (Q8_K for K-quants, Q8_0 for
    Q8_0/Q4_0, none for float): `h @ RoundedInput(t).T` is float64 arithmetic on exactly
    the values the kernels multiply.  Rows (token positions) holding a value near a rounding
    tie are collected in `ties`."""
    __array_ufunc__ = None                     # make numpy defer `h @ self` to __rmatmul__

    def __init__(self, tensor, ties):
        self.w = tensor.to_float32().astype(np.float64)
        self.ggml_type = tensor.ggml_type
        self.ties = ties

    @property
    def T(self):
        return self

    def __rmatmul__(self, h):
        x = np.asarray(h, dtype=np.float32)
        if self.ggml_type in K_TYPES.values():
            qs, _, d = q8k_reference(x)
            blk = x.reshape(-1, 256).astype(np.float64)
            mx = blk[np.arange(len(blk)), np.argmax(np.abs(blk), axis=1)]
            with np.errstate(divide="ignore", invalid="ignore"):
                self.ties.update(near_tie_rows(x, np.nan_to_num(blk * (-127.0 / mx)[:, None])))
            x = (qs.reshape(len(x), -1, 256).astype(np.float64) * d[:, :, None]).reshape(x.shape)
        elif self.ggml_type in (2, 8):
            qt = GGMLQuantizationType.Q8_0
            blk = x.reshape(-1, 32).astype(np.float64)
            amax = np.abs(blk).max(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                self.ties.update(near_tie_rows(x, np.nan_to_num(blk * 127.0 / amax)))
            x = gguf_dequantize(gguf_quantize(x, qt), qt).astype(np.float64).reshape(x.shape)
        return x.astype(np.float64) @ self.w.T


class RoundedModel:
    """tests/reference.py on a checkpoint's dequantized weights with rounded matmul inputs
    (RoundedInput); the weights are dequantized once."""

    def __init__(self, ckpt):
        self.cfg = ckpt.config
        self.ties = set()
        self.w = {n: (RoundedInput(t, self.ties) if len(t.shape) == 2 and n != "token_embd.weight"
                      else t.to_float32().astype(np.float64)) for n, t in ckpt.tensors.items()}

    def __call__(self, tokens):
        """(logits, first position whose computation met a near-tie, or len(tokens))."""
        self.ties.clear()
        logits = forward(self.cfg, self.w, tokens)
        return logits, min(self.ties, default=len(tokens))


def check_against_references(path, tokens, tmp):
    """The engine's logits against the float64 reference on the file's dequantized weights.

    The difference has two sources: float32 arithmetic (the F32 fixture's error, ~1e-6 of
    the logit range) and the 8-bit rounding of every matmul's input, which the reference
    run on rounded inputs (RoundedModel) reproduces value for value, except where an
    input sits on a rounding tie within float32 noise: the engine may round it the other
    way, and one such flip moves every later rounding decision, so the two runs part by as
    much as rounding moves the logits at all.  Causal attention keeps positions before the
    first near-tie unaffected.  So: (a) positions before the first near-tie (TIE_MARGIN)
    equal the rounded reference within 2e-5 of the logit range (float32 noise; observed
    1e-7..2e-6); (b) every position stays within twice the distance that rounding alone
    puts between the rounded and the exact reference, with the same top-1 token at >= 90%
    of the positions.  (a) runs on the file and on the file with the embedding table taken
    from the F32 fixture (its rows are off the quantization grid, so ties are rarer), and
    must cover at least 8 positions (over the sequence and 7 short ones)."""
    ckpt = open_checkpoint(path)
    got = LLM(path, threads=2, kv_type="f32").logits(tokens).astype(np.float64)   # exact keys/values, as the reference
    exact = forward(ckpt.config, dequantized64(ckpt.tensors), tokens)
    rounded, clean = RoundedModel(ckpt)(tokens)
    scale = np.abs(exact).max()
    rounding = np.abs(rounded - exact).max() / scale
    err = np.abs(got - exact).max() / scale
    assert err < 2 * rounding + 2e-5, f"{path}: {err:.2e} from the reference (activation rounding {rounding:.2e})"
    assert rounding < 5e-2, f"{path}: 8-bit activations move the logits by {rounding:.2e}"
    assert (got.argmax(-1) == exact.argmax(-1)).mean() >= 0.9
    covered = clean
    if clean:
        tight = np.abs(got[:clean] - rounded[:clean]).max() / scale
        assert tight < 2e-5, f"{path}: {tight:.2e} from the activation-rounded reference"

    plain = write_mixed(Path(tmp) / (Path(path).stem + "-f32-embd.gguf"), path,
                        {"token_embd.weight": fixture("f32")})
    ckpt = open_checkpoint(plain)
    llm = LLM(plain, threads=2, kv_type="f32")
    reference = RoundedModel(ckpt)
    for seed in range(8):                       # short sequences: each tight up to its first tie
        seq = tokens if seed == 0 else ids(6, seed=100 + seed)
        got = llm.logits(seq).astype(np.float64)
        rounded, clean = reference(seq)
        covered += clean
        if clean:
            tight = np.abs(got[:clean] - rounded[:clean]).max() / scale
            assert tight < 2e-5, f"{path} with F32 embeddings: {tight:.2e} from the activation-rounded reference"
    print(f"{Path(path).name}: {err:.2e} from the exact reference (rounding {rounding:.2e}), "
          f"{covered} positions tight")
    assert covered >= 8, f"{path}: only {covered} positions before a rounding tie; choose other tokens"


def test_f32_fixture_error_scale():
    """The float part of the engine's error on this model (what 1e-4 above is measured against)."""
    ckpt = open_checkpoint(fixture("f32"))
    tokens = ids(24, seed=2)
    got = LLM(fixture("f32"), threads=2).logits(tokens)
    ref = forward(ckpt.config, dequantized64(ckpt.tensors), tokens)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("name", K_FILES)
def test_fixture_model_tracks_reference(name, simd, tmp_path):
    """The whole model on llama-quantize's file against the float64 reference on its
    dequantized weights (see check_against_references)."""
    check_against_references(fixture(name), ids(24, seed=2), tmp_path)


@pytest.mark.parametrize("name", ["Q4_K_M", "Q3_K"])
def test_fixture_invariants(name):
    """1 thread == 2 threads and incremental decode == one prefill, bit for bit."""
    tokens = ids(20, seed=3)
    llm = LLM(fixture(name), threads=2)
    two = llm.logits(tokens)
    llm.model.set_threads(1)
    assert np.array_equal(llm.logits(tokens), two)
    model = llm.model
    from xllm.model import Chunk
    assert model.kv.reserve(0, len(tokens))
    step = [model.step([Chunk(0, tokens[i:i + 1], i, "all")])[0] for i in range(len(tokens))]
    model.kv.release(0)
    assert np.array_equal(np.concatenate(step), two)


def test_alone_equals_in_batch_kquant():
    from xllm import SamplingParams
    prompts = [ids(n, seed=20 + n) for n in (1, 5, 9, 3)]
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    alone_llm = LLM(fixture("Q4_K_M"), threads=2, max_batch_tokens=16, max_seqs=1)
    alone = [alone_llm.generate([p], greedy)[0].token_ids for p in prompts]
    llm = LLM(fixture("Q4_K_M"), threads=2, max_batch_tokens=16, max_seqs=4)
    assert [o.token_ids for o in llm.generate(prompts, greedy)] == alone


def write_mixed(path, base, replacements):
    """A copy of GGUF file `base` with some tensors taken from other files (raw bytes kept)."""
    src = GGUFReader(str(base))
    others = {n: {t.name: t for t in GGUFReader(str(n)).tensors} for n in set(replacements.values())}
    w = GGUFWriter(str(path), "llama")
    for field in src.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == 9:   # array
            sub = field.types[-1]
            vals = [field.parts[i].tobytes().decode() if sub == 8 else field.parts[i].tolist()[0]
                    for i in field.data]
            w.add_array(field.name, vals)
        elif vtype == 8:
            w.add_string(field.name, field.parts[field.data[0]].tobytes().decode())
        else:
            from gguf import GGUFValueType
            w.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], GGUFValueType(vtype))
    for t in src.tensors:
        t = others[replacements[t.name]][t.name] if t.name in replacements else t
        shape = [int(s) for s in reversed(t.shape)]
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w.add_tensor(t.name, np.asarray(t.data).reshape(shape))
        else:
            w.add_tensor(t.name, np.asarray(t.data), raw_shape=shape[:-1] + [int(np.asarray(t.data).shape[-1])],
                         raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_q4_0_file_with_q6_k_classifier_runs(tmp_path):
    """llama-quantize's Q4_0 preset keeps the classifier in Q6_K: such a file runs."""
    path = write_mixed(tmp_path / "q4_0-q6k.gguf", fixture("Q4_0"), {"output.weight": fixture("Q4_K_M")})
    ckpt = open_checkpoint(path)
    assert ckpt.tensors["output.weight"].ggml_type == K_TYPES["Q6_K"]
    assert ckpt.tensors["blk.0.attn_q.weight"].ggml_type == 2
    check_against_references(path, ids(16, seed=4), tmp_path)


def test_group_mixing_kquant_q8_0_and_f32(tmp_path, simd):
    """One fused q/k/v (and gate/up) matmul over Q4_K, Q8_0 and F32 matrices: each activation
    format prepared once, every matrix right."""
    path = write_mixed(tmp_path / "mixed.gguf", fixture("Q4_K_M"), {
        "blk.0.attn_k.weight": fixture("Q8_0"), "blk.0.attn_v.weight": fixture("f32"),
        "blk.1.ffn_up.weight": fixture("Q8_0"), "blk.1.attn_q.weight": fixture("Q4_0")})
    ckpt = open_checkpoint(path)
    types = {ckpt.tensors[n].ggml_type for n in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight")}
    assert types == {K_TYPES["Q4_K"], 8, 0}
    check_against_references(path, ids(12, seed=5), tmp_path)


# regions of a file block in a 16-row panel block: (file offset, length, unit, panel offset)
PANEL_REGIONS = {10: [(16, 64, 4, 0), (0, 16, 2, 1024), (80, 2, 2, 1280), (82, 2, 2, 1312)],
                 11: [(0, 96, 4, 0), (96, 12, 4, 1536), (108, 2, 2, 1728)],
                 12: [(16, 128, 4, 0), (4, 12, 4, 2048), (0, 2, 2, 2240), (2, 2, 2, 2272)],
                 13: [(16, 160, 4, 0), (4, 12, 4, 2560), (0, 2, 2, 2752), (2, 2, 2, 2784)],
                 14: [(0, 192, 4, 0), (192, 16, 2, 3072), (208, 2, 2, 3328)]}
# Q6_K's value units in the order its one-token kernel first reads them (ql units 0-31, qh
# 32-47): the panel holds unit VALUE_ORDER[14][i] in slot i.  The other types keep file order.
VALUE_ORDER = {14: [0, 32, 1, 33, 2, 34, 3, 35, 8, 9, 10, 11, 16, 40, 17, 41, 18, 42, 19, 43, 24, 25, 26, 27,
                    4, 36, 5, 37, 6, 38, 7, 39, 12, 13, 14, 15, 20, 44, 21, 45, 22, 46, 23, 47, 28, 29, 30, 31]}


@pytest.mark.parametrize("ggml_type", list(K_TYPES.values()))
@pytest.mark.parametrize("rows", [1, 16, 21])
def test_pack_kquant_panel_layout(ggml_type, rows):
    """16-row panels, block by block: each field of the 16 file blocks interleaved across the
    rows in its unit (4 or 2 bytes; Q6_K's value units in VALUE_ORDER), the file's bytes
    exactly; missing rows are zero."""
    cols, bb = 512, BLOCK_BYTES[ggml_type]
    nb, n_panels = cols // 256, -(-rows // 16)
    data = random_kquant(ggml_type, rows, cols, seed=rows)
    packed = _kernels.pack_quantized(data, ggml_type, rows, cols)
    assert packed.nbytes == n_panels * 16 * data.shape[1] and packed.ctypes.data % 64 == 0
    blocks = np.zeros((n_panels * 16, nb, bb), np.uint8)
    blocks[:rows] = data.reshape(rows, nb, bb)
    panel = blocks.reshape(n_panels, 16, nb, bb).transpose(0, 2, 1, 3)        # (panel, block, row, bytes)
    expected = np.zeros((n_panels, nb, 16 * bb), np.uint8)
    for k, (foff, length, unit, poff) in enumerate(PANEL_REGIONS[ggml_type]):
        field = panel[..., foff:foff + length].reshape(n_panels, nb, 16, length // unit, unit)
        units = field.transpose(0, 1, 3, 2, 4)                               # (panel, block, unit, row, bytes)
        if k == 0 and ggml_type in VALUE_ORDER:
            assert sorted(VALUE_ORDER[ggml_type]) == list(range(length // unit))
            units = units[:, :, VALUE_ORDER[ggml_type]]
        expected[..., poff:poff + 16 * length] = units.reshape(n_panels, nb, -1)
    assert np.array_equal(packed, expected.reshape(-1))
