"""Repeated prefills of fresh random prompts, for profiling and A/B runs of two builds.

    python benchmarks/prefill_loop.py --weight M [--threads 2] [--prompt-tokens 128] [--seconds 6]
    perf record -g python benchmarks/prefill_loop.py --weight M --seconds 20

Each round generates one token from a new random prompt, so the prefix cache never answers
and every round runs the whole prefill.  Prints the rounds and the median ms per prefill
(the time includes sampling the one token, well under 1% of a prefill).  To compare two
builds, build the other one in place in a worktree and run this script with PYTHONPATH set
to it, alternating.
"""
import argparse
import statistics
import sys
import time


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weight", required=True, help="model file (GGUF, llama2.c .bin or HF directory)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--seconds", type=float, default=6.0, help="run rounds for this long (at least one)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads {args.threads}: expected >= 1")
    if args.prompt_tokens < 1:
        p.error(f"--prompt-tokens {args.prompt_tokens}: expected >= 1")
    if not args.seconds > 0:
        p.error(f"--seconds {args.seconds}: expected > 0")
    return args


def main(argv=None):
    args = parse(argv)
    import numpy as np
    from xllm import LLM, SamplingParams
    try:
        llm = LLM(args.weight, threads=args.threads)
    except (OSError, ValueError) as e:
        sys.exit(f"prefill_loop: {e}")
    vocab = llm.config.vocab_size
    if args.prompt_tokens >= llm.config.max_seq_len:
        sys.exit(f"prefill_loop: --prompt-tokens {args.prompt_tokens} does not fit the context "
                 f"({llm.config.max_seq_len})")
    rng = np.random.default_rng(args.seed)
    params = SamplingParams(max_tokens=1, temperature=0)
    times = []
    end = time.perf_counter() + args.seconds
    while not times or time.perf_counter() < end:
        prompt = [int(v) for v in rng.integers(min(100, vocab - 1), vocab, args.prompt_tokens)]
        t0 = time.perf_counter()
        llm.generate([prompt], params)
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"{len(times)} prefills of {args.prompt_tokens} tokens, {args.threads} threads: median "
          f"{statistics.median(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f})")


if __name__ == "__main__":
    main()
