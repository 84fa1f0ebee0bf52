"""Q8_0 / Q4_0 reference quantizers (bytes == gguf.quants) and the xllm-quant tool."""
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

import quant.reference as ref
from quant.cli import ErrorStats, main
from xllm.formats import F16, F32, Q4_0, Q8_0, open_checkpoint

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
STORIES = MODELS / "stories260K.bin"
TOK512 = MODELS / "tok512.bin"
QTYPES = {Q8_0: GGMLQuantizationType.Q8_0, Q4_0: GGMLQuantizationType.Q4_0}
OURS = {Q8_0: ref.quantize_q8_0, Q4_0: ref.quantize_q4_0}
FMAX = np.finfo(np.float32).max
TINY = np.finfo(np.float32).smallest_subnormal


def gguf_bytes(x, t):
    with np.errstate(all="ignore"):        # gguf's tiny-block path divides by ~0 and casts NaN
        return gguf_quantize(np.asarray(x, dtype=np.float32), QTYPES[t])


# ----------------------------------------------------------------------------- layouts

def test_block_layouts_match_ggml():
    assert ref.BLOCK_Q8_0.itemsize == 34 == GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][1]
    assert ref.BLOCK_Q4_0.itemsize == 18 == GGML_QUANT_SIZES[GGMLQuantizationType.Q4_0][1]
    assert ref.BLOCK_Q8_0.names == ("d", "qs") and ref.BLOCK_Q8_0.fields["qs"][1] == 2
    assert (Q8_0, Q4_0, F32, F16) == (int(GGMLQuantizationType.Q8_0), int(GGMLQuantizationType.Q4_0),
                                      int(GGMLQuantizationType.F32), int(GGMLQuantizationType.F16))


# ----------------------------------------------------------------------------- bytes == gguf

@pytest.mark.parametrize("t", [Q8_0, Q4_0])
@pytest.mark.parametrize("shape,scale", [((1, 32), 1.0), ((7, 64), 0.02), ((33, 96), 1e3),
                                         ((100, 160), 1e-4), ((3, 2048), 5.0), ((4, 5, 64), 1.0)])
