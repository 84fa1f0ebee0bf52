"""The benchmark command lines: xllm-benchmark, xllm-benchmark-batch, `python -m
xllm.benchmark make-model | batch | limits`.
"""
from __future__ import annotations

import os
import sys
import time

from ..cli_errors import ArgumentParser, UsageError, cli_entry, positive_int
from ..kv_types import add_kv_type_option
from ..random_model import DTYPES, FAMILIES, SHAPES, make_random_model, resolve_shape
from .batch import bench_batch
from .limits import measure_limits, usable_cores
from .procmon import _contention_warning
from .report import _dump_json, _fmt_bytes, format_batch, format_single
from .single import bench_single


def _parse(parser, argv):
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def _check_weight(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")


@cli_entry("xllm-benchmark")
def main(argv=None) -> int:
    p = ArgumentParser(prog="xllm-benchmark",
                       description="One-sequence speed of a model: prefill, decode, per-operator roofline, "
                                   "against this machine's measured limits.")
    p.add_argument("--weight", required=True, help="model: GGUF, llama2.c .bin or HF directory")
    p.add_argument("--token", help="tokenizer (when the model file has no vocabulary)")
    p.add_argument("--threads", type=positive_int, help="threads (default: usable cores)")
    p.add_argument("--prompt-tokens", type=positive_int, default=128, help="prompt length (default 128)")
    p.add_argument("--gen-tokens", type=positive_int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--repeats", type=positive_int, default=3, help="measured runs; medians (default 3)")
    p.add_argument("--bandwidth-mb", type=positive_int, default=1024,
                   help="buffer of the bandwidth probe in MB (default 1024; keep it >> L3)")
    p.add_argument("--probe-iters", type=positive_int, default=20_000_000,
                   help="iterations of the FMA / int8 probes per thread (default 20000000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids")
    add_kv_type_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = _parse(p, argv)
    if isinstance(args, int):
        return args
    _check_weight(args.weight)
    r = bench_single(args.weight, threads=args.threads, prompt_tokens=args.prompt_tokens,
                     gen_tokens=args.gen_tokens, repeats=args.repeats, tokenizer=args.token,
                     seed=args.seed, limits_kwargs={"bandwidth_bytes": args.bandwidth_mb << 20,
                                    "compute_iters": args.probe_iters}, kv_type=args.kv_type)
    print(_dump_json(r) if args.json else format_single(r))
    _contention_warning(r["cpu"], "xllm-benchmark", r["machine"]["limits"])
    return 0


@cli_entry("xllm-benchmark-batch")
def batch_main(argv=None) -> int:
    p = ArgumentParser(prog="xllm-benchmark-batch",
                       description="Continuous-batching throughput and latency over a file of prompts "
                                   "(one per line), compared with running them one at a time.")
    p.add_argument("--weight", required=True, help="model: GGUF, llama2.c .bin or HF directory")
    p.add_argument("--file", required=True, help="prompts, one per line (UTF-8; blank lines skipped)")
    p.add_argument("--token", help="tokenizer (when the model file has no vocabulary)")
    p.add_argument("--batch", type=positive_int, default=16, help="sequences at once (max_seqs, default 16)")
    p.add_argument("--max-tokens", type=positive_int, default=128, help="new tokens per prompt (default 128)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=256,
                   help="token budget of one step (default 256)")
    p.add_argument("--threads", type=positive_int, help="threads (default: usable cores)")
    p.add_argument("--truncate", action="store_true",
                   help="cut prompts that do not fit the context (keeps BOS and the end) instead of failing")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8 in the file: fail naming the line (strict, default) or use U+FFFD")
    p.add_argument("--no-baseline", action="store_true", help="skip the one-at-a-time run")
    p.add_argument("--bandwidth-mb", type=positive_int, default=1024,
                   help="buffer of the bandwidth probe in MB (default 1024)")
    p.add_argument("--probe-iters", type=positive_int, default=20_000_000,
                   help="iterations of the FMA / int8 probes per thread (default 20000000)")
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="compute every prompt in full (default: prompts sharing full blocks with one "
                        "computed earlier in the same run read them from the cache)")
    add_kv_type_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = _parse(p, argv)
    if isinstance(args, int):
        return args
    _check_weight(args.weight)
    if not os.path.exists(args.file):
        raise FileNotFoundError(f"{args.file}: no such file")
    r = bench_batch(args.weight, args.file, batch=args.batch, max_tokens=args.max_tokens, threads=args.threads,
                    tokenizer=args.token, truncate=args.truncate, errors=args.errors,
                    baseline=not args.no_baseline, max_batch_tokens=args.max_batch_tokens,
                    ignore_eos=args.ignore_eos, prefix_cache=args.prefix_cache, kv_type=args.kv_type,
                    limits_kwargs={"bandwidth_bytes": args.bandwidth_mb << 20, "compute_iters": args.probe_iters})
    if args.json:
        print(_dump_json(r))
    else:
        print(format_batch(r))
    _contention_warning(r["cpu"], "xllm-benchmark-batch", r["machine"]["limits"])
    return 0


@cli_entry("xllm-benchmark make-model")
def make_model_main(argv=None) -> int:
    p = ArgumentParser(prog="python -m xllm.benchmark make-model",
                       description="Write a random-weight GGUF model of a real shape (llama, qwen2, gpt2).")
    p.add_argument("--shape", default="tinyllama-1.1b",
                   help=f"one of {', '.join(SHAPES)}, or 'custom' with --dim etc. (default tinyllama-1.1b)")
    p.add_argument("--dtype", choices=list(DTYPES), default="f32", help="type of every matrix (default f32)")
    p.add_argument("--layers", type=positive_int, help="number of layers (default: the shape's)")
    for flag, key in (("--dim", "dim"), ("--hidden-dim", "hidden_dim"), ("--heads", "n_heads"),
                      ("--kv-heads", "n_kv_heads"), ("--vocab", "vocab_size"), ("--ctx", "max_seq_len")):
        p.add_argument(flag, dest=key, type=positive_int, help=f"override {key}")
    p.add_argument("--family", choices=list(FAMILIES), help="with --shape custom: the architecture "
                                                             "(default llama)")
    p.add_argument("--tied", action="store_true", help="with --shape custom: tied classifier")
    p.add_argument("--token", help="vocabulary to embed (sentencepiece .model, llama2.c tokenizer.bin, GGUF); "
                                   "default: a synthetic vocabulary of the shape's kind and size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output .gguf file")
    args = _parse(p, argv)
    if isinstance(args, int):
        return args
    overrides = {k: getattr(args, k) for k in ("dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size",
                                               "max_seq_len")}
    if args.shape == "custom":
        shape = {k: v for k, v in overrides.items() if v is not None}
        shape.update(family=args.family or "llama", tied_embeddings=args.tied)
        overrides = {}
    else:
        shape = args.shape
        if shape not in SHAPES:
            raise UsageError(f"--shape {shape!r}: expected one of {', '.join(SHAPES)} or custom")
        if args.family is not None or args.tied:
            raise UsageError(f"--family and --tied go with --shape custom; {shape} is a "
                             f"{SHAPES[shape].get('family', 'llama')} shape")
    vocab = args.token
    if vocab is not None and not os.path.exists(vocab):
        raise FileNotFoundError(f"{vocab}: no such file")
    hp = resolve_shape(shape, args.layers, **overrides)
    if any(v is not None for v in overrides.values()):
        shape = hp                            # a named shape with overrides is a custom one
    t0 = time.perf_counter()
    make_random_model(args.output, shape, args.dtype, n_layers=args.layers, seed=args.seed, vocab=vocab)
    print(f"wrote {args.output}: {args.shape} shape, {hp['n_layers']} layers, {args.dtype}, "
          f"{_fmt_bytes(os.path.getsize(args.output))} in {time.perf_counter() - t0:.1f} s")
    return 0


def _module_main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "make-model":
        return make_model_main(argv[1:])
    if argv and argv[0] == "batch":
        return batch_main(argv[1:])
    if argv and argv[0] == "limits":
        threads = int(argv[1]) if len(argv) > 1 else usable_cores()
        print(_dump_json(measure_limits(threads)))
        return 0
    return main(argv)
