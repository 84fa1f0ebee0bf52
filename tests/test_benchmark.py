"""The benchmark tools on a tiny random model: probes, random models, CLIs, prompt files.

No timing assertions: only that the tools run, measure positive finite numbers, produce the
documented fields, and refuse bad input with exit code 2 and one line.
"""
import json
import math
import os

import numpy as np
import pytest

from xllm import benchmark as bm

_probe = pytest.importorskip("xllm._probe")

QUICK_LIMITS = dict(bandwidth_bytes=8 << 20, passes=2, compute_iters=200_000, repeats=2)


def _finite_positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


# ----------------------------------------------------------------------------- probes

@pytest.mark.parametrize("threads", [1, 2])
def test_probes_return_positive_finite_numbers(threads):
    for simd in ("avx2", "scalar"):
        for x in _probe.read_bandwidth(4 << 20, threads, 2, simd=simd):
            assert _finite_positive(x)
        for x in _probe.fma_peak(threads, 100_000, 2, simd=simd):
            assert _finite_positive(x)
        for x in _probe.int8_peak(threads, 100_000, 2, simd=simd):
            assert _finite_positive(x)
    if _probe.has_avx512():
        assert all(_finite_positive(x) for x in _probe.fma_peak(threads, 100_000, 2, simd="avx512"))
    if _probe.has_vnni():
        for method in ("vnni", "vnni512", "maddubs512"):
            assert all(_finite_positive(x) for x in _probe.int8_peak(threads, 100_000, 2, method=method))
    if _probe.has_amx():
        assert all(_finite_positive(x) for x in _probe.int8_peak(threads, 100_000, 2, method="amx"))
    if _probe.has_amx(bf16=True):
        assert all(_finite_positive(x) for x in _probe.amx_bf16_peak(threads, 100_000, 2))


def test_probe_bad_arguments():
    with pytest.raises(ValueError):
        _probe.read_bandwidth(16, 1, 1)
    with pytest.raises(ValueError):
        _probe.fma_peak(0)
    with pytest.raises(ValueError):
        _probe.int8_peak(1, 1000, 1, method="bogus")
    with pytest.raises(ValueError):
        _probe.fma_peak(1, 1000, 1, simd="neon")
    if not _probe.has_amx():
        with pytest.raises(ValueError, match="AMX"):
            _probe.int8_peak(1, 1000, 1, method="amx")
    if not _probe.has_avx512():
        with pytest.raises(ValueError, match="AVX-512"):
            _probe.fma_peak(1, 1000, 1, simd="avx512")


def test_measure_limits_fields():
    lim = bm.measure_limits(2, **QUICK_LIMITS)
    for key in ("read_gbps", "fma_gflops", "int8_gops"):
        assert _finite_positive(lim[key])
    assert lim["threads"] == 2 and lim["simd"] in ("amx", "avx512", "avx2", "scalar")
    assert lim["int8_kernel_gops"] in (lim["int8_gops"], lim["int8_vnni_gops"], lim["int8_vnni512_gops"],
                                       lim["amx_int8_gops"])
    assert lim["fma_gflops"] in (lim["fma256_gflops"], lim["fma512_gflops"])


