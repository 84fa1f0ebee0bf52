"""The online engine: add / abort / step, blocks freed at once, outputs equal LLM.generate;
stop strings, n, OpenAI penalties and logprobs against numpy on the model's own logits."""
import numpy as np
import pytest

from xllm import LLM, SamplingParams
from xllm.engine import DEFAULT_MODEL, Engine

PROMPTS = ["Once upon a time", "The little dog", "Tom and Mia went to the park", "One day"]


@pytest.fixture(scope="module")
def llm():
    return LLM(DEFAULT_MODEL, threads=2, max_seqs=4, max_batch_tokens=32)


def engine_of(llm, **kw):
    return Engine(llm.model, llm.tokenizer, kw.get("max_seqs", 4), kw.get("max_batch_tokens", 32))


def run(engine, until_done=True):
    """Step to the end; per (request, index): tokens, text pieces, finish reason, logprobs."""
    got = {}
    while engine.has_unfinished():
        for out in engine.step():
            g = got.setdefault((out.request_id, out.index), {"tokens": [], "pieces": [], "lp": []})
            g["tokens"] += out.token_ids
            g["pieces"].append(out.text)
            g["lp"] += out.logprobs or []
            g["finish"] = out.finish_reason
    return got


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=40, temperature=0.0),
                                    SamplingParams(max_tokens=40, temperature=0.9, top_p=0.9, seed=7)])
def test_requests_joining_mid_run_equal_generate(llm, params):
    """Requests added while others run (one every 3 steps) give exactly their alone output."""
    alone = [llm.generate(p, params)[0] for p in PROMPTS]
    engine = engine_of(llm, max_seqs=3)
    pending = list(enumerate(PROMPTS))
    got = {}
    steps = 0
    while pending or engine.has_unfinished():
        if pending and steps % 3 == 0:
            i, p = pending.pop(0)
            engine.add_request(f"r{i}", llm.tokenizer.encode(p), params)
        for out in engine.step():
            g = got.setdefault(out.request_id, ([], []))
            g[0].extend(out.token_ids)
            g[1].append(out.text)
            if out.finish_reason:
                assert out.finish_reason == alone[int(out.request_id[1:])].finish_reason
        steps += 1
    for i, a in enumerate(alone):
        assert got[f"r{i}"][0] == a.token_ids
        assert "".join(got[f"r{i}"][1]) == a.text
    assert engine.kv_blocks_used == 0 and not engine.has_unfinished()


def test_abort_frees_blocks_at_once(llm):
    engine = engine_of(llm)
    params = SamplingParams(max_tokens=200, temperature=0.0, stop_at_eos=False)
    engine.add_request("a", llm.tokenizer.encode(PROMPTS[0]), params)
    engine.add_request("b", llm.tokenizer.encode(PROMPTS[2]), params)
    for _ in range(5):
        engine.step()
    kv = llm.model.kv
    b_blocks = len(kv.tables[engine._requests["b"][0].id])
    assert engine.kv_blocks_used > b_blocks
    assert engine.abort_request("a")
    assert engine.kv_blocks_used == b_blocks and engine.num_running == 1
    assert not engine.abort_request("a")                 # already gone
    outs = engine.step()
    assert [o.request_id for o in outs] == ["b"]
    assert engine.abort_request("b")
    assert engine.kv_blocks_used == 0 and not engine.has_unfinished()


def test_abort_of_a_waiting_request(llm):
    engine = engine_of(llm, max_seqs=1)
    params = SamplingParams(max_tokens=20, temperature=0.0)
    engine.add_request("a", llm.tokenizer.encode(PROMPTS[0]), params)
    engine.add_request("b", llm.tokenizer.encode(PROMPTS[1]), params)
    first = engine.step()
    assert engine.num_running == 1 and engine.num_waiting == 1
    assert engine.abort_request("b")
    assert engine.num_waiting == 0
    got = run(engine)
    assert list(got) == [("a", 0)]
    tokens = [t for o in first for t in o.token_ids] + got[("a", 0)]["tokens"]
    assert tokens == llm.generate(PROMPTS[0], params)[0].token_ids


