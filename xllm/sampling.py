"""Choosing the next token: greedy, temperature, top-k, top-p, repetition / presence /
frequency penalties, logprobs, seeded."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

MAX_TOP_LOGPROBS = 20          # as OpenAI's API


@dataclass
class SamplingParams:
    max_tokens: int = 256               # tokens to generate (prompt excluded)
    temperature: float = 1.0            # 0 = greedy
    top_p: float = 1.0                  # nucleus: smallest set with probability >= top_p
    top_k: int = 0                      # keep the k most likely tokens; 0 = all
    repetition_penalty: float = 1.0     # > 1 discourages tokens already in the sequence
    presence_penalty: float = 0.0       # OpenAI's: subtracted once from every generated token's logit
    frequency_penalty: float = 0.0      # OpenAI's: subtracted per occurrence in the generated text
    seed: Optional[int] = None          # same seed, same text (alone or in a batch)
    stop_at_eos: bool = True            # end at EOS (and at BOS, as llama2.c's run does)
    stop: Union[None, str, List[str]] = None    # end before the first of these strings (not in the text)
    stop_token_ids: List[int] = field(default_factory=list)   # end at these tokens too
    n: int = 1                          # completions per prompt
    logprobs: Optional[int] = None      # None: no logprobs; k: the chosen token's and the k most likely
    prompt_logprobs: Optional[int] = None   # the same for every prompt token after the first

    @property
    def stop_strings(self) -> List[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def validate(self) -> "SamplingParams":
        def bad(field, expected):
            raise ValueError(f"SamplingParams.{field} = {getattr(self, field)!r}, expected {expected}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not is_int(self.max_tokens) or self.max_tokens < 0:
            bad("max_tokens", "an integer >= 0")
        if not (is_num(self.temperature) and self.temperature >= 0):
            bad("temperature", "a finite number >= 0")
        if not (is_num(self.top_p) and 0 < self.top_p <= 1):
            bad("top_p", "a number in (0, 1]")
        if not is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "an integer >= 0")
        if not (is_num(self.repetition_penalty) and self.repetition_penalty > 0):
            bad("repetition_penalty", "a number > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not (is_num(getattr(self, name)) and -2 <= getattr(self, name) <= 2):
                bad(name, "a number in [-2, 2]")
        if self.seed is not None and not is_int(self.seed):
            bad("seed", "an integer or None")
        if not is_int(self.n) or self.n < 1:
            bad("n", "an integer >= 1")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not (is_int(k) and 0 <= k <= MAX_TOP_LOGPROBS):
                bad(name, f"None or an integer in [0, {MAX_TOP_LOGPROBS}]")
        if self.stop is not None and not (isinstance(self.stop, str) or (
                isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) for s in self.stop))):
            bad("stop", "None, a string or a list of strings")
        if any(s == "" for s in self.stop_strings):
            bad("stop", "non-empty strings")
        if not all(is_int(t) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "a list of token ids")
        return self


@dataclass
class TokenLogprob:
    """Log-probability of a generated token under the model (raw logits, before penalties
    and temperature), and the `top` most likely tokens at that position."""
    token_id: int
    logprob: float
    top: List[Tuple[int, float]]        # (token id, logprob), most likely first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max()
    return z - math.log(np.exp(z).sum())


class Sampler:
    """Draws tokens for one sequence with its own random generator.

    `stream` tells apart the completions of one request (n > 1): completion 0 draws from
    `default_rng(seed)`, so a request alone or with n > 1 gives the same first text;
    completion i > 0 from `default_rng([seed, i])`.
    """

    def __init__(self, params: SamplingParams, stream: int = 0):
        self.params = params.validate()
        if params.seed is None:
            self.rng = np.random.default_rng()
        else:
            self.rng = np.random.default_rng(params.seed if stream == 0 else [params.seed, stream])
        self._counts: dict = {}                 # generated token -> occurrences (OpenAI penalties)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        if p.repetition_penalty != 1.0 and len(history):
            logits = logits.copy()
            seen = np.unique(np.asarray(history, dtype=np.int64))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if self._counts and (p.presence_penalty or p.frequency_penalty):
            logits = logits.astype(np.float32, copy=True)
            ids = np.fromiter(self._counts.keys(), dtype=np.int64)
            counts = np.fromiter(self._counts.values(), dtype=np.float64)
            logits[ids] -= (counts * p.frequency_penalty + p.presence_penalty).astype(np.float32)
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

    def accept(self, token: int) -> None:
        """Count a generated token for the presence and frequency penalties."""
        self._counts[token] = self._counts.get(token, 0) + 1

    def logprob(self, logits: np.ndarray, token: int, k: Optional[int] = None) -> TokenLogprob:
        """`token`'s logprob and the k (default params.logprobs) most likely."""
        lp = log_softmax(logits)
        k = (self.params.logprobs if k is None else k) or 0
        top: List[Tuple[int, float]] = []
        if k:
            idx = np.argpartition(-lp, k - 1)[:k] if k < lp.shape[0] else np.arange(lp.shape[0])
            idx = idx[np.lexsort((idx, -lp[idx]))]      # most likely first, ties by id
            top = [(int(i), float(lp[i])) for i in idx]
        return TokenLogprob(int(token), float(lp[token]), top)