def test_random_rows_match_gguf(t, shape, scale):
    rng = np.random.default_rng(hash((t, shape)) & 0xFFFF)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    ours = OURS[t](x)
    assert ours.dtype == np.uint8
    assert ours.shape == shape[:-1] + (shape[-1] // 32 * (34 if t == Q8_0 else 18),)
    np.testing.assert_array_equal(ours, gguf_bytes(x, t))


def adversarial_rows():
    """Rows of 32-value blocks that stress the rounding, the sign of the max and the scale."""
    rng = np.random.default_rng(7)
    rows = {}
    rows["zeros"] = np.zeros(64)
    rows["negative_zeros"] = -np.zeros(64)
    one_huge = rng.standard_normal(64) * 1e-3
    one_huge[5] = 1e30
    rows["one_huge"] = one_huge
    rows["huge_negative"] = np.where(np.arange(64) == 40, -FMAX, rng.standard_normal(64))
    rows["all_extremes"] = np.tile([FMAX, -FMAX], 32)
    rows["negative_extremes"] = -rng.uniform(0.1, 1.0, 64) * FMAX
    rows["max_is_negative"] = np.concatenate([-np.linspace(0.1, 5, 32), -np.linspace(3, 0.2, 32)])
    rows["plus_minus_tie"] = np.tile(np.r_[2.0, -2.0, rng.uniform(-1.9, 1.9, 30)], 2)
    rows["minus_plus_tie"] = np.tile(np.r_[-2.0, 2.0, rng.uniform(-1.9, 1.9, 30)], 2)
    rows["halves_q8"] = np.r_[127.0, np.arange(-15.5, 15.5, 1.0), 127.0, np.arange(0.5, 31.5, 1.0)]
    rows["halves_q4"] = np.r_[-8.0, np.arange(-7.5, 8.0, 0.5), 8.0, np.arange(-7.75, 7.75, 0.5)]
    rows["denormals"] = rng.uniform(-1, 1, 64) * TINY * 1000
    rows["denormal_mix"] = np.r_[rng.uniform(-1, 1, 32) * TINY * 100, rng.standard_normal(32) * 1e-38]
    rows["smallest_subnormal"] = np.r_[TINY, np.zeros(31), -TINY, np.zeros(31)]
    rows["inverse_overflow_edge"] = np.r_[np.full(32, 3.7e-37), np.full(32, 2.4e-38)]
    rows["fp16_scale_underflow"] = rng.standard_normal(64) * 1e-7
    rows["fp16_scale_overflow"] = rng.standard_normal(64) * 1e7
    rows["constant"] = np.full(64, 0.3)
    rows["one_nonzero"] = np.where(np.arange(64) % 32 == 9, -1.5, 0.0)
    rows["float16_values"] = rng.standard_normal(64).astype(np.float16)
    return rows


@pytest.mark.parametrize("t", [Q8_0, Q4_0])
@pytest.mark.parametrize("name", sorted(adversarial_rows()))
def test_adversarial_rows_match_gguf(t, name):
    x = np.asarray(adversarial_rows()[name], dtype=np.float32).reshape(1, -1)
    expected = gguf_bytes(x, t)
    if t == Q4_0 and name == "negative_zeros":
        # ggml's max starts at +0 and stays so in an all-zero block (d = +0 / -8 = -0, as
        # llama-quantize writes); gguf-py takes the block's -0 and stores d = +0
        expected.reshape(-1, 18)[:, 1] |= np.uint8(0x80)
    np.testing.assert_array_equal(OURS[t](x), expected, err_msg=name)


@pytest.mark.parametrize("t", [Q8_0, Q4_0])
def test_rounding_rules_by_hand(t):
    if t == Q8_0:   # d = 127/127 = 1: codes are x rounded half away from zero
        x = np.r_[127.0, 0.5, 1.5, -0.5, -2.5, 0.49999997, 126.5, np.zeros(25)].astype(np.float32)
        blk = ref.quantize_q8_0(x).view(ref.BLOCK_Q8_0)[0]
        assert blk["d"] == np.float16(1.0)
        assert blk["qs"][:7].tolist() == [127, 1, 2, -1, -3, 0, 127]
    else:           # m = -8 -> d = 1, codes = min(15, trunc(x + 8.5)); m itself -> code 0
        x = np.r_[-8.0, 8.0, 7.4, 7.5, 0.0, -0.5, 0.49, np.zeros(25)].astype(np.float32)
        blk = ref.quantize_q4_0(x).view(ref.BLOCK_Q4_0)[0]
        assert blk["d"] == np.float16(1.0)
        codes = np.r_[blk["qs"] & 15, blk["qs"] >> 4]
        assert codes[:7].tolist() == [0, 15, 15, 15, 8, 8, 8]


def test_float64_and_chunking_match_gguf(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 96))
    monkeypatch.setattr(ref, "_CHUNK_VALUES", 100)     # many small passes, odd boundaries
    for t in (Q8_0, Q4_0):
        ours = OURS[t](x)
        np.testing.assert_array_equal(ours, gguf_bytes(x, t))
        np.testing.assert_array_equal(ref.dequantize(ours, t, x.shape),
                                      gguf_dequantize(ours, QTYPES[t]))


# ----------------------------------------------------------------------------- dequantize

@pytest.mark.parametrize("t", [Q8_0, Q4_0])
def test_dequantize_matches_gguf_and_round_trip_bound(t):
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_normal((50, 128)) * s for s in (1e-4, 0.02, 1.0, 300.0)])
    x = x.astype(np.float32)
    data = OURS[t](x)
    y = ref.dequantize(data, t, x.shape)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y, gguf_dequantize(data, QTYPES[t]))

    blocks = x.reshape(-1, 32).astype(np.float64)
    block = ref.BLOCK_Q8_0 if t == Q8_0 else ref.BLOCK_Q4_0
    d16 = data.reshape(-1).view(block)["d"].astype(np.float64)[:, None]
    err = np.abs(y.reshape(-1, 32) - blocks)
    if t == Q8_0:
        d32 = np.abs(blocks).max(axis=1, keepdims=True) / 127
        bound = d32 / 2 + 127 * np.abs(d32 - d16)
        clipped = np.zeros_like(err, dtype=bool)
    else:
        m = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
        d32 = m / -8
        bound = np.abs(d32) / 2 + 8 * np.abs(d32 - d16)
        clipped = blocks / d32 > 7.5
        bound = np.where(clipped, np.abs(d32) + 8 * np.abs(d32 - d16), bound)
    assert np.all(err <= bound * (1 + 1e-5) + 1e-30)
    # the bound is tight enough to catch an off-by-one code: below 0.57 d where d16 is normal
    normal = np.abs(d16) >= np.finfo(np.float16).tiny
    assert normal.sum() > len(normal) // 2
    assert np.all(np.where(clipped, 0, bound)[normal[:, 0]] < 0.57 * np.abs(d32)[normal[:, 0]])
    if t == Q4_0:
        assert clipped.any()


