"""Every attention layout llama.cpp's convert_hf_to_gguf.py writes for llama and qwen2 (and its
loader reads) runs, with the logits of transformers: q/k/v separate or fused into attn_qkv
(`--fuse-qkv`), with their biases fused, separate, or some of them absent; fused layers next
to separate ones; any bias group present in some layers only.  The files are written from
transformers' models by rewriting xllm's converted tensors, and -- where llama.cpp is on disk --
by llama.cpp's own converter, with and without --fuse-qkv."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from xllm import LLM, SamplingParams
from xllm.formats import F32, open_checkpoint

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_fixtures import make_transformers_dir, transformers_greedy, transformers_logits  # noqa: E402

IDS = [1, 5, 77, 300, 2, 9, 400, 13, 511, 0, 42, 33, 35, 200, 17, 88]
PEERS = os.environ.get("XLLM_PEERS", os.path.expanduser("~/.cache/xllm-peers"))
CONVERTER = os.path.join(PEERS, "llama.cpp", "convert_hf_to_gguf.py")
LLAMA_SIMPLE = os.path.join(PEERS, "llama.cpp", "build", "bin", "llama-simple")
QKV = ("attn_q", "attn_k", "attn_v")


def rel_err(a, ref):
    return np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max()


def zero_hf_tensors(path, names):
    """Set tensors of the directory's model.safetensors to zero (so that a GGUF without them
    is the same model)."""
    from safetensors.numpy import load_file, save_file
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    for n in names:
        assert n in tensors, n
        tensors[n] = np.zeros_like(tensors[n])
    save_file(tensors, str(file), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(HF directory, transformers' logits, greedy tokens) of a llama without biases, a llama
    with every bias (some of them zero: layer 0's k bias and FFN gate bias, layer 1's output
    bias and all of its q/k/v biases) and a qwen2."""
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for case in ("llama-gqa", "llama-biases", "qwen2"):
        path = make_transformers_dir(root, case, "F32", seed=len(case))
        if case == "llama-biases":
            zero_hf_tensors(path, ["model.layers.0.self_attn.k_proj.bias", "model.layers.0.mlp.gate_proj.bias",
                                   "model.layers.1.self_attn.o_proj.bias"]
                            + [f"model.layers.1.self_attn.{m}_proj.bias" for m in "qkv"])
        out[case] = (path, transformers_logits(path, IDS), transformers_greedy(path, IDS[:6], 8))
    return out


