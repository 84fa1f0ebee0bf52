"""xllm-main: generate text from the shell.

    xllm-main                                    # a story from the small model in the package
    xllm-main --weight M --prompt "Once upon a time" --steps 64 --temperature 0
    xllm-main --weight M                         # interactive ">>> " loop until EOF: a chat
                                                 # when the model has a chat template
    xllm-main --weight M --chat-template t.jinja # a chat with this template
    xllm-main --weight M --file prompts.txt      # many prompts in one continuous batch
    xllm-main --stats-log run.tsv ...            # inference in a child process, its /proc
                                                 # stats logged once a second (xllm-cpu-stats)
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

from .cli_errors import ArgumentParser, UsageError, cli_entry, finite_float, non_negative_int, positive_int
from .kv_types import add_kv_type_option

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
    add_kv_type_option(p)
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="compute every prompt in full (default: a chat turn, or a prompt sharing full "
                        "KV blocks with an earlier one, reads those blocks from the cache)")
    p.add_argument("--chat-template", metavar="FILE",
                   help="Jinja2 chat template for the interactive chat (default: the model's own)")
    p.add_argument("--stats-log", metavar="FILE",
                   help="run inference in a child process and log its /proc stats to FILE once a "
                        "second (read it with xllm-cpu-stats)")
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


def sampling_params(args, max_tokens: int):
    from .sampling import SamplingParams
    return SamplingParams(max_tokens=max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed)


def stream_reply(llm, ids, params, out=None) -> str:
    """Print the continuation of `ids` as it comes (to `out`, default the sys.stdout of the
    call, not of the import), then a stats line on stderr; return it."""
    out = sys.stdout if out is None else out
    start = time.perf_counter()
    pieces = []
    for piece in llm.stream(ids, params):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    elapsed = time.perf_counter() - start
    gen = llm.last_stats.get("generated", 0)
    rate = gen / elapsed if elapsed > 0 else float("inf")
    print(f"xllm: {len(ids)} prompt + {gen} generated tokens in {elapsed:.3f} s, "
          f"{rate:.1f} tok/s", file=sys.stderr)
    return "".join(pieces)


def run_prompt(llm, prompt: str, args, out=None) -> None:
    out = sys.stdout if out is None else out
    ids = llm.tokenizer.encode(prompt, bos=True)
    max_tokens = steps_to_max_tokens(256 if args.steps is None else args.steps, len(ids),
                                     llm.config.max_seq_len, args.steps is not None)
    params = sampling_params(args, max_tokens)
    out.write(llm.tokenizer.decode(ids))
    out.flush()
    stream_reply(llm, ids, params, out)


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


def prompt_lines():
    """Non-blank lines typed at the `>>> ` prompt, until EOF."""
    from .line_reader import PipedLineReader, piped_stdin
    if sys.stdin is None:                     # started without a stdin, as good as EOF
        print(file=sys.stderr)
        return
    if piped_stdin():
        with PipedLineReader(sys.stdin, sys.stdout) as reader:
            yield from nonblank_lines(reader.read)
    else:
        yield from nonblank_lines(input)
    print(file=sys.stderr)


def nonblank_lines(read_line):
    while True:
        try:
            line = read_line(">>> ")
        except EOFError:
            return
        if line.strip():
            yield line


def interactive(llm, args) -> None:
    for line in prompt_lines():
        try:
            run_prompt(llm, line, args)
        except ValueError as exc:     # a prompt too long for the context: say so, keep going
            print(f"xllm-main: error: {exc}", file=sys.stderr)


# ----------------------------------------------------------------------------- chat

def chat_params(llm, n_prompt: int, stops, args):
    """Sampling for one reply: --steps bounds the whole conversation, as llama2.c's chat."""
    from .sampling import SamplingParams
    try:
        max_tokens = steps_to_max_tokens(256 if args.steps is None else args.steps, n_prompt,
                                         llm.config.max_seq_len, args.steps is not None)
    except UsageError as exc:
        raise UsageError(f"the conversation is too long: {exc}; /reset starts a new one") from None
    params = sampling_params(args, max_tokens)
    # Stopping at the template's end-of-turn token needs SamplingParams.stop_token_ids (the
    # server branch adds it); until then the reply ends at EOS/BOS only.
    if "stop_token_ids" in {f.name for f in dataclasses.fields(SamplingParams)}:
        params.stop_token_ids = [t for t in stops if t != llm.config.eos_id]
    return params


