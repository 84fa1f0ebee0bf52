"""Quantizers of every type xllm-quant writes, against llama-quantize's own output.

Oracle: ../shared/fixtures/kquant/ (see its README): tiny256-f32.gguf and the same model
written by llama-quantize (llama.cpp 0c1e570, no importance matrix) in every type, pure and as
the Q4_K_M / Q5_K_M mixes.  Quantizing a matrix of the F32 file must give the fixture's bytes
exactly; where gguf.quants can quantize the type it must agree too; and gguf.quants'
dequantization of our bytes stays within the README's error table.
"""
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

import quant.reference as ref
from quant import kquants, legacy
from quant.ggml_math import HalfStepIndex, best_index, index_thresholds, nearest_int, seq_sum

KQUANT = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "kquant"
T = GGMLQuantizationType
PURE = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
        "BF16", "F16"]
GGUF_CAN_QUANTIZE = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "F16"}
# README section 4: max / rms abs error vs F32 over the 16 matrices of the pure file.
ERROR_TABLE = {"F16": (7.3e-5, 1.0e-5), "BF16": (4.9e-4, 8.3e-5), "Q8_0": (1.1e-3, 2.7e-4),
               "Q5_1": (6.1e-3, 1.9e-3), "Q5_0": (9.7e-3, 2.1e-3), "Q4_1": (1.2e-2, 3.9e-3),
               "Q4_0": (2.0e-2, 4.3e-3), "IQ4_NL": (1.5e-2, 3.8e-3), "Q6_K": (4.1e-3, 8.9e-4),
               "Q5_K": (7.2e-3, 1.8e-3), "Q4_K": (1.5e-2, 3.6e-3), "Q3_K": (3.6e-2, 7.6e-3),
               "Q2_K": (7.8e-2, 1.5e-2)}


def fixture(name: str) -> Path:
    path = KQUANT / f"tiny256-{name}.gguf"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests need ../shared/fixtures/kquant beside the checkout")
    return path


@pytest.fixture(scope="module")
def f32_tensors():
    return {t.name: np.array(t.data) for t in GGUFReader(fixture("f32")).tensors}


def matrices(name: str):
    """(name, ggml type, stored data) of the 2-D tensors of a fixture file."""
    return [(t.name, int(t.tensor_type), np.array(t.data))
            for t in GGUFReader(fixture(name)).tensors if len(t.shape) == 2]


# ----------------------------------------------------------------------------- bytes == llama-quantize

@pytest.mark.parametrize("type_name", PURE)
def test_pure_files_are_reproduced_byte_for_byte(type_name, f32_tensors):
    mats = matrices(type_name)
    assert len(mats) == 16 and {t for _, t, _ in mats} == {int(T[type_name])}
    for name, t, stored in mats:
        ours = ref.quantize(f32_tensors[name], t)
        assert ours.shape == stored.shape, name
        assert ours.tobytes() == stored.tobytes(), f"{type_name} {name}: bytes differ"


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q5_K_M"])
def test_mixed_files_are_reproduced_byte_for_byte(mix, f32_tensors):
    mats = matrices(mix)
    assert {t for _, t, _ in mats} == {int(T.Q6_K), int(T[mix[:4]])}
    for name, t, stored in mats:
        assert ref.quantize(f32_tensors[name], t).tobytes() == stored.tobytes(), f"{mix} {name}"


@pytest.mark.parametrize("type_name", sorted(GGUF_CAN_QUANTIZE))
def test_agrees_with_gguf_where_gguf_can_quantize(type_name, f32_tensors):
    for name, x in f32_tensors.items():
        if x.ndim == 2:
            ours = ref.quantize(x, T[type_name])
            assert ours.tobytes() == np.asarray(gguf_quantize(x, T[type_name])).tobytes(), name


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"])
def test_gguf_has_no_quantizer_for_these(type_name):
    """Why the fixtures are the only oracle for these types (if gguf-py gains one, add it above)."""
    with pytest.raises(NotImplementedError):
        gguf_quantize(np.zeros((1, 256), np.float32), T[type_name])


@pytest.mark.parametrize("type_name", PURE)
def test_round_trip_error_within_the_readme_table(type_name, f32_tensors):
    worst, sq, n = 0.0, 0.0, 0
    for name, x in f32_tensors.items():
        if x.ndim != 2:
            continue
        back = gguf_dequantize(ref.quantize(x, T[type_name]), T[type_name]).reshape(x.shape)
        err = np.abs(back.astype(np.float64) - x)
        worst = max(worst, float(err.max()))
        sq += float((err ** 2).sum())
        n += err.size
    max_err, rms_err = ERROR_TABLE[type_name]
    assert worst <= max_err * 1.05
    assert np.sqrt(sq / n) <= rms_err * 1.05
    assert worst > max_err * 0.9            # the table is about these bytes, not a loose bound


# ----------------------------------------------------------------------------- building blocks

def test_nearest_int_is_ggmls_bit_trick():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 3.5000002, -7.5, 4194303.0, 1e-30],
                 dtype=np.float32)
    np.testing.assert_array_equal(nearest_int(v), [0, 2, 2, 0, -2, 2, 4, -8, 4194303, 0])


