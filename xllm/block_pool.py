"""Bookkeeping of the KV block pool: reference counts, the prefix cache, the free lists.

Every block is in exactly one of three states:

    held        ref > 0: in the block table of `ref` sequences (more than one only for a
                full, cached block: shared blocks are read-only)
    cached      ref == 0, with a hash: a full block no sequence holds; found again by its
                hash until the pool needs the room (least recently released goes first)
    empty       ref == 0, no hash

A full block's hash covers its tokens and every token before it (a chain: the hash of
block i is H(hash of block i-1, tokens of block i)), so equal hashes mean equal keys and
values at every position of the block, whatever sequence computed them.  The hash is
BLAKE2b over the token ids (128 bits: a collision, which would share a wrong block, is
not a practical concern).

The pool knows nothing of sequences or arrays: `xllm.kv_cache.KVCache` keeps the block
tables and asks the pool for blocks.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT_HASH = b""                         # the "hash before the first block"


def chain_hashes(tokens: Sequence[int], block_size: int, hashes: List[bytes],
                 n_positions: Optional[int] = None) -> List[bytes]:
    """Extend `hashes` (the chain of the first len(hashes) full blocks of `tokens`) to every
    full block of tokens[:n_positions] (default: all); returns `hashes`."""
    n = len(tokens) if n_positions is None else min(n_positions, len(tokens))
    for i in range(len(hashes), n // block_size):
        block = np.asarray(tokens[i * block_size:(i + 1) * block_size], dtype="<i8")
        parent = hashes[i - 1] if i else ROOT_HASH
        hashes.append(hashlib.blake2b(parent + block.tobytes(), digest_size=16).digest())
    return hashes


class BlockPool:
    """Reference-counted blocks 0..n_blocks-1 with a hash -> block map of cached full blocks."""

    def __init__(self, n_blocks: int):
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
            raise ValueError(f"n_blocks = {n_blocks!r}, expected a positive integer")
        self.n_blocks = n_blocks
        self.refs = np.zeros(n_blocks, dtype=np.int64)        # sequences holding each block
        self._hash: List[Optional[bytes]] = [None] * n_blocks  # hash of a cached full block
        self._by_hash: Dict[bytes, int] = {}
        self._empty = list(range(n_blocks - 1, -1, -1))       # stack: block 0 handed out first
        self._cached: "OrderedDict[int, None]" = OrderedDict()  # ref 0 with a hash, oldest first
        self.evictions = 0                                    # cached blocks reused for new content

    # ------------------------------------------------------------------ counts

    @property
    def n_free(self) -> int:
        """Blocks a sequence can take now: empty ones and cached ones no sequence holds."""
        return len(self._empty) + len(self._cached)

    @property
    def n_cached(self) -> int:
        """Blocks that hold a hash (held or not)."""
        return len(self._by_hash)

    @property
    def n_cached_free(self) -> int:
        """Cached blocks no sequence holds (evictable)."""
        return len(self._cached)

    # ------------------------------------------------------------------ blocks in and out

    def allocate(self) -> int:
        """A block for new content, ref 1: an empty one, else the least recently released
        cached one (its hash forgotten).  IndexError when every block is held."""
        if self._empty:
            block = self._empty.pop()
        elif self._cached:
            block, _ = self._cached.popitem(last=False)
            del self._by_hash[self._hash[block]]
            self._hash[block] = None
            self.evictions += 1
        else:
            raise IndexError("every KV block is held by a sequence")
        assert self.refs[block] == 0, f"block {block} handed out while held"
        self.refs[block] = 1
        return block

    def lookup(self, h: bytes) -> Optional[int]:
        """The cached block of hash `h`, or None."""
        return self._by_hash.get(h)

    def acquire(self, block: int) -> None:
        """One more sequence reads a cached block (taken off the evictable list)."""
        if self._hash[block] is None:
            raise ValueError(f"block {block} is not cached: only cached full blocks are shared")
        if self.refs[block] == 0:
            del self._cached[block]
        self.refs[block] += 1

    def release(self, block: int) -> None:
        """A sequence drops a block; with no reader left it becomes cached (it has a hash:
        newest at the end of the eviction order) or empty."""
        if self.refs[block] <= 0:
            raise ValueError(f"block {block} released but not held")
        self.refs[block] -= 1
        if self.refs[block] == 0:
            if self._hash[block] is not None:
                self._cached[block] = None
            else:
                self._empty.append(block)

    def register(self, block: int, h: bytes) -> bool:
        """Make a held full block findable by its hash.  False (the block stays unhashed,
        and empty once released) when another block already holds that content."""
        if self.refs[block] <= 0:
            raise ValueError(f"block {block} registered but not held")
        if self._hash[block] is not None:
            return self._hash[block] == h
        if h in self._by_hash:
            return False
        self._hash[block] = h
        self._by_hash[h] = block
        return True

    def forget_all(self) -> None:
        """Drop every hash: nothing is found again; cached blocks become empty (held ones
        stay with their sequences, unshared from now on)."""
        for block in self._cached:
            self._empty.append(block)
        self._cached.clear()
        for block in self._by_hash.values():
            self._hash[block] = None
        self._by_hash.clear()

    # ------------------------------------------------------------------ checks

    def check(self, held_counts: Optional[Dict[int, int]] = None) -> None:
        """AssertionError unless every block is in exactly one state and the hash map
        agrees; with `held_counts` (block -> tables holding it) also the refcounts."""
        empty, cached = set(self._empty), set(self._cached)
        assert len(empty) == len(self._empty), "a block is twice on the empty list"
        assert not empty & cached, "a block is both empty and cached"
        for b in range(self.n_blocks):
            held = self.refs[b] > 0
            assert self.refs[b] >= 0, f"block {b}: refcount {self.refs[b]}"
            assert held + (b in empty) + (b in cached) == 1, f"block {b} is in no state or in several"
            if b in empty:
                assert self._hash[b] is None, f"empty block {b} has a hash"
            if b in cached:
                assert self._hash[b] is not None, f"cached block {b} has no hash"
        for h, b in self._by_hash.items():
            assert self._hash[b] == h, f"hash map points at block {b}, which holds another hash"
        assert sum(h is not None for h in self._hash) == len(self._by_hash)
        if held_counts is not None:
            for b in range(self.n_blocks):
                assert self.refs[b] == held_counts.get(b, 0), \
                    f"block {b}: refcount {self.refs[b]}, held by {held_counts.get(b, 0)} tables"
