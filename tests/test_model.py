"""The whole model against the float64 reference, and the engine's invariants:
incremental == recompute, 1 thread == N threads, alone == in a batch."""
import numpy as np
import pytest

import xllm

from model_factory import dequantized64, random_checkpoint
from reference import forward
from xllm import LLM, SamplingParams, _kernels
from xllm.config import ModelConfig
from xllm.model import Chunk, Model
from xllm.formats import F16, F32, Q4_0, Q8_0

CONFIGS = {
    "gqa-untied": ModelConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=512,
                              max_seq_len=64, norm_eps=1e-5, rope_theta=1e4, tied_embeddings=False),
    "mha-tied": ModelConfig(dim=48, hidden_dim=100, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=512,
                            max_seq_len=64, norm_eps=1e-6, rope_theta=5e5, tied_embeddings=True),
    "wide-heads": ModelConfig(dim=72, hidden_dim=56, n_layers=3, n_heads=6, n_kv_heads=3, head_dim=16,
                              vocab_size=512, max_seq_len=80, norm_eps=1e-6, rope_theta=5e5),
    "odd-sizes": ModelConfig(dim=36, hidden_dim=33, n_layers=1, n_heads=3, n_kv_heads=1, vocab_size=512,
                             max_seq_len=50, norm_eps=1e-5, rope_theta=1e4, tied_embeddings=True),
}


def close(a, ref, rtol=1e-4):
    """Within rtol relative to the largest reference logit."""
    err = np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err < rtol, f"relative error {err:.2e} >= {rtol}"


def tokens(n, seed=0, vocab=512):
    return list(np.random.default_rng(seed).integers(0, vocab, n))


def model_logits(model, ids, chunk):
    """Logits of every position, feeding `ids` in chunks of `chunk` tokens."""
    assert model.kv.reserve(0, len(ids))
    out = []
    for s in range(0, len(ids), chunk):
        out.append(model.step([Chunk(0, ids[s:s + chunk], s, "all")])[0])
    model.kv.release(0)
    return np.concatenate(out)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("wtype", [F32, F16])
def test_logits_match_reference(simd, name, wtype):
    cfg = CONFIGS[name]
    ckpt = random_checkpoint(cfg, wtype, seed=len(name))
    ids = tokens(cfg.max_seq_len - 3, seed=1)
    ref = forward(cfg, dequantized64(ckpt.tensors), ids)
    model = Model(ckpt, threads=2, max_batch_tokens=64)
    close(model_logits(model, ids, 64), ref)


@pytest.mark.parametrize("wtype", [Q8_0, Q4_0])
def test_quantized_model_tracks_reference(simd, wtype):
    """Quantized weights: the reference with the same (dequantized) weights differs only by
    the Q8_0 rounding of activations."""
    cfg = ModelConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=32)
    ckpt = random_checkpoint(cfg, wtype, seed=3)
    ids = tokens(20, seed=4)
    ref = forward(cfg, dequantized64(ckpt.tensors), ids)
    got = model_logits(Model(ckpt, threads=2, max_batch_tokens=32), ids, 32)
    close(got, ref, rtol=3e-2)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("wtype", [F32, F16, Q8_0, Q4_0])
def test_incremental_equals_recompute(simd, wtype):
    """Decoding one token at a time gives the same bits as one prefill of the whole prefix."""
    cfg = CONFIGS["gqa-untied"]
    ckpt = random_checkpoint(cfg, wtype, seed=5)
    ids = tokens(40, seed=6)
    model = Model(ckpt, threads=2, max_batch_tokens=64)
    full = model_logits(model, ids, 64)
    assert np.array_equal(model_logits(model, ids, 1), full)
    assert np.array_equal(model_logits(model, ids, 7), full)


@pytest.mark.parametrize("wtype", [F32, F16, Q8_0, Q4_0])
def test_one_thread_equals_two(simd, wtype):
    cfg = CONFIGS["wide-heads"] if wtype == F32 else CONFIGS["gqa-untied"]
    ckpt = random_checkpoint(cfg, wtype, seed=7)
    ids = tokens(30, seed=8)
    model = Model(ckpt, threads=2, max_batch_tokens=64)
    two = model_logits(model, ids, 64)
    model.set_threads(1)
    assert np.array_equal(model_logits(model, ids, 64), two)


