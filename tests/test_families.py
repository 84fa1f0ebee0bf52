"""Every model family (llama with rope scaling and biases, qwen2, gpt2): the new kernels against
numpy on every SIMD level, the engine against the float64 forwards of tests/reference.py and
against transformers (from the HF directory and after xllm-convert), the invariants
(incremental == recompute, 1 thread == 2 threads, alone == in a batch), and the refusals."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import reference
from model_factory import dequantized64, random_checkpoint, stored, random_weights, write_gguf
from xllm import LLM, SamplingParams
from xllm import _kernels as K
from xllm.config import ModelConfig, llama3_freq_factors
from xllm.formats import F16, F32, Q8_0, Checkpoint, open_checkpoint
from xllm.model import Chunk, Model

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

_LLAMA = dict(dim=64, hidden_dim=96, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=512, max_seq_len=64)
CONFIGS = {
    "llama3-rope": ModelConfig(**_LLAMA, rope_scaling="llama3",
                               rope_freq_factors=llama3_freq_factors(8, 1e4, 8.0, 1.0, 4.0, 32)),
    "linear-rope-mha-tied": ModelConfig(**dict(_LLAMA, n_kv_heads=8), rope_scaling="linear", rope_factor=4.0,
                                        tied_embeddings=True),
    "llama-all-biases": ModelConfig(**_LLAMA, qkv_bias=True, out_bias=True, ffn_bias=True),
    "qwen2": ModelConfig(**_LLAMA, arch="qwen2", rope_style="neox", qkv_bias=True, rope_theta=1e6),
    "qwen2-fused-qkv-tied": ModelConfig(**dict(_LLAMA, n_heads=4, head_dim=24), arch="qwen2", rope_style="neox",
                                        qkv_bias=True, fused_qkv=True, tied_embeddings=True),
    "gpt2": ModelConfig(dim=64, hidden_dim=256, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=512,
                        max_seq_len=48, arch="gpt2", norm="layer", activation="gelu_tanh", position="learned",
                        qkv_bias=True, out_bias=True, ffn_bias=True, fused_qkv=True, tied_embeddings=True),
    "gpt2-untied-odd": ModelConfig(dim=36, hidden_dim=50, n_layers=3, n_heads=3, n_kv_heads=3, vocab_size=512,
                                   max_seq_len=40, norm_eps=1e-6, arch="gpt2", norm="layer",
                                   activation="gelu_tanh", position="learned", qkv_bias=True, out_bias=True,
                                   ffn_bias=True, fused_qkv=True),
}
QUANTIZABLE = [n for n, c in CONFIGS.items() if c.dim % 32 == 0 and c.hidden_dim % 32 == 0 and c.q_dim % 32 == 0]


def rel_err(a, ref):
    return np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max()


def tokens(n, seed=0, vocab=512):
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab, n)]


def model_logits(model, ids, chunk):
    assert model.kv.reserve(0, len(ids))
    out = [model.step([Chunk(0, ids[s:s + chunk], s, "all")])[0] for s in range(0, len(ids), chunk)]
    model.kv.release(0)
    return np.concatenate(out)


# ----------------------------------------------------------------------------- kernels

SIZES = [1, 7, 8, 33, 100, 768]


@pytest.mark.parametrize("dim", SIZES)
def test_layernorm(simd, dim):
    rng = np.random.default_rng(dim)
    x = (3.0 + 2.0 * rng.standard_normal((5, dim))).astype(np.float32)      # an offset mean
    w, b = rng.standard_normal(dim).astype(np.float32), rng.standard_normal(dim).astype(np.float32)
    ref = reference.layernorm(x.astype(np.float64), w, b, 1e-5)
    assert np.abs(K.layernorm(x, w, b, 1e-5) - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("n", SIZES)
def test_gelu_tanh(simd, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 4
    ref = reference.gelu_tanh(x.astype(np.float64))
    np.testing.assert_allclose(K.gelu_tanh(x), ref, rtol=2e-6, atol=1e-7)


def test_gelu_tanh_extremes(simd):
    """Far into both tails (where exp overflows and is clamped) and around 0."""
    x = np.array([-1e30, -200.0, -60.0, -10.0, -5.0, -1e-3, -1e-30, 0.0, 1e-30, 1e-3, 5.0, 10.0, 60.0,
                  200.0, 1e30] * 2, dtype=np.float32)
    with np.errstate(over="ignore"):
        ref = reference.gelu_tanh(x.astype(np.float64))
    np.testing.assert_allclose(K.gelu_tanh(x), ref, rtol=2e-6, atol=1e-37)


@pytest.mark.parametrize("n", SIZES)
def test_add_bias(simd, n):
    rng = np.random.default_rng(n)
    x, b = rng.standard_normal((3, n)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(K.add_bias(x, b), x + b)


def test_layernorm_and_gelu_same_bits_on_every_level():
    """The scalar and AVX2 paths follow the same float operations: identical bits."""
    rng = np.random.default_rng(0)
    x = (1.0 + rng.standard_normal((4, 203))).astype(np.float32)
    w, b = rng.standard_normal(203).astype(np.float32), rng.standard_normal(203).astype(np.float32)
    before = K.simd_level()
    results = []
    try:
        for level in ("scalar", "avx2", "avx512"):
            if K.set_simd_level(level) == level:
                results.append((K.layernorm(x, w, b, 1e-5), K.gelu_tanh(x * 6)))
    finally:
        K.set_simd_level(before)
    for ln, g in results[1:]:
        np.testing.assert_array_equal(ln, results[0][0])
        np.testing.assert_array_equal(g, results[0][1])


@pytest.mark.parametrize("neox", [False, True])
def test_rope_styles_and_scaled_frequencies(neox):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3 * 16)).astype(np.float32)
    pos = np.array([0, 1, 5, 17, 40, 63], dtype=np.int32)
    freqs = reference.inv_freq(16, 5e5, 2.0, llama3_freq_factors(16, 5e5, 8.0, 1.0, 4.0, 32))
    ref = reference.rope(x.astype(np.float64).reshape(6, 3, 16), pos, 5e5, neox, freqs).reshape(6, -1)
    got = K.rope(x.copy(), pos, 3, 16, 5e5, neox=neox, inv_freq=freqs)
    assert rel_err(got, ref) < 1e-5


def test_llama3_factors_match_transformers():
    """config.llama3_freq_factors (llama.cpp's formula) against transformers' own llama3 inverse
    frequencies."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    params = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64, "rope_theta": 5e5}
    cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, rope_parameters=params)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ours = reference.inv_freq(128, 5e5, 1.0, llama3_freq_factors(128, 5e5, 8.0, 1.0, 4.0, 64))
    np.testing.assert_allclose(inv_freq.double().numpy(), ours, rtol=1e-6)