def write_layout(path, ckpt, tensors):
    """A GGUF of ckpt's metadata and vocabulary with exactly `tensors` (name -> float32 array)."""
    from gguf import GGUFWriter
    from xllm.convert import add_model_metadata
    w = GGUFWriter(str(path), ckpt.config.arch)
    add_model_metadata(w, ckpt.config, "layout")
    ckpt.vocab.add_to_gguf(w)
    for n, a in tensors.items():
        w.add_tensor(n, np.ascontiguousarray(a, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def fuse(tensors, layers, biases="fused"):
    """convert_hf_to_gguf.py --fuse-qkv: q, k, v rows of each layer in `layers` concatenated
    into attn_qkv; biases "fused" (attn_qkv.bias) or "separate" (kept as attn_q/k/v.bias)."""
    out = dict(tensors)
    for i in layers:
        p = f"blk.{i}."
        out[p + "attn_qkv.weight"] = np.concatenate([out.pop(p + m + ".weight") for m in QKV])
        if biases == "fused" and p + "attn_q.bias" in out:
            out[p + "attn_qkv.bias"] = np.concatenate([out.pop(p + m + ".bias") for m in QKV])
    return out


def without_zero_biases(tensors):
    """Every bias that is all zeros left out of the file (llama.cpp's loader takes each as optional)."""
    return {n: a for n, a in tensors.items() if not (n.endswith(".bias") and not np.any(a))}


LAYOUTS = {   # name: (model, how its converted tensors are rewritten, tensor names the file must hold)
    "llama-fused": ("llama-gqa", lambda t: fuse(t, (0, 1)), {"blk.1.attn_qkv.weight"}),
    "llama-biases-fused": ("llama-biases", lambda t: fuse(t, (0, 1)), {"blk.1.attn_qkv.bias"}),
    "llama-partial-biases": ("llama-biases", without_zero_biases,
                             {"blk.0.attn_q.bias", "blk.0.attn_v.bias", "blk.0.ffn_up.bias",
                              "blk.1.ffn_gate.bias"}),
    # --fuse-qkv leaves a layer separate when only some of its q/k/v biases exist
    "llama-mixed-fused-and-partial": ("llama-biases", lambda t: fuse(without_zero_biases(t), (1,)),
                                      {"blk.1.attn_qkv.weight", "blk.0.attn_q.bias"}),
    "qwen2-fused": ("qwen2", lambda t: fuse(t, (0, 1)), {"blk.0.attn_qkv.bias"}),
    "qwen2-fused-weight-separate-biases": ("qwen2", lambda t: fuse(t, (0, 1), biases="separate"),
                                           {"blk.0.attn_qkv.weight", "blk.0.attn_k.bias"}),
}


def _layout_file(models, tmp_path, layout):
    case, rewrite, must_have = LAYOUTS[layout]
    hf_dir, logits, greedy = models[case]
    ckpt = open_checkpoint(hf_dir)
    tensors = rewrite({n: t.to_float32() for n, t in ckpt.tensors.items()})
    assert must_have <= set(tensors)
    return write_layout(tmp_path / f"{layout}.gguf", ckpt, tensors), logits, greedy, tensors


def _check(path, logits, greedy):
    llm = LLM(str(path), threads=2)
    assert rel_err(llm.logits(IDS), logits) < 1e-4
    params = SamplingParams(max_tokens=8, temperature=0.0, stop_at_eos=False)
    assert llm.generate([IDS[:6]], params)[0].token_ids == greedy
    return llm


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_transformers(models, tmp_path, layout):
    path, logits, greedy, tensors = _layout_file(models, tmp_path, layout)
    llm = _check(path, logits, greedy)
    cfg = llm.checkpoint.config
    assert cfg.fused_qkv == ("blk.0.attn_qkv.weight" in tensors)
    assert cfg.qkv_bias == any(n.startswith("blk.") and n.endswith(".bias") and n.split(".")[2] in
                               QKV + ("attn_qkv",) for n in tensors)


@pytest.mark.parametrize("layout", ["llama-partial-biases", "qwen2-fused-weight-separate-biases"])
def test_layout_converts_to_the_decoder_layout(models, tmp_path, layout):
    """xllm-convert of such a file writes the one layout (every bias of a group present,
    fused q/k/v biases as attn_qkv.bias) and runs the same."""
    from gguf import GGUFReader
    from xllm.convert import main
    path, logits, greedy, _ = _layout_file(models, tmp_path, layout)
    out = tmp_path / "again.gguf"
    assert main([str(path), "-o", str(out)]) == 0
    names = {t.name for t in GGUFReader(str(out)).tensors}
    if layout.startswith("qwen2"):
        assert "blk.1.attn_qkv.bias" in names and "blk.1.attn_k.bias" not in names
    else:
        assert {"blk.0.attn_k.bias", "blk.1.attn_output.bias", "blk.0.ffn_gate.bias"} <= names
    _check(out, logits, greedy)


LAYOUT_REFUSALS = {
    "fused_and_separate_bias": (lambda t: {**fuse(t, (0, 1)), "blk.0.attn_q.bias": np.zeros(64, np.float32)},
                                r"layer 0 has both blk.0.attn_qkv.bias and separate q/k/v biases"),
    "fused_rows": (lambda t: {**fuse(t, (0, 1)), "blk.1.attn_qkv.weight": np.zeros((90, 64), np.float32)},
                   r"'blk.1.attn_qkv.weight' has shape \(90, 64\), expected \(96, n_embd\)"),
    "bias_length": (lambda t: {**fuse(t, (0, 1), biases="separate"), "blk.0.attn_k.bias": np.zeros(5, np.float32)},
                    r"'blk.0.attn_k.bias' has shape \(5,\), expected \(16,\)"),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_REFUSALS))
def test_layout_refusals(models, tmp_path, case):
    rewrite, message = LAYOUT_REFUSALS[case]
    ckpt = open_checkpoint(models["qwen2"][0])
    path = write_layout(tmp_path / "bad.gguf", ckpt, rewrite({n: t.to_float32() for n, t in ckpt.tensors.items()}))
    with pytest.raises(ValueError, match=message):
        open_checkpoint(path)


@pytest.mark.parametrize("layout", ["llama-mixed-fused-and-partial", "qwen2-fused-weight-separate-biases"])
def test_llama_cpp_reads_the_layout(models, tmp_path, layout):
    """These files are ones llama.cpp itself loads, with xllm's greedy text (skipped where
    llama.cpp has not been built)."""
    if not os.path.exists(LLAMA_SIMPLE):
        pytest.skip(f"{LLAMA_SIMPLE} not built (../shared/tools/build-llama-cpp.sh)")
    path, *_ = _layout_file(models, tmp_path, layout)
    text = LLM(str(path), threads=2).generate("Once upon a time", SamplingParams(
        max_tokens=8, temperature=0.0, stop_at_eos=False))[0].text
    run = subprocess.run([LLAMA_SIMPLE, "-m", str(path), "-n", "8", "Once upon a time"],
                         capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-500:]
    assert ("Once upon a time" + text) in run.stdout.decode("utf-8", errors="replace")


@pytest.mark.parametrize("case", ["llama-gqa", "llama-biases", "qwen2"])
@pytest.mark.parametrize("fuse_qkv", [False, True], ids=["separate", "fuse-qkv"])
def test_llama_cpp_converter_output(models, tmp_path, case, fuse_qkv):
    """llama.cpp's convert_hf_to_gguf.py itself (skipped where it is not on disk), with and
    without --fuse-qkv: the file runs in xllm with transformers' logits and greedy tokens."""
    if not os.path.exists(CONVERTER):
        pytest.skip(f"{CONVERTER} not found (../shared/tools/build-llama-cpp.sh)")
    from gguf import GGUFReader
    hf_dir, logits, greedy = models[case]
    out = tmp_path / "converted.gguf"
    cmd = [sys.executable, CONVERTER, str(hf_dir), "--outfile", str(out), "--outtype", "f32"]
    run = subprocess.run(cmd + (["--fuse-qkv"] if fuse_qkv else []), capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-800:]
    names = {t.name for t in GGUFReader(str(out)).tensors}
    assert ("blk.0.attn_qkv.weight" in names) == ("blk.1.attn_qkv.weight" in names) == fuse_qkv
    assert ("blk.0.attn_qkv.bias" in names) == (fuse_qkv and case != "llama-gqa")
    _check(out, logits, greedy)