@pytest.mark.parametrize("t", [Q8_0, Q4_0])
def test_zero_rows_round_trip_exactly(t):
    x = np.zeros((3, 64), dtype=np.float32)
    np.testing.assert_array_equal(ref.dequantize(OURS[t](x), t, x.shape), x)


def test_quantize_dispatch_by_type():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    assert ref.quantize(x, F32).dtype == np.float32
    np.testing.assert_array_equal(ref.quantize(x, F16), x.astype(np.float16))
    np.testing.assert_array_equal(ref.quantize(x, GGMLQuantizationType.Q8_0), ref.quantize_q8_0(x))
    np.testing.assert_array_equal(ref.dequantize(ref.quantize(x, F16), F16, (64,)),
                                  x.astype(np.float16).astype(np.float32).reshape(64))
    with pytest.raises(ValueError, match="IQ2_XXS.*expected one of.*Q4_K"):
        ref.quantize(x, GGMLQuantizationType.IQ2_XXS)


@pytest.mark.parametrize("t", [Q8_0, Q4_0])
def test_bad_rows_are_refused(t):
    with pytest.raises(ValueError, match="row length 33"):
        OURS[t](np.ones((2, 33), dtype=np.float32))
    with pytest.raises(ValueError, match="row length 172"):
        ref.quantize(np.ones((4, 172), dtype=np.float32), t)
    x = np.ones((3, 64), dtype=np.float32)
    x[2, 40] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        OURS[t](x)
    x[2, 40] = -np.inf
    with pytest.raises(ValueError, match="row 2 contains inf"):
        OURS[t](x)
    with pytest.raises(ValueError, match="35 bytes"):
        ref.dequantize(np.zeros((1, 35), np.uint8), t)
    with pytest.raises(ValueError, match="expected shape"):
        ref.dequantize(OURS[t](np.ones((2, 64), np.float32)), t, (3, 64))


# ----------------------------------------------------------------------------- xllm-quant

def quantize_stories(tmp_path, bits, *extra, src=STORIES, name=None):
    out = tmp_path / (name or f"q{bits}.gguf")
    args = ["--weight", str(src), "-o", str(out), "-b", str(bits)]
    if str(src).endswith(".bin"):
        args += ["--token", str(TOK512)]
    return main(args + list(extra)), out


@pytest.mark.parametrize("bits,t", [(8, Q8_0), (4, Q4_0)])
def test_quant_cli_writes_quantized_gguf(tmp_path, capsys, bits, t):
    code, out = quantize_stories(tmp_path, bits, "--fallback", "f32")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    summary = captured.out.strip()
    assert summary.count("\n") == 0 and "->" in summary and "max" in summary and "mean" in summary
    src = open_checkpoint(STORIES)
    reader = GGUFReader(out)
    types = {rt.name: int(rt.tensor_type) for rt in reader.tensors}
    for rt in reader.tensors:
        s = src.tensors[rt.name]
        assert tuple(int(v) for v in reversed(list(rt.shape))) == s.shape   # GGUF lists ne0 first
        if len(s.shape) == 1 or s.shape[1] % 32:
            assert types[rt.name] == F32, rt.name
        else:
            assert types[rt.name] == t, rt.name
            np.testing.assert_array_equal(rt.data.reshape(s.shape[0], -1),
                                          gguf_bytes(np.asarray(s.data), t))
    assert sorted(types) == sorted(src.tensors)
    q = open_checkpoint(out)
    assert q.config == open_checkpoint(out).config and q.config.dim == 64
    assert q.vocab is not None and len(q.vocab.pieces) == 512
    ftype = reader.fields["general.file_type"].contents()
    assert ftype == {Q8_0: 7, Q4_0: 2}[t]
    assert reader.fields["general.quantization_version"].contents() == 2
    # the summary's errors are those of the written file
    errs = [np.abs(q.tensors[n].to_float32() - np.asarray(src.tensors[n].data)) for n in types if types[n] == t]
    worst = max(float(e.max()) for e in errs)
    assert f"max {worst:.3g}" in summary


