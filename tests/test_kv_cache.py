"""The paged KV pool: blocks are handed out once, returned on release, and a reservation
that cannot be met takes nothing; the scheduler leaves the pool as it found it."""
import numpy as np
import pytest

from model_factory import random_checkpoint
from xllm import LLM, SamplingParams
from xllm.config import ModelConfig
from xllm.kv_cache import KVCache

CFG = ModelConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64)


def owned(kv):
    return [b for table in kv.tables.values() for b in table]


def test_reserve_grows_and_release_returns():
    kv = KVCache(CFG, n_blocks=10, block_size=4)
    assert kv.reserve(7, 1) and len(kv.tables[7]) == 1
    assert kv.reserve(7, 4) and len(kv.tables[7]) == 1          # same block still covers 4 positions
    assert kv.reserve(7, 9) and len(kv.tables[7]) == 3
    assert kv.reserve(8, 16) and kv.n_free == 10 - 3 - 4
    assert len(set(owned(kv))) == len(owned(kv)) == 7
    kv.release(7)
    assert kv.n_free == 6 and 7 not in kv.tables
    kv.release(8)
    assert kv.n_free == 10 and not kv.tables
    kv.release(8)                                                # releasing twice is harmless


def test_failed_reservation_takes_nothing():
    kv = KVCache(CFG, n_blocks=5, block_size=4)
    assert kv.reserve(1, 12)
    assert not kv.reserve(2, 12)                                 # needs 3, 2 free
    assert kv.n_free == 2 and 2 not in kv.tables
    assert not kv.reserve(1, 24)                                 # growing needs 3 more
    assert len(kv.tables[1]) == 3 and kv.n_free == 2


def test_context_limit_and_bad_sizes():
    kv = KVCache(CFG, n_blocks=100, block_size=4)
    with pytest.raises(ValueError, match="context length 64"):
        kv.reserve(0, 65)
    with pytest.raises(ValueError, match="block_size"):
        KVCache(CFG, n_blocks=4, block_size=0)
    with pytest.raises(ValueError, match="n_blocks"):
        KVCache(CFG, n_blocks=0)


def test_random_traffic_never_shares_a_block():
    rng = np.random.default_rng(0)
    kv = KVCache(CFG, n_blocks=40, block_size=4)
    lengths = {}
    for _ in range(3000):
        sid = int(rng.integers(0, 12))
        if rng.random() < 0.2:
            kv.release(sid)
            lengths.pop(sid, None)
        else:
            want = min(CFG.max_seq_len, lengths.get(sid, 0) + int(rng.integers(1, 10)))
            if kv.reserve(sid, want):
                lengths[sid] = want
        blocks = owned(kv)
        assert len(blocks) == len(set(blocks))                   # no block in two tables
        assert len(blocks) + kv.n_free == kv.n_blocks            # none lost
        for s, n in lengths.items():
            assert len(kv.tables[s]) == kv.blocks_for(n)
        kv.check()                                               # refcounts = tables holding each block


@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scheduler_returns_every_block(shared_models, seed, prefix_cache):
    """Random prompt lengths, budgets and pool sizes: the run completes, every sequence gets
    its tokens, and the pool ends full (cached blocks count as free: nobody holds them)."""
    rng = np.random.default_rng(seed)
    ckpt = random_checkpoint(CFG, seed=seed)
    block_size = int(rng.integers(1, 9))
    n_blocks = -(-CFG.max_seq_len // block_size) + int(rng.integers(0, 12))
    llm = LLM(ckpt, tokenizer=shared_models / "tok512.model", threads=2, max_seqs=int(rng.integers(1, 6)),
              max_batch_tokens=int(rng.integers(8, 40)), kv_blocks=n_blocks, block_size=block_size,
              prefix_cache=prefix_cache)
    prompts = [list(rng.integers(0, 512, int(rng.integers(1, 30)))) for _ in range(9)]
    prompts += [prompts[0] + [7, 8], list(prompts[1])]          # sharing blocks when the cache is on
    outs = llm.generate(prompts, SamplingParams(max_tokens=20, temperature=0.8, seed=seed, stop_at_eos=False))
    assert [len(o.token_ids) for o in outs] == [20] * 11
    assert llm.model.kv.n_free == n_blocks and not llm.model.kv.tables
    llm.model.kv.check()
    assert (llm.model.kv.pool.n_cached > 0) == prefix_cache


def test_abandoned_stream_frees_its_blocks(shared_models):
    llm = LLM(random_checkpoint(CFG), tokenizer=shared_models / "tok512.model", threads=1)
    stream = llm.stream([1, 5, 9], SamplingParams(max_tokens=30, temperature=0, stop_at_eos=False))
    next(stream)
    stream.close()
    assert llm.model.kv.n_free == llm.model.kv.n_blocks