def chat_turn(llm, template, messages, stops, args, out=None) -> str:
    """Render the conversation, stream the assistant's reply, return its text."""
    from .chat import encode_rendered
    ids = encode_rendered(llm.tokenizer, template.render(messages, add_generation_prompt=True))
    return stream_reply(llm, ids, chat_params(llm, len(ids), stops, args), out)


def chat(llm, template, args) -> None:
    """A multi-turn chat at the >>> prompt: each turn renders the whole conversation with the
    template; /reset forgets it."""
    from .chat import end_of_turn_ids
    stops = end_of_turn_ids(template, llm.tokenizer)
    messages = []
    for line in prompt_lines():
        if line.strip() == "/reset":
            messages.clear()
            print("xllm: conversation cleared", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply = chat_turn(llm, template, messages, stops, args)
        except ValueError as exc:     # too long, or the template refused: say so, keep going
            messages.pop()
            print(f"xllm-main: error: {exc}", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": reply})


# ----------------------------------------------------------------------------- modes

def run(args) -> int:
    """Load the model and do what the arguments ask (in this process)."""
    from . import LLM
    from .chat import load_chat_template
    llm = LLM(args.weight, tokenizer=args.token, threads=args.threads,
              max_batch_tokens=args.max_batch_tokens, max_seqs=args.max_seqs, kv_type=args.kv_type,
              prefix_cache=args.prefix_cache)
    template = None
    if args.prompt is None and args.file is None:
        template = load_chat_template(llm.checkpoint.path, args.chat_template, llm.tokenizer)
    if args.file is not None:
        run_file(llm, args)
    elif args.prompt is not None:
        run_prompt(llm, args.prompt, args)
    elif template is not None:
        chat(llm, template, args)
    elif args.weight is None:
        run_prompt(llm, DEFAULT_PROMPT, args)    # no arguments: a story from the shipped model
    else:
        interactive(llm, args)
    return 0


@cli_entry("xllm-main")
def _inference(args) -> int:
    return run(args)


def _inference_process(args, has_stdin: bool) -> None:
    """The child of --stats-log: the same work and the same errors as without it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)    # the parent ignores Ctrl-C
    # multiprocessing gave the child /dev/null; the parent's fd 0 is still ours (unless the
    # parent had none: then fd 0 may be some other file now)
    sys.stdin = os.fdopen(0, "r", closefd=False) if has_stdin else None
    sys.exit(_inference(args))


def run_with_stats(args) -> int:
    """Inference in a child process; this one logs the child's /proc stats until it exits
    and returns its exit code."""
    import multiprocessing
    from .procstats import StatsLogger
    if not os.path.exists("/proc/self/stat"):
        raise UsageError("--stats-log needs /proc/<pid>/stat (Linux)")
    try:
        open(args.stats_log, "w").close()           # refuse a bad path before starting anything
    except OSError as exc:
        raise OSError(f"{args.stats_log}: cannot write the stats log ({exc.strerror})") from None
    try:
        has_stdin = sys.stdin is not None and sys.stdin.fileno() == 0
    except (OSError, ValueError):            # replaced by something without a file descriptor
        has_stdin = False
    sys.stdout.flush()
    sys.stderr.flush()
    child = multiprocessing.get_context("fork").Process(target=_inference_process, args=(args, has_stdin),
                                                        name="xllm-inference")
    logger = None

    def forward_sigterm(*_):
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    # Ctrl-C reaches the child too (same process group): it reports it and exits 130; this
    # process ignores it (set before the fork, so no window) and returns the child's code.
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        child.start()
        signal.signal(signal.SIGTERM, forward_sigterm)
        logger = StatsLogger(child.pid, args.stats_log, interval=1.0).start()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)   # exited, not yet reaped:
        logger.stop()                                             # its final times are logged
    finally:
        if logger is not None:
            logger.stop()
        if child.pid is not None:
            if child.is_alive():
                child.terminate()
            child.join()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    code = child.exitcode
    if code < 0:
        name = signal.Signals(-code).name
        print(f"xllm-main: error: the inference process (pid {child.pid}) was killed by {name}",
              file=sys.stderr)
        return 128 - code
    return code


@cli_entry("xllm-main")
def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.prompt is not None and args.file is not None:
        raise UsageError("--prompt and --file cannot be used together")
    if args.chat_template is not None and (args.prompt is not None or args.file is not None):
        raise UsageError("--chat-template is for the interactive chat, not --prompt or --file")
    if args.stats_log is not None:
        from .parallel import launched_world_size
        if launched_world_size() > 1:
            raise UsageError("--stats-log runs inference in a child process, which an MPI rank cannot "
                             "fork; under mpirun use the launcher's own monitoring")
        return run_with_stats(args)
    return run(args)


def main(argv=None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
