"""The online engine: add a request, abort a request, run one step, collect its outputs.

    engine = Engine.load("model.gguf", threads=2, max_seqs=16)
    engine.add_request("a", engine.tokenizer.encode("Once upon a time"), SamplingParams(max_tokens=32))
    while engine.has_unfinished():
        for out in engine.step():     # StepOutput: new token ids, text delta, finish reason, logprobs
            ...

Each step the scheduler packs one decode token for every running sequence, the next
prefill chunk of sequences still reading their prompt, and chunks of waiting prompts into
one batch, within a token budget (max_batch_tokens) and a limit on running sequences
(max_seqs).  One `Model.step` runs them all, each weight read once; every sequence whose
chunk reached its last known token gets its next token sampled.  A finished or aborted
sequence frees its KV blocks at once and a waiting prompt takes its place in the next step.
When the KV pool runs out, the most recently admitted sequence is preempted: its blocks are
freed and it is recomputed later from its tokens (the result is the same, token for token).

With prefix caching (`kv_cache.KVCache.prefix_cache`), a sequence joining the batch starts
from the longest chain of cached full blocks matching its tokens (at least its last token
is always computed, for its logits; a request for prompt logprobs computes every prompt
position it has no logprob of yet), and its full blocks are registered for others after
the step that computed them.  A sequence whose next block is being computed by a running
sequence (the n completions of one prompt, requests sharing a system prompt) waits for it
rather than computing it twice.

The engine knows nothing of HTTP or processes: `xllm.llm.LLM` drives it in-process and
`xllm.serve.engine_process` behind a pipe.
"""
from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Hashable, Iterator, List, Optional, Sequence as Seq

from .block_pool import chain_hashes
from .formats import Checkpoint, open_checkpoint
from .model import Chunk, Model
from .sampling import Sampler, SamplingParams, TokenLogprob
from .tokenizer import StreamDecoder, Tokenizer

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "data", "stories260K.gguf")


def load_tokenizer_for(checkpoint: Checkpoint, tokenizer=None) -> Tokenizer:
    """The tokenizer file given, else the vocabulary embedded in the checkpoint; its size
    must be the model's."""
    if tokenizer is not None:
        tok = Tokenizer.from_file(os.fspath(tokenizer))
    elif checkpoint.vocab is not None:
        tok = Tokenizer.from_vocab(checkpoint.vocab)
    else:
        raise ValueError(f"{checkpoint.path}: the file has no vocabulary; pass a tokenizer "
                         f"(tokenizer.model or a llama2.c tokenizer.bin)")
    if tok.vocab_size != checkpoint.config.vocab_size:
        raise ValueError(f"{tokenizer or checkpoint.path}: the tokenizer has {tok.vocab_size} tokens, "
                         f"the model expects vocab_size {checkpoint.config.vocab_size}")
    return tok


def open_model_checkpoint(path) -> Checkpoint:
    if isinstance(path, Checkpoint):          # already opened (converters, tests)
        return path
    return open_checkpoint(DEFAULT_MODEL if path is None else os.fspath(path))


def end_token_ids(tokenizer: Tokenizer, config) -> frozenset:
    """Tokens that end a sequence: EOS and BOS (as llama2.c's run), every end-of-generation
    token the vocabulary declares (`Tokenizer.eos_ids`: <|eot_id|>, <|im_end|> ...) and the
    model's own (`ModelConfig.eos_ids`, from the file's eos/eot/eom ids)."""
    ids = {tokenizer.eos_id, tokenizer.bos_id, *tokenizer.eos_ids, *config.eos_ids}
    return frozenset(int(i) for i in ids if i is not None)