# ----------------------------------------------------------------------------- engine vs reference.py

@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("wtype", [F32, F16])
def test_logits_match_reference(simd, name, wtype):
    cfg = CONFIGS[name]
    ckpt = random_checkpoint(cfg, wtype, seed=len(name))
    ids = tokens(cfg.max_seq_len - 2, seed=1)
    ref = reference.forward(cfg, dequantized64(ckpt.tensors), ids)
    got = model_logits(Model(ckpt, threads=2, max_batch_tokens=64, kv_type="f32"), ids, 64)  # the reference's keys/values are exact: the f32 cache
    assert rel_err(got, ref) < 1e-4


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_q8_0_tracks_reference(name):
    cfg = CONFIGS[name]
    ckpt = random_checkpoint(cfg, Q8_0, seed=3)
    ids = tokens(30, seed=4)
    ref = reference.forward(cfg, dequantized64(ckpt.tensors), ids)
    got = model_logits(Model(ckpt, threads=2, max_batch_tokens=64), ids, 64)
    assert rel_err(got, ref) < 3e-2
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


# ----------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("name", list(CONFIGS))
def test_incremental_equals_recompute(simd, name):
    cfg = CONFIGS[name]
    wtype = Q8_0 if name in QUANTIZABLE else F16
    model = Model(random_checkpoint(cfg, wtype, seed=5), threads=2, max_batch_tokens=64)
    ids = tokens(cfg.max_seq_len - 1, seed=6)
    full = model_logits(model, ids, 64)
    assert np.array_equal(model_logits(model, ids, 1), full)
    assert np.array_equal(model_logits(model, ids, 7), full)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_thread_equals_two(simd, name):
    cfg = CONFIGS[name]
    model = Model(random_checkpoint(cfg, F32, seed=7), threads=2, max_batch_tokens=64)
    ids = tokens(30, seed=8)
    two = model_logits(model, ids, 64)
    model.set_threads(1)
    assert np.array_equal(model_logits(model, ids, 64), two)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_alone_equals_in_batch(shared_models, name):
    """More prompts than max_seqs and a KV pool that forces preemption: each sequence's
    greedy tokens equal its tokens alone."""
    cfg = CONFIGS[name]
    ckpt = random_checkpoint(cfg, Q8_0 if name in QUANTIZABLE else F32, seed=9)
    tok = shared_models / "tok512.model"
    prompts = [tokens(n, seed=10 + n) for n in (1, 3, 9, 17, 2, 12)]
    greedy = SamplingParams(max_tokens=12, temperature=0.0, stop_at_eos=False)
    alone_llm = LLM(ckpt, tokenizer=tok, threads=2, max_batch_tokens=32, max_seqs=1)
    alone = [alone_llm.generate([p], greedy)[0].token_ids for p in prompts]
    llm = LLM(ckpt, tokenizer=tok, threads=2, max_batch_tokens=16, max_seqs=4, kv_blocks=10, block_size=4)
    assert [o.token_ids for o in llm.generate(prompts, greedy)] == alone
    assert llm.last_stats["preemptions"] > 0


