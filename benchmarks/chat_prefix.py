"""Multi-turn chat with and without prefix caching: time to first token of later turns, total time.

    python benchmarks/chat_prefix.py --weight tinyllama-q8_0.gguf --threads 2
    python benchmarks/chat_prefix.py --weight model.gguf --system-tokens 400 --turns 8 --conversations 8 --json

Every conversation starts with the same system prompt (BOS and --system-tokens - 1 random
ids), then --turns turns: a user message of --user-tokens random ids, an answer of
--reply-tokens greedy tokens (end tokens ignored).  Turn k's prompt is turn k-1's prompt,
its answer and the new message, token for token (what a chat front end sends).  The
--conversations run at once on one online engine (xllm.engine.Engine, as xllm-serve's engine
process runs it): a conversation's next turn joins the batch at the step after its answer
ended.  Each mode (--mode both: without the cache, then with it) starts from an empty cache;
the script reports per mode the wall time, the TTFT of the first and of the later turns
(submission to first token), the prompt tokens and how many of them came from the cache,
and whether both modes generated the same tokens.
"""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
from xllm.cli_errors import ArgumentParser, cli_entry, positive_int  # noqa: E402
from xllm.engine import DEFAULT_MODEL, Engine  # noqa: E402
from xllm.sampling import SamplingParams  # noqa: E402


