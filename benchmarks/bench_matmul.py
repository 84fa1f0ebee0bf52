"""xllm's matmul kernel against numpy's (OpenBLAS) on TinyLlama's projection shapes.

    python benchmarks/bench_matmul.py [--threads 2] [--tokens 1 128] [--types f32 f16 q8_0 q4_0 q4_k q6_k] [--json]
    (--types also takes bf16 q4_1 q5_0 q5_1 iq4_nl q2_k q3_k q5_k)

y = x @ W.T with W (rows, cols) and x (T, cols): T = 1 is a decode GEMV (weight streaming,
measured against read bandwidth), T = 128 a prefill GEMM (measured against the fp32 FMA peak,
and the int8 peak for Q8_0/Q4_0 and the K-quants Q2_K..Q6_K; K-quant weights are random
valid blocks, xllm.benchmark.random_kquant_blocks).  Shapes (rows x cols): 2048x2048 (q/o projections),
5632x2048 (gate/up), 2048x5632 (down).  Each call reads its weights from memory, not from
cache: the benchmark cycles through enough copies of W to exceed the last-level cache.
numpy runs on the same number of threads (OPENBLAS_NUM_THREADS is set before it loads).
Medians of --repeats timed calls per case.
"""
import argparse
import json
import os
import sys
import time

SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632)]
TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "iq4_nl": 20,
         "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 128])
    p.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0", "q4_0"],
                   choices=list(TYPES))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--cache-mb", type=int, default=256, help="bytes of weight copies cycled through (>> L3)")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


args = parse()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402  (after the thread count is set)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from xllm import _kernels, _probe  # noqa: E402
from xllm.benchmark import KQUANT_TYPES, CpuMonitor, kernel_peak, measure_limits, random_kquant_blocks  # noqa: E402


def weights(kind, w32):
    if kind == "f32":
        return w32
    if kind == "f16":
        return w32.astype(np.float16)
    if kind == "iq4_nl":           # gguf-py has no IQ4_NL quantizer; the speed does not depend on the values
        blocks = np.random.default_rng(0).integers(0, 256, (w32.shape[0], w32.shape[1] // 32, 18), dtype=np.uint8)
        blocks[..., :2] = np.array([0.001], np.float16).view(np.uint8)
        return blocks.reshape(w32.shape[0], -1)
    if TYPES[kind] in KQUANT_TYPES:
        return random_kquant_blocks(np.random.default_rng(1), *w32.shape, TYPES[kind], 0.02)
    return quantize(w32, GGMLQuantizationType(TYPES[kind]))


def timed(fn, copies, repeats):
    fn(copies[0])                                   # warm-up
    times = []
    for i in range(repeats):
        w = copies[(i + 1) % len(copies)]
        t0 = time.perf_counter()
        fn(w)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def probe_bandwidth():
    """Bandwidth now (a VM's changes from one second to the next): 3 passes over 256 MB."""
    return float(np.median(_probe.read_bandwidth(256 << 20, args.threads, 3)))


def main():
    lim = measure_limits(args.threads)
    rng = np.random.default_rng(0)
    rows_out = []
    with CpuMonitor() as mon:
        run_cases(rng, lim, rows_out)
    cpu = mon.summary()
    report(lim, rows_out, cpu)


def run_cases(rng, lim, rows_out):
    for rows, cols in SHAPES:
        w32 = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        for T in args.tokens:
            x = rng.standard_normal((T, cols), dtype=np.float32)
            flops = 2.0 * T * rows * cols
            for kind in ["numpy"] + args.types:
                base = w32 if kind == "numpy" else weights(kind, w32)
                n = max(2, -(-(args.cache_mb << 20) // base.nbytes))
                copies = [base] + [base.copy() for _ in range(n - 1)]
                quant = kind != "numpy" and TYPES[kind] in _kernels.PACKED_TYPES
                if quant:                           # repacked once, as the model loader does
                    copies = [_kernels.pack(c, TYPES[kind]) for c in copies]
                bw0 = probe_bandwidth()
                if kind == "numpy":
                    secs = timed(lambda w: x @ w.T, copies, args.repeats)
                else:
                    secs = timed(lambda w: _kernels.matmul(w, TYPES[kind], x, args.threads), copies, args.repeats)
                bw = max(bw0, probe_bandwidth())           # the larger of the probes around the case
                del copies
                gflops = flops / secs / 1e9
                gbps = base.nbytes / secs / 1e9
                quant = kind != "numpy" and (TYPES[kind] in _kernels.QUANTIZED_TYPES or TYPES[kind] in KQUANT_TYPES)
                # each kernel against the peak of the instruction it runs for this type and T
                peak, peak_name = kernel_peak(lim, TYPES[kind] if kind != "numpy" else 0, T)
                rows_out.append({
                    "shape": f"{rows}x{cols}", "tokens": T, "kernel": kind, "ms": secs * 1e3,
                    "gflops": gflops, "weight_gbps": gbps, "peak": peak_name,
                    "fraction_of_fma_peak": None if quant else gflops / peak,
                    "fraction_of_int8_peak": gflops / peak if quant else None,
                    "fraction_of_bandwidth": gbps / bw,
                    "bandwidth_gbps": bw,
                })


def report(lim, rows_out, cpu):
    # ratio to numpy on the same shape and token count
    ref = {(r["shape"], r["tokens"]): r["ms"] for r in rows_out if r["kernel"] == "numpy"}
    for r in rows_out:
        r["vs_numpy"] = ref[(r["shape"], r["tokens"])] / r["ms"]
    if args.json:
        print(json.dumps({"limits": lim, "threads": args.threads, "cpu": cpu, "results": rows_out}, indent=2))
        return
    print(f"limits: read {lim['read_gbps']:.1f} GB/s, fp32 FMA {lim['fma_gflops']:.0f} GFLOP/s, "
          f"int8 {lim['int8_kernel_gops']:.0f} GOP/s (the kernels' {lim['simd']} instructions; {args.threads} threads)")
    print(f"{'shape':>10} {'T':>4} {'kernel':>6} {'ms':>8} {'GFLOP/s':>8} {'%FMA':>5} {'%int8':>6} "
          f"{'W GB/s':>7} {'BW now':>7} {'%BW':>5} {'x numpy':>8}")
    for r in rows_out:
        i8 = f"{100 * r['fraction_of_int8_peak']:.0f}%" if r["fraction_of_int8_peak"] else "-"
        fma = f"{100 * r['fraction_of_fma_peak']:.0f}%" if r["fraction_of_fma_peak"] else "-"
        print(f"{r['shape']:>10} {r['tokens']:>4} {r['kernel']:>6} {r['ms']:8.3f} {r['gflops']:8.1f} "
              f"{fma:>5} {i8:>6} {r['weight_gbps']:7.1f} {r['bandwidth_gbps']:7.1f} "
              f"{100 * r['fraction_of_bandwidth']:4.0f}% {r['vs_numpy']:8.2f}")
    print(f"other processes {cpu.get('other_processes_cpu_pct', 0):.0f}% of a core, steal {cpu.get('steal_pct', 0):.0f}%")


if __name__ == "__main__":
    main()
