"""xllm and llama.cpp side by side on the same GGUF files, interleaved in one run.

    python benchmarks/vs_llamacpp.py --llama-bench ~/.cache/xllm-peers/llama.cpp/build/bin/llama-bench
        [--models tinyllama-1.1b:q4_k_m tinyllama-1.1b:q6_k ...] [--threads 2] [--rounds 3]
        [--prompt-tokens 128] [--gen-tokens 128] [--quantizer xllm|llama] [--json OUT]

SHAPE is any `python -m xllm.benchmark make-model --shape` name (tinyllama-1.1b, stories110m,
gpt2-124m, llama-3.2-1b, qwen2.5-0.5b, ...). For every model (SHAPE:TYPE; the files are made under benchmarks/models/ when missing: the F32
file by `python -m xllm.benchmark make-model`, the quantized ones from it by `xllm-quant --type`
or, with --quantizer llama, by the llama-quantize beside llama-bench) it alternates, round by
round, `xllm-benchmark --json` and `llama-bench -o json` with the same thread count, prompt and
generation lengths, then prints one table: decode and prompt-processing tok/s of both (medians
over the rounds), their ratio, and xllm's decode as a fraction of the read bandwidth probed
around its runs. The CPU model and its SIMD flags head the table. Every command is printed
before it runs, so each figure can be reproduced alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = os.path.join(HERE, "models")
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
DEFAULT_MODELS = ["tinyllama-1.1b:f32", "tinyllama-1.1b:q8_0", "tinyllama-1.1b:q4_0",
                  "tinyllama-1.1b:q4_k_m", "tinyllama-1.1b:q5_k_m", "tinyllama-1.1b:q6_k",
                  "stories110m:f32", "stories110m:q8_0",
                  # the other families (issue 10): GPT-2 124M, Llama 3.2 1B (BPE 128256, GQA 32/8,
                  # llama3 RoPE), Qwen2.5 0.5B (q/k/v biases)
                  "gpt2-124m:f32", "gpt2-124m:q8_0", "llama-3.2-1b:q8_0", "qwen2.5-0.5b:q8_0"]
SIMD_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512bw", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_description() -> str:
    """'model name' and the SIMD flags of this CPU, from /proc/cpuinfo."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return f"{name}; {' '.join(f for f in SIMD_FLAGS if f in flags) or 'no AVX2'}"


def run(cmd, capture=True) -> str:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE if capture else None,
                         stderr=None, text=True)
    if res.returncode != 0:
        raise SystemExit(f"command failed with exit code {res.returncode}: {' '.join(cmd)}")
    return res.stdout


def model_file(spec: str, args) -> str:
    """The GGUF file of SHAPE:TYPE, made when missing."""
    shape, _, qtype = spec.partition(":")
    qtype = (qtype or "f32").lower()
    os.makedirs(MODELS, exist_ok=True)
    base = os.path.join(MODELS, f"{shape}-f32.gguf")
    if not os.path.exists(base):
        run([PY, "-m", "xllm.benchmark", "make-model", "--shape", shape, "--dtype", "f32", "-o", base], False)
    if qtype == "f32":
        return base
    path = os.path.join(MODELS, f"{shape}-{qtype}.gguf")
    if not os.path.exists(path):
        if args.quantizer == "llama":
            quantize = os.path.join(os.path.dirname(args.llama_bench), "llama-quantize")
            run([quantize, base, path, qtype.upper(), str(args.threads)], False)
        else:
            run([PY, "-m", "quant.cli", "--weight", base, "-o", path, "--type", qtype.upper()], False)
    return path


def xllm_round(path: str, args) -> dict:
    out = run([PY, "-m", "xllm.benchmark", "--weight", path, "--threads", str(args.threads),
               "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
               "--repeats", "1", "--json"])
    r = json.loads(out)
    return {"decode": r["decode"]["tok_s"], "prefill": r["prefill"]["tok_s"],
            "bw_fraction": r["decode"].get("fraction_of_bandwidth"),
            "gbps": r["decode"].get("gbps"), "other_cpu": r.get("cpu", {}).get("other_processes_cpu_pct")}


def llama_round(path: str, args) -> dict:
    out = run([args.llama_bench, "-m", path, "-t", str(args.threads), "-p", str(args.prompt_tokens),
               "-n", str(args.gen_tokens), "-r", "1", "-o", "json"])
    rows = json.loads(out)
    got = {}
    for row in rows:
        if row.get("n_gen", 0) > 0 and row.get("n_prompt", 0) == 0:
            got["decode"] = row["avg_ts"]
        elif row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0:
            got["prefill"] = row["avg_ts"]
    if set(got) != {"decode", "prefill"}:
        raise SystemExit(f"llama-bench printed no pp/tg rows for {path}: {out[:200]!r}")
    return got


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-bench", required=True, help="path of llama.cpp's llama-bench")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="SHAPE:TYPE or GGUF paths")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per model (medians)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--quantizer", choices=["xllm", "llama"], default="xllm",
                   help="who writes the quantized files (default xllm-quant)")
    p.add_argument("--json", help="also write every round's figures to this file")
    args = p.parse_args(argv)
    if not os.access(args.llama_bench, os.X_OK):
        p.error(f"--llama-bench {args.llama_bench!r}: not an executable file")

    results = []
    for spec in args.models:
        path = spec if spec.endswith(".gguf") else model_file(spec, args)
        rounds = {"xllm": [], "llama.cpp": []}
        for _ in range(args.rounds):
            rounds["xllm"].append(xllm_round(path, args))
            rounds["llama.cpp"].append(llama_round(path, args))
        results.append({"model": spec, "path": path, "rounds": rounds})

    print(f"\nCPU: {cpu_description()}; {args.threads} threads; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"prompt {args.prompt_tokens} tokens, decode {args.gen_tokens} tokens, medians of {args.rounds} "
          f"interleaved rounds\n")
    print("| model | test | xllm tok/s | llama.cpp tok/s | xllm ÷ llama.cpp | xllm decode % of bandwidth |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for test in ("decode", "prefill"):
            x = median([k[test] for k in r["rounds"]["xllm"]])
            y = median([k[test] for k in r["rounds"]["llama.cpp"]])
            bw = median([k["bw_fraction"] for k in r["rounds"]["xllm"]]) if test == "decode" else None
            name = r["model"] if test == "decode" else ""
            label = "decode" if test == "decode" else f"prefill {args.prompt_tokens}"
            print(f"| {name} | {label} | {x:.1f} | {y:.1f} | {x / y:.2f} | "
                  f"{'' if bw is None else f'{100 * bw:.0f}%'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_description(), "threads": args.threads, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
