"""Prefix caching: greedy (and seeded) outputs are those of an engine without it, token for
token, on stories260K and random models; cached blocks are found by their whole prefix only,
shared read-only, counted, and never lost or freed while a sequence reads them."""
import json
import os
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest

from conftest import KNOWN_IDS
from model_factory import random_checkpoint
from xllm import LLM, SamplingParams
from xllm.block_pool import BlockPool, chain_hashes
from xllm.config import ModelConfig
from xllm.engine import DEFAULT_MODEL, Engine
from xllm.kv_cache import KVCache

CFG = ModelConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=128)
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, stop_at_eos=False)


def expected_cached(n_prompt, block_size):
    """Cached positions of a prompt whose every full block is in the cache: all full blocks
    before its last token (that one is always computed)."""
    return (n_prompt - 1) // block_size * block_size


@contextmanager
def computed_tokens(llm):
    """Count the tokens the model computes (a list holding the running total)."""
    model, total = llm.model, [0]
    orig = model.step

    def step(chunks):
        total[0] += sum(len(c.tokens) for c in chunks)
        return orig(chunks)
    model.step = step
    try:
        yield total
    finally:
        del model.step


def pair(ckpt, tokenizer=None, **kw):
    """The same model with and without prefix caching."""
    return (LLM(ckpt, tokenizer=tokenizer, threads=2, prefix_cache=True, **kw),
            LLM(ckpt, tokenizer=tokenizer, threads=2, prefix_cache=False, **kw))


@pytest.fixture(scope="module")
def stories():
    return pair(DEFAULT_MODEL, block_size=4, max_seqs=4, max_batch_tokens=64)


@pytest.fixture(scope="module")
def tok512(shared_models):
    return shared_models / "tok512.model"


def families(rng, n_prefixes, prefix_len, n_prompts, suffix_max=12, vocab=512):
    """Prompts sharing a few long prefixes (BOS, then random ids), each with its own tail."""
    prefixes = [[1] + rng.integers(3, vocab, prefix_len - 1).tolist() for _ in range(n_prefixes)]
    return [prefixes[int(rng.integers(n_prefixes))] + rng.integers(3, vocab, int(rng.integers(1, suffix_max))).tolist()
            for _ in range(n_prompts)]


# ----------------------------------------------------------------------------- hashing and the pool

def test_chain_hash_covers_every_token_before():
    a = list(range(1, 25))
    b = list(a)
    b[1] = 99                                     # differs in block 0 only
    ha, hb = chain_hashes(a, 8, []), chain_hashes(b, 8, [])
    assert len(ha) == 3 and len(set(ha)) == 3
    assert all(x != y for x, y in zip(ha, hb))    # every later block differs too
    assert chain_hashes(a + [7, 7], 8, []) == ha  # a partial block has no hash
    part = chain_hashes(a, 8, [], n_positions=17)
    assert part == ha[:2] and chain_hashes(a, 8, part) == ha   # extends where it stopped
    same_tokens_other_place = chain_hashes(a[8:16] * 2, 8, [])
    assert same_tokens_other_place[1] != same_tokens_other_place[0]


def test_pool_states_and_lru_eviction():
    pool = BlockPool(4)
    blocks = [pool.allocate() for _ in range(4)]
    assert blocks == [0, 1, 2, 3] and pool.n_free == 0
    with pytest.raises(IndexError, match="held"):
        pool.allocate()
    for b, h in zip(blocks[:3], (b"a", b"b", b"c")):
        assert pool.register(b, h)
    assert not pool.register(3, b"a")             # that content already has a block
    for b in (2, 0, 1, 3):                        # release order = eviction order of cached ones
        pool.release(b)
    pool.check({})
    assert pool.n_free == 4 and pool.n_cached_free == 3 and pool.lookup(b"b") == 1
    assert pool.allocate() == 3                   # the empty block before any cached one
    assert pool.allocate() == 2 and pool.lookup(b"c") is None and pool.evictions == 1
    pool.acquire(0)                               # a hit takes it off the eviction list
    assert pool.allocate() == 1 and pool.lookup(b"a") == 0
    pool.check({0: 1, 1: 1, 2: 1, 3: 1})
    with pytest.raises(ValueError, match="not cached"):
        pool.acquire(3)
    with pytest.raises(ValueError, match="not held"):
        BlockPool(2).release(0)
    with pytest.raises(ValueError, match="n_blocks"):
        BlockPool(0)


