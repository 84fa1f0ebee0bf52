"""python -m tests.fuzz NAME [--runs N] [--seconds S] [--timeout S] [--corpus DIR] [--replay FILE ...]
   python -m tests.fuzz --all [--runs N] [--timeout S] [--corpus DIR]    (each harness in turn)"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

# modules each harness's coverage feedback comes from (besides xllm and quant)
import importlib

# what each harness imports under instrumentation (its coverage feedback), by default the readers
IMPORTS = {"chat_template": ["xllm.chat"]}
DEFAULT_IMPORTS = ["xllm.formats", "xllm.tokenizer", "xllm.cli", "xllm.benchmark", "xllm.model"]
# chat templates: coverage from jinja2's lexer, parser, filters and sandbox; not from its code
# generator or runtime, nor the sandbox's budget: they run on every node and loop item, and
# instrumented they take many times what they take in use (atheris excludes by module name)
PACKAGES = {"chat_template": ["xllm", "jinja2"]}
NOT_INSTRUMENTED = ["xllm.chat_sandbox"] + [f"jinja2.{m}" for m in (
    "compiler", "visitor", "optimizer", "idtracking", "runtime", "nodes", "environment", "utils",
    "bccache", "loaders", "async_utils", "defaults", "exceptions", "_identifier", "ext", "debug",
    "constants", "nativetypes", "meta")]


def run_all(args, names) -> int:
    """Every harness in its own process (libFuzzer exits when a run ends), one summary line
    each; exit 1 if any harness found something."""
    failed = []
    for name in names:
        cmd = [sys.executable, "-m", "tests.fuzz", name, "--runs", str(args.runs),
               "--max-len", str(args.max_len)]
        if args.timeout is not None:
            cmd += ["--timeout", str(args.timeout)]
        if args.seconds:
            cmd += ["--seconds", str(args.seconds)]
        if args.whole_seeds:
            cmd.append("--whole-seeds")
        corpus = None
        if args.corpus:
            corpus = os.path.join(args.corpus, name)
            cmd += ["--corpus", corpus]
        start = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, text=True)
        done = re.findall(r"Done (\d+) runs", res.stderr)
        findings = re.findall(r"^(?:==\d+== ?ERROR|.*Test unit written to .*)$", res.stderr, re.M)
        status = "ok" if res.returncode == 0 else f"FINDING (exit {res.returncode})"
        print(f"{name:14s} {status:20s} {int(done[-1]) if done else 0:>9,} inputs "
              f"{time.monotonic() - start:8.1f} s" + (f"  {findings[-1].strip()}" if findings else ""),
              flush=True)
        if res.returncode != 0:
            failed.append(name)
            if corpus is None:
                sys.stderr.write(res.stderr[-3000:])
    return 1 if failed else 0


def main(argv=None) -> int:
    from .harnesses import DEFAULT_TIMEOUT, HARNESSES
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description="Run fuzz harnesses (atheris).")
    p.add_argument("name", nargs="?", choices=sorted(HARNESSES), help="the harness")
    p.add_argument("--list", action="store_true", help="list the harnesses")
    p.add_argument("--all", action="store_true", help="run every harness in turn, a summary line each")
    p.add_argument("--runs", type=int, default=10_000, help="inputs to try (default 10000)")
    p.add_argument("--seconds", type=int, default=0, help="stop after this long (0: no limit)")
    p.add_argument("--timeout", type=int, default=None,
                   help=f"seconds one input may take before it is a finding (default {DEFAULT_TIMEOUT}; "
                        f"raise it on a loaded machine)")
    p.add_argument("--corpus", help="corpus folder (kept and grown; with --all, one subfolder per "
                                    "harness); default: a temporary one")
    p.add_argument("--replay", nargs="+", metavar="FILE", help="run these inputs once, no fuzzing")
    p.add_argument("--whole-seeds", action="store_true",
                   help="also seed with the real checkpoints entire (slower inputs; for long runs)")
    p.add_argument("--skip-regressions", action="store_true",
                   help="do not start from regressions/NAME/ (tests/test_fuzz.py replays them apart)")
    p.add_argument("--max-len", type=int, default=2 << 20, help="largest input in bytes (default 2 MiB)")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(sorted(HARNESSES)))
        return 0
    if args.all:
        return run_all(args, sorted(HARNESSES))
    if args.name is None:
        p.error("name a harness (or --list, --all)")
    target = HARNESSES[args.name]
    if args.replay:
        for path in args.replay:
            with open(path, "rb") as f:
                target(f.read())
            print(f"{path}: ok")
        return 0

    import atheris
    with atheris.instrument_imports(include=PACKAGES.get(args.name, ["xllm", "quant"]),
                                    exclude=NOT_INSTRUMENTED):
        for module in IMPORTS.get(args.name, DEFAULT_IMPORTS):     # before anything imports them
            importlib.import_module(module)
    from .seeds import seeds
    corpus = args.corpus or tempfile.mkdtemp(prefix=f"xllm-fuzz-{args.name}-")
    os.makedirs(corpus, exist_ok=True)
    for i, data in enumerate(seeds(args.name, args.whole_seeds)):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(data)
    regress = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regressions", args.name)
    dirs = [corpus] + ([regress] if os.path.isdir(regress) and not args.skip_regressions else [])
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    flags = [sys.argv[0], f"-runs={args.runs}", f"-timeout={timeout}", f"-max_len={args.max_len}",
             "-rss_limit_mb=4096", f"-artifact_prefix={os.path.join(corpus, 'finding-')}"]
    if args.seconds:
        flags.append(f"-max_total_time={args.seconds}")
    atheris.Setup(flags + dirs, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
