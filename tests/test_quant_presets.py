"""llama-quantize's presets in xllm-quant: the type of every tensor and the file's bytes.

On tiny256 (2 layers; ../shared/fixtures/kquant) every preset's file must hold, tensor by
tensor (looked up by name: llama-quantize's tensor order differs), the bytes llama-quantize
wrote for that tensor's type, with llama-quantize's general.file_type; the Q4_K_M / Q5_K_M
mixes and the --pure files must equal llama-quantize's files outright.  The rules for more
layers are checked on synthetic shapes against `expected_type`, written out below from
src/llama-quant.cpp (llama.cpp 0c1e570, llama_tensor_get_type_impl / tensor_type_fallback).
"""
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from quant.cli import main
from quant.presets import PRESETS, ModelShape, find_preset, plan_preset

KQUANT = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "kquant"
T = GGMLQuantizationType
FILE_TYPE = {"Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
             "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8,
             "Q5_1": 9, "IQ4_NL": 25, "BF16": 32, "F16": 1}
BASE = {"Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K",
        "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}
BLOCK = {"Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "F16": 1, "BF16": 1}


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def expected_type(preset, name, cols, n_layer, n_head, n_head_kv, tied=False):
    """The type llama-quantize gives a llama tensor, from llama-quant.cpp, written out by hand."""
    base = BASE.get(preset, preset)
    if base in ("F16", "BF16", "F32"):
        return base
    layer = int(name.split(".")[1]) if name.startswith("blk.") else None
    gqa = n_head // n_head_kv
    t = base
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        t = "Q8_0" if cols % BLOCK.get(base, 32) else ("Q8_0" if base == "Q8_0" else "Q6_K")
    elif name.endswith("attn_v.weight"):
        if preset == "Q2_K":
            t = "Q4_K" if gqa >= 4 else "Q3_K"
        elif preset == "Q3_K_M":
            t = "Q5_K" if layer < 2 else "Q4_K"
        elif preset == "Q3_K_L":
            t = "Q5_K"
        elif preset == "IQ4_NL" and gqa >= 4:
            t = "Q5_K"
        elif preset in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n_layer):
            t = "Q6_K"
        elif preset == "Q4_K_S" and layer < 4:
            t = "Q5_K"
        if n_layer == 80 and n_head != n_head_kv and t in ("Q3_K", "Q4_K"):
            t = "Q5_K"
    elif name.endswith("ffn_down.weight"):
        if preset == "Q2_K":
            t = "Q3_K"
        elif preset == "Q3_K_M":
            t = "Q5_K" if layer < n_layer // 16 else "Q4_K"
        elif preset == "Q3_K_L":
            t = "Q5_K"
        elif preset == "Q4_K_M":
            t = "Q6_K" if use_more_bits(layer, n_layer) else t
        elif preset == "IQ4_NL":
            t = "Q5_K" if layer < n_layer // 8 else t
        elif preset == "Q5_K_M":
            t = "Q6_K" if use_more_bits(layer, n_layer) else t
        elif preset == "Q4_K_S":
            t = "Q5_K" if layer < n_layer // 8 else t
    elif name.endswith("attn_output.weight"):
        t = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(preset, t)
    if cols % BLOCK.get(t, 32):                               # tensor_type_fallback
        t = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}.get(t, t)
        if cols % 32:
            t = "F16"
    return t


def read(path):
    r = GGUFReader(path)
    return r, {t.name: t for t in r.tensors}


@pytest.fixture(scope="module")
def pure_bytes():
    """type name -> tensor name -> llama-quantize's bytes of that tensor in that type."""
    out = {}
    for name in ["f32", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q4_0", "Q4_1", "Q5_0",
                 "Q5_1", "Q8_0", "BF16", "F16"]:
        path = KQUANT / f"tiny256-{name}.gguf"
        if not path.is_file():
            pytest.fail(f"{path} is missing: the tests need ../shared/fixtures/kquant beside the checkout")
        out["F32" if name == "f32" else name] = {t.name: np.array(t.data).tobytes() for t in GGUFReader(path).tensors}
    return out