def test_generation_stops_at_any_eos_id(shared_models):
    """eos_ids (Llama 3's <|end_of_text|>, <|eot_id|>, ...): every one of them ends generation."""
    cfg = CONFIGS["qwen2"]
    ckpt = random_checkpoint(cfg, F32, seed=11)
    tok = shared_models / "tok512.model"
    prompt = tokens(5, seed=12)
    free = LLM(ckpt, tokenizer=tok, threads=1).generate([prompt], SamplingParams(
        max_tokens=8, temperature=0.0, stop_at_eos=False))[0].token_ids
    stop = free[3]
    eos = next(i for i in range(3, 512) if i not in free)
    ckpt2 = dataclasses.replace(ckpt, config=dataclasses.replace(cfg, eos_id=eos, eos_ids=(eos, stop)))
    llm = LLM(ckpt2, tokenizer=tok, threads=1)
    assert {eos, stop} <= llm.stop_ids
    ends = llm.stop_ids | {cfg.bos_id}                  # the tokenizer's EOG ids and BOS end it too
    end = next(i for i, t in enumerate(free) if t in ends)
    assert llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0))[0].token_ids == free[:end + 1]


# ----------------------------------------------------------------------------- GGUF files

@pytest.mark.parametrize("name", ["llama3-rope", "linear-rope-mha-tied", "qwen2-fused-qkv-tied", "gpt2"])
def test_gguf_roundtrip_keeps_the_architecture(tmp_path, name):
    """A GGUF written with llama.cpp's keys and tensor names reads back as the same config."""
    cfg = CONFIGS[name]
    tensors = stored(random_weights(cfg, seed=13), F16)
    write_gguf(tmp_path / "m.gguf", cfg, tensors)
    back = open_checkpoint(tmp_path / "m.gguf")
    c = back.config
    assert (c.arch, c.norm, c.activation, c.position, c.rope_style, c.rope_scaling, c.qkv_bias, c.fused_qkv,
            c.tied_embeddings, c.max_seq_len) == (cfg.arch, cfg.norm, cfg.activation, cfg.position,
                                                  cfg.rope_style, cfg.rope_scaling, cfg.qkv_bias, cfg.fused_qkv,
                                                  cfg.tied_embeddings, cfg.max_seq_len)
    assert c.rope_factor == cfg.rope_factor
    if cfg.rope_freq_factors:
        np.testing.assert_allclose(c.rope_freq_factors, cfg.rope_freq_factors, rtol=1e-7)
    ids = tokens(20, seed=14)
    ref = reference.forward(cfg, dequantized64(tensors), ids)
    assert rel_err(model_logits(Model(back, threads=2), ids, 64), ref) < 1e-4


