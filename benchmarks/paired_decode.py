"""Decode speed of several models measured in alternation, with a bandwidth probe around each run.

    python benchmarks/paired_decode.py benchmarks/models/tinyllama-f32.gguf benchmarks/models/tinyllama-q8_0.gguf [--rounds 3] [--threads 2]

This VM's read bandwidth jumps between levels (~35 and ~65 GB/s, dips to ~22; README.md), so a
ratio between two separate benchmark runs can compare different machine states.  Here the
models take turns, each run is bracketed by two bandwidth probes, and ratios are reported
only between runs of the same round whose probes all fell in the same state.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from xllm import _probe, benchmark as bm  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gen-tokens", type=int, default=48)
    a = p.parse_args()
    lim = bm.measure_limits(a.threads)
    bands = [(0.0, "degraded"), (30.0, "low"), (48.0, "high")]     # GB/s where each state starts
    for r in range(a.rounds):
        runs = []
        for path in a.models:
            bw0 = float(np.median(_probe.read_bandwidth(256 << 20, a.threads, 3)))
            res = bm.bench_single(path, threads=a.threads, prompt_tokens=16, gen_tokens=a.gen_tokens,
                                  repeats=2, limits=lim)
            bw1 = float(np.median(_probe.read_bandwidth(256 << 20, a.threads, 3)))
            s0, s1 = ([n for lo, n in bands if bw >= lo][-1] for bw in (bw0, bw1))
            state = s0 if s0 == s1 else "mixed"
            runs.append((os.path.basename(path), res["decode"]["tok_s"], res["decode"]["gbps"], bw0, bw1, state))
            print(f"round {r + 1}  {runs[-1][0]:28s} decode {runs[-1][1]:7.2f} tok/s  {runs[-1][2]:5.1f} GB/s  "
                  f"probes {bw0:5.1f} {bw1:5.1f} GB/s ({state})", flush=True)
        states = {x[5] for x in runs}
        if len(states) == 1 and "mixed" not in states:
            pairs = [(x, y) for i, y in enumerate(runs) for x in runs[:i]]
            print(f"round {r + 1}  same state ({states.pop()}): "
                  + ", ".join(f"{y[0]} {y[1] / x[1]:.2f}x {x[0]}" for x, y in pairs), flush=True)
        else:
            print(f"round {r + 1}  states differ: no ratio", flush=True)


if __name__ == "__main__":
    main()