def quantize(tmp_path, capsys, *args):
    out = tmp_path / "out.gguf"
    code = main(["--weight", str(KQUANT / "tiny256-f32.gguf"), "-o", str(out), *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("\n") == 1 and "->" in captured.out and "max" in captured.out
    return out


@pytest.mark.parametrize("preset", list(FILE_TYPE))
def test_preset_files_have_llama_quantizes_types_and_bytes(preset, tmp_path, capsys, pure_bytes):
    reader, tensors = read(quantize(tmp_path, capsys, "--type", preset.lower()))
    assert reader.fields["general.file_type"].contents() == FILE_TYPE[preset]
    assert reader.fields["general.quantization_version"].contents() == 2
    assert len(tensors) == 21
    for name, t in tensors.items():
        want = "F32" if len(t.shape) == 1 else expected_type(preset, name, int(t.shape[0]), 2, 4, 4)
        assert T(t.tensor_type).name == want, name
        assert np.array(t.data).tobytes() == pure_bytes[want][name], f"{preset} {name}"


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q5_K_M", "Q4_K", "Q5_K"])
def test_mixes_equal_llama_quantizes_files(preset, tmp_path, capsys):
    mix = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}.get(preset, preset)
    ours_reader, ours = read(quantize(tmp_path, capsys, "--type", preset))
    theirs_reader, theirs = read(KQUANT / f"tiny256-{mix}.gguf")
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name].tensor_type == theirs[name].tensor_type, name
        assert np.array(ours[name].data).tobytes() == np.array(theirs[name].data).tobytes(), name
    for key in ("general.file_type", "general.quantization_version"):
        assert ours_reader.fields[key].contents() == theirs_reader.fields[key].contents()


@pytest.mark.parametrize("base", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q4_0", "Q4_1",
                                  "Q5_0", "Q5_1", "Q8_0", "BF16", "F16"])
def test_pure_files_equal_llama_quantizes_files(base, tmp_path, capsys):
    ours_reader, ours = read(quantize(tmp_path, capsys, "--type", base, "--pure"))
    theirs_reader, theirs = read(KQUANT / f"tiny256-{base}.gguf")
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name].tensor_type == theirs[name].tensor_type, name
        assert np.array(ours[name].data).tobytes() == np.array(theirs[name].data).tobytes(), name
    assert ours_reader.fields["general.file_type"].contents() == \
        theirs_reader.fields["general.file_type"].contents()


def test_pure_small_presets_differ_only_in_file_type(tmp_path, capsys):
    reader, _ = read(quantize(tmp_path, capsys, "--type", "Q4_K_S", "--pure"))
    assert reader.fields["general.file_type"].contents() == 14


# ----------------------------------------------------------------------------- rules at scale

def llama_tensors(n_layer, dim, hidden, n_head, n_head_kv, vocab=32000, tied=False):
    kv_dim = dim // n_head * n_head_kv
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,)}
    if not tied:
        shapes["output.weight"] = (vocab, dim)
    for i in range(n_layer):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (dim,), p + "ffn_norm.weight": (dim,),
                       p + "attn_q.weight": (dim, dim), p + "attn_k.weight": (kv_dim, dim),
                       p + "attn_v.weight": (kv_dim, dim), p + "attn_output.weight": (dim, dim),
                       p + "ffn_gate.weight": (hidden, dim), p + "ffn_up.weight": (hidden, dim),
                       p + "ffn_down.weight": (dim, hidden)})
    return shapes


