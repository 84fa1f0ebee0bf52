"""Per-step records of a run: the decoder's operator times and the step's shape.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from .costs import CostModel, kv_value_bytes


@dataclass
class StepRecord:
    t0: float
    t1: float
    n_prefill: int            # prompt tokens processed in this step
    n_decode: int             # generated tokens fed back (one per decoding sequence)
    ops: Optional[dict]       # operator seconds of this step (when profiling)
    costs: Dict[str, tuple]
    kv_blocks_used: int


class StepRecorder:
    """Wraps `llm.model.step` to time every step, split its tokens into prompt and generated
    ones, read the profiler per step, and track KV blocks in use."""

    def __init__(self, llm, profile: bool = True):
        self.llm = llm
        self.model = llm.model
        self.cost = CostModel(llm.checkpoint, kv_value_bytes(llm))
        self.records: List[StepRecord] = []
        self.prompt_len: Dict[int, int] = {}       # seq id -> prompt length
        self.profile = profile
        self._orig = None

    def __enter__(self):
        model = self.model
        self._orig = model.step
        dec = model.decoder
        dec.profile(self.profile)
        if self.profile:
            dec.op_times(reset=True)
        kv = model.kv

        def step(chunks):
            t0 = time.perf_counter()
            out = self._orig(chunks)
            t1 = time.perf_counter()
            ops = dec.op_times(reset=True) if self.profile else None
            n_pre = n_dec = 0
            for ch in chunks:
                plen = self.prompt_len.get(ch.seq_id)
                n = len(ch.tokens)
                if plen is None:
                    n_pre += n
                else:
                    pre = max(0, min(n, plen - ch.start_pos))
                    n_pre += pre
                    n_dec += n - pre
            self.records.append(StepRecord(t0, t1, n_pre, n_dec, ops, self.cost.step(chunks),
                                           kv.n_blocks - kv.n_free))
            return out

        model.step = step
        return self

    def __exit__(self, *exc):
        del self.model.step                  # back to the class method
        self.model.decoder.profile(False)
        return False

    def watch(self, requests) -> None:
        for r in requests:
            self.prompt_len[r.id] = len(r.prompt_ids)

    def clear(self) -> None:
        self.records = []

    @staticmethod
    def sum_ops(records) -> tuple:
        secs: Dict[str, float] = {}
        costs: Dict[str, list] = {}
        for r in records:
            for op, s in (r.ops or {}).items():
                secs[op] = secs.get(op, 0.0) + s
            for op, (b, f) in r.costs.items():
                acc = costs.setdefault(op, [0, 0])
                acc[0] += b
                acc[1] += f
        return secs, {k: tuple(v) for k, v in costs.items()}
