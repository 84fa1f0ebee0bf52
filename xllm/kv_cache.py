"""Paged KV cache: a pool of fixed-size blocks and a block table per sequence.

Keys and values of all layers live in two float32 arrays (n_layers, n_blocks, block_size,
kv_dim).  A sequence owns a list of block ids (its block table) covering its positions;
the table grows one block at a time as the sequence grows ("dynamic KV cache") and all its
blocks return to the pool when it ends.  The arrays come from calloc, so memory pages are
only touched when a block is first written.
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, n_blocks: int, block_size: int = 16):
        if block_size < 1:
            raise ValueError(f"block_size = {block_size}, expected >= 1")
        if n_blocks < 1:
            raise ValueError(f"n_blocks = {n_blocks}, expected >= 1")
        self.config = config
        self.block_size = block_size                      # positions per block
        self.n_blocks = n_blocks                          # blocks in the pool
        shape = (config.n_layers, n_blocks, block_size, config.kv_dim)
        self.k = np.zeros(shape, dtype=np.float32)        # keys   (layers, blocks, block_size, kv_dim)
        self.v = np.zeros(shape, dtype=np.float32)        # values (layers, blocks, block_size, kv_dim)
        self._free = list(range(n_blocks - 1, -1, -1))    # stack of free block ids
        self._owner = np.full(n_blocks, -1, dtype=np.int64)  # sequence holding each block, -1 free
        self.tables: dict[int, list[int]] = {}            # sequence id -> its block ids, in order

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def bytes_per_token(self) -> int:
        """K and V bytes one position takes across all layers."""
        return 2 * self.config.n_layers * self.config.kv_dim * 4

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
        if need > len(self._free):
            return False
        table = self.tables.setdefault(seq_id, [])
        for _ in range(need):
            block = self._free.pop()
            assert self._owner[block] == -1, f"block {block} handed out twice"
            self._owner[block] = seq_id
            table.append(block)
        return True

    def release(self, seq_id: int) -> None:
        """Return every block of the sequence to the pool."""
        for block in self.tables.pop(seq_id, ()):
            assert self._owner[block] == seq_id, f"block {block} not owned by sequence {seq_id}"
            self._owner[block] = -1
            self._free.append(block)

    def block_table(self, seq_ids) -> np.ndarray:
        """(len(seq_ids), longest table) int32 block tables, -1 past each sequence's last block."""
        tables = [self.tables.get(sid, ()) for sid in seq_ids]
        if len(tables) == 1 and tables[0]:              # one sequence (every decode step alone)
            return np.array(tables, dtype=np.int32)
        out = np.full((len(seq_ids), max(1, max(map(len, tables), default=1))), -1, dtype=np.int32)
        for row, table in enumerate(tables):
            out[row, :len(table)] = table
        return out
