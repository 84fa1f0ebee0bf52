"""Choosing the next token: greedy, temperature, top-k, top-p, repetition penalty, seeded."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class SamplingParams:
    max_tokens: int = 256               # tokens to generate (prompt excluded)
    temperature: float = 1.0            # 0 = greedy
    top_p: float = 1.0                  # nucleus: smallest set with probability >= top_p
    top_k: int = 0                      # keep the k most likely tokens; 0 = all
    repetition_penalty: float = 1.0     # > 1 discourages tokens already in the sequence
    seed: Optional[int] = None          # same seed, same text
    stop_at_eos: bool = True            # end at EOS (and at BOS, as llama2.c's run does)

    def validate(self) -> "SamplingParams":
        def bad(field, expected):
            raise ValueError(f"SamplingParams.{field} = {getattr(self, field)!r}, expected {expected}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            bad("max_tokens", "an integer >= 0")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            bad("temperature", "a finite number >= 0")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            bad("top_p", "a number in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "an integer >= 0")
        if not (isinstance(self.repetition_penalty, (int, float)) and self.repetition_penalty > 0):
            bad("repetition_penalty", "a number > 0")
        if self.seed is not None and not isinstance(self.seed, int):
            bad("seed", "an integer or None")
        return self


class Sampler:
    """Draws tokens for one sequence with its own random generator."""

    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history=()) -> int:
        p = self.params
        if p.repetition_penalty != 1.0 and len(history):
            logits = logits.copy()
            seen = np.unique(np.asarray(history, dtype=np.int64))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.temperature == 0.0:
            return int(np.argmax(logits))            # first maximum, as llama2.c
        z = logits.astype(np.float64) / p.temperature
        if 0 < p.top_k < z.shape[0]:
            kth = np.partition(z, -p.top_k)[-p.top_k]
            z = np.where(z >= kth, z, -np.inf)
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = order[:int(np.searchsorted(cum, p.top_p) + 1)]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        cdf = np.cumsum(probs)
        coin = self.rng.random() * cdf[-1]
        return int(min(np.searchsorted(cdf, coin, side="right"), probs.shape[0] - 1))