def test_kernel_peak_follows_the_instruction():
    """Each matmul is held to the peak of the instruction its kernel runs: by level, weight
    type and token count (AMX for Q8_0/Q4_0 and the K-quants from AMX_MIN_TOKENS[type]
    tokens; fewer tokens on the 512-bit VNNI tiles, one Q8_0/Q4_0 token on 256-bit VNNI)."""
    from xllm import _kernels
    from xllm.formats import F32, Q4_0, Q8_0
    from xllm.formats.types import Q4_1, Q4_K, Q6_K
    n8, n4 = _kernels.AMX_MIN_TOKENS[Q8_0], _kernels.AMX_MIN_TOKENS[Q4_0]
    nk4, nk6 = _kernels.AMX_MIN_TOKENS[Q4_K], _kernels.AMX_MIN_TOKENS[Q6_K]
    lim = {"simd": "amx", "fma256_gflops": 1.0, "fma512_gflops": 2.0, "int8_gops": 3.0, "int8_vnni_gops": 4.0,
           "int8_vnni512_gops": 5.0, "amx_int8_gops": 6.0,
           "amx_min_tokens": {"Q8_0": n8, "Q4_0": n4, "Q4_K": nk4, "Q6_K": nk6}}
    assert bm.kernel_peak(lim, Q4_K, nk4) == (6.0, "AMX int8")
    assert bm.kernel_peak(lim, Q6_K, nk6) == (6.0, "AMX int8")
    assert bm.kernel_peak(lim, Q4_K, nk4 - 1) == (5.0, "512-bit VNNI")
    assert bm.kernel_peak(dict(lim, simd="avx512"), Q4_K, 128) == (5.0, "512-bit VNNI")
    from xllm.benchmark.limits import _AMX_TYPES
    assert set(_AMX_TYPES.values()) == set(_kernels.AMX_MIN_TOKENS)
    assert bm.kernel_peak(lim, Q8_0, n8) == (6.0, "AMX int8")
    assert bm.kernel_peak(lim, Q8_0, n8 - 1) == (5.0, "512-bit VNNI")
    assert bm.kernel_peak(lim, Q4_0, n4) == (6.0, "AMX int8")
    assert bm.kernel_peak(lim, Q4_0, n4 - 1) == (5.0, "512-bit VNNI")
    assert bm.kernel_peak(lim, Q4_0, 1) == (4.0, "256-bit VNNI")
    assert bm.kernel_peak(lim, Q4_1, 128) == (4.0, "256-bit VNNI")
    assert bm.kernel_peak(lim, F32, 128) == (2.0, "512-bit FMA")
    assert bm.kernel_peak(lim, F32, 1) == (1.0, "256-bit FMA")
    assert bm.kernel_peak(lim, None, 128) == (1.0, "256-bit FMA")
    avx2 = dict(lim, simd="avx2")
    assert bm.kernel_peak(avx2, Q8_0, 128) == (3.0, "maddubs")
    assert bm.kernel_peak(avx2, F32, 128) == (1.0, "256-bit FMA")
    assert bm.kernel_peak(dict(lim, simd="avx512"), Q8_0, 128) == (5.0, "512-bit VNNI")
    assert bm.kernel_peak(dict(lim, simd="avx512"), Q8_0, 1) == (4.0, "256-bit VNNI")


# ----------------------------------------------------------------------------- random models

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    paths = {}
    for dtype in ("f32", "q8_0"):
        paths[dtype] = bm.make_random_model(d / f"tiny-{dtype}.gguf", "tiny", dtype, seed=1)
    return paths


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_make_random_model_loads_and_generates(tmp_path, dtype):
    from xllm import LLM, SamplingParams
    from xllm.formats import open_checkpoint
    path = bm.make_random_model(tmp_path / "m.gguf", "tiny", dtype, n_layers=1, seed=3)
    ckpt = open_checkpoint(path)
    assert ckpt.config.n_layers == 1 and ckpt.config.dim == 64 and ckpt.config.n_kv_heads == 2
    assert ckpt.tensors["blk.0.attn_q.weight"].ggml_type == bm.DTYPES[dtype]
    assert len(ckpt.vocab.pieces) == 512
    w = ckpt.tensors["blk.0.ffn_up.weight"].to_float32()
    assert 0.015 < float(w.std()) < 0.025                     # ~N(0, 0.02)
    llm = LLM(path, threads=1)
    out = llm.generate(["Once upon a time"], SamplingParams(max_tokens=4, temperature=0.0))
    assert len(out[0].token_ids) == 4
    assert np.isfinite(llm.logits([1, 5, 7])).all()
    assert not os.path.exists(str(path) + f".{os.getpid()}.tmp")


