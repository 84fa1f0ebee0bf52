"""python -m tests.fuzz NAME [--runs N] [--seconds S] [--timeout S] [--corpus DIR] [--replay FILE ...]"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv=None) -> int:
    from .harnesses import HARNESSES
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description="Run one fuzz harness (atheris).")
    p.add_argument("name", nargs="?", choices=sorted(HARNESSES), help="the harness")
    p.add_argument("--list", action="store_true", help="list the harnesses")
    p.add_argument("--runs", type=int, default=10_000, help="inputs to try (default 10000)")
    p.add_argument("--seconds", type=int, default=0, help="stop after this long (0: no limit)")
    p.add_argument("--timeout", type=int, default=2, help="seconds one input may take (default 2)")
    p.add_argument("--corpus", help="corpus folder (kept and grown); default: a temporary one")
    p.add_argument("--replay", nargs="+", metavar="FILE", help="run these inputs once, no fuzzing")
    p.add_argument("--whole-seeds", action="store_true",
                   help="also seed with the real checkpoints entire (slower inputs; for long runs)")
    p.add_argument("--max-len", type=int, default=2 << 20, help="largest input in bytes (default 2 MiB)")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(sorted(HARNESSES)))
        return 0
    if args.name is None:
        p.error("name a harness (or --list)")
    target = HARNESSES[args.name]
    if args.replay:
        for path in args.replay:
            with open(path, "rb") as f:
                target(f.read())
            print(f"{path}: ok")
        return 0

    import atheris
    with atheris.instrument_imports(include=["xllm", "quant"]):   # before anything imports them
        import xllm.formats, xllm.tokenizer, xllm.cli, xllm.benchmark, xllm.model  # noqa: F401
    from .seeds import seeds
    corpus = args.corpus or tempfile.mkdtemp(prefix=f"xllm-fuzz-{args.name}-")
    os.makedirs(corpus, exist_ok=True)
    for i, data in enumerate(seeds(args.name, args.whole_seeds)):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(data)
    regress = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regressions", args.name)
    dirs = [corpus] + ([regress] if os.path.isdir(regress) else [])
    flags = [sys.argv[0], f"-runs={args.runs}", f"-timeout={args.timeout}", f"-max_len={args.max_len}",
             "-rss_limit_mb=4096", f"-artifact_prefix={os.path.join(corpus, 'finding-')}"]
    if args.seconds:
        flags.append(f"-max_total_time={args.seconds}")
    atheris.Setup(flags + dirs, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
