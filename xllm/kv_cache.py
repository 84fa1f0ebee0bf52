"""Paged KV cache: a pool of fixed-size blocks, a block table per sequence, a prefix cache.

Keys and values of all layers live in two arrays (n_layers, n_blocks, n_kv_heads,
block_size, head row) of the cache's type (kv_types.py: f32, f16, bf16 or q8_0; a head row
holds one position's head_dim values of one KV head).  A sequence holds a list of block ids
(its block table) covering its positions; the table grows one block at a time as the
sequence grows ("dynamic KV cache") and its blocks go back to the pool when it ends.  The
arrays come from calloc, so memory pages are only touched when a block is first written.

Prefix caching (on unless `prefix_cache=False`): once every position of a block is
computed, the block is registered under the hash of its tokens and all tokens before it
(`block_pool.chain_hashes`).  A new sequence starts with the longest chain of registered
blocks matching its tokens (`match_prefix`) and computes only the rest.  Registered blocks
are shared read-only and counted (`block_pool.BlockPool`): a sequence only ever writes
into blocks past its matched and registered ones, which no other sequence holds.  A
released block with a hash stays findable until a new allocation needs it (least recently
released first).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .block_pool import BlockPool
from .config import ModelConfig
from . import kv_types


class KVCache:
    def __init__(self, config: ModelConfig, n_blocks: int, block_size: int = 16, kv_type: str = "f32",
                 prefix_cache: bool = True):
        if block_size < 1:
            raise ValueError(f"block_size = {block_size}, expected >= 1")
        if n_blocks < 1:
            raise ValueError(f"n_blocks = {n_blocks}, expected >= 1")
        self.config = config
        self.block_size = block_size                      # positions per block
        self.n_blocks = n_blocks                          # blocks in the pool
        self.kv_type = kv_type                            # kv_types.KV_TYPES
        # a block keeps each KV head's positions together: one head's keys of a block are one
        # contiguous run for the attention kernels to stream
        shape = (config.n_layers, n_blocks, config.n_kv_heads, block_size,
                 kv_types.row_elements(kv_type, config.head_dim))
        dtype = kv_types.storage_dtype(kv_type)
        self.k = np.zeros(shape, dtype=dtype)             # keys   (layers, blocks, kv heads, block_size, head row)
        self.v = np.zeros(shape, dtype=dtype)             # values (layers, blocks, kv heads, block_size, head row)
        self.pool = BlockPool(n_blocks)
        self.prefix_cache = bool(prefix_cache)
        self.tables: Dict[int, List[int]] = {}            # sequence id -> its block ids, in order
        self._committed: Dict[int, int] = {}              # sequence id -> leading blocks matched or
                                                          # registered (read-only from then on)

    @property
    def n_free(self) -> int:
        """Blocks a reservation can take: empty ones and cached ones no sequence holds."""
        return self.pool.n_free

    @property
    def n_cached_free(self) -> int:
        """Cached blocks no sequence holds (kept for later prefix hits, evictable)."""
        return self.pool.n_cached_free

    @property
    def bytes_per_token(self) -> int:
        """K and V bytes one position takes across all layers."""
        return kv_types.bytes_per_token(self.config, self.kv_type)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def blocks_for(self, n_positions: int) -> int:
        return -(-n_positions // self.block_size)

    def blocks_needed(self, seq_id: int, n_positions: int) -> int:
        """Blocks `seq_id` must still take to hold positions [0, n_positions)."""
        have = len(self.tables.get(seq_id, ()))
        return max(0, self.blocks_for(n_positions) - have)

    def reserve(self, seq_id: int, n_positions: int) -> bool:
        """Grow the sequence's table to hold positions [0, n_positions); False (and nothing
        taken) when the pool has too few free blocks."""
        if n_positions > self.config.max_seq_len:
            raise ValueError(f"{n_positions} positions exceed the context length {self.config.max_seq_len}")
        need = self.blocks_needed(seq_id, n_positions)
        if need > self.pool.n_free:
            return False
        table = self.tables.setdefault(seq_id, [])
        self._committed.setdefault(seq_id, 0)
        for _ in range(need):
            table.append(self.pool.allocate())
        return True

    def release(self, seq_id: int) -> None:
        """Drop every block of the sequence; blocks no other sequence holds return to the
        pool (cached ones stay findable).  The last block goes first, so that of a released
        chain the start, the part most likely to be shared, is evicted last."""
        for block in reversed(self.tables.pop(seq_id, ())):
            self.pool.release(block)
        self._committed.pop(seq_id, None)

    # ------------------------------------------------------------------ prefix cache

    def cached_prefix(self, hashes: Sequence[bytes]) -> int:
        """How many of hashes[0], hashes[1], ... are cached, in a row (0 when off)."""
        n = 0
        if self.prefix_cache:
            while n < len(hashes) and self.pool.lookup(hashes[n]) is not None:
                n += 1
        return n

    def match_prefix(self, seq_id: int, hashes: Sequence[bytes]) -> int:
        """Start the (new, tableless) sequence with the longest run of cached blocks whose
        hashes are hashes[0], hashes[1], ...; returns how many blocks it got (0 when
        prefix caching is off)."""
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id} already has blocks; only a new sequence matches a prefix")
        blocks = []
        if self.prefix_cache:
            for h in hashes:
                block = self.pool.lookup(h)
                if block is None:
                    break
                blocks.append(block)
            for block in blocks:
                self.pool.acquire(block)
        self.tables[seq_id] = blocks
        self._committed[seq_id] = len(blocks)
        return len(blocks)

    def commit(self, seq_id: int, hashes: Sequence[bytes]) -> None:
        """Register the sequence's blocks whose every position is computed; `hashes` are the
        hashes of those blocks (one per full computed block, from the first)."""
        if not self.prefix_cache:
            return
        table = self.tables[seq_id]
        done = self._committed[seq_id]
        upto = min(len(hashes), len(table))
        for i in range(done, upto):
            self.pool.register(table[i], hashes[i])
        self._committed[seq_id] = max(done, upto)

    def clear_prefix_cache(self) -> None:
        """Forget every cached block (benchmarks start cold; held blocks stay with their
        sequences)."""
        self.pool.forget_all()

    def block_table(self, seq_ids) -> np.ndarray:
        """(len(seq_ids), longest table) int32 block tables, -1 past each sequence's last block."""
        tables = [self.tables.get(sid, ()) for sid in seq_ids]
        if len(tables) == 1 and tables[0]:              # one sequence (every decode step alone)
            return np.array(tables, dtype=np.int32)
        out = np.full((len(seq_ids), max(1, max(map(len, tables), default=1))), -1, dtype=np.int32)
        for row, table in enumerate(tables):
            out[row, :len(table)] = table
        return out

    def check(self, computed: Optional[Dict[int, int]] = None) -> None:
        """AssertionError unless the pool's states and refcounts agree with the tables and
        every block a sequence may still write into is its alone; with `computed` (sequence
        -> positions computed) also that no sequence's read-only blocks lie past them."""
        counts: Dict[int, int] = {}
        for table in self.tables.values():
            for block in table:
                counts[block] = counts.get(block, 0) + 1
        self.pool.check(counts)
        for sid, table in self.tables.items():
            done = self._committed[sid]
            for block in table[done:]:
                assert self.pool.refs[block] == 1, f"block {block}, writable by sequence {sid}, is shared"
            if computed is not None and sid in computed:
                assert done * self.block_size <= computed[sid], \
                    f"sequence {sid}: {done} read-only blocks, only {computed[sid]} positions computed"