def _gguf_with(tmp_path, cfg, extra_keys=None, extra_tensors=None, arch=None):
    """A valid GGUF of cfg, then the same with extra keys/tensors (gguf's writer directly)."""
    from gguf import GGUFWriter
    from xllm.convert import add_model_metadata
    tensors = stored(random_weights(cfg, seed=15), F32)
    tensors.update(extra_tensors or {})
    path = tmp_path / "bad.gguf"
    w = GGUFWriter(str(path), arch or cfg.arch)
    add_model_metadata(w, cfg, "test")
    for k, v in (extra_keys or {}).items():
        w.add_string(k, v) if isinstance(v, str) else w.add_float32(k, v)
    for n, t in tensors.items():
        w.add_tensor(n, np.asarray(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


GGUF_REFUSALS = {
    "yarn": ("llama3-rope", {"llama.rope.scaling.type": "yarn"}, None, None,
             r"llama.rope.scaling.type = 'yarn', expected one of none, linear"),
    "sliding_window": ("qwen2", {"qwen2.attention.sliding_window": 4096.0}, None, None,
                       r"'qwen2.attention.sliding_window' is set: sliding-window attention is not supported"),
    "other_architecture": ("qwen2", None, None, "phi3",
                           r"general.architecture = 'phi3', expected one of llama, qwen2, gpt2"),
    "unused_tensor": ("qwen2", None, {"output.bias": (512,)}, None, r"unexpected tensor.*'output.bias'.*qwen2"),
    "llama3_and_linear": ("llama3-rope", {"llama.rope.scaling.factor": 2.0}, None, None,
                          r"both rope_freqs.weight and llama.rope.scaling.factor"),
}


@pytest.mark.parametrize("case", sorted(GGUF_REFUSALS))
def test_gguf_refusals(tmp_path, case):
    from xllm.formats import Tensor
    name, keys, extra, arch, message = GGUF_REFUSALS[case]
    extra = {n: Tensor(n, F32, s, np.zeros(s, np.float32)) for n, s in (extra or {}).items()}
    path = _gguf_with(tmp_path, CONFIGS[name], keys, extra, arch)
    with pytest.raises(ValueError, match=message):
        open_checkpoint(path)


# ----------------------------------------------------------------------------- the checkpoint type itself

def test_fused_qkv_is_split_without_copies():
    cfg = CONFIGS["gpt2"]
    ckpt = random_checkpoint(cfg, F16, seed=16)
    fused = ckpt.tensors["blk.0.attn_qkv.weight"].data
    from xllm.model import split_fused_qkv
    matrices = {n: t for n, t in ckpt.tensors.items() if t.data.ndim == 2}
    vectors = {"blk.0.attn_qkv.bias": np.arange(3 * 64, dtype=np.float32)}
    split_fused_qkv(dataclasses.replace(cfg, n_layers=1), matrices, vectors)
    for part, r0 in (("attn_q", 0), ("attn_k", 64), ("attn_v", 128)):
        view = matrices[f"blk.0.{part}.weight"].data
        assert np.shares_memory(view, fused) and np.array_equal(view, fused[r0:r0 + 64])
        assert vectors[f"blk.0.{part}.bias"][0] == r0
    assert isinstance(ckpt, Checkpoint)


# ----------------------------------------------------------------------------- transformers, HF directories and GGUF

HF_CASES = [  # (FAMILY_CASES name, safetensors dtype): every family and dtype at least once
    ("llama-gqa", "F32"), ("llama-mha-tied", "BF16"), ("llama3-rope", "F32"), ("llama3-rope", "BF16"),
    ("llama-linear-rope", "F16"), ("llama-biases", "F32"), ("qwen2", "BF16"), ("qwen2-tied-mha", "F32"),
    ("gpt2", "F32"), ("gpt2", "F16"), ("gpt2-untied", "BF16"),
]
HF_IDS = [1, 5, 77, 300, 2, 9, 400, 13, 511, 0, 42, 33, 35, 200, 17, 88, 64, 3, 450, 12]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Each case built once by transformers, with its logits and 10 greedy tokens."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_fixtures import make_transformers_dir, transformers_greedy, transformers_logits
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for case, dtype in HF_CASES:
        path = make_transformers_dir(root, case, dtype, seed=len(case))
        out[case, dtype] = (path, transformers_logits(path, HF_IDS), transformers_greedy(path, HF_IDS[:6], 10))
    return out


def _check_against_transformers(llm, logits, greedy):
    assert rel_err(llm.logits(HF_IDS), logits) < 1e-4
    params = SamplingParams(max_tokens=10, temperature=0.0, stop_at_eos=False)
    assert llm.generate([HF_IDS[:6]], params)[0].token_ids == greedy


@pytest.mark.parametrize("case,dtype", HF_CASES, ids=[f"{c}-{d}" for c, d in HF_CASES])
def test_hf_directory_matches_transformers(hf_dirs, case, dtype):
    path, logits, greedy = hf_dirs[case, dtype]
    _check_against_transformers(LLM(str(path), threads=2, kv_type="f32"), logits, greedy)  # exact KV, as transformers


@pytest.mark.parametrize("case,dtype", HF_CASES, ids=[f"{c}-{d}" for c, d in HF_CASES])
def test_converted_gguf_matches_transformers(hf_dirs, tmp_path, case, dtype):
    """xllm-convert writes the family's GGUF (llama.cpp's keys and names); it runs the same."""
    from gguf import GGUFReader
    from xllm.convert import main
    path, logits, greedy = hf_dirs[case, dtype]
    out = tmp_path / "m.gguf"
    assert main([str(path), "-o", str(out)]) == 0
    reader = GGUFReader(str(out))
    arch = {"llama": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}[case.split("-")[0].replace("llama3", "llama")]
    assert reader.fields["general.architecture"].contents() == arch
    names = {t.name for t in reader.tensors}
    assert ("position_embd.weight" in names) == (arch == "gpt2")
    assert ("blk.0.attn_qkv.weight" in names) == (arch == "gpt2")
    assert ("rope_freqs.weight" in names) == (case == "llama3-rope")
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2" or case == "llama-biases")
    if case == "llama-linear-rope":
        assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
        assert reader.fields["llama.rope.scaling.factor"].contents() == 4.0
    if arch == "gpt2":
        assert "gpt2.attention.layer_norm_epsilon" in reader.fields
    _check_against_transformers(LLM(str(out), threads=2, kv_type="f32"), logits, greedy)  # exact KV, as transformers


HF_REFUSALS = {  # case, config.json changes, message
    "qwen2_sliding_window": ("qwen2", {"use_sliding_window": True}, r"use_sliding_window = True"),
    "gpt2_erf_gelu": ("gpt2", {"activation_function": "gelu"},
                      r"activation_function = 'gelu', expected 'gelu_new' or"),
    "gpt2_layer_scaled": ("gpt2", {"scale_attn_by_inverse_layer_idx": True},
                          r"scale_attn_by_inverse_layer_idx = True"),
    "yarn": ("llama-gqa", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None},
             r"rope type 'yarn' is not supported \(supported: default, linear, llama3\)"),
    "other_architecture": ("llama-gqa", {"architectures": ["Phi3ForCausalLM"]},
                           r"expected one of LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel"),
}


@pytest.mark.parametrize("case", sorted(HF_REFUSALS))
def test_hf_refusals(tmp_path, case):
    import json
    pytest.importorskip("transformers")
    from hf_fixtures import make_transformers_dir
    family, changes, message = HF_REFUSALS[case]
    path = make_transformers_dir(tmp_path, family, "F32")
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").write_bytes(b"never read")
    with pytest.raises(ValueError, match=message):
        open_checkpoint(path)


# ----------------------------------------------------------------------------- real byte-level BPE vocabularies

VOCABS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "vocab")
BPE_CASES = {  # FAMILY_CASES name, vocabulary, config changes
    "gpt2": ("gpt2", "ggml-vocab-gpt-2.gguf", dict(n_embd=32, n_head=2, n_layer=1, n_positions=40,
                                                    vocab_size=50257, bos_token_id=50256, eos_token_id=50256)),
    "llama3": ("llama3-rope", "ggml-vocab-llama-bpe.gguf",
               dict(hidden_size=32, num_hidden_layers=1, tie_word_embeddings=True, vocab_size=128256,
                    bos_token_id=128000, eos_token_id=[128001, 128009])),
}