@dataclass
class ContextLimits:
    """What a request may ask for: the front end checks requests against these without a model."""
    max_seq_len: int
    vocab_size: int
    kv_blocks: int
    block_size: int

    def check(self, n_prompt: int, params: SamplingParams) -> None:
        """ValueError naming the numbers when the prompt and max_tokens cannot fit."""
        if n_prompt < 1:
            raise ValueError("a prompt needs at least one token")
        # positions a sequence occupies: the prompt and every generated token but the
        # last, which is sampled and never fed back
        total = n_prompt + max(params.max_tokens - 1, 0)
        if total > self.max_seq_len:
            raise ValueError(f"prompt of {n_prompt} tokens + max_tokens {params.max_tokens} needs {total} "
                             f"positions, more than the model's context length {self.max_seq_len}")
        blocks = -(-total // self.block_size)
        if blocks > self.kv_blocks:
            raise ValueError(f"prompt + max_tokens need {blocks} KV blocks, the pool has {self.kv_blocks}")
        if params.n * blocks > self.kv_blocks:
            raise ValueError(f"n = {params.n} completions of {blocks} KV blocks each exceed the pool "
                             f"of {self.kv_blocks} blocks")

    def check_ids(self, ids: Seq[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} out of range [0, {self.vocab_size})")


@dataclass
class StepOutput:
    """What one step produced for one sequence (one of a request's n completions)."""
    request_id: Hashable
    index: int                          # which of the request's n completions
    token_ids: List[int]                # tokens sampled this step (the end token included)
    text: str                           # new text, never the start of a possible stop string
    finish_reason: Optional[str]        # None while running; "length", "eos", "bos", "stop"
    logprobs: Optional[List[TokenLogprob]]  # one per token, when params.logprobs is set
    num_prompt_tokens: int
    num_generated: int                  # tokens generated so far, this step's included
    prompt_logprobs: Optional[List[TokenLogprob]] = None   # with the first output, when asked:
                                                           # prompt tokens 1.. given those before
    num_cached_tokens: int = 0          # prompt tokens read from the prefix cache, not computed


@dataclass(eq=False)                    # identity: the scheduler's lists hold these
class Sequence:
    """One completion being generated: its tokens, KV position, sampler and text."""
    id: int                             # key of its block table in the KV cache
    request_id: Hashable
    index: int
    prompt: str
    prompt_ids: List[int]               # with BOS
    params: SamplingParams
    sampler: Sampler
    tokens: List[int] = field(default_factory=list)     # prompt + generated so far
    n_cached: int = 0                                   # positions whose K/V are in the cache
    generated: List[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    arrival: int = 0
    text: str = ""                      # generated text so far (after a stop string: cut there)
    emitted: int = 0                    # characters of `text` already handed out
    decoder: Optional[StreamDecoder] = None
    logprobs: List[TokenLogprob] = field(default_factory=list)   # when params.logprobs is set
    prompt_logprobs: List[TokenLogprob] = field(default_factory=list)   # params.prompt_logprobs
    block_hashes: List[bytes] = field(default_factory=list)  # chain hashes of its full blocks
    num_cached_tokens: Optional[int] = None     # prompt positions matched in the prefix cache
                                                # when it first joined the batch

    def wants_prompt_logits(self) -> bool:
        return (self.params.prompt_logprobs is not None and self.n_cached < len(self.prompt_ids)
                and len(self.prompt_logprobs) < len(self.prompt_ids) - 1)

    def reusable_positions(self) -> int:
        """Leading positions whose K/V may come from the prefix cache: all but the last
        token (its logits are needed), and with prompt logprobs still missing, none from
        the first position whose logits are still needed on."""
        n = len(self.tokens) - 1
        if self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < len(self.prompt_ids) - 1:
            n = min(n, len(self.prompt_logprobs))
        return n


class Scheduler:
    """Continuous batching over a Model's paged KV cache."""

    def __init__(self, model: Model, max_seqs: int, max_batch_tokens: int):
        if isinstance(max_seqs, bool) or not isinstance(max_seqs, int) or max_seqs < 1:
            raise ValueError(f"max_seqs = {max_seqs!r}, expected a positive integer")
        if not 1 <= max_batch_tokens <= model.max_batch_tokens:
            raise ValueError(f"max_batch_tokens = {max_batch_tokens}, expected 1..{model.max_batch_tokens}")
        self.model = model
        self.kv = model.kv
        self.max_seqs = max_seqs
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque = deque()
        self.running: List[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, victim: Sequence) -> None:
        """Free the victim's blocks; it waits at the front and is recomputed from its tokens."""
        self.kv.release(victim.id)
        victim.n_cached = 0
        self.running.remove(victim)
        self.waiting.appendleft(victim)
        self.preemptions += 1

    def _hashes(self, seq: Sequence, n_positions: int) -> List[bytes]:
        """The chain hashes of the sequence's full blocks within its first n_positions."""
        bs = self.kv.block_size
        return chain_hashes(seq.tokens, bs, seq.block_hashes, n_positions)[:n_positions // bs]

    def _in_flight(self) -> set:
        """Hashes of the full blocks running sequences are still to compute from their
        tokens (empty without prefix caching)."""
        if not self.kv.prefix_cache:
            return set()
        bs = self.kv.block_size
        out = set()
        for r in self.running:
            if len(r.tokens) - r.n_cached > 1:       # still prefilling
                out.update(self._hashes(r, len(r.tokens))[r.n_cached // bs:])
        return out

    def _admit(self, seq: Sequence, budget: int, in_flight: set) -> Optional[int]:
        """Give a waiting sequence its cached prefix and blocks for its next chunk; the
        chunk's length, None when the pool cannot hold it (nothing taken) and 0 when its
        next block is in flight (computed by a running sequence: it waits for that)."""
        kv = self.kv
        if kv.prefix_cache:
            hashes = self._hashes(seq, seq.reusable_positions())
            hit = kv.cached_prefix(hashes)
            if hit < len(hashes) and hashes[hit] in in_flight:
                return 0
            seq.n_cached = kv.match_prefix(seq.id, hashes[:hit]) * kv.block_size
        n = min(len(seq.tokens) - seq.n_cached, budget)
        if not kv.reserve(seq.id, seq.n_cached + n):
            kv.release(seq.id)
            seq.n_cached = 0
            return None
        if seq.num_cached_tokens is None:
            seq.num_cached_tokens = min(seq.n_cached, len(seq.prompt_ids))
        return n

    def commit(self, seq: Sequence) -> None:
        """After a step: register the sequence's blocks it has computed every position of."""
        if self.kv.prefix_cache:
            self.kv.commit(seq.id, self._hashes(seq, seq.n_cached))

    def schedule(self) -> List[tuple]:
        """The (sequence, chunk) pairs of the next step."""
        budget = self.max_batch_tokens
        plan = []
        # decode tokens first, then prefill continuations, each in arrival order
        ordered = sorted(self.running, key=lambda r: (len(r.tokens) - r.n_cached > 1, r.arrival))
        for seq in ordered:
            if budget == 0:
                break
            if seq not in self.running:          # preempted while making room for another
                continue
            n = min(len(seq.tokens) - seq.n_cached, budget)
            while not self.kv.reserve(seq.id, seq.n_cached + n):
                victim = max(self.running, key=lambda r: r.arrival)
                self._preempt(victim)
                plan = [(r, c) for r, c in plan if r is not victim]
                if victim is seq:
                    break
            if seq not in self.running:
                continue
            plan.append((seq, n))
            budget -= n
        budget = self.max_batch_tokens - sum(n for _, n in plan)
        in_flight = self._in_flight()
        deferred = []                              # waiting for a block in flight, in order
        while self.waiting and len(self.running) < self.max_seqs and budget > 0:
            seq = self.waiting.popleft()
            n = self._admit(seq, budget, in_flight)
            if n is None:
                self.waiting.appendleft(seq)       # wait until blocks are freed
                break
            if n == 0:
                deferred.append(seq)
                continue
            self.running.append(seq)
            plan.append((seq, n))
            budget -= n
            if self.kv.prefix_cache and len(seq.tokens) - seq.n_cached > 1:   # will compute: wait for it
                in_flight.update(self._hashes(seq, len(seq.tokens))[seq.n_cached // self.kv.block_size:])
        self.waiting.extendleft(reversed(deferred))
        return [(seq, Chunk(seq.id, seq.tokens[seq.n_cached:seq.n_cached + n], seq.n_cached,
                            "all" if seq.wants_prompt_logits() else
                            "last" if seq.n_cached + n == len(seq.tokens) else "none"))
                for seq, n in plan]

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out, its blocks back to the pool at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.release(seq.id)


class Engine:
    """Requests in, one decoder step at a time, outputs out."""

    def __init__(self, model: Model, tokenizer: Tokenizer, max_seqs: int = 16,
                 max_batch_tokens: Optional[int] = None, seq_ids: Optional[Iterator[int]] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.scheduler = Scheduler(model, max_seqs, max_batch_tokens or model.max_batch_tokens)
        self.limits = ContextLimits(self.config.max_seq_len, self.config.vocab_size,
                                    model.kv.n_blocks, model.kv.block_size)
        self.end_ids = end_token_ids(tokenizer, self.config)
        self._seq_ids = seq_ids if seq_ids is not None else itertools.count()
        self._arrivals = itertools.count()
        self._requests: Dict[Hashable, List[Sequence]] = {}
        self._ready: List[StepOutput] = []          # finished without a step (max_tokens 0)
        self.steps = 0

    @classmethod
    def load(cls, path=None, tokenizer=None, threads: Optional[int] = None, max_seqs: int = 16,
             max_batch_tokens: int = 256, kv_blocks: Optional[int] = None, block_size: int = 16,
             prefix_cache: bool = True, kv_type: str = "auto",
             tensor_parallel: Optional[int] = None) -> "Engine":
        """Open a checkpoint (GGUF, llama2.c .bin, HF directory; None: the shipped model);
        prefix_cache=False computes every prompt in full.  tensor_parallel: ranks of the MPI
        job to spread the model over (None: the job's size, 1 outside mpirun); every rank calls
        this, and only rank 0 returns (parallel.load: the others follow its steps, then exit)."""
        if isinstance(max_seqs, bool) or not isinstance(max_seqs, int) or max_seqs < 1:
            raise ValueError(f"max_seqs = {max_seqs!r}, expected a positive integer")
        if tensor_parallel is None:
            from .parallel import launched_world_size
            tensor_parallel = launched_world_size()
        if tensor_parallel != 1:
            from . import parallel
            model = parallel.load(path if path is not None else DEFAULT_MODEL, tensor_parallel,
                                  threads=threads, max_batch_tokens=max_batch_tokens, kv_blocks=kv_blocks,
                                  block_size=block_size, max_seqs=max_seqs, prefix_cache=prefix_cache,
                                  kv_type=kv_type)
            return cls(model, load_tokenizer_for(model.checkpoint, tokenizer), max_seqs, max_batch_tokens)
        ckpt = open_model_checkpoint(path)
        tok = load_tokenizer_for(ckpt, tokenizer)
        model = Model(ckpt, threads=threads, max_batch_tokens=max_batch_tokens,
                      kv_blocks=kv_blocks, block_size=block_size, max_seqs=max_seqs, prefix_cache=prefix_cache,
                      kv_type=kv_type)
        return cls(model, tok, max_seqs, max_batch_tokens)

    # ------------------------------------------------------------------ requests

    def make_sequences(self, request_id: Hashable, prompt_ids: Seq[int], params: SamplingParams,
                       prompt: Optional[str] = None, arrival: Optional[int] = None) -> List[Sequence]:
        """Validated sequences of one request (params.n of them), not yet scheduled.
        `arrival` orders admission and preemption (default: the order of calls)."""
        params.validate()
        ids = [int(t) for t in prompt_ids]
        self.limits.check_ids(ids)
        self.limits.check(len(ids), params)
        text = self.tokenizer.decode(ids) if prompt is None else prompt
        arrival = next(self._arrivals) if arrival is None else arrival
        return [Sequence(next(self._seq_ids), request_id, i, text, ids, params, Sampler(params, i),
                         tokens=list(ids), arrival=arrival,
                         decoder=self.tokenizer.stream_decoder(context=ids))
                for i in range(params.n)]

    def add_sequences(self, seqs: List[Sequence]) -> None:
        rid = seqs[0].request_id
        if rid in self._requests:
            raise ValueError(f"request id {rid!r} is already running")
        self._requests[rid] = list(seqs)
        for seq in seqs:
            if seq.params.max_tokens == 0 and seq.params.prompt_logprobs is None:
                seq.finish_reason = "length"
                self._ready.append(self._output(seq, [], None))
            else:
                self.scheduler.add(seq)
        if all(s.finish_reason for s in seqs):
            del self._requests[rid]

    def add_request(self, request_id: Hashable, prompt_ids: Seq[int], params: SamplingParams,
                    prompt: Optional[str] = None) -> List[Sequence]:
        """Queue a request; it joins the running batch at the next step (ValueError when it
        cannot fit the context or the KV pool)."""
        seqs = self.make_sequences(request_id, prompt_ids, params, prompt)
        self.add_sequences(seqs)
        return seqs

    def abort_request(self, request_id: Hashable) -> bool:
        """Drop a request; its KV blocks are free when this returns.  False if unknown."""
        seqs = self._requests.pop(request_id, None)
        if seqs is None:
            return False
        for seq in seqs:
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
                self.scheduler.remove(seq)
        return True

    def has_unfinished(self) -> bool:
        return bool(self._requests or self._ready)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def kv_blocks_used(self) -> int:
        kv = self.model.kv
        return kv.n_blocks - kv.n_free

    # ------------------------------------------------------------------ one step

    def step(self) -> List[StepOutput]:
        """One decoder step over the scheduled batch; the outputs of every sequence that got
        a token (or finished) in it."""
        outputs, self._ready = self._ready, []
        sched = self.scheduler
        if not sched.has_work():
            return outputs
        plan = sched.schedule()
        if not plan:
            raise RuntimeError("scheduler made no progress (KV pool too small)")
        results = self.model.step([c for _, c in plan])
        self.steps += 1
        for (seq, chunk), logits in zip(plan, results):
            seq.n_cached += len(chunk.tokens)
            sched.commit(seq)
            if chunk.logits == "all":
                self._prompt_logprobs(seq, chunk, logits)
            if logits is None or seq.n_cached < len(seq.tokens):
                continue
            if seq.params.max_tokens == 0:          # prompt logprobs only (scoring)
                seq.finish_reason = "length"
                self._finish(seq)
                outputs.append(self._output(seq, [], None))
                continue
            row = logits[-1]
            token = seq.sampler(row, seq.tokens if seq.params.repetition_penalty != 1.0 else ())
            seq.sampler.accept(token)
            seq.tokens.append(token)
            seq.generated.append(token)
            logprobs = None
            if seq.params.logprobs is not None:
                logprobs = [seq.sampler.logprob(row, token)]
                seq.logprobs.extend(logprobs)
            outputs.append(self._advance(seq, token, logprobs))
        return outputs

    @staticmethod
    def _prompt_logprobs(seq: Sequence, chunk: Chunk, logits) -> None:
        # row r holds the logits after position start + r: the prediction of the next token
        for r in range(len(chunk.tokens)):
            pos = chunk.start_pos + r + 1
            if pos < len(seq.prompt_ids) and pos - 1 == len(seq.prompt_logprobs):
                seq.prompt_logprobs.append(seq.sampler.logprob(logits[r], seq.prompt_ids[pos],
                                                               seq.params.prompt_logprobs))

    def _advance(self, seq: Sequence, token: int, logprobs) -> StepOutput:
        p = seq.params
        if p.stop_at_eos and token in self.end_ids:
            seq.finish_reason = ("eos" if token == self.tokenizer.eos_id else
                                 "bos" if token == self.tokenizer.bos_id else "eos")
        elif token in p.stop_token_ids:
            seq.finish_reason = "stop"
        else:
            seq.text += seq.decoder.push(token)
            if len(seq.generated) >= p.max_tokens:
                seq.finish_reason = "length"
        if seq.finish_reason is not None:
            seq.text += seq.decoder.flush()
        stops = p.stop_strings
        safe = len(seq.text)
        if stops:
            # a stop string can only begin after the emitted text (see the hold-back below)
            hits = [i for i in (seq.text.find(s, seq.emitted) for s in stops) if i >= 0]
            if hits:
                seq.text = seq.text[:min(hits)]
                seq.finish_reason = "stop"
                safe = len(seq.text)
            elif seq.finish_reason is None:
                # hold back the longest tail that may still grow into a stop string
                tail = seq.text[seq.emitted:]
                held = max((k for s in stops for k in range(min(len(s) - 1, len(tail)), 0, -1)
                            if tail.endswith(s[:k])), default=0)
                safe = len(seq.text) - held
        if seq.finish_reason is not None:
            self._finish(seq)
        return self._output(seq, [token], logprobs, safe)

    def _output(self, seq: Sequence, tokens, logprobs, safe: Optional[int] = None) -> StepOutput:
        safe = len(seq.text) if safe is None else safe
        delta = seq.text[seq.emitted:safe]
        seq.emitted = max(seq.emitted, safe)
        first = len(seq.generated) == len(tokens)           # the sequence's first output
        prompt_lp = list(seq.prompt_logprobs) if first and seq.params.prompt_logprobs is not None else None
        return StepOutput(seq.request_id, seq.index, tokens, delta, seq.finish_reason, logprobs,
                          len(seq.prompt_ids), len(seq.generated), prompt_lp, seq.num_cached_tokens or 0)

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.remove(seq)
        seqs = self._requests.get(seq.request_id)
        if seqs is not None and all(s.finish_reason for s in seqs):
            del self._requests[seq.request_id]


def __getattr__(name):
    # `from xllm.engine import LLM` kept working after LLM moved to xllm.llm (imported
    # lazily: llm imports this module)
    if name == "LLM":
        from .llm import LLM
        return LLM
    raise AttributeError(f"module 'xllm.engine' has no attribute {name!r}")