def test_refusals_name_the_numbers(llm):
    engine = engine_of(llm)
    ctx = llm.config.max_seq_len
    with pytest.raises(ValueError, match=f"max_tokens {ctx} needs {ctx + 4} positions.*{ctx}"):
        engine.add_request("x", llm.tokenizer.encode("Once upon a time"), SamplingParams(max_tokens=ctx))
    with pytest.raises(ValueError, match="token id 100000 out of range"):
        engine.add_request("x", [1, 100000], SamplingParams())
    engine.add_request("x", [1, 403], SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="already running"):
        engine.add_request("x", [1, 403], SamplingParams(max_tokens=3))


def test_max_tokens_zero_finishes_without_a_step(llm):
    engine = engine_of(llm)
    engine.add_request("z", [1, 403], SamplingParams(max_tokens=0))
    outs = engine.step()
    assert [(o.request_id, o.token_ids, o.finish_reason) for o in outs] == [("z", [], "length")]
    assert not engine.has_unfinished() and engine.steps == 0


# ----------------------------------------------------------------------------- stop strings

def test_stop_string_cuts_the_text_and_is_never_split(llm):
    full = llm.generate(PROMPTS[0], SamplingParams(max_tokens=60, temperature=0.0))[0].text
    stop = "girl named"
    assert stop in full
    params = SamplingParams(max_tokens=60, temperature=0.0, stop=["zzz", stop])
    engine = engine_of(llm)
    engine.add_request("s", llm.tokenizer.encode(PROMPTS[0]), params)
    got = run(engine)[("s", 0)]
    assert got["finish"] == "stop"
    assert "".join(got["pieces"]) == full[:full.index(stop)]
    out = llm.generate(PROMPTS[0], params)[0]
    assert out.text == full[:full.index(stop)] and out.finish_reason == "stop"
    assert "".join(llm.stream(PROMPTS[0], params)) == out.text


def test_partial_stop_match_is_held_then_released(llm):
    """A stop string whose start appears in the text but that never completes: the pieces
    hold the start back, the text in the end is the whole text."""
    full = llm.generate(PROMPTS[0], SamplingParams(max_tokens=60, temperature=0.0))[0]
    stop = "girl named Bob"
    params = SamplingParams(max_tokens=60, temperature=0.0, stop=stop)
    engine = engine_of(llm)
    engine.add_request("s", llm.tokenizer.encode(PROMPTS[0]), params)
    got = run(engine)[("s", 0)]
    assert "".join(got["pieces"]) == full.text and got["finish"] == full.finish_reason
    pos = full.text.index("girl named")
    emitted = 0
    for piece in got["pieces"]:       # no piece ends inside "girl named " before it is resolved
        emitted += len(piece)
        assert not (pos < emitted < pos + len("girl named "))


# ----------------------------------------------------------------------------- n, penalties, logprobs

def test_n_completions_seeded(llm):
    one = llm.generate(PROMPTS[1], SamplingParams(max_tokens=30, temperature=1.0, seed=11))[0]
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=11, n=3)
    many = llm.generate(PROMPTS[1], params)[0]
    assert [o.index for o in many.outputs] == [0, 1, 2]
    assert many.outputs[0].token_ids == one.token_ids          # completion 0 = the request alone
    assert len({tuple(o.token_ids) for o in many.outputs}) > 1
    again = llm.generate(PROMPTS[1], params)[0]
    assert [o.token_ids for o in again.outputs] == [o.token_ids for o in many.outputs]


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 1.0), (2.0, -0.5)])
def test_openai_penalties_follow_numpy(llm, presence, frequency):
    """Greedy with penalties: each token is the argmax of the model's logits minus
    count * frequency + (count > 0) * presence over the tokens generated before it."""
    params = SamplingParams(max_tokens=40, temperature=0.0, presence_penalty=presence,
                            frequency_penalty=frequency, stop_at_eos=False)
    out = llm.generate(PROMPTS[0], params)[0]
    plain = llm.generate(PROMPTS[0], SamplingParams(max_tokens=40, temperature=0.0, stop_at_eos=False))[0]
    assert out.token_ids != plain.token_ids
    ids = out.prompt_token_ids + out.token_ids
    logits = llm.logits(ids[:-1]).astype(np.float32)
    n_prompt = len(out.prompt_token_ids)
    for t, token in enumerate(out.token_ids):
        row = logits[n_prompt - 1 + t].copy()
        counts = np.bincount(out.token_ids[:t], minlength=row.shape[0]).astype(np.float64)
        row -= (counts * frequency + (counts > 0) * presence).astype(np.float32)
        assert int(np.argmax(row)) == token, t


