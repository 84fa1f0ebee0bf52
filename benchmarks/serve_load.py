"""Load on a running OpenAI-compatible server: N concurrent streaming clients, M requests.

    xllm-serve --weight M --threads 2 --max-seqs 16 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 16 --requests 1000 \
        --max-tokens 128 --server-pid $(pgrep -f xllm-serve | head -1)
    llama-server -m M -np 16 --port 8080 &          # the same load on llama.cpp's server
    python benchmarks/serve_load.py --url http://127.0.0.1:8080 --clients 16 --requests 1000 ...

Every client sends streaming /v1/completions requests one after another (prompts from
benchmarks/prompts.txt in turn, greedy, `ignore_eos` so every request generates
--max-tokens tokens) until M requests were sent in all.  Reported: requests/s, generated
tokens/s (from each stream's usage, else its content chunks), time to first token
p50/p95/p99, inter-token latency p50/p95, errors, and the server's resident memory at the
start, after the --rss-mark'th request and at the end: the sum over --server-pid and its
descendant processes (xllm-serve's engine process included), or, without --server-pid,
xllm's /metrics gauges.  Measures only what it is pointed at; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import List, Optional

import httpx
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from xllm.serve.metrics import rss_bytes  # noqa: E402


def descendants(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


async def server_rss(client: httpx.AsyncClient, url: str, pid: Optional[int]) -> Optional[int]:
    if pid is not None:
        values = [rss_bytes(p) for p in descendants(pid)]
        return sum(v for v in values if v) or None
    try:
        text = (await client.get(f"{url}/metrics")).text
    except httpx.HTTPError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith(("xllm_engine_resident_memory_bytes ", "xllm_frontend_resident_memory_bytes ")):
            total += int(float(line.split()[1]))
    return total or None


def pct(values, q) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


class Load:
    def __init__(self, args, prompts, model):
        self.args, self.prompts, self.model = args, prompts, model
        self.sent = 0
        self.done = 0
        self.errors: List[str] = []
        self.ttft: List[float] = []
        self.itl: List[float] = []
        self.tokens = 0
        self.rss_mark = None
        self.mark_event = asyncio.Event()

    async def one(self, client: httpx.AsyncClient, prompt: str) -> None:
        a = self.args
        body = {"model": self.model, "prompt": prompt, "max_tokens": a.max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": not a.allow_eos}
        start = time.perf_counter()
        last = None
        chunks = 0
        usage = None
        try:
            async with client.stream("POST", f"{a.url}/v1/completions", json=body, headers=self.headers) as r:
                if r.status_code != 200:
                    self.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    return
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data.strip() == "[DONE]":
                        break
                    msg = json.loads(data)
                    if "error" in msg:
                        self.errors.append(str(msg["error"])[:200])
                        return
                    if msg.get("usage"):
                        usage = msg["usage"]
                    if any(c.get("text") for c in msg.get("choices") or ()):
                        now = time.perf_counter()
                        if last is None:
                            self.ttft.append(now - start)
                        else:
                            self.itl.append(now - last)
                        last = now
                        chunks += 1
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        self.tokens += usage["completion_tokens"] if usage else chunks

    async def worker(self, client: httpx.AsyncClient) -> None:
        while self.sent < self.args.requests:
            prompt = self.prompts[self.sent % len(self.prompts)]
            self.sent += 1
            await self.one(client, prompt)
            self.done += 1
            if self.done == self.args.rss_mark:
                self.rss_mark = await server_rss(client, self.args.url, self.args.server_pid)

    async def run(self) -> dict:
        a = self.args
        self.headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
        limits = httpx.Limits(max_connections=a.clients + 4, max_keepalive_connections=a.clients + 4)
        async with httpx.AsyncClient(timeout=a.timeout, limits=limits) as client:
            rss_start = await server_rss(client, a.url, a.server_pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(self.worker(client) for _ in range(a.clients)))
            wall = time.perf_counter() - t0
            rss_end = await server_rss(client, a.url, a.server_pid)
        growth = None
        if self.rss_mark and rss_end:
            growth = (rss_end - self.rss_mark) / self.rss_mark
        return {
            "url": a.url, "model": self.model, "clients": a.clients, "requests": a.requests,
            "max_tokens": a.max_tokens, "wall_s": wall, "errors": len(self.errors),
            "error_examples": self.errors[:5],
            "requests_per_s": (a.requests - len(self.errors)) / wall,
            "generated_tokens": self.tokens, "generated_tok_s": self.tokens / wall,
            "ttft_s": {"p50": pct(self.ttft, 50), "p95": pct(self.ttft, 95), "p99": pct(self.ttft, 99)},
            "itl_ms": {"p50": 1e3 * pct(self.itl, 50) if self.itl else None,
                       "p95": 1e3 * pct(self.itl, 95) if self.itl else None},
            "rss_bytes": {"start": rss_start, f"after_{a.rss_mark}": self.rss_mark, "end": rss_end,
                          "growth_from_mark": growth},
        }


def read_prompts(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise SystemExit(f"serve_load: {path}: no prompts")
    return prompts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=16, help="concurrent streaming clients (N)")
    p.add_argument("--requests", type=int, default=1000, help="requests in all (M)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompts", default=os.path.join(HERE, "prompts.txt"))
    p.add_argument("--model", default=None, help="model id (default: the first of /v1/models)")
    p.add_argument("--server-pid", type=int, default=None, help="read RSS of this pid and its children")
    p.add_argument("--rss-mark", type=int, default=100, help="also read RSS after this many requests")
    p.add_argument("--api-key", default=None)
    p.add_argument("--allow-eos", action="store_true", help="let requests end at EOS (default: ignore_eos)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.clients < 1 or a.requests < 1 or a.max_tokens < 1:
        raise SystemExit("serve_load: --clients, --requests and --max-tokens must be >= 1")
    prompts = read_prompts(a.prompts)
    model = a.model
    if model is None:
        headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
        try:
            model = httpx.get(f"{a.url}/v1/models", headers=headers, timeout=30).json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise SystemExit(f"serve_load: cannot list models at {a.url}/v1/models: {exc}")
    result = asyncio.run(Load(a, prompts, model).run())
    if a.json:
        print(json.dumps(result, indent=2))
        return 0

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)
    r = result
    mib = {k: (None if v is None or k == "growth_from_mark" else v / 2**20) for k, v in r["rss_bytes"].items()}
    print(f"{r['url']} model {r['model']}: {r['clients']} clients, {r['requests']} requests of "
          f"{r['max_tokens']} tokens in {r['wall_s']:.1f} s, {r['errors']} errors")
    print(f"  requests/s {r['requests_per_s']:.2f}   generated tok/s {r['generated_tok_s']:.1f} "
          f"({r['generated_tokens']} tokens)")
    print(f"  TTFT s  p50 {f(r['ttft_s']['p50'])}  p95 {f(r['ttft_s']['p95'])}  p99 {f(r['ttft_s']['p99'])}")
    print(f"  ITL ms  p50 {f(r['itl_ms']['p50'], '{:.2f}')}  p95 {f(r['itl_ms']['p95'], '{:.2f}')}")
    growth = r["rss_bytes"]["growth_from_mark"]
    print("  RSS MiB " + "  ".join(f"{k} {f(v, '{:.1f}')}" for k, v in mib.items() if k != "growth_from_mark")
          + (f"  growth since mark {100 * growth:+.2f}%" if growth is not None else ""))
    for e in r["error_examples"]:
        print(f"  error: {e}", file=sys.stderr)
    return 0 if not r["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
