"""Text and JSON reports of the benchmark results.
"""
from __future__ import annotations

import json
import math

import numpy as np



def _fmt_scaled(x, units) -> str:
    """x in steps of 1000 through `units` (the first unscaled): 1234567 -> '1.23 M'."""
    x = float(x)
    for unit in units:
        if abs(x) < 1000 or unit == units[-1]:
            break
        x /= 1000
    return f"{x:.0f} {unit}".rstrip() if unit == units[0] else f"{x:.2f} {unit}"


def _fmt_bytes(n) -> str:
    return "-" if n is None else _fmt_scaled(n, ("B", "KB", "MB", "GB", "TB"))


def _fmt_num(x, spec=".1f") -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    return format(x, spec)


def _table(headers, rows, left: int = 1) -> str:
    """Plain-text table; the first `left` columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < left else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt_count(x) -> str:
    """1234567 -> '1.23 M' (FLOPs)."""
    return _fmt_scaled(x, ("", "k", "M", "G", "T"))


def _limits_text(lim: dict) -> str:
    ba = (f"; around the runs {min(lim['read_gbps_probes']):.1f}-{max(lim['read_gbps_probes']):.1f}"
          if lim.get("read_gbps_probes") else "")
    if lim.get("read_gbps_working_set_bytes"):
        ba += (f"; the faster of a {_fmt_bytes(lim.get('bandwidth_buffer_bytes'))} buffer and one of the"
               f" weights' {_fmt_bytes(lim['read_gbps_working_set_bytes'])}")
    peaks = [("fp32 FMA 256-bit", lim.get("fma256_gflops", lim.get("fma_gflops")), "GFLOP/s"),
             ("512-bit", lim.get("fma512_gflops"), "GFLOP/s"),
             ("int8 maddubs", lim.get("int8_gops"), "GOP/s"), ("VNNI 256-bit", lim.get("int8_vnni_gops"), "GOP/s"),
             ("VNNI 512-bit", lim.get("int8_vnni512_gops"), "GOP/s"),
             ("maddubs+vpdpwssd 512-bit", lim.get("int8_kquant_gops"), "GOP/s"),
             ("AMX int8", lim.get("amx_int8_gops"), "GOP/s"), ("AMX bf16", lim.get("amx_bf16_gflops"), "GFLOP/s")]
    return (f"read bandwidth {lim['read_gbps']:.1f} GB/s ({lim['read_gbps_4k']:.1f} with 4 KiB pages{ba}), "
            + ", ".join(f"{name} {v:.0f} {unit}" for name, v, unit in peaks if v)
            + f"  [{lim['threads']} threads, {lim['simd']}]")


def _ops_text(rows) -> str:
    return _table(
        ["op", "ms/step", "share", "bytes", "FLOPs", "GB/s", "GFLOP/s", "flop/B", "bound", "% roof"],
        [[r["op"], _fmt_num(r["seconds"] * 1e3, ".3f"), f"{100 * r['share']:.1f}%", _fmt_bytes(r["bytes"]),
          _fmt_count(r["flops"]), _fmt_num(r["gbps"]), _fmt_num(r["gflops"]),
          _fmt_num(r["intensity"], ".2f"), r["bound"] + (f" ({r['peak']})" if r["bound"] == "compute" else ""),
          _fmt_num(100 * r["roof_fraction"], ".0f") + "%"] for r in rows])


def _memory_text(m: dict) -> str:
    return _table(["memory", "bytes"], [
        ["weights (F32/F16/BF16 mapped, quantized types repacked)", _fmt_bytes(m["weights_bytes"])],
        [f"KV cache per token ({m['kv_type']})", _fmt_bytes(m["kv_bytes_per_token"])],
        ["KV cache in use (peak)", _fmt_bytes(m["kv_in_use_peak_bytes"])],
        ["KV pool (reserved, touched on use)", _fmt_bytes(m["kv_pool_bytes"])],
        ["workspace", _fmt_bytes(m["workspace_bytes"])],
        ["peak RSS", _fmt_bytes(m["peak_rss_bytes"])],
    ])


def format_single(r: dict) -> str:
    m, p, d = r["model"], r["prefill"], r["decode"]
    lim = r["machine"]["limits"]
    c = m["config"]
    out = [
        f"model    {m['path']}: dim {c['dim']}, hidden {c['hidden_dim']}, {c['n_layers']} layers, "
        f"{c['n_heads']}/{c['n_kv_heads']} heads, vocab {c['vocab_size']}; "
        f"{', '.join(f'{n} {k}' for k, n in m['matrix_types'].items())} matrices; "
        f"{_fmt_bytes(m['weight_bytes'])} of weights",
        f"machine  {r['machine']['cpu']}, {r['machine']['usable_cores']} usable cores",
        f"limits   {_limits_text(lim)}",
        "",
        _table(["", ""], [
            ["load", f"{r['load_s'] * 1e3:.0f} ms"],
            [f"prefill ({p['tokens']} tokens)", f"{p['tok_s']:.1f} tok/s  ({p['gflops']:.1f} GFLOP/s = "
             f"{100 * p['fraction_of_peak']:.0f}% of the {p['peak']} peak"
             + ")"],
            ["time to first token", f"{r['ttft_s'] * 1e3:.1f} ms"],
            [f"decode ({d['tokens']} tokens)", f"{d['tok_s']:.2f} tok/s  ({d['ms_per_token']:.1f} ms/token, "
             f"p50 {d['token_latency_ms']['p50']:.1f} / p95 {d['token_latency_ms']['p95']:.1f} ms)"],
            ["decode weight streaming", f"{_fmt_bytes(d['weight_bytes_per_token'])}/token x tok/s = "
             f"{d['gbps']:.1f} GB/s = {100 * d['fraction_of_bandwidth']:.0f}% of measured bandwidth"],
        ], left=2),
        "",
        f"prefill operators (one step of {p['tokens']} tokens)",
        _ops_text(r["ops"]["prefill"]),
        "",
        "decode operators (per step of 1 token)",
        _ops_text(r["ops"]["decode"]),
        f"outside the operators: prefill {r['ops']['overhead_s']['prefill'] * 1e3:.2f} ms, decode "
        f"{r['ops']['overhead_s']['decode_per_step'] * 1e3:.3f} ms/step in Model.step + "
        f"{r['ops']['overhead_s']['engine_per_token'] * 1e3:.3f} ms/token in the engine (sampling, scheduling)",
        "",
        _memory_text(r["memory"]),
        "",
        f"cpu      {r['cpu'].get('avg_cpu_pct', float('nan')):.0f}% average"
        + (f"; other processes {r['cpu']['other_processes_cpu_pct']:.0f}%, steal {r['cpu']['steal_pct']:.0f}%"
           if "other_processes_cpu_pct" in r["cpu"] else ""),
    ]
    return "\n".join(out)


def format_batch(r: dict) -> str:
    b, s, pr = r["batch"], r.get("baseline"), r["prompts"]
    st = r["settings"]

    def row(name, x):
        return [name, f"{x['wall_s']:.2f} s", f"{x['total_tok_s']:.1f}", _fmt_num(x["prefill_tok_s"]),
                _fmt_num(x["decode_tok_s"]), f"{x['generation_tok_s']:.1f}",
                f"{x['ttft_s']['p50'] * 1e3:.0f} / {x['ttft_s']['p95'] * 1e3:.0f}",
                f"{x['token_latency_ms']['p50']:.1f} / {x['token_latency_ms']['p95']:.1f}"]
    rows = [row(f"batch {st['batch']}", b)]
    if s:
        rows.append(row("batch 1", s))
    out = [
        f"model    {r['model']['path']}  ({', '.join(f'{n} {k}' for k, n in r['model']['matrix_types'].items())})",
        f"machine  {r['machine']['cpu']}, {r['machine']['threads']} threads",
        f"prompts  {pr['count']} from {pr['file']} ({pr['tokens']['total']} tokens, "
        f"{pr['tokens']['min']}-{pr['tokens']['max']} each), {st['max_tokens']} new tokens each, greedy"
        + (f"; {pr['blank_lines_skipped']} blank lines skipped" if pr["blank_lines_skipped"] else "")
        + (f"; truncated lines {pr['truncated_lines']}" if pr["truncated_lines"] else "")
        + (f"; invalid UTF-8 replaced on lines {pr['replaced_lines']}" if pr["replaced_lines"] else ""),
        "",
        _table(["run", "wall", "total tok/s", "prefill tok/s", "decode tok/s", "gen tok/s",
                "TTFT p50/p95 ms", "token ms p50/p95"], rows),
    ]
    if r.get("speedup"):
        sp = r["speedup"]
        out.append(f"speed-up over one at a time: {sp['generation']:.2f}x generated tokens/s, "
                   f"{_fmt_num(sp['decode_steps'], '.2f')}x in decode steps; outputs identical: "
                   f"{r['outputs_identical']}")
    out += [f"steps {b['steps']}, mean decode batch {_fmt_num(b['mean_decode_batch'])}, "
            f"preemptions {b['preemptions']}, prompt tokens from the prefix cache "
            + (f"{b['cached_prompt_tokens']} of {b['prompt_tokens']}" if st.get("prefix_cache", True) else "off")]
    lim = r["machine"].get("limits")
    if lim:
        out.append(f"limits   {_limits_text(lim)}")
    if b.get("ops") and b["ops"]["decode_steps"]:
        out += ["", f"batch {st['batch']}: operators per decode-only step "
                    f"(mean {_fmt_num(b['mean_decode_batch'])} tokens)", _ops_text(b["ops"]["decode_steps"])]
    out += ["", _memory_text(r["memory"]), ""]
    c = r["cpu"]
    out.append(f"cpu      utime {c['utime_s']:.1f} s, stime {c['stime_s']:.1f} s, average {c['avg_cpu_pct']:.0f}%, "
               f"vsize {_fmt_bytes(c['vsize_bytes'])}, state {c['state']}, {c['num_threads']} threads"
               + (f"; other processes {c['other_processes_cpu_pct']:.0f}%, steal {c['steal_pct']:.0f}%"
                  if "other_processes_cpu_pct" in c else ""))
    return "\n".join(out)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def _dump_json(obj) -> str:
    def clean(x):
        if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=2, default=_json_default)