@pytest.mark.parametrize("name", sorted(BPE_CASES))
def test_bpe_vocabulary_directory_and_gguf(tmp_path, name):
    """An HF directory with only tokenizer.json (GPT-2's, Llama 3's vocabulary): the text
    generated greedily equals transformers' tokens, from the directory and after xllm-convert
    (a GGUF with tokenizer.ggml.model gpt2); Llama 3's config eos list ends generation."""
    pytest.importorskip("transformers")
    from gguf import GGUFReader
    from hf_fixtures import make_transformers_dir, transformers_greedy
    from test_bpe_tokenizer import write_hf_dir
    from xllm.convert import load_vocab, main
    case, vocab_file, config = BPE_CASES[name]
    path = make_transformers_dir(tmp_path, case, "BF16", seed=2, tokenizer=False, **config)
    write_hf_dir(load_vocab(os.path.join(VOCABS, vocab_file)), path)
    params = SamplingParams(max_tokens=8, temperature=0.0, stop_at_eos=False)
    llm = LLM(str(path), threads=2)
    out = llm.generate("Hello world, it is", params)[0]
    from tokenizers import Tokenizer as HFTokenizer    # the prompt as the model's own tokenizer reads it
    assert out.prompt_token_ids == HFTokenizer.from_file(str(path / "tokenizer.json")).encode("Hello world, it is").ids
    assert out.token_ids == transformers_greedy(path, out.prompt_token_ids, 8)
    assert llm.stop_ids >= set(np.atleast_1d(config["eos_token_id"]).tolist())
    gguf_path = tmp_path / "m.gguf"
    assert main([str(path), "-o", str(gguf_path)]) == 0
    assert GGUFReader(str(gguf_path)).fields["tokenizer.ggml.model"].contents() == "gpt2"
    again = LLM(str(gguf_path), threads=2).generate("Hello world, it is", params)[0]
    assert (again.prompt_token_ids, again.token_ids, again.text) == (out.prompt_token_ids, out.token_ids, out.text)