def test_small_steps_run_on_one_thread():
    """A step whose operators are each too small to share (the default team sizes) forks no
    thread: on a busy machine every barrier can cost a time slice (the shipped 260K model ran
    at 12.5 tok/s on 2 threads next to one busy process, 5,700 alone on one)."""
    ckpt = random_checkpoint(CONFIGS["gqa-untied"], Q8_0, seed=11)
    model = Model(ckpt, threads=2, max_batch_tokens=64)
    dec = model.decoder
    dec.set_work_per_thread(_kernels.DEFAULT_WORK_PER_THREAD_NS)
    before = dec.parallel_regions
    model_logits(model, tokens(30, seed=12), 1)
    assert dec.parallel_regions == before
    dec.set_work_per_thread(0)                        # every operator split (the tests' setting)
    model_logits(model, tokens(3, seed=12), 1)
    assert dec.parallel_regions - before == 3 * (8 * 2 + 1)   # 8 operators per layer + the classifier


@pytest.mark.parametrize("wtype", [F32, Q8_0])
def test_default_team_sizes_same_bits(simd, wtype):
    """Large matrices split over the threads while the norms, SwiGLU and short attention
    stay on one: the same bits as one thread and as every operator split."""
    cfg = ModelConfig(dim=512, hidden_dim=640, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=512,
                      max_seq_len=32)
    ckpt = random_checkpoint(cfg, wtype, seed=13)
    ids = tokens(12, seed=14)
    model = Model(ckpt, threads=2, max_batch_tokens=16)
    dec = model.decoder
    dec.set_work_per_thread(_kernels.DEFAULT_WORK_PER_THREAD_NS)
    r0 = dec.parallel_regions
    default = model_logits(model, ids, 1)
    r1 = dec.parallel_regions
    assert 0 < r1 - r0 < len(ids) * 9                 # some operators split, not all
    dec.set_work_per_thread(0)
    assert np.array_equal(model_logits(model, ids, 1), default)
    assert dec.parallel_regions - r1 == len(ids) * 9
    model.set_threads(1)
    assert np.array_equal(model_logits(model, ids, 4), default)


def test_work_per_thread_setting(monkeypatch):
    monkeypatch.setenv("XLLM_WORK_PER_THREAD_NS", "2500")
    assert _kernels.work_per_thread_ns() == 2500.0
    for bad in ("fast", "-1", "nan", "inf"):
        monkeypatch.setenv("XLLM_WORK_PER_THREAD_NS", bad)
        with pytest.raises(ValueError, match=f"XLLM_WORK_PER_THREAD_NS = '{bad}'"):
            _kernels.work_per_thread_ns()
    monkeypatch.delenv("XLLM_WORK_PER_THREAD_NS")
    assert _kernels.work_per_thread_ns() == _kernels.DEFAULT_WORK_PER_THREAD_NS
    model = Model(random_checkpoint(CONFIGS["odd-sizes"], F32, seed=1), threads=2)
    with pytest.raises(ValueError, match="expected >= 0"):
        model.decoder.set_work_per_thread(-5)