def test_seq_sum_adds_in_order():
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((32, 999)) * np.exp(3 * rng.standard_normal((32, 999)))).astype(np.float32)
    s = np.zeros(999, np.float32)
    for row in a:
        s = s + row
    np.testing.assert_array_equal(seq_sum(a), s)
    assert not np.signbit(seq_sum(-np.zeros((3, 2), np.float32))).any()


def test_best_index_equals_ggmls_binary_search():
    values = legacy.KVALUES_IQ4NL

    def ggml(x):
        if x <= values[0]:
            return 0
        if x >= values[-1]:
            return 15
        ml, mu = 0, 15
        while mu - ml > 1:
            mav = (ml + mu) // 2
            ml, mu = (ml, mav) if x < values[mav] else (mav, mu)
        return mu - 1 if np.float32(x - values[mu - 1]) < np.float32(values[mu] - x) else mu

    c = index_thresholds(values)
    xs = np.concatenate([np.random.default_rng(0).uniform(-140, 140, 3000), c, values,
                         np.nextafter(c, np.float32(-np.inf)), np.nextafter(c, np.float32(np.inf)),
                         [0.0, -0.0]]).astype(np.float32)
    want = [ggml(x) for x in xs]
    np.testing.assert_array_equal(best_index(c, xs), want)
    lookup = HalfStepIndex(values)
    xs = np.concatenate([xs, np.float32([1e30, -1e30, np.inf, -np.inf, 3e38])])
    want += [15, 0, 15, 0, 15]
    np.testing.assert_array_equal(lookup.indices(xs), want)
    np.testing.assert_array_equal(lookup.nearest_values(xs), values[want])


# ----------------------------------------------------------------------------- inputs

@pytest.mark.parametrize("t", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL])
def test_zero_rows_dequantize_to_zero(t):
    x = np.zeros((3, 512), np.float32)
    np.testing.assert_array_equal(gguf_dequantize(ref.quantize(x, t), t), 0)


@pytest.mark.parametrize("t", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL])
def test_chunking_float64_and_leading_axes_do_not_change_bytes(t, monkeypatch):
    rng = np.random.default_rng(int(t))
    x = rng.standard_normal((6, 512)).astype(np.float32)
    x[1, :256] = 0                       # a zero block beside normal ones
    x[2, 7] = 40.0                       # an outlier
    x[3] = np.abs(x[3])                  # positive only (the min clamps to 0)
    whole = ref.quantize(x, t)
    monkeypatch.setattr(kquants, "_CHUNK_VALUES", 512)
    for threads in (1, 3):                  # one row a chunk, in turn or side by side
        monkeypatch.setattr(kquants, "THREADS", threads)
        np.testing.assert_array_equal(ref.quantize(x, t), whole)
    np.testing.assert_array_equal(ref.quantize(x.astype(np.float64), t), whole)
    np.testing.assert_array_equal(ref.quantize(x.reshape(2, 3, 512), t), whole.reshape(2, 3, -1))
    back = gguf_dequantize(whole, t)
    assert np.abs(back - x).max() < 0.1 * np.abs(x).max() and (back[1, :256] == 0).all()


@pytest.mark.parametrize("t", [T.Q2_K, T.Q4_K, T.Q6_K, T.IQ4_NL, T.Q5_1])
def test_bad_input_is_refused(t):
    block = 32 if t in (T.IQ4_NL, T.Q5_1) else 256
    with pytest.raises(ValueError, match=f"not a multiple of {block}"):
        ref.quantize(np.zeros((2, block + 32 if block == 256 else 48), np.float32), t)
    x = np.zeros((3, 256), np.float32)
    x[2, 5] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        ref.quantize(x, t)
    x[2, 5] = np.inf
    with pytest.raises(ValueError, match="row 2 contains inf"):
        ref.quantize(x, t)


def test_block_layouts_match_gguf():
    from gguf.constants import GGML_QUANT_SIZES
    for t, block in ref.BLOCKS.items():
        assert GGML_QUANT_SIZES[T(t)][1] == block.itemsize, T(t).name
    assert ref.QUANTIZABLE >= {int(T[n]) for n in PURE} | {int(T.F32)}


@pytest.mark.parametrize("t,nbytes", [(T.Q4_0, 18), (T.Q5_0, 22)])
def test_all_zero_blocks_store_minus_zero_scale_as_ggml(t, nbytes):
    """ggml's max starts at +0 and stays so in an all-zero block, so d = +0 / -8 = -0 (0x8000),
    for a block of -0.0s too (checked against llama-quantize; gguf-py stores +0 there)."""
    x = np.zeros((2, 64), np.float32)
    x[1] = -0.0
    x[0, 40] = 0.5
    blocks = ref.quantize(x, t).reshape(-1, nbytes)
    assert [blocks[i, :2].tobytes() for i in (0, 2, 3)] == [b"\x00\x80"] * 3
    assert blocks[1, :2].tobytes() != b"\x00\x80"
