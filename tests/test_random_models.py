"""Random benchmark models of every family (xllm/random_model.py): the real shapes' hyperparameters,
synthetic byte-level BPE vocabularies laid out as GPT-2's, Llama 3's and Qwen2.5's, files that
xllm runs (against tests/reference.py) and llama.cpp's llama-bench loads."""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

import reference
from model_factory import dequantized64
from xllm import LLM
from xllm.config import llama3_freq_factors
from xllm.formats import layer_tensor_shapes, open_checkpoint
from xllm.random_model import SHAPES, make_random_model, resolve_shape, shape_config, synthetic_bpe_vocab
from xllm.tokenizer import CONTROL, UNUSED, Tokenizer

LLAMA_BENCH = os.path.join(os.environ.get("XLLM_PEERS", os.path.expanduser("~/.cache/xllm-peers")),
                           "llama.cpp", "build", "bin", "llama-bench")


def params(cfg) -> int:
    return sum(int(np.prod(s)) for s in layer_tensor_shapes(cfg).values())


@pytest.mark.parametrize("shape,arch,n_params", [("gpt2-124m", "gpt2", 124.4e6), ("llama-3.2-1b", "llama", 1.236e9),
                                                 ("qwen2.5-0.5b", "qwen2", 494.0e6)])
def test_real_shapes(shape, arch, n_params):
    """The parameter counts of the real models (GPT-2 124M; Llama 3.2 1B and Qwen2.5 0.5B, tied)."""
    cfg = shape_config(resolve_shape(shape)).validate(shape)
    assert cfg.arch == arch and cfg.tied_embeddings
    assert abs(params(cfg) - n_params) / n_params < 0.005
    if shape == "llama-3.2-1b":
        assert (cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.rope_scaling) == (32, 8, 128256, "llama3")
        assert cfg.rope_freq_factors == llama3_freq_factors(64, 500000.0, 32.0, 1.0, 4.0, 8192)
    if shape == "qwen2.5-0.5b":
        assert cfg.qkv_bias and cfg.rope_style == "neox" and (cfg.n_heads, cfg.n_kv_heads) == (14, 2)


@pytest.mark.parametrize("kind,n,bos,eos,specials", [
    ("gpt2", 50257, 50256, 50256, {50256: "<|endoftext|>"}),
    ("llama3", 128256, 128000, 128001, {128000: "<|begin_of_text|>", 128009: "<|eot_id|>",
                                        128255: "<|reserved_special_token_247|>"}),
    ("qwen2", 151936, 151643, 151643, {151644: "<|im_start|>", 151645: "<|im_end|>", 151657: "<tool_call>"}),
])
def test_synthetic_bpe_vocabularies(kind, n, bos, eos, specials):
    v = synthetic_bpe_vocab(kind, n)
    assert len(v.pieces) == n and (v.bos_id, v.eos_id) == (bos, eos)
    assert all(v.pieces[i] == t for i, t in specials.items())
    assert v.types[eos] == CONTROL
    if kind == "qwen2":                          # padded past the tokenizer as Qwen2.5's embedding is
        assert v.types[-1] == UNUSED
    tok = Tokenizer.from_vocab(v)
    text = "Once upon a time, über 42 ünïcode\n\tthings 🙂 happened"
    ids = tok.encode(text, bos=False)
    assert tok.decode(ids) == text and len(ids) < len(text.encode())       # merges apply
    assert tok.encode(specials[max(specials)], bos=False, special=True) == [max(specials)]


FAMILY_SHAPES = {
    "gpt2": dict(dim=64, hidden_dim=256, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=1000, max_seq_len=64,
                 family="gpt2", tied_embeddings=True),
    "llama3": dict(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, max_seq_len=64,
                   rope_theta=5e5, family="llama3", tied_embeddings=True),
    "qwen2": dict(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=151936, max_seq_len=64,
                  rope_theta=1e6, norm_eps=1e-6, family="qwen2", tied_embeddings=True),
}


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("random")
    return {(fam, dtype): make_random_model(root / f"{fam}-{dtype}.gguf", shape, dtype, std=0.5)
            for fam, shape in FAMILY_SHAPES.items() for dtype in ("f32", "q8_0")}


@pytest.mark.parametrize("fam", sorted(FAMILY_SHAPES))
@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_random_family_model_runs_like_the_reference(family_files, fam, dtype):
    ckpt = open_checkpoint(family_files[fam, dtype])
    cfg = ckpt.config
    assert cfg.arch == {"gpt2": "gpt2", "llama3": "llama", "qwen2": "qwen2"}[fam]
    assert ckpt.vocab.model == "gpt2" and len(ckpt.vocab.pieces) == cfg.vocab_size
    if fam == "llama3":
        assert cfg.rope_scaling == "llama3"
        np.testing.assert_allclose(cfg.rope_freq_factors, llama3_freq_factors(16, 5e5, 32.0, 1.0, 4.0, 8192),
                                   rtol=1e-6)
    if fam == "gpt2":                           # learned positions stay F32 in a quantized file
        assert ckpt.tensors["position_embd.weight"].ggml_type == 0
    ids = [int(t) for t in np.random.default_rng(1).integers(0, cfg.vocab_size, 20)]
    ref = reference.forward(cfg, dequantized64(ckpt.tensors), ids)
    got = LLM(ckpt.path, threads=2, kv_type="f32").logits(ids)     # the reference keeps f32 K/V
    if dtype == "f32":
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    else:                                       # Q8_0 activations in the matmuls: close, same top token
        assert np.abs(got - ref).max() / np.abs(ref).max() < 0.15
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.8


def test_make_model_cli(tmp_path, capsys):
    from xllm.benchmark import _module_main
    out = tmp_path / "m.gguf"
    assert _module_main(["make-model", "--shape", "custom", "--family", "qwen2", "--tied", "--dim", "64",
                         "--hidden-dim", "96", "--heads", "4", "--kv-heads", "2", "--vocab", "151936",
                         "--ctx", "64", "--layers", "1", "-o", str(out)]) == 0
    cfg = open_checkpoint(out).config
    assert (cfg.arch, cfg.qkv_bias, cfg.tied_embeddings, cfg.n_layers) == ("qwen2", True, True, 1)
    assert _module_main(["make-model", "--shape", "gpt2-124m", "--family", "llama", "-o", str(out)]) == 2
    assert "--family and --tied go with --shape custom" in capsys.readouterr().err
    assert "gpt2-124m" in SHAPES and "llama-3.2-1b" in SHAPES and "qwen2.5-0.5b" in SHAPES


@pytest.mark.parametrize("fam", sorted(FAMILY_SHAPES))
def test_llama_bench_loads_the_file(family_files, fam):
    """llama.cpp's llama-bench runs each family's random file (skipped where it is not built)."""
    if not os.path.exists(LLAMA_BENCH):
        pytest.skip(f"{LLAMA_BENCH} not built (../shared/tools/build-llama-cpp.sh)")
    run = subprocess.run([LLAMA_BENCH, "-m", str(family_files[fam, "q8_0"]), "-p", "8", "-n", "2", "-r", "1",
                          "-t", "1", "-o", "json"], capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-500:]
    import json
    rows = json.loads(run.stdout)
    assert {(r["n_prompt"], r["n_gen"]) for r in rows} == {(8, 0), (0, 2)}