def test_logprobs_are_the_models_log_softmax(llm):
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=3, logprobs=5, stop_at_eos=False)
    out = llm.generate(PROMPTS[2], params)[0].outputs[0]
    ids = llm.tokenizer.encode(PROMPTS[2]) + out.token_ids
    logits = llm.logits(ids[:-1])
    n_prompt = len(ids) - len(out.token_ids)
    assert len(out.logprobs) == len(out.token_ids)
    for t, (token, lp) in enumerate(zip(out.token_ids, out.logprobs)):
        ref = logits[n_prompt - 1 + t].astype(np.float64)
        ref = ref - ref.max() - np.log(np.exp(ref - ref.max()).sum())
        assert lp.token_id == token
        assert lp.logprob == pytest.approx(ref[token], abs=1e-9)
        order = np.argsort(-ref, kind="stable")[:5]
        assert [i for i, _ in lp.top] == order.tolist()
        assert [v for _, v in lp.top] == pytest.approx(ref[order].tolist(), abs=1e-9)


@pytest.mark.parametrize("field, value", [("n", 0), ("presence_penalty", 2.5), ("frequency_penalty", -3),
                                          ("logprobs", 21), ("stop", [""]), ("stop", [1]),
                                          ("stop_token_ids", [-1])])
def test_bad_new_params_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**{field: value}).validate()


@pytest.mark.parametrize("max_tokens", [0, 5])
def test_prompt_logprobs_over_several_chunks(llm, max_tokens):
    """Prompt logprobs (echo + logprobs, scoring) from prefill chunks of 4 tokens equal the
    model's log-softmax at every prompt position; max_tokens 0 only scores."""
    prompt = "Tom and Mia went to the park to play with a ball"
    ids = llm.tokenizer.encode(prompt)
    engine = Engine(llm.model, llm.tokenizer, 4, 4)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, prompt_logprobs=2)
    engine.add_request("p", ids, params)
    engine.add_request("q", llm.tokenizer.encode(PROMPTS[0]), SamplingParams(max_tokens=6, temperature=0.0))
    firsts = {}
    while engine.has_unfinished():
        for out in engine.step():
            firsts.setdefault(out.request_id, out)
    lps = firsts["p"].prompt_logprobs
    assert firsts["q"].prompt_logprobs is None
    logits = llm.logits(ids)
    assert [lp.token_id for lp in lps] == ids[1:]
    for pos, lp in enumerate(lps, 1):
        ref = logits[pos - 1].astype(np.float64)
        ref = ref - ref.max() - np.log(np.exp(ref - ref.max()).sum())
        assert lp.logprob == pytest.approx(ref[ids[pos]], abs=1e-9)
        assert [i for i, _ in lp.top] == np.argsort(-ref, kind="stable")[:2].tolist()
    out = llm.generate([ids], params)[0]
    assert [lp.logprob for lp in out.prompt_logprobs] == [lp.logprob for lp in lps]
    assert out.token_ids == llm.generate([ids], greedy_params(max_tokens))[0].token_ids
    assert engine.kv_blocks_used == 0


def greedy_params(n):
    return SamplingParams(max_tokens=n, temperature=0.0)
