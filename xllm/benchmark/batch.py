"""Many prompts: continuous-batching throughput and latency against one at a time
(xllm-benchmark-batch), and the prompts file reader.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .costs import op_table
from .limits import _percentile, cpu_model, measure_limits, usable_cores
from .procmon import CpuMonitor, reset_peak_rss
from .recorder import StepRecorder
from .single import _memory, _model_info


@dataclass
class PromptFile:
    prompts: List[str]
    lines: List[int]               # 1-based line number of each prompt
    blank_lines: int = 0
    replaced_lines: List[int] = field(default_factory=list)   # lines with invalid UTF-8 (replaced)


def read_prompts(path, errors: str = "strict") -> PromptFile:
    """One prompt per line.  Blank (whitespace-only) lines are skipped; a trailing '\\r' is
    dropped; invalid UTF-8 is an error naming the line (errors="strict") or decoded with
    U+FFFD (errors="replace"); a file with no prompt is an error."""
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors = {errors!r}, expected 'strict' or 'replace'")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected a text file with one prompt per line")
    with open(path, "rb") as f:
        data = f.read()
    prompts, lines, replaced = [], [], []
    blank = 0
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()                      # the newline ending the last line starts no new line
    for i, raw in enumerate(raw_lines, start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if errors == "strict":
                raise ValueError(f"{path}: line {i}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                 f"{exc.start + 1}); fix the file or pass --errors replace") from None
            text = raw.decode("utf-8", errors="replace")
            replaced.append(i)
        if not text.strip():
            blank += 1
            continue
        prompts.append(text)
        lines.append(i)
    if not prompts:
        raise ValueError(f"{path}: no prompts (the file is empty or has only blank lines)")
    return PromptFile(prompts, lines, blank, replaced)


# ----------------------------------------------------------------------------- batch

def _run_requests(llm, requests, max_seqs, rec: StepRecorder, bar=None, limits: Optional[dict] = None) -> dict:
    """Run `requests` with continuous batching (at most max_seqs at once), from an empty
    prefix cache (a run finds only what it computed itself); timings."""
    llm.model.kv.clear_prefix_cache()
    rec.clear()
    rec.watch(requests)
    first: Dict[int, float] = {}
    last: Dict[int, float] = {}
    gaps: List[float] = []
    start = time.perf_counter()
    for req, _ in llm.generate_step(requests, max_seqs=max_seqs):
        now = time.perf_counter()
        if req.id in last:
            gaps.append(now - last[req.id])
        else:
            first[req.id] = now - start
        last[req.id] = now
        if bar is not None:
            bar.update(1)
    wall = time.perf_counter() - start
    recs = rec.records
    n_prompt = sum(len(r.prompt_ids) for r in requests)
    n_gen = sum(len(r.generated) for r in requests)
    pre_steps = [r for r in recs if r.n_prefill > 0]
    dec_steps = [r for r in recs if r.n_prefill == 0]
    pre_s = sum(r.t1 - r.t0 for r in pre_steps)
    dec_s = sum(r.t1 - r.t0 for r in dec_steps)
    dec_tokens = sum(r.n_decode for r in dec_steps)
    ttft = list(first.values())
    ops = None
    if limits is not None and rec.profile:
        types = rec.cost.types
        s_pre, c_pre = StepRecorder.sum_ops(pre_steps)
        s_dec, c_dec = StepRecorder.sum_ops(dec_steps)
        per_step = [r.n_prefill + r.n_decode for r in pre_steps]    # tokens per step decide the kernel
        dec_batch = [r.n_decode for r in dec_steps]
        ops = {"prefill_steps": op_table(s_pre, c_pre, limits, types, max(1, len(pre_steps)),
                                         int(statistics.median(per_step)) if per_step else 1),
               "decode_steps": op_table(s_dec, c_dec, limits, types, max(1, len(dec_steps)),
                                        int(statistics.median(dec_batch)) if dec_batch else 1,
                                        out_rows=int(statistics.median(dec_batch)) if dec_batch else 1)}
    return {
        "wall_s": wall,
        "requests": len(requests),
        "prompt_tokens": n_prompt,
        "cached_prompt_tokens": sum(r.num_cached_tokens or 0 for r in requests),
        "generated_tokens": n_gen,
        "steps": len(recs),
        "preemptions": llm.last_stats.get("preemptions", 0),
        "total_tok_s": (n_prompt + n_gen) / wall,
        "generation_tok_s": n_gen / wall,
        "prefill_tok_s": sum(r.n_prefill for r in pre_steps) / pre_s if pre_s > 0 else None,
        "decode_tok_s": dec_tokens / dec_s if dec_s > 0 else None,
        "prefill_steps_s": pre_s,
        "decode_steps_s": dec_s,
        "mean_decode_batch": dec_tokens / len(dec_steps) if dec_steps else None,
        "ttft_s": {"p50": _percentile(ttft, 50), "p95": _percentile(ttft, 95), "mean": float(np.mean(ttft))},
        "token_latency_ms": {"p50": 1e3 * _percentile(gaps, 50), "p95": 1e3 * _percentile(gaps, 95)},
        "kv_blocks_peak": max([r.kv_blocks_used for r in recs] or [0]),
        "ops": ops,
    }


def bench_batch(path, prompts_file, batch: int = 16, max_tokens: int = 128, threads: Optional[int] = None,
                tokenizer=None, truncate: bool = False, errors: str = "strict", baseline: bool = True,
                max_batch_tokens: int = 256, ignore_eos: bool = False, progress: Optional[bool] = None,
                limits: Optional[dict] = None, limits_kwargs: Optional[dict] = None,
                prefix_cache: bool = True, kv_type: str = "auto") -> dict:
    """Continuous batching of every prompt in `prompts_file` with at most `batch` sequences
    at once, greedy, `max_tokens` each; then (baseline) the same prompts one at a time.
    Each run starts from an empty prefix cache (prefix_cache=False: none at all)."""
    from ..engine import LLM
    from ..model import resolve_threads
    from ..sampling import SamplingParams
    for name, v in (("batch", batch), ("max_tokens", max_tokens), ("max_batch_tokens", max_batch_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} = {v!r}, expected a positive integer")
    pf = read_prompts(prompts_file, errors)
    threads = resolve_threads(threads)
    t0 = time.perf_counter()
    llm = LLM(path, tokenizer=tokenizer, threads=threads, max_seqs=batch, max_batch_tokens=max_batch_tokens,
              prefix_cache=prefix_cache, kv_type=kv_type)
    load_s = time.perf_counter() - t0
    cfg = llm.config
    room = cfg.max_seq_len - max_tokens
    if room < 1:
        raise ValueError(f"--max-tokens {max_tokens} leaves no room for a prompt in the model's "
                         f"context length {cfg.max_seq_len}")
    encoded, truncated = [], []
    for text, line in zip(pf.prompts, pf.lines):
        ids = llm.tokenizer.encode(text, bos=True)
        if len(ids) > room:
            if not truncate:
                raise ValueError(f"{os.fspath(prompts_file)}: line {line}: prompt of {len(ids)} tokens + "
                                 f"--max-tokens {max_tokens} exceeds the model's context length "
                                 f"{cfg.max_seq_len} (shorten it or pass --truncate)")
            ids = ids[:1] + ids[len(ids) - (room - 1):] if room > 1 else ids[:1]
            truncated.append(line)
        encoded.append(ids)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_at_eos=not ignore_eos)
    if limits is None:
        limits = measure_limits(threads, **(limits_kwargs or {}))

    def make_requests():
        return [llm._request(ids, params, i) for i, ids in enumerate(encoded)]

    total_tokens = len(encoded) * max_tokens
    if progress is None:
        progress = sys.stderr.isatty()
    result = {
        "model": _model_info(llm, path),
        "machine": {"cpu": cpu_model(), "usable_cores": usable_cores(), "threads": threads, "limits": limits},
        "settings": {"batch": batch, "max_tokens": max_tokens, "max_batch_tokens": max_batch_tokens,
                     "truncate": truncate, "errors": errors, "ignore_eos": ignore_eos, "greedy": True,
                     "prefix_cache": prefix_cache},
        "load_s": load_s,
        "prompts": {"file": os.fspath(prompts_file), "count": len(encoded),
                    "blank_lines_skipped": pf.blank_lines, "truncated_lines": truncated,
                    "replaced_lines": pf.replaced_lines,
                    "tokens": {"total": sum(map(len, encoded)), "min": min(map(len, encoded)),
                               "mean": float(np.mean([len(e) for e in encoded])),
                               "max": max(map(len, encoded))}},
    }
    with StepRecorder(llm, profile=True) as rec:
        warm = [llm._request(encoded[0], SamplingParams(max_tokens=1, temperature=0.0), 0)]
        _run_requests(llm, warm, 1, rec)               # warm-up: maps the weights in
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total_tokens, unit="tok", desc=f"batch {batch}", leave=False,
                       file=sys.stderr, dynamic_ncols=True)
        try:
            reset_peak_rss()                            # the bandwidth probe's buffer is not ours
            with CpuMonitor() as mon:
                reqs = make_requests()
                result["batch"] = _run_requests(llm, reqs, batch, rec, bar, limits)
            result["cpu"] = mon.summary()
            result["cpu"]["samples"] = mon.samples
            batch_tokens = [list(r.generated) for r in reqs]
            result["memory"] = _memory(llm, result["batch"]["kv_blocks_peak"])
            if baseline and batch > 1:
                if bar is not None:
                    bar.reset(total=total_tokens)
                    bar.set_description("batch 1")
                with CpuMonitor() as mon1:
                    reqs1 = make_requests()
                    result["baseline"] = _run_requests(llm, reqs1, 1, rec, bar, limits)
                result["baseline"]["cpu"] = mon1.summary()
                b, s = result["batch"], result["baseline"]
                result["speedup"] = {
                    "generation": b["generation_tok_s"] / s["generation_tok_s"],
                    "total": b["total_tok_s"] / s["total_tok_s"],
                    "decode_steps": (b["decode_tok_s"] / s["decode_tok_s"])
                    if b["decode_tok_s"] and s["decode_tok_s"] else None,
                }
                result["outputs_identical"] = batch_tokens == [list(r.generated) for r in reqs1]
            else:
                result["baseline"] = None
                result["speedup"] = None
        finally:
            if bar is not None:
                bar.close()
    return result