def build_parser():
    p = ArgumentParser(prog="chat_prefix.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--weight", default=DEFAULT_MODEL, help="GGUF, llama2.c .bin or HF directory "
                                                           "(default: the shipped stories260K)")
    p.add_argument("--token", help="tokenizer, when the model file has no vocabulary")
    p.add_argument("--threads", type=positive_int, default=None, help="threads (default: usable cores)")
    p.add_argument("--conversations", type=positive_int, default=8)
    p.add_argument("--turns", type=positive_int, default=8)
    p.add_argument("--system-tokens", type=positive_int, default=400, help="shared system prompt, BOS included")
    p.add_argument("--user-tokens", type=positive_int, default=40, help="tokens of each user message")
    p.add_argument("--reply-tokens", type=positive_int, default=32, help="tokens of each answer")
    p.add_argument("--max-batch-tokens", type=positive_int, default=256)
    p.add_argument("--block-size", type=positive_int, default=16)
    p.add_argument("--mode", choices=["both", "on", "off"], default="both",
                   help="run with the prefix cache (on), without (off) or both (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def conversation_tokens(args, vocab_size: int, bos_id: int):
    """The shared system prompt and each conversation's user messages (random ids >= 3)."""
    rng = np.random.default_rng(args.seed)
    low = min(3, vocab_size - 1)
    system = [bos_id] + rng.integers(low, vocab_size, args.system_tokens - 1).tolist()
    users = [[rng.integers(low, vocab_size, args.user_tokens).tolist() for _ in range(args.turns)]
             for _ in range(args.conversations)]
    return system, users


def run_chats(engine: Engine, system, users, reply_tokens: int) -> dict:
    """All conversations at once on `engine`; per turn: TTFT, prompt and cached tokens, answer."""
    params = SamplingParams(max_tokens=reply_tokens, temperature=0.0, stop_at_eos=False)
    history = [list(system) for _ in users]
    turn = [0] * len(users)
    sent, first, turns = {}, {}, []
    answers = {}

    def submit(c):
        history[c] += users[c][turn[c]]
        rid = (c, turn[c])
        sent[rid] = time.perf_counter()
        answers[rid] = []
        engine.add_request(rid, history[c], params)

    start = time.perf_counter()
    for c in range(len(users)):
        submit(c)
    while engine.has_unfinished():
        for out in engine.step():
            rid = out.request_id
            now = time.perf_counter()
            if out.token_ids and rid not in first:
                first[rid] = now
            answers[rid] += out.token_ids
            if out.finish_reason is not None:
                c, k = rid
                turns.append({"conversation": c, "turn": k, "ttft_s": first[rid] - sent[rid],
                              "prompt_tokens": out.num_prompt_tokens, "cached_tokens": out.num_cached_tokens})
                history[c] += answers[rid]
                turn[c] += 1
                if turn[c] < len(users[c]):
                    submit(c)
    wall = time.perf_counter() - start
    turns.sort(key=lambda t: (t["conversation"], t["turn"]))
    return {"wall_s": wall, "turns": turns, "answers": [answers[(t["conversation"], t["turn"])] for t in turns]}


def summary(run: dict) -> dict:
    ttft_first = [t["ttft_s"] for t in run["turns"] if t["turn"] == 0]
    ttft_later = [t["ttft_s"] for t in run["turns"] if t["turn"] > 0]
    later = ttft_later or [float("nan")]
    return {
        "wall_s": run["wall_s"],
        "ttft_first_turn_s": {"median": float(np.median(ttft_first)), "mean": float(np.mean(ttft_first))},
        "ttft_later_turns_s": {"median": float(np.median(later)), "mean": float(np.mean(later)),
                               "p95": float(np.percentile(later, 95))},
        "prompt_tokens": sum(t["prompt_tokens"] for t in run["turns"]),
        "cached_prompt_tokens": sum(t["cached_tokens"] for t in run["turns"]),
    }


@cli_entry("chat_prefix.py")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.exists(args.weight):
        raise FileNotFoundError(f"{args.weight}: no such model file or directory")
    positions = args.system_tokens + args.turns * (args.user_tokens + args.reply_tokens)
    engine = Engine.load(args.weight, tokenizer=args.token, threads=args.threads, max_seqs=args.conversations,
                         max_batch_tokens=args.max_batch_tokens, block_size=args.block_size)
    cfg = engine.config
    if positions > cfg.max_seq_len:
        raise ValueError(f"a conversation needs {positions} positions (--system-tokens {args.system_tokens} "
                         f"+ --turns {args.turns} x (--user-tokens {args.user_tokens} + --reply-tokens "
                         f"{args.reply_tokens})), more than the model's context length {cfg.max_seq_len}")
    system, users = conversation_tokens(args, cfg.vocab_size, cfg.bos_id)
    kv = engine.model.kv
    engine.add_request("warm-up", system[:8], SamplingParams(max_tokens=2, temperature=0.0))
    while engine.has_unfinished():                     # maps the weights in
        engine.step()
    modes = {"both": ["off", "on"], "on": ["on"], "off": ["off"]}[args.mode]
    result = {"model": os.fspath(args.weight), "threads": engine.model.threads,
              "settings": {k: getattr(args, k) for k in ("conversations", "turns", "system_tokens", "user_tokens",
                                                         "reply_tokens", "max_batch_tokens", "block_size", "seed")},
              "modes": {}}
    answers = {}
    for mode in modes:
        kv.prefix_cache = mode == "on"
        kv.clear_prefix_cache()
        run = run_chats(engine, system, users, args.reply_tokens)
        answers[mode] = run.pop("answers")
        result["modes"][mode] = dict(summary(run), turns=run["turns"])
    if len(modes) == 2:
        off, on = result["modes"]["off"], result["modes"]["on"]
        result["outputs_identical"] = answers["off"] == answers["on"]
        result["speedup"] = {"ttft_later_turns_median": off["ttft_later_turns_s"]["median"]
                             / on["ttft_later_turns_s"]["median"],
                             "wall": off["wall_s"] / on["wall_s"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s = result["settings"]
    print(f"model    {result['model']}, {result['threads']} threads")
    print(f"chats    {s['conversations']} conversations x {s['turns']} turns; system prompt {s['system_tokens']} "
          f"tokens, user {s['user_tokens']}, answer {s['reply_tokens']} (greedy); blocks of {s['block_size']}")
    print(f"{'prefix cache':>12}  {'wall s':>8}  {'TTFT turn 1 ms':>15}  {'TTFT later p50/mean ms':>22}  "
          f"{'prompt tok':>10}  {'cached tok':>10}")
    for mode, m in result["modes"].items():
        print(f"{mode:>12}  {m['wall_s']:8.2f}  {m['ttft_first_turn_s']['median'] * 1e3:15.0f}  "
              f"{m['ttft_later_turns_s']['median'] * 1e3:10.0f} / {m['ttft_later_turns_s']['mean'] * 1e3:9.0f}  "
              f"{m['prompt_tokens']:10d}  {m['cached_prompt_tokens']:10d}")
    if "speedup" in result:
        sp = result["speedup"]
        print(f"with the cache: later-turn TTFT {sp['ttft_later_turns_median']:.2f}x lower (median), "
              f"total time {sp['wall']:.2f}x lower; outputs identical: {result['outputs_identical']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