def test_openmp_spin_default():
    """xllm bounds OpenMP's spinning before the runtime loads (libgomp itself reports the
    value it uses): OPENMP_SPIN_US of this CPU's measured spins, at least the floor; and it
    leaves the user's own choice alone."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import xllm, xllm._kernels; print(xllm.OPENMP_SPINCOUNT)"

    def runtime_settings(extra):
        res = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_DISPLAY_ENV": "verbose", **extra},
                             capture_output=True, text=True, check=True)
        return res.stdout.strip(), res.stderr
    chosen, shown = runtime_settings({})
    assert f"GOMP_SPINCOUNT = '{chosen}'" in shown
    from xllm._spin import spin_ns
    assert int(chosen) >= xllm.OPENMP_MIN_SPINCOUNT
    # the child's own measurement: within 2x of this process's (both take the fastest run)
    expected = xllm.OPENMP_SPIN_US * 1000 / spin_ns()
    assert int(chosen) == xllm.OPENMP_MIN_SPINCOUNT or expected / 2 <= int(chosen) <= expected * 2
    chosen, shown = runtime_settings({"GOMP_SPINCOUNT": "7"})
    assert chosen == "7" and "GOMP_SPINCOUNT = '7'" in shown
    chosen, shown = runtime_settings({"OMP_WAIT_POLICY": "active"})
    assert chosen == "None" and "OMP_WAIT_POLICY = 'ACTIVE'" in shown


def test_spin_ns_rejects_bad_counts():
    from xllm._spin import spin_ns
    assert spin_ns(100, 1) > 0
    with pytest.raises(ValueError, match="n=0"):
        spin_ns(0, 1)


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("wtype", [F32, F16, Q8_0, Q4_0])
def test_alone_equals_in_batch_random_model(shared_models, threads, wtype):
    """More prompts than max_seqs, mixed lengths, a KV pool small enough to force waiting
    and preemption: every sequence's greedy tokens equal its tokens alone."""
    cfg = CONFIGS["gqa-untied"]
    ckpt = random_checkpoint(cfg, wtype, seed=9)
    tok = shared_models / "tok512.model"
    prompts = [tokens(n, seed=10 + n) for n in (1, 3, 9, 17, 2, 25, 5, 12)]
    alone_llm = LLM(ckpt, tokenizer=tok, threads=threads, max_batch_tokens=32, max_seqs=1)
    alone = [alone_llm.generate([p], greedy(20))[0].token_ids for p in prompts]
    # 12 blocks of 4 positions: fewer than the sequences need together, enough for any one
    llm = LLM(ckpt, tokenizer=tok, threads=threads, max_batch_tokens=16, max_seqs=5, kv_blocks=12, block_size=4)
    batched = llm.generate(prompts, greedy(20))
    assert [o.token_ids for o in batched] == alone
    assert llm.last_stats["preemptions"] > 0
    assert llm.model.kv.n_free == llm.model.kv.n_blocks and not llm.model.kv.tables


def test_logits_api(shared_models):
    cfg = CONFIGS["mha-tied"]
    ckpt = random_checkpoint(cfg, F32, seed=11)
    llm = LLM(ckpt, tokenizer=shared_models / "tok512.model", threads=2, max_batch_tokens=16)
    ids = tokens(40, seed=12)          # longer than max_batch_tokens: processed in chunks
    out = llm.logits(ids)
    assert out.shape == (40, 512) and out.dtype == np.float32
    close(out, forward(cfg, dequantized64(ckpt.tensors), ids))
    assert llm.model.kv.n_free == llm.model.kv.n_blocks
    with pytest.raises(ValueError, match="context length"):
        llm.logits(tokens(65))
    with pytest.raises(ValueError, match="out of range"):
        llm.logits([1, 512])


def test_context_overflow_is_an_error_before_any_work(shared_models):
    cfg = CONFIGS["gqa-untied"]           # context 64
    llm = LLM(random_checkpoint(cfg, F32), tokenizer=shared_models / "tok512.model", threads=1)
    with pytest.raises(ValueError, match="context length 64"):
        llm.generate([tokens(10), tokens(60)], greedy(10))
    assert llm.model.kv.n_free == llm.model.kv.n_blocks
    # exactly at the limit is fine: 60 prompt positions + 4 fed generated tokens = 64
    assert len(llm.generate([tokens(60)], greedy(5))[0].token_ids) == 5


def test_sampling_seeded_and_batched_alike(shared_models):
    llm = LLM(shared_models / "stories260K.bin", tokenizer=shared_models / "tok512.model", threads=2)
    params = SamplingParams(max_tokens=40, temperature=0.9, top_p=0.9, top_k=50, seed=123)
    a = llm.generate("Once upon a time", params)[0]
    b = llm.generate(["The dog", "Once upon a time", "Lily"], params)[1]
    assert a.token_ids == b.token_ids and a.text == b.text
    c = llm.generate("Once upon a time", SamplingParams(max_tokens=40, temperature=0.9, seed=124))[0]
    assert c.token_ids != a.token_ids


def test_stream_equals_generate(shared_models):
    llm = LLM(shared_models / "stories260K.bin", tokenizer=shared_models / "tok512.model", threads=1)
    text = llm.generate("Once upon a time", greedy(60))[0].text
    assert "".join(llm.stream("Once upon a time", greedy(60))) == text
    assert text.startswith(", there was a little girl named Lily.")
