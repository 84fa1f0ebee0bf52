"""Chat templates: xllm.chat renders what transformers' apply_chat_template renders, on real
models' templates (../shared/fixtures/templates, bytes as stored), and fails the same way."""
import json
from datetime import datetime
from pathlib import Path

import jinja2
import pytest

from xllm import chat
from xllm.chat import ChatTemplate, encode_rendered, end_of_turn_ids, load_chat_template

TEMPLATES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "templates"
SHIPPED = Path(__file__).resolve().parents[1] / "xllm" / "data" / "stories260K.gguf"

# file -> (bos_token, eos_token) of the model the template belongs to
SPECIALS = {
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "HuggingFaceTB-SmolLM3-3B.jinja": ("", "<|im_end|>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
}
SYSTEM = {"role": "system", "content": "You are a terse assistant. /no_think"}
USER1 = {"role": "user", "content": "  What is the capital of France?\n"}
ASSISTANT1 = {"role": "assistant", "content": "Paris. <b>&'\"</b> \u00e9\u4e2d"}
USER2 = {"role": "user", "content": "And of Italy?"}
CONVERSATIONS = {
    "user": [USER1],
    "system+user": [SYSTEM, USER1],
    "multi-turn": [USER1, ASSISTANT1, USER2],
    "system+multi-turn": [SYSTEM, USER1, ASSISTANT1, USER2],
    "ends-with-assistant": [USER1, ASSISTANT1],
}
FIXED_NOW = datetime(2026, 3, 4, 5, 6, 7)


def read_template(name: str) -> str:
    path = TEMPLATES / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests need ../shared/fixtures beside the checkout")
    return path.read_bytes().decode("utf-8")        # every byte, trailing newline included


def hf_tokenizer(source: str, bos: str, eos: str):
    """The oracle: a transformers tokenizer holding only the template and its special tokens
    (transformers comes with the `oracle` extra; the tests that need it skip without it)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HFTokenizer, models
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(t for t in (bos, eos) if t)}}
    kwargs = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=HFTokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   eos_token=eos, chat_template=source, **kwargs)


@pytest.fixture
def fixed_clock(monkeypatch):
    """Both renderers read the same fixed date through strftime_now."""
    class FixedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return FIXED_NOW
    try:
        import transformers.utils.chat_template_utils as hf_chat
        monkeypatch.setattr(hf_chat, "datetime", FixedDatetime)
    except ImportError:
        pass                            # the oracle tests skip
    monkeypatch.setattr(chat, "now", lambda: FIXED_NOW)


def both(name, conversation, add_generation_prompt, **extra):
    """(transformers' text or exception, xllm's text or exception)."""
    source = read_template(name)
    bos, eos = SPECIALS[name]
    try:
        expected = hf_tokenizer(source, bos, eos).apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)
    except jinja2.TemplateError as exc:
        expected = exc
    try:
        got = ChatTemplate(source, bos, eos, origin=name).render(conversation, add_generation_prompt, **extra)
    except ValueError as exc:
        got = exc
    return expected, got


def test_fixture_templates_present():
    assert sorted(p.name for p in TEMPLATES.glob("*.jinja")) == sorted(SPECIALS)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_render_equals_transformers(name, conv, add_generation_prompt, fixed_clock):
    expected, got = both(name, CONVERSATIONS[conv], add_generation_prompt)
    if isinstance(expected, Exception):     # gemma has no system role: both refuse, same message
        assert isinstance(got, ValueError), got
        assert expected.message in str(got) and name in str(got)
    else:
        assert got == expected


def test_each_template_renders_most_cases():
    """The oracle comparison above is not vacuous: only gemma's system conversations fail."""
    failing = []
    for name in SPECIALS:
        for conv in CONVERSATIONS:
            if isinstance(both(name, CONVERSATIONS[conv], True)[0], Exception):
                failing.append((name, conv))
    assert sorted(failing) == [("google-gemma-2-2b-it.jinja", "system+multi-turn"),
                       ("google-gemma-2-2b-it.jinja", "system+user")]


def test_gemma_system_role_is_value_error():
    tmpl = ChatTemplate(read_template("google-gemma-2-2b-it.jinja"), "<bos>", "<eos>", origin="gemma.jinja")
    with pytest.raises(ValueError, match=r"^gemma.jinja: chat template error: System role not supported$"):
        tmpl.render([SYSTEM, USER1])
    with pytest.raises(ValueError, match="roles must alternate"):
        tmpl.render([USER1, USER2])


def test_trailing_newline_and_bytes_kept():
    # Llama-3.2's file ends with "\n": Jinja drops one trailing newline (keep_trailing_newline
    # off, as transformers); gemma's ends right after {% endif %}.
    name = "meta-llama-Llama-3.2-3B-Instruct.jinja"
    expected, got = both(name, [USER1], True, date_string="1 Jan 2000")
    assert got == expected and got.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    expected, got = both("google-gemma-2-2b-it.jinja", [USER1], True)
    assert got == expected == "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"


def test_strftime_now_reads_the_clock(fixed_clock):
    name = "meta-llama-Llama-3.2-3B-Instruct.jinja"
    expected, got = both(name, [USER1], True)
    assert "Today Date: 04 Mar 2026\n" in got and got == expected


@pytest.mark.parametrize("extra", [{"enable_thinking": False}, {"enable_thinking": True}])
def test_smollm_thinking_switch(extra):
    expected, got = both("HuggingFaceTB-SmolLM3-3B.jinja", CONVERSATIONS["multi-turn"], True, **extra)
    assert got == expected
    assert ("/no_think" in got) == (not extra["enable_thinking"])


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> & later",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Città"}},
                   "required": ["city"]}}}]
