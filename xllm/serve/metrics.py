"""Prometheus metrics of the server (prometheus-client, one registry per app)."""
from __future__ import annotations

from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3,
                    0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


def rss_bytes(pid: Optional[int]) -> Optional[int]:
    """Resident set size of a process, from /proc/<pid>/status (None if unreadable)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter("xllm_http_requests", "HTTP requests by endpoint and status code",
                                     ["endpoint", "status"], registry=r)
        self.finished = Counter("xllm_request_finished", "Completions by how they ended "
                                "(stop, length, abort: client gone, error: engine failure)",
                                ["reason"], registry=r)
        self.prompt_tokens = Counter("xllm_prompt_tokens", "Prompt tokens submitted", registry=r)
        self.cached_tokens = Counter("xllm_prompt_tokens_cached", "Prompt tokens read from the prefix cache "
                                     "instead of computed (usage.prompt_tokens_details.cached_tokens)",
                                     registry=r)
        self.generation_tokens = Counter("xllm_generation_tokens", "Tokens generated", registry=r)
        self.running = Gauge("xllm_num_requests_running", "Sequences in the running batch", registry=r)
        self.waiting = Gauge("xllm_num_requests_waiting", "Sequences submitted, not yet running", registry=r)
        self.kv_used = Gauge("xllm_kv_blocks_used", "KV cache blocks held by sequences", registry=r)
        self.kv_total = Gauge("xllm_kv_blocks_total", "KV cache blocks in the pool", registry=r)
        self.kv_cached = Gauge("xllm_kv_blocks_cached", "KV cache blocks no sequence holds that keep a "
                               "cached prefix (reused on a hit, evicted when the pool needs room)", registry=r)
        self.engine_alive = Gauge("xllm_engine_alive", "1 while the engine process runs", registry=r)
        self.engine_rss = Gauge("xllm_engine_resident_memory_bytes", "Resident memory of the engine process",
                                registry=r)
        self.frontend_rss = Gauge("xllm_frontend_resident_memory_bytes", "Resident memory of the front end",
                                  registry=r)
        self.ttft = Histogram("xllm_time_to_first_token_seconds", "Request arrival to its first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("xllm_time_per_output_token_seconds", "Time between consecutive tokens "
                              "of a sequence", buckets=_LATENCY_BUCKETS, registry=r)

    def render(self, client) -> bytes:
        """The text format, gauges read from the engine's last report first."""
        import os
        s = client.stats
        self.running.set(s.running)
        self.waiting.set(client.waiting)
        self.kv_used.set(s.kv_blocks_used)
        self.kv_total.set(s.kv_blocks_total)
        self.kv_cached.set(s.kv_blocks_cached)
        self.engine_alive.set(0 if client.dead else 1)
        self.engine_rss.set(rss_bytes(client.pid) or 0)
        self.frontend_rss.set(rss_bytes(os.getpid()) or 0)
        return generate_latest(self.registry)
