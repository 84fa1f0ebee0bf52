"""xllm-convert carries an HF directory's chat template into the GGUF as tokenizer.chat_template
(as llama.cpp's convert_hf_to_gguf.py does), and the converted file chats as the directory does."""
from __future__ import annotations

import json
import os

import pytest
from gguf import GGUFReader

from hf_fixtures import make_hf_dir
from xllm import LLM, SamplingParams
from xllm.chat import load_chat_template
from xllm.convert import main as convert

TEMPLATES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "templates")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon a time"},
        {"role": "assistant", "content": "there was a dog."}, {"role": "user", "content": "And then?"}]


def template(name):
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
        return f.read()


def converted(tmp_path, hf):
    out = tmp_path / "m.gguf"
    assert convert([str(hf.path), "-o", str(out)]) == 0
    field = GGUFReader(str(out)).fields.get("tokenizer.chat_template")
    return out, (None if field is None else field.contents())


@pytest.mark.parametrize("where", ["tokenizer_config", "jinja_file", "named_list"])
def test_template_is_written_and_used(tmp_path, where):
    source = template("meta-llama-Llama-3.2-3B-Instruct.jinja")
    hf = make_hf_dir(tmp_path, "gqa", max_position_embeddings=512)     # room for the long system turn
    other = "{{ 'not the default' }}"
    if where == "tokenizer_config":
        config = {"chat_template": source}
    elif where == "jinja_file":           # transformers >= 4.50 saves it beside the config
        (hf.path / "chat_template.jinja").write_text(source, encoding="utf-8")
        config = {}
    else:                                 # named templates: the "default" one is the chat's
        config = {"chat_template": [{"name": "tool_use", "template": other},
                                    {"name": "default", "template": source}]}
    (hf.path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", **config}))
    out, written = converted(tmp_path, hf)
    assert written == source
    from_dir, from_gguf = load_chat_template(hf.path), load_chat_template(out)
    assert from_gguf.render(CHAT) == from_dir.render(CHAT)
    assert from_gguf.origin.endswith("(tokenizer.chat_template)")
    params = SamplingParams(max_tokens=6, temperature=0.0)
    assert LLM(str(out), threads=2).chat(CHAT, params).outputs[0].token_ids == \
        LLM(str(hf.path), threads=2).chat(CHAT, params).outputs[0].token_ids


def test_directory_template_file_wins_like_its_chat(tmp_path):
    """chat_template.jinja and a different tokenizer_config.json template: the file is what
    the directory's chat uses (as transformers), so the GGUF gets the file."""
    hf = make_hf_dir(tmp_path, "gqa")
    (hf.path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    (hf.path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ 'other' }}"}))
    _, written = converted(tmp_path, hf)
    assert written == "{{ messages[0]['content'] }}"


def test_no_template_no_key(tmp_path):
    hf = make_hf_dir(tmp_path, "gqa")
    out, written = converted(tmp_path, hf)
    assert written is None and load_chat_template(out) is None


def test_bad_tokenizer_config_is_one_error(tmp_path, capsys):
    hf = make_hf_dir(tmp_path, "gqa")
    (hf.path / "tokenizer_config.json").write_text("{not json")
    assert convert([str(hf.path), "-o", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer_config.json: not valid JSON" in err[0]
    assert not (tmp_path / "m.gguf").exists()


def test_chat_cli_on_the_converted_file(tmp_path, monkeypatch, capsys):
    """xllm-main without --prompt on the converted file is the template's multi-turn chat."""
    import io
    from xllm.cli import main as xllm_main
    hf = make_hf_dir(tmp_path, "gqa")
    (hf.path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}"}))
    out, _ = converted(tmp_path, hf)
    monkeypatch.setattr("sys.stdin", io.StringIO("Once upon a time\n"))
    assert xllm_main(["--weight", str(out), "--threads", "1", "--temperature", "0", "--steps", "40"]) == 0
    chat = [{"role": "user", "content": "Once upon a time"}]      # the first tokens of its greedy reply
    reply = LLM(str(out), threads=1).chat(chat, SamplingParams(max_tokens=5, temperature=0.0)).outputs[0].text
    assert reply.strip() and reply.strip() in capsys.readouterr().out
