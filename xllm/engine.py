"""LLM: requests, the continuous-batching scheduler, generate / stream / logits.

Each step the scheduler packs one decode token for every running sequence, the next
prefill chunk of sequences still reading their prompt, and chunks of waiting prompts into
one batch, within a token budget (max_batch_tokens) and a limit on running sequences
(max_seqs).  One `Model.step` runs them all, each weight read once; every sequence whose
chunk reached its last known token gets its next token sampled.  A finished sequence frees
its KV blocks at once and a waiting prompt takes its place in the next step.  When the KV
pool runs out, the most recently admitted sequence is preempted: its blocks are freed and
it is recomputed later from its tokens (the result is the same, token for token).
"""
from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from .model import Chunk, Model
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer
from .formats import Checkpoint, open_checkpoint

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "data", "stories260K.gguf")


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: List[int]     # with BOS
    text: str                       # generated text (prompt excluded)
    token_ids: List[int]            # generated token ids (prompt excluded)
    finish_reason: str              # "length", "eos" or "bos"


@dataclass
class Request:
    id: int
    prompt: str
    prompt_ids: List[int]
    params: SamplingParams
    sampler: Sampler
    tokens: List[int] = field(default_factory=list)     # prompt + generated so far
    n_cached: int = 0                                   # positions whose K/V are in the cache
    generated: List[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    arrival: int = 0


class Scheduler:
    """Continuous batching over a Model's paged KV cache."""

    def __init__(self, model: Model, max_seqs: int, max_batch_tokens: int):
        if max_seqs < 1:
            raise ValueError(f"max_seqs = {max_seqs}, expected >= 1")
        if not 1 <= max_batch_tokens <= model.max_batch_tokens:
            raise ValueError(f"max_batch_tokens = {max_batch_tokens}, expected 1..{model.max_batch_tokens}")
        self.model = model
        self.kv = model.kv
        self.max_seqs = max_seqs
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque = deque()
        self.running: List[Request] = []
        self.preemptions = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, victim: Request) -> None:
        """Free the victim's blocks; it waits at the front and is recomputed from its tokens."""
        self.kv.release(victim.id)
        victim.n_cached = 0
        self.running.remove(victim)
        self.waiting.appendleft(victim)
        self.preemptions += 1

    def schedule(self) -> List[tuple]:
        """The (request, chunk) pairs of the next step."""
        budget = self.max_batch_tokens
        plan = []
        # decode tokens first, then prefill continuations, each in arrival order
        ordered = sorted(self.running, key=lambda r: (len(r.tokens) - r.n_cached > 1, r.arrival))
        for req in ordered:
            if budget == 0:
                break
            if req not in self.running:          # preempted while making room for another
                continue
            n = min(len(req.tokens) - req.n_cached, budget)
            while not self.kv.reserve(req.id, req.n_cached + n):
                victim = max(self.running, key=lambda r: r.arrival)
                self._preempt(victim)
                plan = [(r, c) for r, c in plan if r is not victim]
                if victim is req:
                    break
            if req not in self.running:
                continue
            plan.append((req, n))
            budget -= n
        budget = self.max_batch_tokens - sum(n for _, n in plan)
        while self.waiting and len(self.running) < self.max_seqs and budget > 0:
            req = self.waiting[0]
            n = min(len(req.tokens) - req.n_cached, budget)
            if not self.kv.reserve(req.id, req.n_cached + n):
                break                              # wait until blocks are freed
            self.waiting.popleft()
            self.running.append(req)
            plan.append((req, n))
            budget -= n
        return [(req, Chunk(req.id, req.tokens[req.n_cached:req.n_cached + n], req.n_cached,
                            "last" if req.n_cached + n == len(req.tokens) else "none"))
                for req, n in plan]

    def finish(self, req: Request, reason: str) -> None:
        req.finish_reason = reason
        self.running.remove(req)
        self.kv.release(req.id)


