"""Which slice of every weight one tensor-parallel rank holds (Megatron-style), and the checks
that refuse a split before anything is loaded.

With N ranks, rank r holds

    attn_q / attn_k / attn_v, ffn_gate / ffn_up   rows of its heads / its FFN rows
                                                  (column-parallel: outputs split)
    attn_output, ffn_down                         the matching input columns (row-parallel:
                                                  each rank's product is a partial sum, one
                                                  allreduce per block completes it)
    output (or the tied token_embd)               rows of its vocabulary slice (the logits are
                                                  gathered on rank 0)
    token_embd, norms, attn_output / ffn_down biases   whole (small, or read one row per token)

so it computes n_heads/N query heads over n_kv_heads/N key/value heads (GQA groups stay whole)
and caches only those heads' keys and values.  A row slice of a mapped file is a view; the
columns of a row-parallel matrix are copied once (the file's pages are then dropped) and must
keep whole quantization blocks.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..config import ModelConfig
from ..formats import Tensor
from ..formats.types import block_layout, row_bytes, type_name

COLUMN_PARALLEL = ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up")
ROW_PARALLEL = ("attn_output", "ffn_down")


def vocab_bounds(vocab_size: int, size: int) -> List[Tuple[int, int]]:
    """Each rank's classifier rows: contiguous, as even as possible (the first ranks get one
    more when size does not divide the vocabulary)."""
    base, extra = divmod(vocab_size, size)
    bounds, r0 = [], 0
    for r in range(size):
        r1 = r0 + base + (1 if r < extra else 0)
        bounds.append((r0, r1))
        r0 = r1
    return bounds


def check_split(cfg: ModelConfig, size: int, tensors: dict = None, source: str = None) -> None:
    """ValueError naming the numbers when `size` ranks cannot split this model: every split
    dimension must divide evenly, and a row-parallel matrix's per-rank columns must be whole
    quantization blocks of its type.  `source` (a file name) starts the message when given."""
    def fail(message):
        raise ValueError(message if source is None else f"{source}: {message}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"tensor_parallel = {size!r}, expected a positive integer")
    if cfg.n_kv_heads % size:
        fail(f"{size} ranks do not divide the {cfg.n_kv_heads} key/value heads "
                         f"(n_kv_heads); use a divisor of {cfg.n_kv_heads}")
    if cfg.n_heads % size:     # implied by the above for valid configs; kept for clarity
        fail(f"{size} ranks do not divide the {cfg.n_heads} query heads (n_heads)")
    if cfg.hidden_dim % size:
        fail(f"{size} ranks do not divide the FFN width hidden_dim = {cfg.hidden_dim}")
    if cfg.vocab_size < size:
        fail(f"{size} ranks exceed the vocabulary of {cfg.vocab_size} tokens")
    if tensors is None:
        return
    for i in range(cfg.n_layers):
        for part, width in (("attn_output", cfg.q_dim), ("ffn_down", cfg.hidden_dim)):
            name = f"blk.{i}.{part}.weight"
            t = tensors.get(name)
            if t is None:
                continue
            block = block_layout(t.ggml_type)[0]
            if (width // size) % block:
                fail(f"{name} is {type_name(t.ggml_type)} with blocks of {block} "
                                 f"columns; {width} columns / {size} ranks = {width // size} per rank "
                                 f"would split a block")


def local_config(cfg: ModelConfig, size: int) -> ModelConfig:
    """The shape one rank computes: its heads and FFN rows; dim, vocabulary and context whole."""
    return dataclasses.replace(cfg, n_heads=cfg.n_heads // size, n_kv_heads=cfg.n_kv_heads // size,
                               hidden_dim=cfg.hidden_dim // size, head_dim=cfg.head_dim)


def rows(t: Tensor, r0: int, r1: int) -> Tensor:
    """Rows r0..r1 of a matrix: a view (contiguous in a row-major file)."""
    return Tensor(t.name, t.ggml_type, (r1 - r0, t.shape[1]), t.data[r0:r1])


def columns(t: Tensor, c0: int, c1: int) -> Tensor:
    """Input columns c0..c1 of every row, copied contiguous (whole blocks: check_split); the
    file's pages of the full matrix are dropped from this process afterwards."""
    from .. import _kernels
    n_rows = t.shape[0]
    raw = t.data.view(np.uint8).reshape(n_rows, -1)
    b0, b1 = row_bytes(t.ggml_type, c0), row_bytes(t.ggml_type, c1)
    part = np.ascontiguousarray(raw[:, b0:b1])
    if t.data.dtype != np.uint8:
        part = part.view(t.data.dtype)
    _kernels._release_file_pages(t.data)
    return Tensor(t.name, t.ggml_type, (n_rows, c1 - c0), part)


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `size`: what it holds of a model of `config`."""
    config: ModelConfig
    rank: int
    size: int

    def __post_init__(self):
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} out of range [0, {self.size})")

    @property
    def local_config(self) -> ModelConfig:
        return local_config(self.config, self.size)

    @property
    def vocab_bounds(self) -> List[Tuple[int, int]]:
        return vocab_bounds(self.config.vocab_size, self.size)

    def slice(self, matrices: dict, vectors: dict) -> Tuple[dict, dict]:
        """This rank's matrices (name -> Tensor) and vectors (name -> float32 array); the
        classifier is always under output.weight (a tied model's is a slice of token_embd)."""
        cfg, n, r = self.config, self.size, self.rank
        widths = {"attn_q": cfg.q_dim, "attn_k": cfg.kv_dim, "attn_v": cfg.kv_dim,
                  "ffn_gate": cfg.hidden_dim, "ffn_up": cfg.hidden_dim,
                  "attn_output": cfg.q_dim, "ffn_down": cfg.hidden_dim}
        out_m, out_v = {}, {}
        for name, t in matrices.items():
            part = name.split(".")[2] if name.startswith("blk.") else None
            if part in COLUMN_PARALLEL:
                w = widths[part] // n
                out_m[name] = rows(t, r * w, (r + 1) * w)
            elif part in ROW_PARALLEL:
                w = widths[part] // n
                out_m[name] = columns(t, r * w, (r + 1) * w)
            elif name != "output.weight":
                out_m[name] = t                 # token_embd, position_embd: whole
        v0, v1 = self.vocab_bounds[r]
        cls = matrices.get("output.weight", matrices["token_embd.weight"])
        out_m["output.weight"] = Tensor("output.weight", cls.ggml_type, (v1 - v0, cls.shape[1]),
                                        cls.data[v0:v1])
        for name, a in vectors.items():
            part = name.split(".")[2] if name.startswith("blk.") else None
            if part in COLUMN_PARALLEL and name.endswith(".bias"):
                w = widths[part] // n
                out_v[name] = np.ascontiguousarray(a[r * w:(r + 1) * w])
            else:
                out_v[name] = a
        return out_m, out_v

    def weight_bytes(self, matrices: dict) -> int:
        """Bytes of the weights this rank streams per decode step (its slices; the embedding
        table is read one row per token and not counted)."""
        cfg, n = self.config, self.size
        total = 0
        for name, t in matrices.items():
            part = name.split(".")[2] if name.startswith("blk.") else None
            if part in COLUMN_PARALLEL or part in ROW_PARALLEL or part == "attn_qkv":
                total += t.data.nbytes // n
        v0, v1 = self.vocab_bounds[self.rank]
        cls = matrices.get("output.weight", matrices["token_embd.weight"])
        return total + cls.data.nbytes * (v1 - v0) // cfg.vocab_size


def fingerprint(ckpt) -> str:
    """sha256 over what every rank must agree on: the header (the file's first 64 KiB, or a
    directory's file list), the config and the tensor table (name, type, shape and the first
    64 bytes of each tensor's data, so two random models of one shape differ)."""
    import os
    h = hashlib.sha256()
    path = os.fspath(ckpt.path)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read(65536))
        h.update(str(os.path.getsize(path)).encode())
    elif os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                h.update(f"{name}:{os.path.getsize(full)};".encode())
    h.update(repr(ckpt.config).encode())
    for name in sorted(ckpt.tensors):
        t = ckpt.tensors[name]
        h.update(f"{name}|{t.ggml_type}|{tuple(t.shape)};".encode())
        h.update(np.ascontiguousarray(t.data.reshape(-1)[:64]).view(np.uint8).tobytes()[:64])
    return h.hexdigest()