MODELS = {   # n_layer, dim, hidden, n_head, n_head_kv
    "llama2-7b": (32, 4096, 11008, 32, 32),
    "tinyllama": (22, 2048, 5632, 32, 4),
    "llama2-70b": (80, 8192, 28672, 64, 8),
    "odd-rows": (12, 288, 800, 6, 6),          # 288, 800: multiples of 32, not of 256
    "tiny-rows": (3, 64, 100, 4, 4),           # 100: not even a multiple of 32
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("preset", list(FILE_TYPE))
def test_rules_on_larger_models(model, tied, preset):
    n_layer, dim, hidden, n_head, n_head_kv = MODELS[model]
    shapes = llama_tensors(n_layer, dim, hidden, n_head, n_head_kv, tied=tied)
    plan = plan_preset(shapes, find_preset(preset), ModelShape(n_layer, n_head, n_head_kv))
    for name, shape in shapes.items():
        if len(shape) == 1:
            assert plan[name] is None
            continue
        want = expected_type(preset, name, shape[1], n_layer, n_head, n_head_kv, tied=tied)
        assert T(plan[name]).name == want, (name, shape)


def test_rules_pick_the_documented_layers():
    """Spot values (independent of expected_type): Q4_K_M on 32 layers gives attn_v and
    ffn_down Q6_K in layers 0-3, 6, 9, ..., 27 and 28-31; TinyLlama's Q3_K_M attn_v Q5_K in 0-1."""
    shapes = llama_tensors(32, 4096, 11008, 32, 32)
    plan = plan_preset(shapes, find_preset("q4_k_m"), ModelShape(32, 32, 32))
    six = [i for i in range(32) if plan[f"blk.{i}.ffn_down.weight"] == T.Q6_K]
    assert six == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert six == [i for i in range(32) if plan[f"blk.{i}.attn_v.weight"] == T.Q6_K]
    assert plan["output.weight"] == T.Q6_K and plan["token_embd.weight"] == T.Q4_K
    shapes = llama_tensors(22, 2048, 5632, 32, 4)
    plan = plan_preset(shapes, find_preset("Q3_K"), ModelShape(22, 32, 4))
    assert [plan[f"blk.{i}.attn_v.weight"] for i in (0, 1, 2)] == [T.Q5_K, T.Q5_K, T.Q4_K]
    assert plan["blk.5.attn_output.weight"] == T.Q4_K and plan["blk.5.attn_q.weight"] == T.Q3_K
    plan = plan_preset(shapes, find_preset("Q2_K"), ModelShape(22, 32, 4))
    assert plan["blk.0.attn_v.weight"] == T.Q4_K           # n_gqa 8 >= 4


def test_pure_keeps_the_base_type_everywhere_and_refuses_odd_rows():
    shapes = llama_tensors(4, 256, 768, 4, 4)
    plan = plan_preset(shapes, find_preset("Q4_K_M"), ModelShape(4, 4, 4), pure=True)
    assert {plan[n] for n, s in shapes.items() if len(s) == 2} == {T.Q4_K}
    shapes = llama_tensors(4, 288, 768, 4, 4)
    with pytest.raises(ValueError, match=r"'output.weight' has rows of 288 values.*Q4_K.*Q5_0"):
        plan_preset(shapes, find_preset("Q4_K_M"), ModelShape(4, 4, 4), pure=True)


def test_preset_names():
    assert find_preset("q4_k").name == "Q4_K_M" and find_preset("Q3_K").name == "Q3_K_M"
    assert find_preset("iq4_nl").file_type == 25 and PRESETS["F16"].base_type == T.F16
    with pytest.raises(ValueError, match="'Q7_K'.*Q2_K, Q3_K_S"):
        find_preset("Q7_K")


# ----------------------------------------------------------------------------- errors

def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("xllm-quant: error: ") and err.count("\n") == 1, err
    return err


def test_cli_refusals(tmp_path, capsys):
    src = str(KQUANT / "tiny256-f32.gguf")
    out = tmp_path / "x.gguf"
    err = one_line_error(capsys, main(["--weight", src, "-o", str(out), "--type", "Q9_K"]))
    assert "'Q9_K'" in err and "Q4_K_M" in err and "IQ4_NL" in err
    err = one_line_error(capsys, main(["--weight", str(KQUANT / "tiny256-Q4_0.gguf"), "-o", str(out),
                                       "--type", "Q4_K_M"]))
    assert "already Q4_0" in err and "Q6_K" in err
    err = one_line_error(capsys, main(["--weight", str(KQUANT / "tiny256-Q4_0.gguf"), "-o", str(out),
                                       "--type", "q5_0", "--pure"]))
    assert "already Q4_0" in err and "Q5_0" in err
    err = one_line_error(capsys, main(["--weight", src, "-o", str(out), "--type", "Q4_K_M",
                                       "--fallback", "f16"]))
    assert "--fallback" in err
    err = one_line_error(capsys, main(["--weight", src, "-o", str(out), "--type", "Q4_K_M", "-b", "8"]))
    assert "not allowed with" in err
    err = one_line_error(capsys, main(["--weight", src, "-o", str(out)]))
    assert "--type" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_requantizing_to_a_narrower_preset_is_allowed(tmp_path, capsys):
    """A Q8_0 file may become Q4_K_M (every target is narrower than Q8_0's 8.5 bits)."""
    out = tmp_path / "q4km.gguf"
    assert main(["--weight", str(KQUANT / "tiny256-Q8_0.gguf"), "-o", str(out), "--type", "Q4_K_M"]) == 0
    _, tensors = read(out)
    assert tensors["output.weight"].tensor_type == T.Q6_K
    assert tensors["blk.0.ffn_up.weight"].tensor_type == T.Q4_K
    capsys.readouterr()


@pytest.mark.parametrize("name", ["Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "BF16", "Q8_0"])
def test_xllm_convert_keeps_runnable_types_and_file_type(name, tmp_path, capsys):
    from xllm.convert import main as convert_main
    out = tmp_path / "copy.gguf"
    assert convert_main([str(KQUANT / f"tiny256-{name}.gguf"), "-o", str(out)]) == 0, capsys.readouterr().err
    ours_reader, ours = read(out)
    theirs_reader, theirs = read(KQUANT / f"tiny256-{name}.gguf")
    for n, t in theirs.items():
        assert ours[n].tensor_type == t.tensor_type and \
            np.array(ours[n].data).tobytes() == np.array(t.data).tobytes(), n
    for key in ("general.file_type", "general.quantization_version"):
        assert ours_reader.fields[key].contents() == theirs_reader.fields[key].contents()