LLAMA_SIMPLE = os.path.join(os.environ.get("XLLM_PEERS", os.path.expanduser("~/.cache/xllm-peers")),
                            "llama.cpp", "build", "bin", "llama-simple")


@pytest.mark.parametrize("case,dtype", [("llama3-rope", "F32"), ("llama-linear-rope", "F16"),
                                        ("llama-biases", "F32"), ("qwen2", "BF16"), ("gpt2", "F32"),
                                        ("gpt2-untied", "BF16")])
def test_llama_cpp_runs_the_converted_file(hf_dirs, tmp_path, case, dtype):
    """llama.cpp (../shared/tools/build-llama-cpp.sh) greedily continues the converted file
    with the same text as xllm (skipped where llama.cpp has not been built)."""
    import subprocess
    from xllm.convert import main
    if not os.path.exists(LLAMA_SIMPLE):
        pytest.skip(f"{LLAMA_SIMPLE} not built (../shared/tools/build-llama-cpp.sh)")
    out = tmp_path / "m.gguf"
    assert main([str(hf_dirs[case, dtype][0]), "-o", str(out)]) == 0
    text = LLM(str(out), threads=2).generate("Once upon a time", SamplingParams(
        max_tokens=12, temperature=0.0, stop_at_eos=False))[0].text
    run = subprocess.run([LLAMA_SIMPLE, "-m", str(out), "-n", "12", "Once upon a time"],
                         capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-500:]
    assert ("Once upon a time" + text) in run.stdout.decode("utf-8", errors="replace")
