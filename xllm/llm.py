"""LLM: generate / stream / chat / logits in-process, on top of the online engine."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence as Seq, Union

import numpy as np

from .engine import Engine, Sequence, end_token_ids, load_tokenizer_for, open_model_checkpoint
from .model import Chunk, Model
from .sampling import SamplingParams, TokenLogprob


@dataclass
class CompletionOutput:
    index: int
    text: str                       # generated text (prompt excluded, cut before a stop string)
    token_ids: List[int]            # generated token ids (an end token included)
    finish_reason: str              # "length", "eos", "bos" or "stop"
    logprobs: Optional[List[TokenLogprob]] = None


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: List[int]     # with BOS
    text: str                       # generated text of the first completion
    token_ids: List[int]            # its token ids
    finish_reason: str              # "length", "eos", "bos" or "stop"
    outputs: List[CompletionOutput] = field(default_factory=list)   # all n completions
    prompt_logprobs: Optional[List[TokenLogprob]] = None   # prompt tokens 1.., with params.prompt_logprobs
    num_cached_tokens: int = 0      # prompt tokens read from the prefix cache (first completion)


class LLM:
    """A model ready to generate.

    LLM(path=None, tokenizer=None, threads=None, max_batch_tokens=256, max_seqs=16, ...)
    path: a GGUF file, a llama2.c .bin, a Hugging Face directory or an opened Checkpoint
    (None: the small model shipped in the package); tokenizer: a sentencepiece .model or llama2.c tokenizer .bin
    (None: the vocabulary embedded in the file); chat_template: a Jinja2 file overriding the
    model's own template for `chat`; prefix_cache: reuse the KV blocks of prompt prefixes
    computed before, by this call or an earlier one (False: compute every prompt in full).
    tensor_parallel: ranks of an MPI job to spread the model over (None: the size of the job
    mpirun started, 1 outside one).  Run the script under `mpirun -n N`; every rank constructs
    the LLM, rank 0 gets it back and the others serve its steps and exit when rank 0 ends
    (code after LLM(...) runs on rank 0 only).  See xllm.parallel.
    kv_type: the KV cache's type, auto (f32 for F32 weights, else f16), f32, f16, bf16 or
    q8_0; kv_memory: bytes of the KV pool (default: max_seqs full contexts of f32; kv_blocks,
    when given, counts blocks instead).
    """

    def __init__(self, path=None, tokenizer=None, threads: Optional[int] = None,
                 max_batch_tokens: int = 256, max_seqs: int = 16, kv_blocks: Optional[int] = None,
                 block_size: int = 16, chat_template=None, prefix_cache: bool = True,
                 tensor_parallel: Optional[int] = None, kv_type: str = "auto",
                 kv_memory: Optional[int] = None):
        if isinstance(max_seqs, bool) or not isinstance(max_seqs, int) or max_seqs < 1:
            raise ValueError(f"max_seqs = {max_seqs!r}, expected a positive integer")
        if tensor_parallel is None:
            from .parallel import launched_world_size
            tensor_parallel = launched_world_size()
        if tensor_parallel != 1:
            from . import parallel      # every rank loads its slices; only rank 0 returns
            self.model = parallel.load(path, tensor_parallel, threads=threads,
                                       max_batch_tokens=max_batch_tokens, kv_blocks=kv_blocks,
                                       block_size=block_size, max_seqs=max_seqs,
                                       prefix_cache=prefix_cache, kv_type=kv_type, kv_memory=kv_memory)
            self.checkpoint = self.model.checkpoint
            self.tokenizer = load_tokenizer_for(self.checkpoint, tokenizer)
        else:
            self.checkpoint = open_model_checkpoint(path)
            self.tokenizer = load_tokenizer_for(self.checkpoint, tokenizer)
            self.model = Model(self.checkpoint, threads=threads, max_batch_tokens=max_batch_tokens,
                               kv_blocks=kv_blocks, block_size=block_size, max_seqs=max_seqs,
                               prefix_cache=prefix_cache, kv_type=kv_type, kv_memory=kv_memory)
        self.tensor_parallel = tensor_parallel
        self.config = self.checkpoint.config
        self.stop_ids = end_token_ids(self.tokenizer, self.config)   # ids that end generation
        self.max_seqs = max_seqs
        self.max_batch_tokens = max_batch_tokens
        self._ids = itertools.count()
        self._chat_template_file = chat_template
        self._chat_template = None
        self.last_stats: dict = {}

    def engine(self, max_seqs: Optional[int] = None, max_batch_tokens: Optional[int] = None) -> Engine:
        """A fresh engine over this model (each generate / stream call runs its own, so an
        unfinished stream never steps inside another call)."""
        return Engine(self.model, self.tokenizer, max_seqs or self.max_seqs,
                      max_batch_tokens or self.max_batch_tokens, seq_ids=self._ids)

    # ------------------------------------------------------------------ requests

    def _sequences(self, prompt, params: SamplingParams, request_id) -> List[Sequence]:
        if isinstance(prompt, str):
            # BOS as the vocabulary says (GPT-2's adds none); an empty text starts from BOS
            ids, text = self.tokenizer.encode(prompt) or [self.config.bos_id], prompt
        else:
            ids, text = [int(t) for t in prompt], None
            if not ids:
                raise ValueError("a prompt of token ids needs at least one token")
        return self.engine().make_sequences(request_id, ids, params, text, arrival=request_id)

    def _request(self, prompt, params: SamplingParams, arrival: int) -> Sequence:
        """One validated sequence (n must be 1), for generate_step."""
        seqs = self._sequences(prompt, params, arrival)
        if len(seqs) != 1:
            raise ValueError(f"_request makes one sequence, SamplingParams.n = {params.n}")
        return seqs[0]

    def generate_step(self, requests: Seq[Sequence], max_seqs: Optional[int] = None,
                      max_batch_tokens: Optional[int] = None) -> Iterator[tuple]:
        """Run `requests` (sequences from `_request` / `_sequences`) to the end with continuous
        batching; yields (sequence, token) for every generated token as soon as it is sampled."""
        engine = self.engine(max_seqs, max_batch_tokens)
        by_key = {}
        groups: dict = {}
        for seq in requests:
            groups.setdefault(seq.request_id, []).append(seq)
            by_key[(seq.request_id, seq.index)] = seq
        for seqs in groups.values():
            engine.add_sequences(seqs)
        try:
            while engine.has_unfinished():
                for out in engine.step():
                    seq = by_key[(out.request_id, out.index)]
                    for token in out.token_ids:
                        yield seq, token
        finally:
            for rid in groups:                  # an abandoned generator frees its blocks
                engine.abort_request(rid)
            self.last_stats = {"steps": engine.steps, "preemptions": engine.scheduler.preemptions,
                               "generated": sum(len(r.generated) for r in requests),
                               "cached_prompt_tokens": sum(r.num_cached_tokens or 0 for r in requests)}

    @staticmethod
    def _output(seqs: List[Sequence]) -> RequestOutput:
        outs = [CompletionOutput(s.index, s.text, list(s.generated), s.finish_reason,
                                 list(s.logprobs) if s.params.logprobs is not None else None)
                for s in seqs]
        first = seqs[0]
        return RequestOutput(first.prompt, first.prompt_ids, outs[0].text, outs[0].token_ids,
                             outs[0].finish_reason, outs,
                             list(first.prompt_logprobs) if first.params.prompt_logprobs is not None else None,
                             first.num_cached_tokens or 0)

    # ------------------------------------------------------------------ public API

    def generate(self, prompts: Union[str, Seq], params: Union[SamplingParams, Seq[SamplingParams], None] = None,
                 progress=None) -> List[RequestOutput]:
        """Generate for every prompt (strings or token-id lists), all in one continuous batch.

        Returns, per prompt in order, its generated text and token ids (prompt excluded);
        `outputs` holds all params.n completions.  Every prompt is validated before any
        work starts.
        """
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        if params is None:
            params = SamplingParams()
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(plist)} SamplingParams for {len(prompts)} prompts")
        groups = [self._sequences(p, sp, i) for i, (p, sp) in enumerate(zip(prompts, plist))]
        for seq, _ in self.generate_step([s for g in groups for s in g]):
            if progress is not None:
                progress(seq)
        return [self._output(g) for g in groups]

    def stream(self, prompt, params: Optional[SamplingParams] = None) -> Iterator[str]:
        """Yield the generated text piece by piece (valid UTF-8 at every piece; a stop
        string is never split, and not yielded)."""
        params = params or SamplingParams()
        if params.n != 1:
            raise ValueError(f"stream gives one completion, SamplingParams.n = {params.n}")
        seq = self._sequences(prompt, params, 0)[0]
        engine = self.engine()
        engine.add_sequences([seq])
        try:
            while engine.has_unfinished():
                for out in engine.step():
                    if out.text:
                        yield out.text
        finally:
            engine.abort_request(0)
            self.last_stats = {"steps": engine.steps, "preemptions": engine.scheduler.preemptions,
                               "generated": len(seq.generated),
                               "cached_prompt_tokens": seq.num_cached_tokens or 0}

    def chat_template(self):
        """The chat template (--chat-template file, else the model's own); ValueError if none."""
        if self._chat_template is None:
            from .chat import load_chat_template
            tmpl = load_chat_template(self.checkpoint.path, self._chat_template_file, self.tokenizer)
            if tmpl is None:
                raise ValueError(f"{self.checkpoint.path}: the model has no chat template "
                                 f"(pass chat_template=FILE)")
            self._chat_template = tmpl
        return self._chat_template

    def chat(self, messages: List[dict], params: Optional[SamplingParams] = None, **template_vars) -> RequestOutput:
        """Answer a conversation ([{"role": ..., "content": ...}, ...]) as the assistant: the
        template renders it, generation stops at EOS or the template's end-of-turn token."""
        from dataclasses import replace
        from .chat import encode_rendered, end_of_turn_ids
        tmpl = self.chat_template()
        text = tmpl.render(messages, add_generation_prompt=True, **template_vars)
        params = params or SamplingParams()
        params = replace(params, stop_token_ids=list(params.stop_token_ids) + [
            t for t in end_of_turn_ids(tmpl, self.tokenizer) if t not in params.stop_token_ids])
        return self.generate([encode_rendered(self.tokenizer, text)], params)[0]

    def logits(self, token_ids: Seq[int]) -> np.ndarray:
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
