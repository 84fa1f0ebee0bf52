"""Tensor-parallel decode against one process: N ranks x 1 thread vs 1 process x N threads.

    python -m xllm.benchmark make-model --shape tinyllama-1.1b --dtype q8_0 -o tl-q8.gguf
    python benchmarks/tensor_parallel.py --weight tl-q8.gguf --ranks 2 --gen-tokens 64
    python benchmarks/tensor_parallel.py --weight tl-q8.gguf --json > tp.json

Both runs decode the same greedy tokens after a random prompt (checked) and report decode
tok/s; the parallel run also reports, per generated token, the allreduce calls, bytes and
time (measured inside the C hook on rank 0, so it includes waiting for the slower rank), the
logits gather and the batch broadcast, and the weight bytes each rank streams.  Then the
scaling model of benchmarks/README.md turns those into predicted tokens/s for more hosts.

`--worker` is the measured run itself (started by this script, under mpiexec for N > 1).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GB = 1e9
# (dim, n_layers, Q8_0 weight bytes) of the shapes the scaling table predicts
SHAPES = {"llama-7b": (4096, 32, 7.16e9), "llama-70b": (8192, 80, 74.9e9)}


def worker(args) -> dict:
    from xllm import parallel
    from xllm.formats import open_checkpoint
    from xllm.model import Chunk, Model
    size = parallel.launched_world_size()
    kw = dict(threads=args.threads, max_batch_tokens=max(args.prompt_tokens, 1), max_seqs=1)
    model = parallel.load(args.weight, size, **kw) if size > 1 else Model(open_checkpoint(args.weight), **kw)
    cfg = model.config
    rng = np.random.default_rng(0)
    prompt = [cfg.bos_id] + rng.integers(3, cfg.vocab_size, size=args.prompt_tokens - 1).tolist()

    def run(n_gen):
        model.kv.reserve(0, len(prompt) + n_gen)
        last = model.step([Chunk(0, prompt, 0)])[0][-1]
        if size > 1:
            model.allreduce_stats(reset=True)           # decode steps only
        tokens, t0 = [int(np.argmax(last))], time.perf_counter()
        for i in range(n_gen - 1):
            last = model.step([Chunk(0, [tokens[-1]], len(prompt) + i)])[0][-1]
            tokens.append(int(np.argmax(last)))
        seconds = time.perf_counter() - t0
        model.kv.release(0)
        return tokens, seconds

    run(min(4, args.gen_tokens))                       # warm-up: every weight page mapped in
    runs = []
    for _ in range(args.repeats):
        tokens, seconds = run(args.gen_tokens)
        n = args.gen_tokens - 1
        rec = {"tok_s": n / seconds, "tokens": tokens}
        if size > 1:
            s = model.allreduce_stats(reset=True)
            rec.update(allreduce_calls_per_token=s["calls"] / n, allreduce_bytes_per_token=s["bytes"] / n,
                       allreduce_us_per_token=1e6 * s["seconds"] / n,
                       allreduce_us_per_call=1e6 * s["seconds"] / max(1, s["calls"]),
                       gather_bytes_per_token=s["gather_bytes"] / n, gather_us_per_token=1e6 * s["gather_seconds"] / n,
                       bcast_us_per_token=1e6 * s["bcast_seconds"] / n)
        runs.append(rec)
    best = max(runs, key=lambda r: r["tok_s"])
    rss = None
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                rss = int(line.split()[1]) * 1024
    return {"ranks": size, "threads": model.threads, "weight_bytes_per_rank": int(model.weight_bytes),
            "peak_rss_rank0": rss, "dim": cfg.dim, "n_layers": cfg.n_layers,
            "runs_tok_s": [r["tok_s"] for r in runs], **best}


def launch(args, ranks: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--weight", args.weight, "--threads", str(threads),
           "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
           "--repeats", str(args.repeats)]
    if ranks > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if r.returncode != 0:
        raise SystemExit(f"tensor_parallel.py: {' '.join(cmd[:4])} ... failed:\n{r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def allreduce_seconds(n_bytes: float, hosts: int, latency_s: float, link_bps: float) -> float:
    """One allreduce of n_bytes over `hosts` ranks: recursive doubling (MPICH's choice for
    short messages), log2(N) exchanges of the whole buffer, or a ring (long messages),
    2(N-1) latency steps moving 2(N-1)/N of it; the faster of the two."""
    if hosts <= 1:
        return 0.0
    steps = int(np.ceil(np.log2(hosts)))
    doubling = steps * (latency_s + n_bytes * 8 / link_bps)
    ring = 2 * (hosts - 1) * latency_s + 2 * (hosts - 1) / hosts * n_bytes * 8 / link_bps
    return min(doubling, ring)


def predict(weight_bytes: float, dim: int, n_layers: int, hosts: int, host_gbps: float, link_gbps: float,
            latency_us: float, batch: int = 1) -> dict:
    """Decode tokens/s of `batch` sequences on `hosts` hosts: each step streams weight_bytes/N
    per host at host_gbps (decode is bandwidth-bound) and does 2 allreduces per layer of
    batch x dim float32 (the gather of the logits is left out: one per step, not per layer)."""
    compute = weight_bytes / hosts / (host_gbps * GB)
    comm = 2 * n_layers * allreduce_seconds(batch * dim * 4, hosts, latency_us * 1e-6, link_gbps * GB)
    step = compute + comm
    return {"hosts": hosts, "compute_ms": 1e3 * compute, "allreduce_ms": 1e3 * comm,
            "step_ms": 1e3 * step, "tok_s": batch / step}


def report(one: dict, par: dict, args) -> str:
    n = par["ranks"]
    lines = [f"model {args.weight}: dim {par['dim']}, {par['n_layers']} layers",
             f"1 process x {one['threads']} threads: {one['tok_s']:.2f} tok/s decode "
             f"(weights {one['weight_bytes_per_rank'] / 1e6:.1f} MB, peak RSS {one['peak_rss_rank0'] / 1e6:.0f} MB)",
             f"{n} ranks x {par['threads']} thread: {par['tok_s']:.2f} tok/s decode "
             f"(weights per rank {par['weight_bytes_per_rank'] / 1e6:.1f} MB, rank 0 peak RSS "
             f"{par['peak_rss_rank0'] / 1e6:.0f} MB)",
             f"ratio {par['tok_s'] / one['tok_s']:.3f} (target >= 0.9)",
             f"same tokens: {par['tokens'] == one['tokens']}",
             f"per token: {par['allreduce_calls_per_token']:.0f} allreduces, "
             f"{par['allreduce_bytes_per_token'] / 1e3:.1f} KB, {par['allreduce_us_per_token']:.0f} us "
             f"({par['allreduce_us_per_call']:.1f} us per call, waiting included); logits gather "
             f"{par['gather_bytes_per_token'] / 1e3:.1f} KB in {par['gather_us_per_token']:.0f} us; "
             f"batch broadcast {par['bcast_us_per_token']:.0f} us",
             "",
             f"scaling model (benchmarks/README.md), host bandwidth {args.host_gbps} GB/s, link "
             f"{args.link_gbps} Gb/s with {args.latency_us} us latency, batch {args.batch}:"]
    shapes = dict(SHAPES, this=(par["dim"], par["n_layers"], one["weight_bytes_per_rank"]))
    for name, (dim, layers, wbytes) in shapes.items():
        for hosts in (1, 2, 4, 8, 16):
            p = predict(wbytes, dim, layers, hosts, args.host_gbps, args.link_gbps, args.latency_us, args.batch)
            lines.append(f"  {name:10s} {hosts:2d} hosts: compute {p['compute_ms']:8.2f} ms + allreduce "
                         f"{p['allreduce_ms']:6.2f} ms = {p['tok_s']:9.1f} tok/s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weight", required=True)
    p.add_argument("--ranks", type=int, default=2, help="tensor-parallel ranks (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the single process (default: --ranks); with --worker: this rank's")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="measured runs, the best is reported")
    p.add_argument("--host-gbps", type=float, default=50.0, help="memory bandwidth per host, GB/s (model)")
    p.add_argument("--link-gbps", type=float, default=25.0, help="network link, Gb/s (model)")
    p.add_argument("--latency-us", type=float, default=20.0, help="one message's latency, us (model)")
    p.add_argument("--batch", type=int, default=1, help="sequences per decode step (model)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        out = worker(args)
        print(json.dumps(out))
        return 0
    one = launch(args, 1, args.threads or args.ranks)
    par = launch(args, args.ranks, 1)
    if args.json:
        print(json.dumps({"one_process": one, "tensor_parallel": par}))
    else:
        print(report(one, par, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
