"""xllm-main: generate text from the shell.

    xllm-main                                    # a story from the small model in the package
    xllm-main --weight M --prompt "Once upon a time" --steps 64 --temperature 0
    xllm-main --weight M                         # interactive ">>> " loop until EOF
    xllm-main --weight M --file prompts.txt      # many prompts in one continuous batch
"""
from __future__ import annotations

import sys
import time

from .cli_errors import ArgumentParser, UsageError, cli_entry, finite_float, non_negative_int, positive_int

DEFAULT_PROMPT = "Once upon a time"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="xllm-main", description="Generate text with a llama-family model on the CPU.")
    p.add_argument("--weight", help="GGUF file, llama2.c .bin or Hugging Face directory "
                                    "(default: the small TinyStories model shipped in the package)")
    p.add_argument("--token", help="tokenizer: sentencepiece .model, llama2.c tokenizer .bin or "
                                   "HF tokenizer.json "
                                   "(default: the vocabulary embedded in the GGUF)")
    p.add_argument("--threads", type=positive_int, default=None, help="OpenMP threads (default: usable cores)")
    p.add_argument("--prompt", help="text to continue; without it (and with --weight) an interactive loop")
    p.add_argument("--file", help="a prompts file, one prompt per line, run in one continuous batch")
    p.add_argument("--steps", type=non_negative_int, default=None,
                   help="positions in total, BOS and prompt included, as llama2.c's -n "
                        "(default 256; 0 = the context length)")
    p.add_argument("--temperature", type=finite_float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=finite_float, default=0.9, help="nucleus sampling threshold (default 0.9)")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same text)")
    p.add_argument("--max-seqs", type=positive_int, default=16, help="sequences running at once (--file)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=256,
                   help="tokens per decoder step: decode tokens plus prompt chunks (default 256)")
    return p


def steps_to_max_tokens(steps, n_prompt: int, context: int, explicit: bool) -> int:
    """llama2.c's --steps counts every position; the engine counts generated tokens."""
    if steps == 0:
        steps = context
    if steps > context:
        if explicit:
            raise UsageError(f"--steps {steps} exceeds the model's context length {context}")
        steps = context
    if n_prompt > steps:
        raise UsageError(f"the prompt takes {n_prompt} positions (BOS included), more than "
                         f"{'--steps ' + str(steps) if steps < context else 'the context length ' + str(context)}")
    # positions n_prompt-1 .. steps-1 each sample one token, as llama2.c's run prints them
    return steps - n_prompt + 1


def run_prompt(llm, prompt: str, args, out=sys.stdout) -> None:
    from .sampling import SamplingParams
    ids = llm.tokenizer.encode(prompt, bos=True)
    max_tokens = steps_to_max_tokens(256 if args.steps is None else args.steps, len(ids),
                                     llm.config.max_seq_len, args.steps is not None)
    params = SamplingParams(max_tokens=max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed)
    out.write(llm.tokenizer.decode(ids))
    out.flush()
    start = time.perf_counter()
    for piece in llm.stream(ids, params):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    elapsed = time.perf_counter() - start
    gen = llm.last_stats.get("generated", 0)
    rate = gen / elapsed if elapsed > 0 else float("inf")
    print(f"xllm: {len(ids)} prompt + {gen} generated tokens in {elapsed:.3f} s, "
          f"{rate:.1f} tok/s", file=sys.stderr)


def read_prompts(path: str) -> list:
    try:
        raw = open(path, "rb").read()
    except OSError as exc:
        raise OSError(f"{path}: {exc.strerror}") from None
    prompts = []
    for i, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}:{i}: not valid UTF-8 (byte {exc.start})") from None
        if text.strip():
            prompts.append(text)
    if not prompts:
        raise ValueError(f"{path}: no prompts (the file is empty or has only blank lines)")
    return prompts


def run_file(llm, args) -> None:
    from .sampling import SamplingParams
    prompts = read_prompts(args.file)
    params = []
    for i, prompt in enumerate(prompts):
        n = len(llm.tokenizer.encode(prompt, bos=True))
        try:
            max_tokens = steps_to_max_tokens(256 if args.steps is None else args.steps, n,
                                             llm.config.max_seq_len, args.steps is not None)
        except UsageError as exc:
            raise UsageError(f"{args.file}: prompt {i + 1}: {exc}") from None
        params.append(SamplingParams(max_tokens=max_tokens, temperature=args.temperature,
                                     top_p=args.top_p, top_k=args.top_k,
                                     seed=None if args.seed is None else args.seed + i))
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    for o in outputs:
        sys.stdout.write(llm.tokenizer.decode(o.prompt_token_ids) + o.text + "\n\n")
    gen = sum(len(o.token_ids) for o in outputs)
    print(f"xllm: {len(outputs)} prompts, {gen} generated tokens in {elapsed:.3f} s, "
          f"{gen / elapsed:.1f} tok/s", file=sys.stderr)


def interactive(llm, args) -> None:
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if not line.strip():
            continue
        try:
            run_prompt(llm, line, args)
        except ValueError as exc:     # a prompt too long for the context: say so, keep going
            print(f"xllm-main: error: {exc}", file=sys.stderr)


@cli_entry("xllm-main")
def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.prompt is not None and args.file is not None:
        raise UsageError("--prompt and --file cannot be used together")
    from .engine import LLM
    llm = LLM(args.weight, tokenizer=args.token, threads=args.threads,
              max_batch_tokens=args.max_batch_tokens, max_seqs=args.max_seqs)
    if args.file is not None:
        run_file(llm, args)
    elif args.prompt is not None:
        run_prompt(llm, args.prompt, args)
    elif args.weight is None:
        run_prompt(llm, DEFAULT_PROMPT, args)    # no arguments: a story from the shipped model
    else:
        interactive(llm, args)
    return 0


def main(argv=None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