@pytest.mark.parametrize("dtype", ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"])
def test_make_random_kquant_model(tmp_path, dtype):
    """K types: random valid blocks whose values spread like N(0, 0.02); the model runs."""
    from xllm import LLM
    from xllm.formats import open_checkpoint
    shape = dict(dim=256, hidden_dim=512, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64)
    path = bm.make_random_model(tmp_path / "k.gguf", shape, dtype, seed=3)
    ckpt = open_checkpoint(path)
    assert ckpt.tensors["blk.0.ffn_down.weight"].ggml_type == bm.DTYPES[dtype]
    w = ckpt.tensors["blk.0.ffn_up.weight"].to_float32()
    assert 0.015 < float(w.std()) < 0.025 and abs(float(w.mean())) < 0.002
    assert np.isfinite(LLM(path, threads=1).logits([1, 5, 7])).all()
    cost = bm.CostModel(ckpt)
    assert cost.types["ffn_down"] == bm.DTYPES[dtype]
    if dtype == "q4_k":                         # the benchmark itself names and counts the type
        assert bm.main(["--weight", str(path), "--threads", "1", "--prompt-tokens", "4", "--gen-tokens", "2",
                        "--repeats", "1", "--bandwidth-mb", "8", "--probe-iters", "200000"]) == 0


def test_random_model_is_deterministic(tmp_path):
    a = bm.make_random_model(tmp_path / "a.gguf", "tiny", "q4_0", seed=5)
    b = bm.make_random_model(tmp_path / "b.gguf", "tiny", "q4_0", seed=5)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_custom_shape_and_bad_shapes(tmp_path):
    from xllm.formats import open_checkpoint
    p = bm.make_random_model(tmp_path / "c.gguf", dict(dim=96, hidden_dim=256, n_layers=1, n_heads=3,
                                                       n_kv_heads=1, vocab_size=300, max_seq_len=64), "f16")
    cfg = open_checkpoint(p).config
    assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (96, 3, 1, 300)
    with pytest.raises(ValueError, match="shape"):
        bm.make_random_model(tmp_path / "x.gguf", "gpt-5", "f32")
    with pytest.raises(ValueError, match="dtype"):
        bm.make_random_model(tmp_path / "x.gguf", "tiny", "iq2_xxs")
    with pytest.raises(ValueError, match="multiples of 256"):
        bm.make_random_model(tmp_path / "x.gguf", "tiny", "q4_k")
    with pytest.raises(ValueError, match="multiples of 32"):
        bm.make_random_model(tmp_path / "x.gguf", dict(dim=72, n_heads=4, hidden_dim=192), "f32")
    with pytest.raises(ValueError, match="259"):
        bm.synthetic_vocab(100)
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))


def test_real_shapes_are_the_documented_ones():
    t = bm.resolve_shape("tinyllama-1.1b")
    assert (t["dim"], t["hidden_dim"], t["n_layers"], t["n_heads"], t["n_kv_heads"], t["vocab_size"],
            t["max_seq_len"]) == (2048, 5632, 22, 32, 4, 32000, 2048)
    l7 = bm.resolve_shape("llama2-7b-layers")
    assert (l7["dim"], l7["hidden_dim"], l7["n_layers"], l7["n_heads"], l7["n_kv_heads"]) == (4096, 11008, 2, 32, 32)
    s = bm.resolve_shape("stories110m")
    assert (s["dim"], s["hidden_dim"], s["n_layers"], s["n_heads"], s["max_seq_len"]) == (768, 2048, 12, 12, 1024)
    assert bm.resolve_shape("llama2-7b-layers", n_layers=1)["n_layers"] == 1


