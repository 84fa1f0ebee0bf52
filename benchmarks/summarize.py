"""Markdown tables of the figures in benchmarks/results/*.json (written by run_benchmarks.py),
as pasted into benchmarks/README.md.

    python benchmarks/summarize.py [--threads 2]
"""
import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def load(name):
    path = os.path.join(RESULTS, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    t = a.threads
    rows = [(d, load(f"single-{d}-t{t}")) for d in ("f32", "f16", "q8_0", "q4_0")]
    rows = [(d, r) for d, r in rows if r]
    if rows:
        lim = rows[0][1]["machine"]["limits"]
        print(f"Limits at the start of the F32 run: read {lim['read_gbps_start']:.1f} GB/s (huge pages), "
              f"{lim['read_gbps_4k']:.1f} GB/s (4 KiB pages); fp32 FMA {lim['fma_gflops']:.0f} GFLOP/s; "
              f"int8 {lim['int8_gops']:.0f} GOP/s (maddubs), {lim['int8_vnni_gops'] or 0:.0f} GOP/s (VNNI).\n")
        print("| weights | size | decode tok/s | ms/token | weight GB/s | bandwidth around the runs | "
              "fraction | prefill 128 tok/s | prefill GFLOP/s | % of the kernels' peak | TTFT | load | commit |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for d, r in rows:
            dd, pp, lim = r["decode"], r["prefill"], r["machine"]["limits"]
            bw = lim["read_gbps_probes"]
            print(f"| {d.upper()} | {r['model']['weight_bytes'] / 1e9:.2f} GB | {dd['tok_s']:.2f} | "
                  f"{dd['ms_per_token']:.1f} | {dd['gbps']:.1f} | {min(bw):.1f}-{max(bw):.1f} GB/s | "
                  f"**{pct(dd['fraction_of_bandwidth'])}** | {pp['tok_s']:.1f} | {pp['gflops']:.0f} | "
                  f"**{pct(pp.get('fraction_of_peak', pp['fraction_of_fma_peak']))}** | {1e3 * r['ttft_s']:.0f} ms | {1e3 * r['load_s']:.0f} ms | "
                  f"{r.get('git', '?')} |")
        print()
        print("Commands:")
        for d, r in rows:
            print(f"    {r.get('command')}")
        print()
    m = load(f"matmul-t{t}")
    if m:
        lim = m["limits"]
        print(f"Limits of this run: read {lim['read_gbps']:.1f} GB/s, fp32 FMA {lim['fma_gflops']:.0f} GFLOP/s, "
              f"int8 {lim.get('int8_kernel_gops', lim['int8_gops']):.0f} GOP/s (the kernels' {lim['simd']} "
              f"instructions; maddubs {lim['int8_gops']:.0f})\n")
        print("| W (rows x cols) | T | kernel | ms | GFLOP/s | % FMA peak | % int8 peak | weight GB/s | bandwidth then | % bandwidth | x numpy |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in m["results"]:
            print(f"| {r['shape']} | {r['tokens']} | {r['kernel']} | {r['ms']:.3f} | {r['gflops']:.1f} | "
                  f"{pct(r['fraction_of_fma_peak'])} | {pct(r['fraction_of_int8_peak'])} | {r['weight_gbps']:.1f} | "
                  f"{r.get('bandwidth_gbps', lim['read_gbps']):.1f} | "
                  f"{pct(r['fraction_of_bandwidth'])} | {r['vs_numpy']:.2f} |")
        print(f"\n    {m.get('command')}   ({m.get('git', '?')})\n")
    b = load(f"batch16-q8_0-t{t}")
    if b:
        print("| run | wall | total tok/s | prefill tok/s | decode tok/s | generated tok/s | TTFT p50 / p95 | "
              "token latency p50 / p95 |")
        print("|---|---|---|---|---|---|---|---|")
        for name, x in (("batch 16", b["batch"]), ("batch 1", b["baseline"])):
            print(f"| {name} | {x['wall_s']:.1f} s | {x['total_tok_s']:.1f} | {x['prefill_tok_s']:.1f} | "
                  f"{x['decode_tok_s']:.1f} | {x['generation_tok_s']:.1f} | {x['ttft_s']['p50']:.1f} / "
                  f"{x['ttft_s']['p95']:.1f} s | {x['token_latency_ms']['p50']:.0f} / {x['token_latency_ms']['p95']:.0f} ms |")
        sp = b["speedup"]
        c, mem = b["cpu"], b["memory"]
        print(f"\nSpeed-up {sp['generation']:.2f}x in generated tokens/s ({sp['decode_steps']:.2f}x in decode steps); "
              f"outputs identical: {b['outputs_identical']}. Peak RSS {mem['peak_rss_bytes'] / 1e9:.2f} GB "
              f"(weights {mem['weights_bytes'] / 1e9:.2f} GB, KV in use {mem['kv_in_use_peak_bytes'] / 1e6:.0f} MB, "
              f"workspace {mem['workspace_bytes'] / 1e6:.0f} MB); CPU utime {c['utime_s']:.0f} s, stime "
              f"{c['stime_s']:.1f} s, {c['avg_cpu_pct']:.0f}% average.")
        print(f"\n    {b.get('command')}   ({b.get('git', '?')})\n")
        ops = (b["batch"].get("ops") or {}).get("decode_steps")
        if ops:
            print("| op (batch 16 decode step) | ms | share | GOP/s | % of roof | bound |")
            print("|---|---|---|---|---|---|")
            for r in ops:
                if r["share"] >= 0.01:
                    print(f"| {r['op']} | {1e3 * r['seconds']:.1f} | {pct(r['share'])} | {r['gflops']:.0f} | "
                          f"{pct(r['roof_fraction'])} | {r['bound']} ({r['roof']}) |")


if __name__ == "__main__":
    main()
