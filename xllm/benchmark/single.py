"""One sequence: prefill and decode speed against the machine's limits (xllm-benchmark).
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional

import numpy as np

from ..formats import layer_tensor_shapes
from ..formats.types import is_block_quantized, type_name
from .costs import CostModel, kv_value_bytes, op_table
from .limits import GB, _median, _percentile, cpu_model, kernel_peak, measure_limits, usable_cores
from .procmon import CpuMonitor, proc_status_bytes, reset_peak_rss
from .recorder import StepRecorder


def _model_info(llm, path) -> dict:
    cfg = llm.config
    counts: Dict[str, int] = {}
    for name, shape in layer_tensor_shapes(cfg).items():
        if len(shape) == 2:
            tn = type_name(llm.checkpoint.tensors[name].ggml_type)
            counts[tn] = counts.get(tn, 0) + 1
    return {
        "path": os.fspath(path),
        "file_bytes": os.path.getsize(path) if os.path.isfile(path) else None,
        "config": {k: getattr(cfg, k) for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                                                 "head_dim", "vocab_size", "max_seq_len")},
        "matrix_types": counts,
        "params": int(sum(int(np.prod(s)) for s in layer_tensor_shapes(cfg).values())),
        "weight_bytes": int(llm.model.weight_bytes),
    }


def _memory(llm, kv_peak_blocks: int, peak_rss: Optional[int] = None) -> dict:
    kv = llm.model.kv
    block_bytes = kv.bytes_per_token * kv.block_size
    return {
        "weights_bytes": int(llm.model.weight_bytes),
        "kv_type": kv.kv_type,
        "kv_bytes_per_token": int(kv.bytes_per_token),
        "kv_in_use_peak_bytes": int(kv_peak_blocks * block_bytes),
        "kv_pool_bytes": int(kv.nbytes),
        "kv_block_size": kv.block_size,
        "workspace_bytes": int(llm.model.decoder.workspace_bytes()),
        "peak_rss_bytes": peak_rss if peak_rss is not None else proc_status_bytes("VmHWM"),
        "rss_bytes": proc_status_bytes("VmRSS"),
    }


def bench_single(path, threads: Optional[int] = None, prompt_tokens: int = 128, gen_tokens: int = 128,
                 repeats: int = 3, tokenizer=None, seed: int = 0, limits: Optional[dict] = None,
                 limits_kwargs: Optional[dict] = None, kv_type: str = "auto") -> dict:
    """Benchmark one sequence: prefill of `prompt_tokens` (random ids after BOS) in one step,
    then `gen_tokens` greedy decode steps, `repeats` times after a warm-up; medians.
    `limits` (from measure_limits) are measured here when not given.  The prefix cache is
    off: every run prefills the same prompt, and that is what is measured.  Decode at a long
    context: a long prompt (e.g. prompt_tokens=2000), with the KV cache's `kv_type`."""
    from ..engine import LLM
    from ..model import resolve_threads
    from ..sampling import SamplingParams
    for name, v in (("prompt_tokens", prompt_tokens), ("gen_tokens", gen_tokens), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} = {v!r}, expected a positive integer")
    threads = resolve_threads(threads)
    t0 = time.perf_counter()
    llm = LLM(path, tokenizer=tokenizer, threads=threads, max_seqs=1,
              max_batch_tokens=max(prompt_tokens, 1), prefix_cache=False, kv_type=kv_type)
    load_s = time.perf_counter() - t0
    cfg = llm.config
    if prompt_tokens + gen_tokens > cfg.max_seq_len:
        raise ValueError(f"--prompt-tokens {prompt_tokens} + --gen-tokens {gen_tokens} = "
                         f"{prompt_tokens + gen_tokens} exceeds the model's context length {cfg.max_seq_len}")
    if limits is None:
        limits = measure_limits(threads, **(limits_kwargs or {}))
    rng = np.random.default_rng(seed)
    low = min(3, cfg.vocab_size - 1)
    ids = [cfg.bos_id] + rng.integers(low, cfg.vocab_size, size=prompt_tokens - 1).tolist()
    def run(n_gen):
        req = llm._request(ids, SamplingParams(max_tokens=n_gen, temperature=0.0, stop_at_eos=False), 0)
        rec.watch([req])
        stamps = []
        start = time.perf_counter()
        for _ in llm.generate_step([req]):
            stamps.append(time.perf_counter())
        return start, stamps, req

    runs = []
    from .. import _probe
    bw_bytes = (limits_kwargs or {}).get("bandwidth_bytes", 1 << 30)
    cost = CostModel(llm.checkpoint, kv_value_bytes(llm))
    wbytes = cost.decode_weight_bytes()
    # Weights smaller than the probe's buffer may sit in the last-level cache (a 110M model
    # in a 480 MB L3 decoded at "117% of bandwidth"): such a model is also held to a read of
    # a buffer its own size, warmed like the weights are (its best pass: how fast the cache
    # can give them), and the faster of the two counts.
    ws_bytes = int(wbytes) if 256 * threads <= wbytes < bw_bytes else 0

    def probe_bandwidth():
        # 3 passes with 4 KiB pages (like the mapped weights), median
        bw = _median(_probe.read_bandwidth(bw_bytes, threads, 3, hugepages=False))
        if ws_bytes:
            bw = max(bw, max(_probe.read_bandwidth(ws_bytes, threads, 3, hugepages=False)))
        return bw

    bw_probes = []
    peak_rss = 0
    with CpuMonitor() as mon, StepRecorder(llm, profile=True) as rec:
        run(min(2, gen_tokens))                   # warm-up: maps every weight page in
        rec.clear()
        op_pre: Dict[str, float] = {}
        op_dec: Dict[str, float] = {}
        cost_pre = cost_dec = None
        kv_peak = 0
        for _ in range(repeats):
            bw_probes.append(probe_bandwidth())
            # the probe's buffers evicted the weights from the caches (all of a 110M model fits
            # in a large L3): a short warm-up brings them back, as llama-bench's runs find them
            run(min(2, gen_tokens))
            rec.clear()
            reset_peak_rss()
            start, stamps, req = run(gen_tokens)
            peak_rss = max(peak_rss, proc_status_bytes("VmHWM") or 0)
            recs = rec.records
            pre = [r for r in recs if r.n_prefill > 0]
            dec = [r for r in recs if r.n_prefill == 0]
            prefill_s = sum(r.t1 - r.t0 for r in pre)
            dec_steps = [r.t1 - r.t0 for r in dec]
            gaps = np.diff(stamps).tolist()
            runs.append({
                "ttft_s": stamps[0] - start,
                "prefill_s": prefill_s,
                "decode_s": stamps[-1] - stamps[0],
                "decode_step_s": sum(dec_steps),
                "token_gaps_s": gaps,
                "tokens": list(req.generated),
            })
            kv_peak = max([kv_peak] + [r.kv_blocks_used for r in recs])
            s_pre, c_pre = StepRecorder.sum_ops(pre)
            s_dec, c_dec = StepRecorder.sum_ops(dec)
            for op, s in s_pre.items():
                op_pre[op] = op_pre.get(op, 0.0) + s / repeats
            for op, s in s_dec.items():
                op_dec[op] = op_dec.get(op, 0.0) + s / repeats
            cost_pre, cost_dec = c_pre, c_dec
            n_dec_steps = len(dec)
            pre_overhead = prefill_s - sum(s_pre.values())
            dec_overhead = sum(dec_steps) - sum(s_dec.values())
            runs[-1]["step_overhead_s"] = {"prefill": pre_overhead, "decode": dec_overhead}
        bw_probes.append(probe_bandwidth())
    cpu = mon.summary()
    # The bandwidth a VM gets can change from one second to the next (it was seen to jump
    # between ~35 and ~65 GB/s here): it is probed before and after every run, and each run's
    # decode is measured against the larger of its two neighbouring probes.
    limits = dict(limits)
    limits["read_gbps_probes"] = bw_probes
    limits["read_gbps_working_set_bytes"] = ws_bytes or None
    run_bw = [max(bw_probes[i], bw_probes[i + 1]) for i in range(repeats)]
    limits["read_gbps_start"] = limits["read_gbps"]
    limits["read_gbps"] = _median(run_bw)

    types = cost.types
    quant = any(is_block_quantized(t) for t in types.values())
    prefill_s = _median([r["prefill_s"] for r in runs])
    n_decode = gen_tokens - 1                       # tokens after the first come from decode steps
    decode_s = _median([r["decode_s"] for r in runs])
    dec_tok_s = n_decode / decode_s if n_decode and decode_s > 0 else float("nan")
    pre_flops = sum(f for _, f in cost_pre.values()) if cost_pre else 0
    pre_peak = kernel_peak(limits, types.get("ffn_gate_up", types.get("ffn_down")), prompt_tokens)
    run_tok_s = [n_decode / r["decode_s"] if r["decode_s"] > 0 else float("nan") for r in runs]
    run_frac = [wbytes * t / (bw * GB) for t, bw in zip(run_tok_s, run_bw)]
    gaps = [g for r in runs for g in r["token_gaps_s"]]
    result = {
        "model": _model_info(llm, path),
        "machine": {"cpu": cpu_model(), "usable_cores": usable_cores(), "threads": threads,
                    "limits": limits},
        "settings": {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "repeats": repeats,
                     "seed": seed},
        "load_s": load_s,
        "ttft_s": _median([r["ttft_s"] for r in runs]),
        "prefill": {
            "tokens": prompt_tokens,
            "seconds": prefill_s,
            "tok_s": prompt_tokens / prefill_s,
            "flops": pre_flops,
            "gflops": pre_flops / prefill_s / GB,
            # against the instruction the largest matmuls (gate/up) run at this token count
            "peak": pre_peak[1],
            "peak_gops": pre_peak[0],
            "fraction_of_peak": pre_flops / prefill_s / GB / pre_peak[0],
            "fraction_of_fma_peak": None if quant else pre_flops / prefill_s / GB / limits["fma_gflops"],
            "fraction_of_int8_peak": (pre_flops / prefill_s / GB / pre_peak[0]) if quant else None,
            "runs_s": [r["prefill_s"] for r in runs],
        },
        "decode": {
            "tokens": n_decode,
            "tok_s": dec_tok_s,
            "ms_per_token": 1e3 / dec_tok_s if dec_tok_s == dec_tok_s else float("nan"),
            "token_latency_ms": {"p50": 1e3 * _percentile(gaps, 50), "p95": 1e3 * _percentile(gaps, 95)},
            "weight_bytes_per_token": wbytes,
            "gbps": wbytes * dec_tok_s / GB,
            "fraction_of_bandwidth": _median(run_frac),
            "runs_tok_s": run_tok_s,
            "runs_fraction_of_bandwidth": run_frac,
            "runs_bandwidth_gbps": run_bw,
        },
        "ops": {
            "prefill": op_table(op_pre, cost_pre or {}, limits, types, 1, prompt_tokens),
            "decode": op_table(op_dec, cost_dec or {}, limits, types, max(1, n_dec_steps)),
            "overhead_s": {"prefill": _median([r["step_overhead_s"]["prefill"] for r in runs]),
                           "decode_per_step": _median([r["step_overhead_s"]["decode"] for r in runs])
                           / max(1, n_dec_steps),
                           "engine_per_token": (decode_s - _median([r["decode_step_s"] for r in runs]))
                           / max(1, n_decode)},
        },
        "memory": _memory(llm, kv_peak, peak_rss or None),
        "cpu": cpu,
        "deterministic": all(r["tokens"] == runs[0]["tokens"] for r in runs),
    }
    return result
