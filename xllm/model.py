"""Model: a checkpoint's weights bound to the kernels, a workspace and a paged KV cache (any
family of config.py: llama, qwen2, gpt2).

    model = Model(open_checkpoint("model.gguf"), threads=2)
    logits = model.step([Chunk(seq_id=0, tokens=[1, 403, 407], start_pos=0)])

`step` runs one decoder pass for a batch of chunks (a prefill chunk or one decode token per
sequence): for each layer, in one Cython call without the GIL,

    x  += Wo . attention(rope(Wq . rmsnorm(x)), rope(Wk . rmsnorm(x)), Wv . rmsnorm(x))
    x  += W2 . (silu(W1 . rmsnorm(x)) * W3 . rmsnorm(x))

(llama; the other families switch the norm, the FFN, the positions and add biases), then
the final norm and the classifier for the positions that need logits.  Every
projection is one matmul over all batch tokens, so each weight is read once per step.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import _kernels
from .config import ModelConfig, rope_inv_freq
from .kv_cache import KVCache
from .kv_types import bytes_per_token, resolve_kv_type
from .formats import Checkpoint, Tensor, layer_tensor_shapes


def usable_cores() -> int:
    """Cores this process may run on (affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_threads(threads: Optional[int]) -> int:
    """None -> usable cores; more than usable cores warns on stderr (it only slows down)."""
    cores = usable_cores()
    if threads is None:
        return cores
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads = {threads!r}, expected a positive integer")
    if threads > cores:
        print(f"xllm: warning: {threads} threads requested but only {cores} cores are usable; "
              f"expect slower, not faster, runs", file=sys.stderr)
    return threads


def split_fused_qkv(cfg: ModelConfig, matrices: dict, vectors: dict) -> None:
    """Replace each blk.N.attn_qkv (rows: q, then k, then v) by attn_q/k/v row views of it
    (no copy: a block of rows of a row-major matrix is contiguous), and its bias likewise."""
    bounds = {"attn_q": (0, cfg.q_dim), "attn_k": (cfg.q_dim, cfg.q_dim + cfg.kv_dim),
              "attn_v": (cfg.q_dim + cfg.kv_dim, cfg.q_dim + 2 * cfg.kv_dim)}
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        fused = matrices.pop(p + "attn_qkv.weight")
        bias = vectors.pop(p + "attn_qkv.bias", None)
        for part, (r0, r1) in bounds.items():
            matrices[p + part + ".weight"] = Tensor(p + part + ".weight", fused.ggml_type,
                                                    (r1 - r0, fused.shape[1]), fused.data[r0:r1])
            if bias is not None:
                vectors[p + part + ".bias"] = bias[r0:r1]


def default_kv_blocks(cfg: ModelConfig, kv_type: str, block_size: int, max_seqs: int,
                      kv_memory: Optional[int] = None) -> int:
    """Blocks of `kv_type` that fit a memory budget of `kv_memory` bytes (default: max_seqs
    full contexts of float32 keys and values, the pool before the cache had types), so a
    16-bit cache holds 2x and q8_0 3.76x the tokens of f32 in the same memory; pages are
    touched only when used."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size = {block_size!r}, expected >= 1")
    if kv_memory is None:
        kv_memory = max(1, max_seqs) * -(-cfg.max_seq_len // block_size) * block_size * bytes_per_token(cfg, "f32")
    elif isinstance(kv_memory, bool) or not isinstance(kv_memory, int) or kv_memory < 1:
        raise ValueError(f"kv_memory = {kv_memory!r}, expected a positive number of bytes")
    block_bytes = block_size * bytes_per_token(cfg, kv_type)
    if kv_memory < block_bytes:
        raise ValueError(f"kv_memory = {kv_memory} bytes holds no KV block ({block_bytes} bytes of {kv_type})")
    return kv_memory // block_bytes


@dataclass
class Chunk:
    """Tokens of one sequence to process in a step."""
    seq_id: int                 # key of the sequence's block table in the KV cache
    tokens: Sequence[int]       # token ids at positions start_pos, start_pos + 1, ...
    start_pos: int              # position of tokens[0]
    logits: str = "last"        # which of its positions need logits: "last", "all" or "none"


class Model:
    def __init__(self, ckpt: Checkpoint, threads: Optional[int] = None, max_batch_tokens: int = 256,
                 kv_blocks: Optional[int] = None, block_size: int = 16, max_seqs: int = 1,
                 prefix_cache: bool = True, shard=None, kv_type: str = "auto",
                 kv_memory: Optional[int] = None):
        """`shard` (xllm.parallel.Shard): hold and run only one tensor-parallel rank's slices."""
        cfg = ckpt.config
        self.config: ModelConfig = cfg
        self.checkpoint = ckpt
        self.threads = resolve_threads(threads)
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens = {max_batch_tokens}, expected >= 1")
        self.max_batch_tokens = max_batch_tokens
        shapes = layer_tensor_shapes(cfg)
        kv_type = resolve_kv_type(kv_type, cfg, [ckpt.tensors[n].ggml_type for n, s in shapes.items()
                                                 if len(s) == 2])
        local = cfg if shard is None else shard.local_config     # this rank's heads and FFN rows
        self.shard = shard
        if kv_blocks is None:
            kv_blocks = default_kv_blocks(local, kv_type, block_size, max_seqs, kv_memory)
        self.kv = KVCache(local, kv_blocks, block_size, kv_type, prefix_cache=prefix_cache)
        # norms and biases are tiny: keep float32 copies; matrices stay views of the (mapped) file
        norms = {name: np.ascontiguousarray(ckpt.tensors[name].to_float32(), dtype=np.float32)
                 for name, shape in shapes.items() if len(shape) == 1}
        matrices = {name: ckpt.tensors[name] for name, shape in shapes.items() if len(shape) == 2}
        if cfg.fused_qkv:
            split_fused_qkv(cfg, matrices, norms)
        if shard is not None:
            matrices, norms = shard.slice(matrices, norms)
        self.rope_table = _kernels.rope_table(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta,
                                              rope_inv_freq(cfg))
        self.decoder = _kernels.Decoder(local, matrices, norms, self.kv.k, self.kv.v, block_size,
                                        max_batch_tokens, self.threads, self.rope_table, kv_type)
        if shard is not None:      # column slices of panel types were copied, then packed: drop the copies
            for name in [n for n, t in matrices.items() if t.ggml_type in _kernels.QUANTIZED_TYPES
                         and n.split(".")[-2] in ("attn_output", "ffn_down")]:
                del matrices[name]

    def set_threads(self, threads: int) -> None:
        self.decoder.set_threads(threads)
        self.threads = threads

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights a decode step streams: every tensor once, except an untied
        embedding table and learned position embeddings, of which it reads one row per token."""
        names = [n for n in layer_tensor_shapes(self.config) if n != "position_embd.weight"
                 and (n != "token_embd.weight" or self.config.tied_embeddings)]
        return sum(self.checkpoint.tensors[n].data.nbytes for n in names)

    def step(self, chunks: Sequence[Chunk]) -> list:
        """Run one decoder pass over `chunks`; returns, per chunk, its logits as float32
        (n, vocab) for the positions it asked for (None for "none").

        KV blocks for the new positions must be reserved (kv.reserve) by the caller.
        """
        n_tok = sum(len(c.tokens) for c in chunks)
        if n_tok == 0:
            raise ValueError("a step needs at least one token")
        if n_tok > self.max_batch_tokens:
            raise ValueError(f"{n_tok} tokens in one step exceed max_batch_tokens = {self.max_batch_tokens}")
        # the batch in Python lists, made arrays once: numpy calls per chunk were a good part
        # of a small model's ~100 us decode step
        tok, pos, seq, out_rows, spans = [], [], [], [], []
        t = 0
        for i, c in enumerate(chunks):
            n = len(c.tokens)
            if n == 0:
                raise ValueError(f"chunk of sequence {c.seq_id} has no tokens")
            if c.start_pos < 0 or c.start_pos + n > self.config.max_seq_len:
                raise ValueError(f"positions {c.start_pos}..{c.start_pos + n - 1} exceed the context "
                                 f"length {self.config.max_seq_len}")
            tok.extend(c.tokens)
            pos.extend(range(c.start_pos, c.start_pos + n))
            seq.extend([i] * n)
            first = len(out_rows)
            if c.logits == "all":
                out_rows.extend(range(t, t + n))
            elif c.logits == "last":
                out_rows.append(t + n - 1)
            elif c.logits != "none":
                raise ValueError(f"Chunk.logits = {c.logits!r}, expected 'last', 'all' or 'none'")
            spans.append((first, len(out_rows)))
            t += n
        tokens = np.array(tok, dtype=np.int32)
        pos = np.array(pos, dtype=np.int32)
        seq = np.array(seq, dtype=np.int32)
        tables = self.kv.block_table([c.seq_id for c in chunks])
        rows = np.array(out_rows, dtype=np.int32)
        logits = self._forward(tokens, pos, seq, tables, rows)
        return [logits[a:b] if b > a else None for a, b in spans]

    def _forward(self, tokens, pos, seq, tables, rows) -> np.ndarray:
        """The decoder pass over prepared int32 arrays; (len(rows), vocab) float32 logits
        (xllm.parallel.ParallelModel runs it on every rank and gathers the logits)."""
        logits = np.empty((len(rows), self.config.vocab_size), dtype=np.float32)
        self.decoder.step(tokens, pos, seq, tables, rows, logits)
        return logits
