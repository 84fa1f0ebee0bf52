"""Tools in /v1/chat/completions: the parsers on replies written the way the models write
them, the streaming splitter, and a live xllm-serve driven by the openai client with real
templates (Qwen2.5's <tool_call> blocks, Llama 3.2's JSON) and a tiny model built here whose
greedy reply at given positions is a given token sequence (learned position embeddings
picked by the classifier: the model is an ordinary GGUF, the product has no test hook)."""
from __future__ import annotations

import json
import os

import numpy as np
import openai
import pytest

from xllm.chat import ChatTemplate, encode_rendered
from xllm.engine import DEFAULT_MODEL
from xllm.serve import protocol as P
from xllm.serve.tools import (FORMATS, ReplyStream, detect_format, forced_opening, parse_tool_calls)

from test_serve import TEMPLATE, start_server, stop_server

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_TEMPLATES = os.path.join(HERE, "..", "..", "shared", "fixtures", "templates")
OWN_TEMPLATES = os.path.join(HERE, "data", "templates")
TEMPLATE_FILES = {
    "qwen2.5": os.path.join(OWN_TEMPLATES, "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "hermes2pro": os.path.join(OWN_TEMPLATES, "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja"),
    "llama3.1": os.path.join(OWN_TEMPLATES, "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "llama3.2": os.path.join(SHARED_TEMPLATES, "meta-llama-Llama-3.2-3B-Instruct.jinja"),
    "mistral-nemo": os.path.join(SHARED_TEMPLATES, "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    "smollm3": os.path.join(SHARED_TEMPLATES, "HuggingFaceTB-SmolLM3-3B.jinja"),
    "gemma2": os.path.join(SHARED_TEMPLATES, "google-gemma-2-2b-it.jinja"),
    "phi3.5": os.path.join(SHARED_TEMPLATES, "microsoft-Phi-3.5-mini-instruct.jinja"),
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
NAMES = ["get_weather", "get_time"]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def calls_of(text, fmt, names=NAMES):
    content, calls = parse_tool_calls(fmt, text, names)
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


# ----------------------------------------------------------------------------- formats

@pytest.mark.parametrize("name,fmt", [("qwen2.5", "hermes"), ("hermes2pro", "hermes"), ("smollm3", None),
                                      ("llama3.1", "llama3"), ("llama3.2", "llama3"),
                                      ("mistral-nemo", "mistral"), ("gemma2", None), ("phi3.5", None)])
def test_format_of_real_templates(name, fmt):
    assert detect_format(read(TEMPLATE_FILES[name])) == fmt


HERMES_REPLIES = [  # as Qwen2.5 / Hermes write them (their templates show the same blocks)
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     None, [("get_weather", {"city": "Paris"})]),
    ('I will look it up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
     "I will look it up.\n", [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    # EOS before the closing tag; arguments given as JSON text; non-ASCII kept
    ('<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Zürich\\"}"}', None,
     [("get_weather", {"city": "Zürich"})]),
]


@pytest.mark.parametrize("text,content,calls", HERMES_REPLIES)
def test_hermes_replies(text, content, calls):
    assert calls_of(text, "hermes") == (content, calls)


LLAMA3_REPLIES = [  # Llama 3.1 / 3.2 model card formats
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', None,
     [("get_weather", {"city": "Paris"})]),
    ('  {"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "arguments": {}}', None,
     [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    # a built-in tool of Llama 3.1: python call syntax
    ('<|python_tag|>brave_search.call(query="weather in Paris", count=3)', None,
     [("brave_search", {"query": "weather in Paris", "count": 3})]),
]


@pytest.mark.parametrize("text,content,calls", LLAMA3_REPLIES)
def test_llama3_replies(text, content, calls):
    assert calls_of(text, "llama3", NAMES + ["brave_search"]) == (content, calls)


def test_mistral_replies():
    text = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'
    assert calls_of(text, "mistral") == (None, [("get_weather", {"city": "Paris"}), ("get_time", {})])
    content, calls = parse_tool_calls("mistral", text, NAMES)
    assert all(len(c.id) == 9 and c.id.isalnum() for c in calls)        # Mistral's templates check this


NOT_CALLS = [
    ("hermes", "It is sunny in Paris today."),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'),      # broken JSON
    ("hermes", '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>'),         # not offered
    ("hermes", '<tool_call>\n{"arguments": {}}\n</tool_call>'),                                  # no name
    ("llama3", "The weather is {sunny}."),
    ("llama3", 'Sure: {"name": "get_weather", "parameters": {"city": "Paris"}}'),   # a call is the whole reply
    ("llama3", '{"name": "get_weather", "parameters": [1, 2]}'),                    # arguments not an object
    ("llama3", '<|python_tag|>brave_search.call(__import__("os"))'),                # no literal keywords
    ("mistral", "[TOOL_CALLS] not json"),
]


@pytest.mark.parametrize("fmt,text", NOT_CALLS)
def test_replies_that_are_content(fmt, text):
    assert parse_tool_calls(fmt, text, NAMES + ["brave_search"]) == (text, [])


def test_call_ids_and_arguments_are_openai_shaped():
    _, calls = parse_tool_calls("hermes", HERMES_REPLIES[1][0], NAMES)
    assert len({c.id for c in calls}) == 2
    assert all(c.id.startswith("call_") and isinstance(c.arguments, str) for c in calls)


def test_forced_openings():
    assert forced_opening("hermes") == '<tool_call>\n{"name": "'
    assert forced_opening("hermes", "get_weather") == '<tool_call>\n{"name": "get_weather", "arguments": '
    assert forced_opening("llama3", "get_time") == '{"name": "get_time", "parameters": '
    for fmt in FORMATS:     # the opening plus arguments is a call of that format
        text = forced_opening(fmt, "get_weather") + '{"city": "Paris"}' + {
            "hermes": "}\n</tool_call>", "llama3": "}", "mistral": "}]"}[fmt]
        assert calls_of(text, fmt)[1] == [("get_weather", {"city": "Paris"})]


# ----------------------------------------------------------------------------- streaming

def stream_pieces(fmt, pieces, **kw):
    s, sent, text = ReplyStream(fmt, NAMES, **kw), [], ""
    for p in pieces:
        text += p
        sent.append(s.update(text))
    rest, calls = s.finish(text)
    return "".join(sent), sent, rest, [(c.name, json.loads(c.arguments)) for c in calls]


def test_stream_content_then_a_call():
    text = HERMES_REPLIES[1][0]
    streamed, sent, rest, calls = stream_pieces("hermes", [text[i:i + 3] for i in range(0, len(text), 3)])
    assert streamed + rest == "I will look it up.\n" and calls == HERMES_REPLIES[1][2]
    assert "<" not in streamed and any(sent[:5])             # content went out before the call began


def test_stream_plain_reply_is_all_content():
    text = "It is <b>sunny</b> in Paris."          # a '<' that never becomes <tool_call>
    for fmt in ("hermes", "llama3", "mistral"):
        streamed, _, rest, calls = stream_pieces(fmt, list(text))
        assert (streamed + rest, calls) == (text, [])


def test_stream_llama3_waits_for_the_first_character():
    text = LLAMA3_REPLIES[0][0]
    streamed, _, rest, calls = stream_pieces("llama3", [" ", text[:5], text[5:]])
    assert streamed == "" and rest == "" and calls == LLAMA3_REPLIES[0][2]


def test_stream_stop_strings_and_forced_opening():
    streamed, _, rest, calls = stream_pieces("hermes", ["Hello END", " more"], stops=["END"])
    assert (streamed + rest, calls) == ("Hello ", [])
    opening = forced_opening("hermes", "get_weather")
    streamed, _, rest, calls = stream_pieces("hermes", ['{"city": "Paris"}}', "\n</tool_call>"], opening=opening)
    assert (streamed, rest, calls) == ("", "", [("get_weather", {"city": "Paris"})])
    streamed, _, rest, calls = stream_pieces("hermes", ["Once upon a time"], opening=opening)
    assert (streamed + rest, calls) == (opening + "Once upon a time", [])     # the model wrote no call


# ----------------------------------------------------------------------------- request checks

def chat_request(**kw):
    return P.ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **kw)


BAD_REQUESTS = {
    "type": (dict(tools=[{"type": "retrieval", "function": {"name": "x"}}]), r"tools\.0\.type"),
    "name": (dict(tools=[{"type": "function", "function": {"name": "get weather!"}}]), r"tools\.0\.function\.name"),
    "parameters": (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": [1]}}]),
                   r"tools\.0\.function\.parameters"),
    "duplicate": (dict(tools=[WEATHER, WEATHER]), r"'get_weather' is given more than once"),
    "unknown_choice": (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_time"}}),
                       r"names the function 'get_time', which is not among the tools \(get_weather\)"),
    "choice_word": (dict(tools=[WEATHER], tool_choice="always"), r"tool_choice"),
    "required_without_tools": (dict(tool_choice="required"), r"tool_choice 'required' needs tools"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_tool_requests(case):
    from pydantic import ValidationError
    kw, message = BAD_REQUESTS[case]
    with pytest.raises(ValidationError, match=message):
        chat_request(**kw)


def test_tool_messages_reach_the_template_as_objects():
    m = P.ChatMessage(role="assistant", content=None, tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}])
    assert m.as_template_message()["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    with pytest.raises(ValueError, match="needs tool_call_id"):
        P.ChatMessage(role="tool", content="sunny")


# ----------------------------------------------------------------------------- a live server

WEATHER_CALL = {"qwen2.5": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
                "llama3.2": '{"name": "get_weather", "parameters": {"city": "Paris"}}'}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def scripted_model(path, vocab, scripts):
    """A one-layer gpt2-architecture GGUF whose greedy next token after position p is
    scripts[p] (EOS everywhere else): attention and FFN write nothing, so the last hidden
    state is token + position embedding; the position embeddings are orthonormal directions
    and the classifier row of each scripted token points along its positions'."""
    from model_factory import random_weights, stored, write_gguf
    from xllm.config import ModelConfig
    from xllm.formats import F32
    dim, ctx = 128, 1024
    cfg = ModelConfig(dim=dim, hidden_dim=128, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=len(vocab.pieces),
                      max_seq_len=ctx, arch="gpt2", norm="layer", activation="gelu_tanh", position="learned",
                      qkv_bias=True, out_bias=True, ffn_bias=True, fused_qkv=True, tied_embeddings=False,
                      bos_id=vocab.bos_id, eos_id=vocab.eos_id)
    w = random_weights(cfg, seed=1)
    for n in ("blk.0.attn_output.weight", "blk.0.attn_output.bias", "blk.0.ffn_down.weight", "blk.0.ffn_down.bias",
              "output_norm.bias"):
        w[n] = np.zeros_like(w[n])
    w["output_norm.weight"] = np.ones(dim, np.float32)
    positions = sorted(scripts)
    assert len(positions) < dim - 1
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((dim, len(positions) + 1))
    basis -= basis.mean(axis=0)                       # LayerNorm takes the mean out
    q = np.linalg.qr(basis)[0].T                      # orthonormal, zero-mean rows
    wpe = np.tile(8 * q[0], (ctx, 1))                 # unscripted positions: direction 0 -> EOS
    out = np.zeros((cfg.vocab_size, dim))
    out[vocab.eos_id] += 10 * q[0]
    for k, p in enumerate(positions, 1):
        wpe[p] = 8 * q[k]
        out[scripts[p]] += 10 * q[k]
    w["position_embd.weight"] = wpe.astype(np.float32)
    w["output.weight"] = out.astype(np.float32)
    w["token_embd.weight"] = (0.01 * rng.standard_normal((cfg.vocab_size, dim))).astype(np.float32)
    write_gguf(path, cfg, stored(w, F32), vocab)
    return path


def prompt_ids(tokenizer, template_name, messages, tools):
    tmpl = ChatTemplate(read(TEMPLATE_FILES[template_name]), tokenizer.vocab.pieces[tokenizer.bos_id],
                        tokenizer.vocab.pieces[tokenizer.eos_id])
    return encode_rendered(tokenizer, tmpl.render(messages, add_generation_prompt=True, tools=tools))


@pytest.fixture(scope="module", params=sorted(WEATHER_CALL))
def tool_server(request, tmp_path_factory):
    """xllm-serve with a real template and a model that answers ASK (with tools WEATHER and
    TIME) with that template's call of get_weather for Paris."""
    from xllm.formats import open_checkpoint
    from xllm.tokenizer import Tokenizer
    name = request.param
    vocab = open_checkpoint(DEFAULT_MODEL).vocab
    tok = Tokenizer.from_vocab(vocab)
    prompt = prompt_ids(tok, name, ASK, [WEATHER, TIME])
    reply = tok.encode(WEATHER_CALL[name], bos=False)
    scripts = {len(prompt) - 1 + k: t for k, t in enumerate(reply)}
    path = scripted_model(tmp_path_factory.mktemp("tools") / "scripted.gguf", vocab, scripts)
    s = start_server("--weight", path, "--threads", 1, "--chat-template", TEMPLATE_FILES[name])
    yield name, s, tok, len(prompt)
    stop_server(s)


def test_the_model_writes_a_call_and_the_server_returns_it(tool_server):
    name, server, _, n_prompt = tool_server
    r = server.client().chat.completions.create(model="scripted.gguf", messages=ASK, tools=[WEATHER, TIME],
                                                temperature=0, max_tokens=200)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert r.usage.prompt_tokens == n_prompt


def test_streamed_call(tool_server):
    name, server, _, _ = tool_server
    stream = server.client().chat.completions.create(model="scripted.gguf", messages=ASK, tools=[WEATHER, TIME],
                                                     temperature=0, max_tokens=200, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.content for d in deltas)
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_choice_none_and_the_next_turn(tool_server):
    name, server, tok, _ = tool_server
    client = server.client()
    r = client.chat.completions.create(model="scripted.gguf", messages=ASK, tools=[WEATHER, TIME],
                                       tool_choice="none", temperature=0, max_tokens=20)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason != "tool_calls"
    assert r.usage.prompt_tokens == len(prompt_ids(tok, name, ASK, None))     # no tools in the prompt
    turn = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"sky": "sunny"}'}]
    r = client.chat.completions.create(model="scripted.gguf", messages=turn, tools=[WEATHER, TIME],
                                       temperature=0, max_tokens=20)
    as_template = [P.ChatMessage(**m).as_template_message() for m in turn]      # arguments as an object
    assert r.usage.prompt_tokens == len(prompt_ids(tok, name, as_template, [WEATHER, TIME]))


def test_named_tool_choice_starts_the_reply_with_the_call(tool_server):
    """No grammar: a named function's call is begun in the prompt; this model writes no
    arguments there (its script is elsewhere), so the reply comes back as content."""
    name, server, _, _ = tool_server
    r = server.client().chat.completions.create(
        model="scripted.gguf", messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=5,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    fmt = {"qwen2.5": "hermes", "llama3.2": "llama3"}[name]
    assert r.choices[0].message.content.startswith(forced_opening(fmt, "get_time"))
    assert r.choices[0].message.tool_calls is None


def error_of(exc_info):
    return exc_info.value.status_code, exc_info.value.body


def test_bad_tool_specs_are_400s(tool_server):
    _, server, _, _ = tool_server
    client = server.client()
    for kw, param in [(dict(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools.0.function.name"),
                      (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}), None),
                      (dict(messages=ASK + [{"role": "tool", "content": "x"}]), "messages.1")]:
        args = {"model": "scripted.gguf", "messages": ASK, "max_tokens": 2, **kw}
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**args)
        status, body = error_of(e)
        assert status == 400 and body["type"] == "invalid_request_error" and body["param"] == param


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "plain.jinja"
    path.write_text(TEMPLATE)
    s = start_server("--weight", DEFAULT_MODEL, "--threads", 1, "--chat-template", path)
    yield s
    stop_server(s)


def test_template_without_tools_is_refused(plain_server):
    client = plain_server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="stories260K.gguf", messages=ASK, tools=[WEATHER], max_tokens=2)
    assert e.value.body["code"] == "tools_not_supported" and "supported: hermes, llama3, mistral" in \
        e.value.body["message"]
    r = client.chat.completions.create(model="stories260K.gguf", messages=ASK, tools=[WEATHER], tool_choice="none",
                                       max_tokens=2)
    assert r.choices[0].message.tool_calls is None