def test_synthetic_vocab_round_trips_text():
    from xllm.tokenizer import Tokenizer
    tok = Tokenizer.from_vocab(bm.synthetic_vocab(32000))
    assert tok.vocab_size == 32000
    for text in ("Once upon a time, there was a cat.", "naïve café — 東京 🙂"):
        ids = tok.encode(text, bos=True)
        assert ids[0] == 1 and tok.decode(ids) == text


# ----------------------------------------------------------------------------- cost model

def test_cost_model_counts_matmul_flops(tiny):
    from xllm.model import Chunk
    from xllm.formats import open_checkpoint
    ckpt = open_checkpoint(tiny["f32"])
    cfg = ckpt.config
    cm = bm.CostModel(ckpt)
    c = cm.step([Chunk(0, [1] * 5, 0, "last")])
    assert c["qkv_proj"][1] == cfg.n_layers * 2 * 5 * cfg.dim * (cfg.q_dim + 2 * cfg.kv_dim)
    assert c["classifier"][1] == 2 * cfg.dim * cfg.vocab_size
    per_layer = sum(ckpt.tensors[f"blk.0.{n}.weight"].data.nbytes for n in
                    ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))
    assert cm.decode_weight_bytes() > cfg.n_layers * per_layer
    # a decode token at position p attends p + 1 positions
    a = cm.step([Chunk(0, [1], 9, "last")])["attention"][1]
    assert a == cfg.n_layers * 10 * cfg.n_heads * (4 * cfg.head_dim + 5)


# ----------------------------------------------------------------------------- xllm-benchmark

QUICK_ARGS = ["--bandwidth-mb", "8", "--probe-iters", "200000"]


def test_bench_single_json_fields(tiny, capsys):
    code = bm.main(["--weight", tiny["q8_0"], "--threads", "2", "--prompt-tokens", "16", "--gen-tokens", "5",
                    "--repeats", "2", "--json"] + QUICK_ARGS)
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["load_s"] > 0 and r["ttft_s"] > 0
    assert r["prefill"]["tokens"] == 16 and r["prefill"]["tok_s"] > 0
    assert r["decode"]["tokens"] == 4 and r["decode"]["tok_s"] > 0 and r["decode"]["ms_per_token"] > 0
    assert 0 < r["decode"]["fraction_of_bandwidth"] and 0 < r["prefill"]["fraction_of_peak"]
    assert r["prefill"]["fraction_of_fma_peak"] is None           # a Q8_0 model: held to the int8 peak
    assert r["prefill"]["fraction_of_int8_peak"] == r["prefill"]["fraction_of_peak"]
    for key in ("read_gbps", "fma_gflops", "int8_gops"):
        assert r["machine"]["limits"][key] > 0
    # weights far smaller than the probe's buffer: also held to a read of their own size
    assert r["machine"]["limits"]["read_gbps_working_set_bytes"] == int(r["decode"]["weight_bytes_per_token"])
    ops = {row["op"] for row in r["ops"]["decode"]}
    assert {"qkv_proj", "attention", "ffn_gate_up", "ffn_down", "classifier"} <= ops
    for row in r["ops"]["prefill"] + r["ops"]["decode"]:
        assert row["bound"] in ("memory", "compute") and row["seconds"] >= 0
        assert set(row) >= {"share", "bytes", "flops", "gbps", "gflops", "roof_fraction"}
    mem = r["memory"]
    assert mem["weights_bytes"] > 0 and mem["kv_bytes_per_token"] > 0 and mem["workspace_bytes"] > 0
    assert mem["kv_in_use_peak_bytes"] >= 21 * mem["kv_bytes_per_token"]
    assert r["deterministic"] is True


def test_bench_single_text_output(tiny, capsys):
    assert bm.main(["--weight", tiny["f32"], "--threads", "1", "--prompt-tokens", "8", "--gen-tokens", "3",
                    "--repeats", "1"] + QUICK_ARGS) == 0
    out = capsys.readouterr().out
    for word in ("prefill", "decode", "limits", "qkv_proj", "KV cache per token", "workspace", "% roof"):
        assert word in out


