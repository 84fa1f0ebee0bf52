"""Soak of xllm-serve: many short requests through the official openai client; does it leak?

    python benchmarks/soak_serve.py                          # starts xllm-serve on the shipped model
    python benchmarks/soak_serve.py --weight M --n 10000 --clients 8 --threads 2 --json soak.json

--clients threads each send /v1/completions requests one after another, --n in all: text
prompts of benchmarks/prompts.txt (whole, cut, doubled) or token-id prompts, streamed or not,
with mixed sampling options (temperature, top_p, top_k, seed, penalties, stop strings,
logprobs, n up to 3, echo); one streamed request in ten is dropped by the client after a few
chunks (the server must abort it); one in twenty is refused on purpose (a bad parameter, a
prompt over the context) and must be an HTTP 400.  Reported: resident memory of the front
end plus the engine process (xllm's /metrics gauges) after the --n/10'th and the --n'th
request, its growth (must be under --max-growth, 2%), xllm_kv_blocks_used once the server is
idle (must be 0), wall time, counts.  Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = os.path.join(HERE, "prompts.txt")
sys.path.insert(0, HERE)
from soak import conclude, rss_growth_pct  # noqa: E402  (the in-process soak's report helpers)


def start_server(args) -> tuple:
    """xllm-serve --port 0 as a child; (process, url) once /health answers."""
    cmd = [sys.executable, "-m", "xllm.serve.cli", "--port", "0", "--max-seqs", str(args.max_seqs)]
    if args.weight:
        cmd += ["--weight", args.weight]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    line = lines.get(timeout=300)
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"soak_serve: xllm-serve did not start: {line.strip()}")
    url = line.split(" on ")[1].split()[0]
    deadline = time.monotonic() + 300
    while httpx.get(url + "/health").status_code != 200:
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("soak_serve: xllm-serve never became healthy")
        time.sleep(0.2)
    return proc, url


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def metrics(url: str) -> dict:
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("xllm_") and " " in line and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def server_rss(url: str) -> int:
    m = metrics(url)
    return int(m["xllm_engine_resident_memory_bytes"] + m["xllm_frontend_resident_memory_bytes"])


class ServeSoak:
    def __init__(self, url: str, n: int, seed: int, ctx: int):
        self.url, self.n, self.ctx = url, n, ctx
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        self.model = self.client.models.list().data[0].id
        self.lines = [s.strip() for s in open(PROMPTS, encoding="utf-8") if s.strip()]
        self.seed = seed
        self.lock = threading.Lock()
        self.counts = {k: 0 for k in ("finished", "dropped", "refused", "unexpected_errors", "chunks")}
        self.first_error = None
        self.done = 0
        self.rss: dict = {}
        self.marks = {max(1, n // 10), n}

    def _count(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] += 1
            self.done += 1
            done = self.done
        if done in self.marks:
            self.rss[done] = server_rss(self.url)

    def _unexpected(self, what: str) -> None:
        with self.lock:
            self.first_error = self.first_error or what
        self._count("unexpected_errors")

    def one(self, i: int) -> None:
        r = np.random.default_rng([self.seed, i])
        pick = lambda *xs: xs[int(r.integers(len(xs)))]   # noqa: E731
        line = self.lines[i % len(self.lines)]
        prompt = pick(line, line[:int(r.integers(1, len(line) + 1))], line + " " + line,
                      [1] + r.integers(3, 500, int(r.integers(1, 40))).tolist())
        kw = dict(model=self.model, prompt=prompt, max_tokens=int(r.integers(1, 25)),
                  temperature=pick(0.0, 0.7, 1.0), top_p=pick(1.0, 0.9), seed=pick(None, int(r.integers(1 << 30))),
                  stop=pick(None, None, ".", ["!", "\n"]), logprobs=pick(None, None, 2), n=pick(1, 1, 1, 2),
                  presence_penalty=pick(0.0, 0.5), frequency_penalty=pick(0.0, 0.3),
                  extra_body={"top_k": pick(0, 20), "repetition_penalty": pick(1.0, 1.2)})
        refuse = i % 20 == 7
        if refuse:
            kw.update(pick(dict(temperature=-1.0), dict(top_p=0.0), dict(n=0), dict(max_tokens=self.ctx + 1),
                           dict(prompt=[1] + [5] * (self.ctx + 8)), dict(logprobs=99)))
        stream = r.random() < 0.5
        drop_after = int(r.integers(1, 4)) if stream and r.random() < 0.2 else None
        try:
            if not stream:
                resp = self.client.completions.create(**kw)
                assert len(resp.choices) == kw["n"], resp
                self._count("finished")
                return
            chunks = 0
            with self.client.completions.create(stream=True, **kw) as events:
                for _ in events:
                    chunks += 1
                    if drop_after is not None and chunks >= drop_after:
                        break           # closing the stream drops the connection: the server aborts
            with self.lock:
                self.counts["chunks"] += chunks
            self._count("dropped" if drop_after is not None and chunks >= drop_after else "finished")
        except openai.BadRequestError as exc:
            if refuse:
                self._count("refused")
            else:
                self._unexpected(f"request {i} refused: {exc}")
            return
        except Exception as exc:            # noqa: BLE001 -- anything else is what the soak looks for
            self._unexpected(f"request {i}: {type(exc).__name__}: {exc}")
            return
        if refuse:
            with self.lock:
                self.counts["unexpected_errors"] += 1
                self.first_error = self.first_error or f"request {i} with {kw} was accepted"

    def run(self, clients: int) -> dict:
        start = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(self.one, range(self.n)))
        wall = time.monotonic() - start
        deadline = time.monotonic() + 60        # dropped streams are aborted asynchronously
        while metrics(self.url).get("xllm_kv_blocks_used", 1) != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        m = metrics(self.url)
        return {"requests": self.n, "wall_s": round(wall, 2), **self.counts, "first_error": self.first_error,
                "rss_at": {str(k): v for k, v in sorted(self.rss.items())},
                "rss_growth_pct": rss_growth_pct(self.rss, self.n),
                "kv_blocks_used": int(m.get("xllm_kv_blocks_used", -1)),
                "kv_blocks_total": int(m.get("xllm_kv_blocks_total", -1))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running xllm-serve (default: start one)")
    p.add_argument("--weight", default=None, help="model for the started server (default: the shipped one)")
    p.add_argument("--n", type=int, default=10_000, help="requests in all (default 10000)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--threads", type=int, default=None, help="engine threads of the started server")
    p.add_argument("--max-seqs", type=int, default=16, help="--max-seqs of the started server (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--max-growth", type=float, default=2.0, help="allowed RSS growth in %% (default 2)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if args.n < 10:
        p.error(f"--n {args.n}: expected at least 10")
    proc, url = (None, args.url) if args.url else start_server(args)
    try:
        ctx = httpx.get(url + "/v1/models").json()["data"][0].get("max_model_len", 512)
        report = ServeSoak(url, args.n, args.seed, ctx).run(args.clients)
    finally:
        if proc is not None:
            stop_server(proc)
    checks = {"rss_growth": report["rss_growth_pct"] is not None and report["rss_growth_pct"] < args.max_growth,
              "kv_all_free": report["kv_blocks_used"] == 0,
              "no_unexpected_errors": report["unexpected_errors"] == 0}
    mib = {k: round(v / 2**20, 2) for k, v in report["rss_at"].items()}
    print(f"soak_serve: {report['requests']:,} requests in {report['wall_s']:.1f} s: finished {report['finished']:,}, "
          f"dropped {report['dropped']:,}, refused {report['refused']:,}, unexpected errors {report['unexpected_errors']}")
    print(f"  server RSS MiB at request {', '.join(f'{k}: {v}' for k, v in mib.items())}  growth "
          f"{report['rss_growth_pct']}% (limit {args.max_growth}%)")
    print(f"  KV blocks used when idle {report['kv_blocks_used']}/{report['kv_blocks_total']}")
    return conclude(report, checks, args.json)


if __name__ == "__main__":
    sys.exit(main())