def test_shared_block_survives_release_of_one_reader():
    kv = KVCache(CFG, n_blocks=6, block_size=4)
    tokens = list(range(1, 11))
    hashes = chain_hashes(tokens, 4, [])
    assert kv.match_prefix(0, hashes) == 0 and kv.reserve(0, 10)
    kv.commit(0, hashes)
    assert kv.match_prefix(1, hashes) == 2 and kv.tables[1] == kv.tables[0][:2]
    kv.check()
    kv.release(0)                                 # the writer ends: the reader keeps both blocks
    assert kv.pool.refs[kv.tables[1]].tolist() == [1, 1]
    assert not kv.reserve(2, 24) and kv.reserve(2, 16)          # 4 free: the 2 shared stay held
    assert set(kv.tables[2]).isdisjoint(kv.tables[1])
    kv.check()
    kv.release(1)
    kv.release(2)
    assert kv.n_free == 6 and kv.n_cached_free == 2
    kv.clear_prefix_cache()
    assert kv.n_cached_free == 0 and kv.cached_prefix(hashes) == 0
    kv.check()


def test_prefix_cache_off_matches_nothing():
    kv = KVCache(CFG, n_blocks=6, block_size=4, prefix_cache=False)
    hashes = chain_hashes(list(range(12)), 4, [])
    kv.match_prefix(0, [])
    kv.reserve(0, 12)
    kv.commit(0, hashes)
    assert kv.match_prefix(1, hashes) == 0 and kv.pool.n_cached == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_random_operations_never_lose_or_mis_share_a_block(seed):
    """Thousands of admissions, growths, commits, preemptions, ends and cache clears over a
    small pool.  Every computed position writes a mark of its whole prefix into the K array;
    after every operation each sequence must read, through its table, the marks of its own
    tokens (a block shared wrongly or overwritten while shared shows as a wrong mark), and
    the refcounts must equal the tables holding each block."""
    rng = np.random.default_rng(seed)
    bs = int(rng.integers(1, 6))
    kv = KVCache(CFG, n_blocks=24, block_size=bs)
    stems = [rng.integers(0, 4, 40).tolist() for _ in range(3)]   # few symbols: many equal blocks
    seqs = {}                                   # id -> [tokens, positions computed]
    ids = iter(range(10 ** 6))
    hits = 0

    def mark(tokens, p):
        return float(hash(tuple(tokens[:p + 1])) % (1 << 23))

    def compute(sid, upto):
        tokens, done = seqs[sid]
        table = kv.tables[sid]
        for p in range(done, upto):
            block = table[p // bs]
            assert kv.pool.refs[block] == 1, "a sequence writes into a block it shares"
            kv.k[0, block, 0, p % bs, 0] = mark(tokens, p)
        seqs[sid][1] = upto
        kv.commit(sid, chain_hashes(tokens, bs, [], upto))

    for _ in range(4000):
        op = rng.random()
        if op < 0.3 and len(seqs) < 8:          # a new sequence: a stem's prefix plus noise
            tokens = stems[int(rng.integers(3))][:int(rng.integers(1, 40))] + rng.integers(0, 4, int(rng.integers(0, 6))).tolist()
            sid = next(ids)
            hashes = chain_hashes(tokens, bs, [], len(tokens) - 1)
            hit = kv.match_prefix(sid, hashes)
            hits += hit
            seqs[sid] = [tokens, hit * bs]
            if not kv.reserve(sid, len(tokens)):
                kv.release(sid)
                del seqs[sid]
            else:
                compute(sid, int(rng.integers(hit * bs, len(tokens) + 1)))
        elif op < 0.7 and seqs:                 # grow: compute more, maybe generate a token
            sid = list(seqs)[int(rng.integers(len(seqs)))]
            tokens, done = seqs[sid]
            if done == len(tokens) and len(tokens) < CFG.max_seq_len:
                tokens.append(int(rng.integers(0, 4)))
            if kv.reserve(sid, len(tokens)):
                compute(sid, len(tokens))
        elif seqs:                              # end, abort or preempt: release everything
            sid = list(seqs)[int(rng.integers(len(seqs)))]
            kv.release(sid)
            del seqs[sid]
        if rng.random() < 0.002:
            kv.clear_prefix_cache()
        kv.check({sid: done for sid, (_, done) in seqs.items()})
        assert kv.n_free + len({b for t in kv.tables.values() for b in t}) == kv.n_blocks
        for sid, (tokens, done) in seqs.items():
            table = kv.tables[sid]
            got = [kv.k[0, table[p // bs], 0, p % bs, 0] for p in range(done)]
            assert got == [mark(tokens, p) for p in range(done)], f"sequence {sid} reads another's K"
    assert hits > 100 and kv.pool.evictions > 10


# ----------------------------------------------------------------------------- whole engine = no cache

def test_repeated_prompts_stories260k(stories):
    on, off = stories
    prompts = [KNOWN_IDS[:40], KNOWN_IDS[:40], KNOWN_IDS[:33], KNOWN_IDS[:64], KNOWN_IDS[:9], KNOWN_IDS[:2]]
    want = [o.token_ids for o in off.generate(prompts, GREEDY)]
    on.model.kv.clear_prefix_cache()
    with computed_tokens(on) as first:
        got = on.generate(prompts, GREEDY)
    assert [o.token_ids for o in got] == want
    # the copy of prompt 0 and prompt 2 (its prefix) waited for prompt 0's blocks
    assert got[1].num_cached_tokens == expected_cached(40, 4) and got[2].num_cached_tokens == 32
    assert got[0].num_cached_tokens == 0
    with computed_tokens(on) as second:
        again = on.generate(prompts, GREEDY)
    assert [o.token_ids for o in again] == want
    assert [o.num_cached_tokens for o in again] == [expected_cached(len(p), 4) for p in prompts]
    assert second[0] == first[0] - sum(o.num_cached_tokens for o in again) + sum(o.num_cached_tokens for o in got)
    assert on.last_stats["cached_prompt_tokens"] == sum(o.num_cached_tokens for o in again)
    assert on.model.kv.n_free == on.model.kv.n_blocks
    on.model.kv.check()


def test_multi_turn_chat_stories260k(template_file):
    """llm.chat over a growing conversation: each turn's answer is the uncached one, and
    every later turn reads the earlier turns from the cache."""
    on = LLM(DEFAULT_MODEL, threads=2, chat_template=template_file)
    off = LLM(DEFAULT_MODEL, threads=2, chat_template=template_file, prefix_cache=False)
    messages = [{"role": "system", "content": "You tell short stories to children. " * 3}]
    users = ["Tell me about a cat.", "What did the cat eat?", "Did it have a friend?", "How did it end?"]
    params = SamplingParams(max_tokens=24, temperature=0.0)
    computed_before = 0                          # positions the previous turn computed
    for turn, text in enumerate(users):
        messages.append({"role": "user", "content": text})
        a, b = on.chat(messages, params), off.chat(messages, params)
        assert a.token_ids == b.token_ids and a.text == b.text
        assert b.num_cached_tokens == 0
        # the template renders the earlier turns to the same tokens: each of their full blocks is read
        assert a.num_cached_tokens == computed_before // 16 * 16 and (turn == 0 or a.num_cached_tokens >= 100)
        computed_before = len(a.prompt_token_ids) + len(a.token_ids) - 1
        messages.append({"role": "assistant", "content": a.text})


@pytest.fixture(scope="module")
def template_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tmpl") / "simple.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant:{% endif %}")
    return path


@pytest.mark.parametrize("block_size", [3, 8, 16])
def test_token_level_conversation_reads_every_earlier_block(tok512, block_size):
    """Turn k's prompt is turn k-1's prompt, its answer and a new message: every block the
    earlier turn computed completely is cached, and only the rest is computed."""
    rng = np.random.default_rng(block_size)
    on, off = pair(random_checkpoint(CFG, seed=3), tok512, block_size=block_size)
    history = [1] + rng.integers(3, 512, 29).tolist()            # a 30-token "system prompt"
    for turn in range(4):
        a, b = on.generate([history], GREEDY)[0], off.generate([history], GREEDY)[0]
        assert a.token_ids == b.token_ids
        if turn:
            assert a.num_cached_tokens == min(expected_cached(len(history), block_size),
                                              (n_prev + len(prev_answer) - 1) // block_size * block_size)
        n_prev, prev_answer = len(history), a.token_ids
        history = history + a.token_ids + rng.integers(3, 512, int(rng.integers(2, 7))).tolist()


def test_shared_prefix_ending_inside_a_block(tok512):
    """A 37-token prefix (blocks of 8: it ends inside the fifth) under 8 different tails,
    all in one call: the first computes the prefix, the others wait for it and read its
    four full blocks."""
    rng = np.random.default_rng(5)
    on, off = pair(random_checkpoint(CFG, seed=5), tok512, block_size=8, max_seqs=8)
    prompts = families(rng, 1, 37, 8)
    with computed_tokens(on) as n_on, computed_tokens(off) as n_off:
        got = on.generate(prompts, GREEDY)
        want = off.generate(prompts, GREEDY)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert [o.num_cached_tokens for o in got] == [0] + [32] * 7
    assert n_off[0] - n_on[0] == 32 * 7


def test_n_completions_share_the_prompt(tok512):
    """n = 4 seeded completions: the same texts as without the cache, the prompt's full blocks
    computed once (issue 11)."""
    on, off = pair(random_checkpoint(CFG, seed=6), tok512, block_size=4)
    prompt = [1] + list(range(10, 49))                            # 40 tokens
    params = SamplingParams(max_tokens=1, temperature=0.9, seed=11, n=4)
    with computed_tokens(on) as n_on, computed_tokens(off) as n_off:
        a, b = on.generate([prompt], params)[0], off.generate([prompt], params)[0]
    assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
    assert n_off[0] == 4 * 40 and n_on[0] == 40 + 3 * (40 - 36)
    params = SamplingParams(max_tokens=12, temperature=0.9, seed=11, n=4)
    a, b = on.generate([prompt], params)[0], off.generate([prompt], params)[0]
    assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]


def test_prompt_logprobs_are_computed_not_skipped(tok512):
    """A request for prompt logprobs computes every prompt position even when the prompt is
    cached; its logprobs and tokens are those without the cache."""
    on, off = pair(random_checkpoint(CFG, seed=7), tok512, block_size=4)
    prompt = [1] + list(range(20, 50))
    on.generate([prompt], GREEDY)                                 # cached now
    params = SamplingParams(max_tokens=5, temperature=0.0, prompt_logprobs=2, stop_at_eos=False)
    a = on.generate([prompt, prompt], params)
    b = off.generate([prompt], params)[0]
    for out in a:
        assert out.token_ids == b.token_ids and out.num_cached_tokens == 0
        assert [(lp.token_id, lp.logprob, lp.top) for lp in out.prompt_logprobs] == \
               [(lp.token_id, lp.logprob, lp.top) for lp in b.prompt_logprobs]
        assert len(out.prompt_logprobs) == len(prompt) - 1


def test_eviction_when_more_requests_than_the_pool_holds(tok512):
    """A pool of 20 blocks of 4 for 30 requests of 3 prefix families (about 12 blocks each):
    cached blocks are evicted, least recently used first, and outputs stay the same."""
    rng = np.random.default_rng(8)
    on, off = pair(random_checkpoint(CFG, seed=8), tok512, block_size=4, kv_blocks=20, max_seqs=3)
    prompts = families(rng, 3, 30, 30)
    want = [o.token_ids for o in off.generate(prompts, GREEDY)]
    got = on.generate(prompts, GREEDY)
    assert [o.token_ids for o in got] == want
    assert on.model.kv.pool.evictions > 0 and sum(o.num_cached_tokens for o in got) > 0
    assert on.model.kv.n_free == 20
    on.model.kv.check()


def test_preemption_with_shared_blocks(tok512):
    """More sequences than the pool can grow: preempted ones drop only their own reference
    (the others keep reading the shared blocks) and come back through the cache."""
    rng = np.random.default_rng(9)
    on, off = pair(random_checkpoint(CFG, seed=9), tok512, block_size=4, kv_blocks=26, max_seqs=6)
    prompts = families(rng, 2, 20, 10, suffix_max=4)
    params = SamplingParams(max_tokens=40, temperature=0.7, seed=3, stop_at_eos=False)
    want = [o.token_ids for o in off.generate(prompts, params)]
    got = [o.token_ids for o in on.generate(prompts, params)]
    assert on.last_stats["preemptions"] > 0
    assert got == want
    on.model.kv.check()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_traffic_with_aborts_equals_no_cache(tok512, seed):
    """Requests of a few prefix families join every few steps and some are aborted midway
    (waiting or running); pool sizes, block sizes and budgets random.  After every step the
    refcounts match the tables, no writable block is shared; the requests that finish give
    their uncached output."""
    rng = np.random.default_rng(100 + seed)
    bs = int(rng.integers(1, 9))
    ckpt = random_checkpoint(CFG, seed=seed)
    max_seqs, budget = int(rng.integers(2, 7)), int(rng.integers(8, 48))
    n_blocks = -(-CFG.max_seq_len // bs) + int(rng.integers(0, 30))
    on = LLM(ckpt, tokenizer=tok512, threads=2, block_size=bs, kv_blocks=n_blocks, max_seqs=max_seqs,
             max_batch_tokens=budget)
    off = LLM(ckpt, tokenizer=tok512, threads=2, block_size=bs, prefix_cache=False)
    prompts = families(rng, 3, int(rng.integers(5, 30)), 16)
    params = [SamplingParams(max_tokens=int(rng.integers(1, 12)), temperature=0.0, stop_at_eos=False,
                             n=int(rng.integers(1, 3))) for _ in prompts]
    want = [[c.token_ids for c in o.outputs] for o in off.generate(prompts, params)]
    engine = Engine(on.model, on.tokenizer, max_seqs, budget)
    kv = on.model.kv
    got, aborted, pending, step = {}, set(), list(range(len(prompts))), 0
    while pending or engine.has_unfinished():
        if pending and step % 2 == 0:
            i = pending.pop(0)
            engine.add_request(i, prompts[i], params[i])
        if engine.has_unfinished() and rng.random() < 0.08:
            live = [rid for rid in engine._requests if rid not in aborted]
            if live:
                rid = live[int(rng.integers(len(live)))]
                assert engine.abort_request(rid)
                aborted.add(rid)
        for out in engine.step():
            got.setdefault((out.request_id, out.index), []).extend(out.token_ids)
        seqs = engine.scheduler.running + list(engine.scheduler.waiting)
        kv.check({s.id: s.n_cached for s in seqs})
        step += 1
    assert kv.n_free == n_blocks and not kv.tables
    done = [i for i in range(len(prompts)) if i not in aborted]
    assert len(done) >= 8
    for i in done:
        assert [got.get((i, j), []) for j in range(params[i].n)] == want[i], f"request {i}"


# ----------------------------------------------------------------------------- the chat benchmark

CHAT_BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "chat_prefix.py")


def run_chat_bench(*args):
    return subprocess.run([sys.executable, CHAT_BENCH, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_chat_benchmark_runs_both_modes():
    """benchmarks/chat_prefix.py on stories260K, small: both modes give the same tokens; with
    the cache every later turn reads the system prompt and the earlier turns from it."""
    r = run_chat_bench("--conversations", 3, "--turns", 3, "--system-tokens", 40, "--user-tokens", 6,
                       "--reply-tokens", 5, "--block-size", 8, "--threads", 1, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["outputs_identical"] is True
    on, off = out["modes"]["on"], out["modes"]["off"]
    assert len(on["turns"]) == len(off["turns"]) == 9 and off["cached_prompt_tokens"] == 0
    # the first turns: one conversation computes the system prompt, the others wait and read it
    assert sorted(t["cached_tokens"] for t in on["turns"] if t["turn"] == 0) == [0, 40, 40]
    for t in on["turns"]:
        if t["turn"]:
            n_before = 40 + t["turn"] * (6 + 5) - 1    # positions the previous turn computed
            assert t["cached_tokens"] == n_before // 8 * 8
    assert on["prompt_tokens"] == off["prompt_tokens"] and on["wall_s"] > 0
    assert on["ttft_later_turns_s"]["median"] > 0 and out["speedup"]["wall"] > 0
    text = run_chat_bench("--conversations", 2, "--turns", 2, "--system-tokens", 20, "--user-tokens", 3,
                          "--reply-tokens", 3, "--threads", 1, "--mode", "on")
    assert text.returncode == 0 and "cached tok" in text.stdout and "identical" not in text.stdout


def test_chat_benchmark_refuses_what_does_not_fit():
    r = run_chat_bench("--system-tokens", 400, "--turns", 8, "--threads", 1)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "context length 512" in r.stderr
    r = run_chat_bench("--weight", "/nonexistent.gguf")
    assert r.returncode == 2 and "nonexistent" in r.stderr and "Traceback" not in r.stderr