TOOL_CALL = [USER1, {"role": "assistant", "tool_calls": [
    {"id": "abc123XYZ", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "abc123XYZ", "content": "sunny"}]


@pytest.mark.parametrize("name", ["meta-llama-Llama-3.2-3B-Instruct.jinja",
                                  "mistralai-Mistral-Nemo-Instruct-2407.jinja"])
@pytest.mark.parametrize("conversation", [[USER1], TOOL_CALL], ids=["user", "tool-call"])
def test_tools_and_tojson(name, conversation, fixed_clock):
    expected, got = both(name, conversation, True, tools=TOOLS)
    assert not isinstance(expected, Exception), expected
    assert got == expected
    assert "<now> & later" in got               # tojson does not HTML-escape
    assert "Citt\u00e0" in got                  # nor ASCII-escape


def test_none_values_dropped_like_transformers():
    # OpenAI clients send content=None with tool calls; a missing key, not the text "None"
    source = "{% for m in messages %}{{ m.role }}={{ m.content if m.content is defined else '-' }};{% endfor %}"
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]
    got = ChatTemplate(source).render(msgs)
    assert got == hf_tokenizer(source, "", "</s>").apply_chat_template(msgs, tokenize=False) == "user=x;assistant=-;"


# ----------------------------------------------------------------------------- the sandbox

@pytest.mark.parametrize("source,needle", [
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", "underscore"),
    ("{{ messages.append(1) }}", "unsafe"),                           # immutable: no mutation
    ("{{ raise_exception('no way') }}", "no way"),
    ("{{ messages[0].nothing.deeper }}", "has no attribute 'nothing'"),
    ("{{ 1 + 'a' }}", "TypeError"),
])
def test_template_errors_are_value_errors_naming_origin(source, needle):
    tmpl = ChatTemplate(source, origin="my.jinja")
    with pytest.raises(ValueError, match="^my.jinja: ") as info:
        tmpl.render([USER1])
    assert needle in str(info.value)


def test_syntax_error_at_load():
    with pytest.raises(ValueError, match=r"^bad.jinja: chat template syntax error at line 2: "):
        ChatTemplate("ok\n{% if x %}never closed", origin="bad.jinja")


def test_loop_controls_dict_and_generation_tag():
    source = ("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
              "{% if m.role == 'system' %}{% continue %}{% endif %}{% generation %}{{ m.content }}{% endgeneration %}|"
              "{% endfor %}{{ dict(a=1) | tojson }}")
    msgs = [SYSTEM, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    got = ChatTemplate(source).render(msgs)
    assert got == hf_tokenizer(source, "", "</s>").apply_chat_template(msgs, tokenize=False) == 'a|{"a": 1}'


@pytest.mark.parametrize("messages,needle", [([], "empty conversation"), ("hi", "list of dicts"),
                                             ([USER1, "hi"], "message 1")])
def test_bad_messages(messages, needle):
    with pytest.raises(ValueError, match=needle):
        ChatTemplate("{{ messages }}").render(messages)


# ----------------------------------------------------------------------------- loading

def test_load_override_file_exact_bytes(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_bytes(read_template("microsoft-Phi-3.5-mini-instruct.jinja").encode())
    tmpl = load_chat_template(None, f)
    assert tmpl.source == read_template("microsoft-Phi-3.5-mini-instruct.jinja") and tmpl.origin == str(f)


def test_load_from_gguf(tmp_path):
    import gguf
    source = read_template("meta-llama-Llama-3.2-3B-Instruct.jinja")
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("tokenizer.ggml.tokens", ["<unk>", "<|begin_of_text|>", "<|eot_id|>", "a"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(source)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    tmpl = load_chat_template(path)
    assert tmpl.source == source
    assert (tmpl.bos_token, tmpl.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")
    assert "tokenizer.chat_template" in tmpl.origin and str(path) in tmpl.origin
    # the override wins over the file's own template, the file's token strings are kept
    f = tmp_path / "o.jinja"
    f.write_text("{{ bos_token }}{{ messages[0].content }}")
    assert load_chat_template(path, f).render([USER1]) == "<|begin_of_text|>" + USER1["content"]


def test_shipped_model_has_no_template():
    assert load_chat_template(SHIPPED) is None


def test_load_from_hf_directory(tmp_path):
    source = read_template("mistralai-Mistral-Nemo-Instruct-2407.jinja")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>", "chat_template": source}))
    tmpl = load_chat_template(tmp_path)
    assert tmpl.source == source and (tmpl.bos_token, tmpl.eos_token) == ("<s>", "</s>")
    expected, _ = both("mistralai-Mistral-Nemo-Instruct-2407.jinja", CONVERSATIONS["multi-turn"], True)
    assert tmpl.render(CONVERSATIONS["multi-turn"]) == expected
    # the list-of-named-templates form: "default" is used
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}"}],
        "eos_token": "</s>"}))
    assert load_chat_template(tmp_path).render([USER1]) == "D</s>"
    # chat_template.jinja (transformers' newer layout) is read first
    (tmp_path / "chat_template.jinja").write_text("J")
    assert load_chat_template(tmp_path).render([USER1]) == "J"


def test_hf_directory_without_template(tmp_path):
    assert load_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<s>"}')
    assert load_chat_template(tmp_path) is None


@pytest.mark.parametrize("config,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"chat_template": 7}', "expected a string"),
    ('{"chat_template": [{"name": "tool_use", "template": "x"}]}', "'default'"),
    ('{"chat_template": "{% for %}"}', "syntax error"),
])
def test_bad_hf_config(tmp_path, config, needle):
    (tmp_path / "tokenizer_config.json").write_text(config)
    with pytest.raises(ValueError, match=needle) as info:
        load_chat_template(tmp_path)
    assert "tokenizer_config.json" in str(info.value)


def test_bad_override_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jinja"):
        load_chat_template(None, tmp_path / "nope.jinja")
    with pytest.raises(ValueError, match="is a directory"):
        load_chat_template(None, tmp_path)
    (tmp_path / "bin.jinja").write_bytes(b"{{ x }}\xff")
    with pytest.raises(ValueError, match=r"bin.jinja: not valid UTF-8 \(byte 7\)"):
        load_chat_template(None, tmp_path / "bin.jinja")
    (tmp_path / "empty.jinja").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_chat_template(None, tmp_path / "empty.jinja")


# ----------------------------------------------------------------------------- tokenizing

@pytest.fixture(scope="module")
def tok512():
    from xllm.tokenizer import Tokenizer
    return Tokenizer.from_file(SHIPPED)


def test_encode_rendered_parses_specials_and_one_bos(tok512):
    text = "<s>User: hi</s>Bot: yo</s>"
    ids = encode_rendered(tok512, text)
    assert ids[0] == tok512.bos_id and ids.count(tok512.bos_id) == 1
    assert ids.count(tok512.eos_id) == 2
    assert ids == [1] + tok512.encode("User: hi", bos=False) + [2] + tok512.encode("Bot: yo", bos=False) + [2]
    assert encode_rendered(tok512, "User: hi") == tok512.encode("User: hi", bos=True)   # BOS added


def test_end_of_turn_ids(tok512):
    template = ChatTemplate("{% for m in messages %}{{ m.content }}</s>\n{% endfor %}", "<s>", "</s>")
    assert end_of_turn_ids(template, tok512) == [tok512.eos_id]
    # a template whose end-of-turn is another special token ("<s>" stands in for one here)
    template = ChatTemplate("{% for m in messages %}{{ m.content }}<s>\n{% endfor %}", "<s>", "</s>")
    assert end_of_turn_ids(template, tok512) == [tok512.eos_id, tok512.bos_id]
    # plain text after the reply: EOS alone
    template = ChatTemplate("{% for m in messages %}{{ m.content }}\n{% endfor %}")
    assert end_of_turn_ids(template, tok512) == [tok512.eos_id]


# ----------------------------------------------------------------------------- a real model file

PHI3_VOCAB = TEMPLATES.parent / "vocab" / "ggml-vocab-phi-3.gguf"


@pytest.fixture(scope="module")
def phi3():
    from xllm.tokenizer import Tokenizer
    tok = Tokenizer.from_file(PHI3_VOCAB)
    return tok, load_chat_template(PHI3_VOCAB, tokenizer=tok)


def test_phi3_gguf_template_renders_as_transformers(phi3):
    tok, tmpl = phi3
    assert (tmpl.bos_token, tmpl.eos_token) == ("<s>", "<|endoftext|>")
    for conv in CONVERSATIONS.values():
        for agp in (True, False):
            expected = hf_tokenizer(tmpl.source, "<s>", "<|endoftext|>").apply_chat_template(
                conv, tokenize=False, add_generation_prompt=agp)
            assert tmpl.render(conv, agp) == expected


def test_phi3_prompt_tokens_and_end_of_turn(phi3):
    tok, tmpl = phi3
    text = tmpl.render([{"role": "user", "content": "Hi there"}])
    assert text == "<s><|user|>\nHi there<|end|>\n<|assistant|>\n"
    piece = {p: i for i, p in enumerate(tok.vocab.pieces)}

    def plain(s):
        return tok.encode(s, bos=False)
    # llama.cpp's SPM tokenize with parse_special: special tokens by id, each text fragment
    # encoded with the dummy-prefix space after a special token; the template's BOS only
    assert encode_rendered(tok, text) == ([1, piece["<|user|>"]] + plain("\nHi there") + [piece["<|end|>"]]
                                          + plain("\n") + [piece["<|assistant|>"]] + plain("\n"))
    # the vocabulary's end-of-generation set (llama.cpp's EOG: </s>, <|endoftext|>, <|end|>)
    # and the token the template writes after a reply
    stops = end_of_turn_ids(tmpl, tok)
    assert set(stops) == {2, tok.eos_id, piece["<|end|>"]} == {2, 32000, 32007} and len(stops) == 3