@pytest.mark.parametrize("argv, word", [
    (["--weight", "/nonexistent.gguf"], "/nonexistent.gguf"),
    (["--weight", "W", "--threads", "0"], "--threads"),
    (["--weight", "W", "--prompt-tokens", "x"], "--prompt-tokens"),
    (["--weight", "W", "--prompt-tokens", "250", "--gen-tokens", "10"], "context length"),
    ([], "--weight"),
])
def test_bench_single_bad_input_exits_2(tiny, capsys, argv, word):
    argv = [tiny["f32"] if a == "W" else a for a in argv]
    assert bm.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and word in err and "Traceback" not in err


def test_not_a_model_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    assert bm.main(["--weight", str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ----------------------------------------------------------------------------- prompts files

def test_read_prompts_cases(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes(b"first\n\n  \r\nsecond\r\nthird\n\n")
    pf = bm.read_prompts(p)
    assert pf.prompts == ["first", "second", "third"] and pf.lines == [1, 4, 5] and pf.blank_lines == 3
    p.write_bytes(b"ok\nbad \xff\xfe here\n")
    with pytest.raises(ValueError, match="line 2"):
        bm.read_prompts(p)
    pf = bm.read_prompts(p, errors="replace")
    assert pf.prompts[1] == "bad \ufffd\ufffd here" and pf.replaced_lines == [2]
    for content in (b"", b"\n\n   \n"):
        p.write_bytes(content)
        with pytest.raises(ValueError, match="no prompts"):
            bm.read_prompts(p)


def _prompts(tmp_path, text: bytes):
    p = tmp_path / "prompts.txt"
    p.write_bytes(text)
    return str(p)


def test_bench_batch_json_fields(tiny, tmp_path, capsys):
    f = _prompts(tmp_path, b"Once upon a time\n\nThe dog ran\nA small red ball rolled away\n"
                           b"Tom and Lily\nThe sun\n")
    code = bm.batch_main(["--weight", tiny["q8_0"], "--file", f, "--batch", "3", "--max-tokens", "6",
                          "--threads", "2", "--json"] + QUICK_ARGS)
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["prompts"]["count"] == 5 and r["prompts"]["blank_lines_skipped"] == 1
    for run in (r["batch"], r["baseline"]):
        assert run["generated_tokens"] == 30
        for key in ("total_tok_s", "generation_tok_s", "prefill_tok_s", "decode_tok_s"):
            assert run[key] > 0
        assert run["ttft_s"]["p50"] > 0 and run["ttft_s"]["p95"] >= run["ttft_s"]["p50"]
        assert run["token_latency_ms"]["p95"] >= run["token_latency_ms"]["p50"] > 0
    assert r["speedup"]["generation"] > 0
    assert {row["op"] for row in r["batch"]["ops"]["decode_steps"]} >= {"qkv_proj", "ffn_down", "attention"}
    assert r["machine"]["limits"]["int8_gops"] > 0
    assert r["outputs_identical"] is True
    cpu = r["cpu"]
    assert {"utime_s", "stime_s", "avg_cpu_pct", "vsize_bytes", "state"} <= set(cpu)
    assert cpu["vsize_bytes"] > 0 and cpu["state"] in "RSDTtZXIWP"
    mem = r["memory"]
    assert mem["peak_rss_bytes"] > 0 and mem["kv_in_use_peak_bytes"] > 0 and mem["weights_bytes"] > 0


def test_bench_batch_text_output_without_baseline(tiny, tmp_path, capsys):
    f = _prompts(tmp_path, b"Once upon a time\nThe dog ran\n")
    assert bm.batch_main(["--weight", tiny["f32"], "--file", f, "--batch", "2", "--max-tokens", "3",
                          "--threads", "1", "--no-baseline"] + QUICK_ARGS) == 0
    out = capsys.readouterr().out
    assert "batch 2" in out and "TTFT" in out and "utime" in out and "batch 1" not in out


@pytest.mark.parametrize("cache", [True, False])
def test_bench_batch_counts_cached_prompt_tokens(tiny, tmp_path, capsys, cache):
    """A prompt repeated three times: each run (from an empty cache) reads the repeats' full
    blocks from the prefix cache, and the outputs are the same; --no-prefix-cache reads none."""
    line = b"Once upon a time there was a little girl who liked to play in the big green park " * 2
    f = _prompts(tmp_path, line + b"\n" + line + b"\nThe dog ran\n" + line + b"\n")
    code = bm.batch_main(["--weight", tiny["f32"], "--file", f, "--batch", "2", "--max-tokens", "3",
                          "--threads", "1", "--json"] + QUICK_ARGS + ([] if cache else ["--no-prefix-cache"]))
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    n = r["prompts"]["tokens"]["max"]
    assert n > 32 and r["outputs_identical"] is True and r["settings"]["prefix_cache"] is cache
    for run in (r["batch"], r["baseline"]):
        assert run["cached_prompt_tokens"] == (2 * ((n - 1) // 16 * 16) if cache else 0)


@pytest.mark.parametrize("content, extra, word", [
    (b"", [], "no prompts"),
    (b"\n \n\t\n", [], "no prompts"),
    (b"good\nbad \xc3\x28\n", [], "line 2"),
    (b"ok\n" + b"word " * 400 + b"\n", [], "line 2"),
    (b"ok\n", ["--max-tokens", "256"], "--max-tokens"),
    (b"ok\n", ["--batch", "0"], "--batch"),
    (b"ok\n", ["--errors", "ignore"], "--errors"),
])
def test_bench_batch_bad_input_exits_2(tiny, tmp_path, capsys, content, extra, word):
    f = _prompts(tmp_path, content)
    code = bm.batch_main(["--weight", tiny["f32"], "--file", f, "--max-tokens", "4", "--threads", "1"] + extra)
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and word in err and "Traceback" not in err


def test_bench_batch_missing_file_exits_2(tiny, capsys):
    assert bm.batch_main(["--weight", tiny["f32"], "--file", "/nonexistent/prompts.txt"]) == 2
    assert "/nonexistent/prompts.txt" in capsys.readouterr().err


def test_bench_batch_truncate_and_replace(tiny, tmp_path, capsys):
    long = b"word " * 400
    f = _prompts(tmp_path, b"ok\n" + long + b"\nbad \xff here\n")
    code = bm.batch_main(["--weight", tiny["f32"], "--file", f, "--max-tokens", "4", "--threads", "1",
                          "--truncate", "--errors", "replace", "--no-baseline", "--json"] + QUICK_ARGS)
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["prompts"]["truncated_lines"] == [2] and r["prompts"]["replaced_lines"] == [3]
    assert r["prompts"]["tokens"]["max"] == 256 - 4
    assert r["batch"]["generated_tokens"] == 12


# ----------------------------------------------------------------------------- make-model CLI

def test_make_model_cli(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert bm._module_main(["make-model", "--shape", "tiny", "--dtype", "q4_0", "--layers", "1",
                            "-o", str(out)]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert bm._module_main(["make-model", "--shape", "custom", "--dim", "64", "--hidden-dim", "128",
                            "--heads", "2", "--vocab", "300", "--layers", "1", "-o", str(out)]) == 0
    from xllm.formats import open_checkpoint
    assert open_checkpoint(out).config.vocab_size == 300
    for argv, word in ((["--shape", "nope", "-o", str(out)], "nope"),
                       (["--dtype", "q3", "-o", str(out)], "--dtype"),
                       (["--shape", "tiny", "-o", str(tmp_path / "no" / "m.gguf")], "does not exist"),
                       (["--shape", "tiny", "--token", "/nonexistent.model", "-o", str(out)], "/nonexistent.model")):
        assert bm._module_main(["make-model"] + argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and word in err