def test_quant_cli_carries_gguf_metadata_and_vocab(tmp_path, capsys):
    from xllm.convert import main as convert_main
    f32 = tmp_path / "stories.gguf"
    assert convert_main([str(STORIES), "-o", str(f32), "--token", str(TOK512)]) == 0
    code, out = quantize_stories(tmp_path, 8, "--fallback", "f16", src=f32)
    assert code == 0, capsys.readouterr().err
    a, b = GGUFReader(f32), GGUFReader(out)
    assert b.fields["general.name"].contents() == "stories260K"
    for key in a.fields:
        if key.startswith("tokenizer.") or key.startswith("llama."):
            assert b.fields[key].contents() == a.fields[key].contents(), key
    assert open_checkpoint(out).vocab == open_checkpoint(f32).vocab
    types = {rt.name: int(rt.tensor_type) for rt in b.tensors}
    assert types["blk.0.ffn_down.weight"] == F16 and types["blk.0.ffn_up.weight"] == Q8_0


def test_quant_q8_to_q4_is_allowed_and_same_type_is_kept(tmp_path, capsys):
    code, q8 = quantize_stories(tmp_path, 8, "--fallback", "f32")
    assert code == 0
    code, q4 = quantize_stories(tmp_path, 4, "--fallback", "f32", src=q8, name="q4.gguf")
    assert code == 0, capsys.readouterr().err
    src, dst = open_checkpoint(q8), open_checkpoint(q4)
    t = src.tensors["blk.1.attn_q.weight"]
    assert dst.tensors[t.name].ggml_type == Q4_0
    np.testing.assert_array_equal(dst.tensors[t.name].data, gguf_bytes(t.to_float32(), Q4_0))
    code, q8again = quantize_stories(tmp_path, 8, "--fallback", "f32", src=q8, name="q8b.gguf")
    assert code == 0
    np.testing.assert_array_equal(open_checkpoint(q8again).tensors[t.name].data, t.data)
    assert "no tensor needed quantizing" in capsys.readouterr().out


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("xllm-quant: error: ") and err.count("\n") == 1, err
    return err


def test_quant_cli_errors(tmp_path, capsys):
    err = one_line_error(capsys, quantize_stories(tmp_path, 3)[0])
    assert "invalid choice: 3" in err
    err = one_line_error(capsys, quantize_stories(tmp_path, 8, src=tmp_path / "missing.gguf")[0])
    assert "missing.gguf" in err
    err = one_line_error(capsys, quantize_stories(tmp_path, 8)[0])          # hidden_dim 172
    assert "ffn_down" in err and "172" in err and "multiple of 32" in err
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x00" * 10)
    err = one_line_error(capsys, quantize_stories(tmp_path, 8, src=junk)[0])
    assert "junk.gguf" in err
    assert quantize_stories(tmp_path, 4, "--fallback", "f32")[0] == 0
    capsys.readouterr()
    err = one_line_error(capsys, quantize_stories(tmp_path, 8, src=tmp_path / "q4.gguf", name="x.gguf")[0])
    assert "already Q4_0" in err
    err = one_line_error(capsys, main(["--weight", str(STORIES), "-o", str(tmp_path / "y.gguf"), "-b", "8",
                                       "--fallback", "f32"]))
    assert "no vocabulary" in err
    err = one_line_error(capsys, main(["--weight", str(STORIES), "-o", str(tmp_path / "y.gguf"), "-b", "8",
                                       "--fallback", "f32", "--token", str(MODELS / "tokenizer.bin")]))
    assert "32000" in err and "512" in err
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_error_stats_match_direct_computation():
    from xllm.formats import Tensor
    rng = np.random.default_rng(5)
    w = rng.standard_normal((10, 64)).astype(np.float32)
    t = Tensor("w", F32, w.shape, w)
    stats = ErrorStats()
    data = ref.quantize_q4_0(w)
    stats(t, Q4_0, data)
    stats(Tensor("n", F32, (64,), w[0]), F32, w[0])          # not quantized: ignored
    err = np.abs(ref.dequantize_q4_0(data) - w)
    assert stats.tensors == 1
    assert stats.max == pytest.approx(float(err.max()))
    assert stats.mean == pytest.approx(float(err.mean()))