class LLM:
    """A model ready to generate.

    LLM(path=None, tokenizer=None, threads=None, max_batch_tokens=256, max_seqs=16, ...)
    path: a GGUF file, a llama2.c .bin, a Hugging Face directory or an opened Checkpoint
    (None: the small model shipped in the package); tokenizer: a sentencepiece .model or llama2.c tokenizer .bin
    (None: the vocabulary embedded in the file).
    """

    def __init__(self, path=None, tokenizer=None, threads: Optional[int] = None,
                 max_batch_tokens: int = 256, max_seqs: int = 16, kv_blocks: Optional[int] = None,
                 block_size: int = 16):
        if isinstance(path, Checkpoint):          # already opened (converters, tests)
            self.checkpoint = path
            path = path.path
        else:
            path = DEFAULT_MODEL if path is None else os.fspath(path)
            self.checkpoint = open_checkpoint(path)
        cfg = self.checkpoint.config
        if tokenizer is not None:
            self.tokenizer = Tokenizer.from_file(os.fspath(tokenizer))
        elif self.checkpoint.vocab is not None:
            self.tokenizer = Tokenizer.from_vocab(self.checkpoint.vocab)
        else:
            raise ValueError(f"{path}: the file has no vocabulary; pass a tokenizer "
                             f"(tokenizer.model or a llama2.c tokenizer.bin)")
        if self.tokenizer.vocab_size != cfg.vocab_size:
            raise ValueError(f"{tokenizer or path}: the tokenizer has {self.tokenizer.vocab_size} tokens, "
                             f"the model expects vocab_size {cfg.vocab_size}")
        if isinstance(max_seqs, bool) or not isinstance(max_seqs, int) or max_seqs < 1:
            raise ValueError(f"max_seqs = {max_seqs!r}, expected a positive integer")
        self.model = Model(self.checkpoint, threads=threads, max_batch_tokens=max_batch_tokens,
                           kv_blocks=kv_blocks, block_size=block_size, max_seqs=max_seqs)
        self.config = cfg
        # ids that end generation: the model's (config eos_ids) and the tokenizer's EOG set
        self.stop_ids = frozenset(cfg.eos_ids) | frozenset(getattr(self.tokenizer, "eos_ids", ()))
        self.max_seqs = max_seqs
        self.max_batch_tokens = max_batch_tokens
        self._ids = itertools.count()
        self.last_stats: dict = {}

    # ------------------------------------------------------------------ requests

    def _request(self, prompt, params: SamplingParams, arrival: int) -> Request:
        if isinstance(prompt, str):
            # BOS as the vocabulary says (GPT-2's adds none); an empty text starts from BOS
            ids = self.tokenizer.encode(prompt) or [self.config.bos_id]
            text = prompt
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
            if bad:
                raise ValueError(f"token id {bad[0]} out of range [0, {self.config.vocab_size})")
            if not ids:
                raise ValueError("a prompt of token ids needs at least one token")
            text = self.tokenizer.decode(ids)
        params.validate()
        # positions the sequence occupies: the prompt and every generated token but the
        # last, which is sampled and never fed back
        total = len(ids) + max(params.max_tokens - 1, 0)
        if total > self.config.max_seq_len:
            raise ValueError(f"prompt of {len(ids)} tokens + max_tokens {params.max_tokens} needs {total} "
                             f"positions, more than the model's context length {self.config.max_seq_len}")
        kv = self.model.kv
        if kv.blocks_for(total) > kv.n_blocks:
            raise ValueError(f"prompt + max_tokens need {kv.blocks_for(total)} KV blocks, "
                             f"the pool has {kv.n_blocks}")
        rid = next(self._ids)
        return Request(rid, text, ids, params, Sampler(params), tokens=list(ids), arrival=arrival)

    def _sample(self, req: Request, logits: np.ndarray) -> int:
        return req.sampler(logits, req.tokens if req.params.repetition_penalty != 1.0 else ())

    def generate_step(self, requests: Sequence[Request], max_seqs: Optional[int] = None,
                      max_batch_tokens: Optional[int] = None) -> Iterator[tuple]:
        """Run `requests` to the end with continuous batching; yields (request, token) for
        every generated token, as soon as it is sampled."""
        sched = Scheduler(self.model, max_seqs or self.max_seqs, max_batch_tokens or self.max_batch_tokens)
        for req in requests:
            if req.params.max_tokens == 0:
                req.finish_reason = "length"
            else:
                sched.add(req)
        steps = 0
        try:
            while sched.has_work():
                plan = sched.schedule()
                if not plan:
                    raise RuntimeError("scheduler made no progress (KV pool too small)")
                outputs = self.model.step([c for _, c in plan])
                steps += 1
                for (req, chunk), logits in zip(plan, outputs):
                    req.n_cached += len(chunk.tokens)
                    if logits is None:
                        continue
                    token = self._sample(req, logits[-1])
                    req.tokens.append(token)
                    req.generated.append(token)
                    yield req, token
                    cfg = self.config
                    if req.params.stop_at_eos and (token in self.stop_ids or token == cfg.bos_id):
                        sched.finish(req, "eos" if token in self.stop_ids else "bos")
                    elif len(req.generated) >= req.params.max_tokens:
                        sched.finish(req, "length")
        finally:
            for req in list(sched.running):     # an abandoned generator frees its blocks
                sched.kv.release(req.id)
            self.last_stats = {"steps": steps, "preemptions": sched.preemptions,
                               "generated": sum(len(r.generated) for r in requests)}

    def _output(self, req: Request) -> RequestOutput:
        gen = req.generated
        if req.finish_reason in ("eos", "bos"):
            gen = gen[:-1]            # the stop token is not text
        return RequestOutput(req.prompt, req.prompt_ids, self._decode_tail(req.prompt_ids, gen),
                             list(req.generated), req.finish_reason)

    def _decode_tail(self, prompt_ids, gen) -> str:
        # text of the generated tokens as they continue the prompt (leading-space rule)
        full = self.tokenizer.decode(list(prompt_ids) + list(gen))
        head = self.tokenizer.decode(list(prompt_ids))
        return full[len(head):] if full.startswith(head) else self.tokenizer.decode(list(gen))

    # ------------------------------------------------------------------ public API

    def generate(self, prompts: Union[str, Sequence], params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 progress=None) -> List[RequestOutput]:
        """Generate for every prompt (strings or token-id lists), all in one continuous batch.

        Returns, per prompt in order, its generated text and token ids (prompt excluded).
        Every prompt is validated before any work starts.
        """
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        if params is None:
            params = SamplingParams()
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(plist)} SamplingParams for {len(prompts)} prompts")
        requests = [self._request(p, sp, i) for i, (p, sp) in enumerate(zip(prompts, plist))]
        for req, _ in self.generate_step(requests):
            if progress is not None:
                progress(req)
        return [self._output(r) for r in requests]

    def stream(self, prompt, params: Optional[SamplingParams] = None) -> Iterator[str]:
        """Yield the generated text piece by piece (valid UTF-8 at every piece)."""
        req = self._request(prompt, params or SamplingParams(), 0)
        decoder = self.tokenizer.stream_decoder(context=req.prompt_ids)
        cfg = self.config
        for _, token in self.generate_step([req]):
            if req.params.stop_at_eos and (token in self.stop_ids or token == cfg.bos_id):
                break
            piece = decoder.push(token)
            if piece:
                yield piece
        tail = decoder.flush()
        if tail:
            yield tail

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 [len(token_ids), vocab]: next-token logits after every position."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("logits() needs at least one token")
        if len(ids) > self.config.max_seq_len:
            raise ValueError(f"{len(ids)} tokens exceed the context length {self.config.max_seq_len}")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} out of range [0, {self.config.vocab_size})")
        kv = self.model.kv
        seq_id = -1 - next(self._ids)           # never collides with request ids
        if not kv.reserve(seq_id, len(ids)):
            raise ValueError(f"{len(ids)} tokens need {kv.blocks_for(len(ids))} KV blocks, "
                             f"{kv.n_free} are free")
        out = np.empty((len(ids), self.config.vocab_size), dtype=np.float32)
        try:
            step = self.model.max_batch_tokens
            for s in range(0, len(ids), step):
                chunk = Chunk(seq_id, ids[s:s + step], s, "all")
                out[s:s + len(chunk.tokens)] = self.model.step([chunk])[0]
        finally:
            kv.release(seq_id)
        return out
