"""Soak: many short generations in one process through the online engine; does it leak?

    python benchmarks/soak.py                        # 10,000 requests on the shipped model
    python benchmarks/soak.py --weight model.gguf --n 2000 --threads 2 --json soak.json

Requests go through `xllm.engine.Engine` (add_request / abort_request / step), up to
--max-seqs in flight, each with its own mix: prompts from benchmarks/prompts.txt, cut,
doubled or as random token ids, near the context length now and then; greedy or sampled
(temperature, top_p, top_k, seed, repetition / presence / frequency penalties), stop strings,
logprobs and prompt logprobs, n = 1..3, 1..24 new tokens.  One request in ten is aborted
mid-stream; one in twenty is refused on purpose (bad SamplingParams, a prompt over the context
length, token ids out of the vocabulary, a request id already running) and must be a
ValueError.  Fixed probe requests (greedy, and seeded sampling) come back every 50 requests and
must give the same text every time, whatever they are batched with.

Reported: resident memory (VmRSS of /proc/self/status, after a gc; the KV pool is touched
whole before the start) at the --n/10'th and the
--n'th request and its growth (must be under --max-growth, 2%), KV blocks free at the end (must
be all), wall time, counts of each kind of request.  Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from xllm.engine import Engine  # noqa: E402
from xllm.sampling import SamplingParams  # noqa: E402

PROMPTS = os.path.join(HERE, "prompts.txt")
PROBE_EVERY = 50


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS line")


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


BAD_PARAMS = [dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-3), dict(n=0), dict(max_tokens=-1),
              dict(logprobs=99), dict(stop=[""]), dict(repetition_penalty=0.0), dict(presence_penalty=3.0),
              dict(seed=1.5), dict(temperature=float("nan")), dict(stop_token_ids=[-1])]


class Soak:
    def __init__(self, engine: Engine, n: int, seed: int):
        self.engine = engine
        self.n = n
        self.rng = np.random.default_rng(seed)
        tok = engine.tokenizer
        lines = [s.strip() for s in open(PROMPTS, encoding="utf-8") if s.strip()]
        self.prompts = [tok.encode(s) for s in lines]
        self.ctx = engine.config.max_seq_len
        self.vocab = engine.config.vocab_size
        self.inflight: dict = {}            # request id -> state
        self.counts = {k: 0 for k in ("finished", "aborted", "refused", "probes", "completions", "tokens",
                                      "unexpected_errors", "probe_mismatches", "abort_unknown_ok")}
        self.probe_text: dict = {}          # probe index -> the text it gave the first time
        self.probes = [
            (self.prompts[0], SamplingParams(max_tokens=16, temperature=0.0)),
            (self.prompts[1], SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=1234)),
            (self.prompts[2], SamplingParams(max_tokens=12, temperature=1.0, top_k=20, seed=7, n=2,
                                             repetition_penalty=1.2, stop=[".", "!"])),
        ]
        self.next_id = 0
        self.done = 0
        self.first_error = None

    # ------------------------------------------------------------------ request mix

    def _prompt(self) -> list:
        r = self.rng.random()
        base = self.prompts[int(self.rng.integers(len(self.prompts)))]
        if r < 0.45:
            return list(base)
        if r < 0.65:
            return base[:int(self.rng.integers(1, len(base) + 1))]
        if r < 0.8:
            return base + base[1:]
        if r < 0.95:
            return [base[0]] + self.rng.integers(3, self.vocab, int(self.rng.integers(1, 64))).tolist()
        return [base[0]] + self.rng.integers(3, self.vocab, self.ctx - 40).tolist()   # near the context

    def _params(self) -> SamplingParams:
        r = self.rng
        pick = lambda *xs: xs[int(r.integers(len(xs)))]   # noqa: E731
        greedy = r.random() < 0.3
        return SamplingParams(
            max_tokens=int(r.integers(1, 25)),
            temperature=0.0 if greedy else pick(0.5, 0.8, 1.0, 1.3),
            top_p=pick(1.0, 1.0, 0.9, 0.5), top_k=pick(0, 0, 5, 40),
            seed=pick(None, None, int(r.integers(1 << 31))),
            repetition_penalty=pick(1.0, 1.0, 1.1, 1.3),
            presence_penalty=pick(0.0, 0.0, 0.5, -0.5), frequency_penalty=pick(0.0, 0.0, 0.3),
            stop=pick(None, None, None, ".", [" the", "\n"], ["!", "?", "Lily"]),
            logprobs=pick(None, None, None, 0, 3), prompt_logprobs=pick(*([None] * 9), 2),
            n=pick(1, 1, 1, 1, 2, 3), stop_at_eos=r.random() < 0.9)

    def _refused(self, rid: int) -> None:
        """A request that must be refused with a ValueError (and leave nothing behind)."""
        kind = int(self.rng.integers(4))
        base = self.prompts[rid % len(self.prompts)]
        try:
            if kind == 0:
                self.engine.add_request(rid, base, SamplingParams(**BAD_PARAMS[rid % len(BAD_PARAMS)]))
            elif kind == 1:
                self.engine.add_request(rid, [base[0]] + [5] * self.ctx, SamplingParams(max_tokens=4))
            elif kind == 2:
                self.engine.add_request(rid, base + [self.vocab + rid % 7], SamplingParams(max_tokens=4))
            else:
                running = next(iter(self.inflight), None)
                if running is None:
                    self.engine.add_request(rid, base, SamplingParams(max_tokens=4, top_p=2.0))
                else:
                    self.engine.add_request(running, base, SamplingParams(max_tokens=4))
        except ValueError:
            self.counts["refused"] += 1
            return
        except Exception as exc:            # noqa: BLE001 -- anything else is what the soak looks for
            self._unexpected(f"request {rid} (refusal kind {kind}): {type(exc).__name__}: {exc}")
            return
        self._unexpected(f"request {rid} (refusal kind {kind}) was accepted")

    def _unexpected(self, what: str) -> None:
        self.counts["unexpected_errors"] += 1
        self.first_error = self.first_error or what

    def add_one(self) -> None:
        rid = self.next_id
        self.next_id += 1
        probe = None
        if rid % PROBE_EVERY == PROBE_EVERY - 1:
            probe = (rid // PROBE_EVERY) % len(self.probes)
            ids, params = self.probes[probe]
        elif rid % 20 == 7:
            self._refused(rid)
            self._count_done()
            return
        else:
            ids, params = self._prompt(), self._params()
        try:
            self.engine.add_request(rid, ids, params)
        except ValueError as exc:
            kv = self.engine.model.kv
            total = len(ids) + params.max_tokens - 1
            if total > self.ctx or params.n * kv.blocks_for(total) > kv.n_blocks:   # the mix overshot
                self.counts["refused"] += 1
                self._count_done()
                return
            self._unexpected(f"request {rid} refused: {exc}")
            self._count_done()
            return
        abort_after = int(self.rng.integers(1, 6)) if probe is None and self.rng.random() < 0.1 else None
        self.inflight[rid] = {"n": params.n, "ended": 0, "text": [""] * params.n, "outputs": 0,
                              "abort_after": abort_after, "probe": probe}

    def _count_done(self) -> None:
        self.done += 1
        if self.done in self.marks:
            self.rss[self.done] = settled_rss()

    # ------------------------------------------------------------------ the loop

    def run(self, max_inflight: int) -> dict:
        self.marks = {max(1, self.n // 10), self.n}
        self.rss = {}
        start = time.monotonic()
        while self.done < self.n:
            while len(self.inflight) < max_inflight and self.next_id < self.n:
                self.add_one()
            if not self.inflight:
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:        # noqa: BLE001
                self._unexpected(f"step: {type(exc).__name__}: {exc}")
                break
            self.aborted_now = set()        # its other completions may still have outputs in this step
            for out in outputs:
                if out.request_id not in self.aborted_now:
                    self._take(out)
        wall = time.monotonic() - start
        kv = self.engine.model.kv
        return {"requests": self.n, "wall_s": round(wall, 2), "steps": self.engine.steps,
                "preemptions": self.engine.scheduler.preemptions,
                "rss_at": {str(k): v for k, v in sorted(self.rss.items())},
                "rss_growth_pct": rss_growth_pct(self.rss, self.n),
                "kv_blocks_free": kv.n_free, "kv_blocks": kv.n_blocks, "kv_tables_left": len(kv.tables),
                "unfinished": self.engine.has_unfinished(), **self.counts, "first_error": self.first_error}

    def _take(self, out) -> None:
        state = self.inflight.get(out.request_id)
        if state is None:
            self._unexpected(f"an output for request {out.request_id}, which is not in flight")
            return
        state["outputs"] += 1
        state["text"][out.index] += out.text
        self.counts["tokens"] += len(out.token_ids)
        if out.finish_reason is not None:
            state["ended"] += 1
            self.counts["completions"] += 1
        if state["ended"] == state["n"]:
            self._finish(out.request_id, state)
        elif state["abort_after"] is not None and state["outputs"] >= state["abort_after"]:
            if not self.engine.abort_request(out.request_id):
                self._unexpected(f"abort of running request {out.request_id} returned False")
            if self.engine.abort_request(out.request_id):
                self._unexpected(f"a second abort of request {out.request_id} returned True")
            else:
                self.counts["abort_unknown_ok"] += 1
            self.counts["aborted"] += 1
            self.aborted_now.add(out.request_id)
            del self.inflight[out.request_id]
            self._count_done()

    def _finish(self, rid, state) -> None:
        del self.inflight[rid]
        self.counts["finished"] += 1
        if state["probe"] is not None:
            self.counts["probes"] += 1
            first = self.probe_text.setdefault(state["probe"], state["text"])
            if first != state["text"]:
                self.counts["probe_mismatches"] += 1
                self.first_error = self.first_error or (
                    f"probe {state['probe']} gave {state['text']!r}, earlier {first!r}")
        self._count_done()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weight", default=None, help="model (default: the small model shipped in the package)")
    p.add_argument("--tokenizer", default=None, help="tokenizer file (default: the model's vocabulary)")
    p.add_argument("--n", type=int, default=10_000, help="requests in all (default 10000)")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: usable cores)")
    p.add_argument("--max-seqs", type=int, default=8, help="sequences running at once (default 8)")
    p.add_argument("--kv-blocks", type=int, default=None,
                   help="KV pool (default: half of --max-seqs full contexts, so preemption happens)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--max-growth", type=float, default=2.0, help="allowed RSS growth in %% (default 2)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if args.n < 10:
        p.error(f"--n {args.n}: expected at least 10")
    from xllm.engine import open_model_checkpoint
    ckpt = open_model_checkpoint(args.weight)
    blocks = args.kv_blocks or max(1, args.max_seqs * -(-ckpt.config.max_seq_len // 16) // 2)
    engine = Engine.load(ckpt, tokenizer=args.tokenizer, threads=args.threads, max_seqs=args.max_seqs,
                         kv_blocks=blocks)
    # the pool's pages are calloc'ed and become resident as blocks are first written: touch them
    # all now, so that the first long prompt to reach a high block does not look like a leak
    engine.model.kv.k.fill(0.0)
    engine.model.kv.v.fill(0.0)
    report = Soak(engine, args.n, args.seed).run(max_inflight=args.max_seqs)
    checks = {
        "rss_growth": report["rss_growth_pct"] is not None and report["rss_growth_pct"] < args.max_growth,
        "kv_all_free": report["kv_blocks_free"] == report["kv_blocks"] and report["kv_tables_left"] == 0
        and not report["unfinished"],
        "no_unexpected_errors": report["unexpected_errors"] == 0,
        "probes_consistent": report["probe_mismatches"] == 0 and report["probes"] > 0,
    }
    mib = {k: round(v / 2**20, 2) for k, v in report["rss_at"].items()}
    print(f"soak: {report['requests']:,} requests in {report['wall_s']:.1f} s "
          f"({report['steps']:,} steps, {report['tokens']:,} tokens, {report['preemptions']:,} preemptions)")
    print(f"  finished {report['finished']:,}  aborted {report['aborted']:,}  refused {report['refused']:,}  "
          f"probes {report['probes']:,}  unexpected errors {report['unexpected_errors']}")
    print(f"  RSS MiB at request {', '.join(f'{k}: {v}' for k, v in mib.items())}  growth "
          f"{report['rss_growth_pct']}% (limit {args.max_growth}%)")
    print(f"  KV blocks free at the end {report['kv_blocks_free']}/{report['kv_blocks']}")
    return conclude(report, checks, args.json)


def rss_growth_pct(rss: dict, n: int):
    """Percent growth of resident memory from the n/10-th request to the n-th (None if unread)."""
    lo, hi = rss.get(max(1, n // 10)), rss.get(n)
    return round(100.0 * (hi - lo) / lo, 3) if lo and hi else None


def conclude(report: dict, checks: dict, json_path) -> int:
    """Print the checks and the first error, write the report (with them) to json_path if
    given; the exit status: 0 when every check holds."""
    report["checks"], report["ok"] = checks, all(checks.values())
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if report["first_error"]:
        print(f"  first error: {report['first_error']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
