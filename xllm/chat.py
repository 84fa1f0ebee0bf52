"""Chat templates: Jinja2 in a sandbox, rendering what transformers' `apply_chat_template` does.

A chat template turns a conversation ([{"role": ..., "content": ...}, ...]) into the prompt
text a model was trained on.  The template is untrusted code from a model file, so it runs in
`jinja2.sandbox.ImmutableSandboxedEnvironment` set up exactly as transformers does
(`transformers.utils.chat_template_utils._cached_compile_jinja_template`): trim_blocks and
lstrip_blocks, the loopcontrols extension and the `{% generation %}` tag, the globals
`raise_exception`, `strftime_now`, a restricted `dict` and a `namespace` that refuses
underscore names, and a `tojson` filter that does not HTML-escape.  The variables are those
transformers passes: `messages`, `tools`, `documents`, `add_generation_prompt`, `bos_token`,
`eos_token`, then any extra ones (`date_string`, `enable_thinking`, ...).  On top of the sandbox,
every compile and render is bounded in steps, value sizes, output and time (chat_sandbox.py:
RenderLimits), so a template cannot hang or exhaust memory either.

Where a template comes from (`load_chat_template`): a `--chat-template` file, else a GGUF's
`tokenizer.chat_template`, else a Hugging Face directory's `chat_template.jinja` or the
`chat_template` of its `tokenizer_config.json` (a string, or a list of named templates of which
"default" is used).  A template that fails -- bad syntax when loaded, `raise_exception`, an
undefined attribute or a type error when rendered -- raises ValueError naming its origin.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import List, Optional

import jinja2
import jinja2.ext
from jinja2 import nodes

from .chat_sandbox import BoundedSandbox, RenderLimits, bound_template, render_bounded

HF_TEMPLATE_FILE = "chat_template.jinja"        # transformers >= 4.50 saves the template here
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
GGUF_TEMPLATE_KEY = "tokenizer.chat_template"

# What a message's reasoning may be called; templates read the first (as transformers aliases them).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def now() -> datetime:
    """The clock `strftime_now` reads (a function so tests can fix the date)."""
    return datetime.now()


# ----------------------------------------------------------------------------- the sandbox

def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    if isinstance(fmt, str) and len(fmt) > 1024:     # %c and friends expand each directive
        raise jinja2.exceptions.SecurityError(f"strftime_now: a format of {len(fmt):,} characters, "
                                              f"expected at most 1,024")
    return now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates without exposing the dict type itself (no attribute tricks)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja2's namespace, refusing underscore-prefixed attributes (no route to CPython internals)."""

    def __init__(*args, **kwargs):      # Namespace's signature trick: `namespace(self=...)` works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    def __repr__(self):      # opaque: a namespace changes, so its printed size cannot be bounded ahead
        return "<Namespace>"

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks the assistant's text for training masks;
    rendering only needs its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


@lru_cache(maxsize=None)
def _environment() -> BoundedSandbox:
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


# ----------------------------------------------------------------------------- template data

def _plain(value):
    """What the template may see: JSON-like data only (as transformers' `_plain_template_data`);
    any other object becomes an inert "<TypeName>" string."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)           # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return _plain(item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):    # pydantic models (OpenAI's messages)
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _messages(messages, origin: str) -> list:
    """The conversation as transformers hands it to the template: plain dicts, keys whose
    value is None dropped, reasoning under every name templates read."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise ValueError(f"{origin}: messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError(f"{origin}: cannot render an empty conversation, expected at least one message")
    out = []
    for i, message in enumerate(messages):
        message = _plain(message)
        if not isinstance(message, dict):
            raise ValueError(f"{origin}: message {i} is {message!r}, expected a dict "
                             f"with 'role' and 'content'")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


# ----------------------------------------------------------------------------- ChatTemplate

class ChatTemplate:
    """A compiled chat template.

    ChatTemplate(source, bos_token="", eos_token="", origin="") -- `source` is the Jinja text
    (trailing newlines included, as stored); bos/eos_token are the strings the template writes
    for them; `origin` names where it came from in error messages.
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", origin: str = "",
                 limits: Optional[RenderLimits] = None):
        if not isinstance(source, str):
            raise ValueError(f"{origin or 'chat template'}: expected the template as a str, "
                             f"got {type(source).__name__}")
        self.source = source
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.origin = origin or "chat template"
        self.limits = limits or RenderLimits()
        try:
            self._template = bound_template(_environment(), source, self.limits)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"{self.origin}: chat template syntax error at line {exc.lineno}: "
                             f"{exc.message}") from None
        except jinja2.TemplateError as exc:         # a bound hit while folding constants
            raise ValueError(f"{self.origin}: chat template error: {exc.message}") from None
        except Exception as exc:    # Python's compiler on the generated code: nesting, recursion
            raise ValueError(f"{self.origin}: chat template cannot be compiled: "
                             f"{type(exc).__name__}: {exc}") from None

    def render(self, messages: List[dict], add_generation_prompt: bool = True, **extra) -> str:
        """The prompt text of `messages`; with add_generation_prompt, ending where the
        assistant's reply starts.  `extra`: more template variables (tools, date_string, ...)."""
        chat = _messages(messages, self.origin)
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token, **_plain(extra)}
        tools = variables.pop("tools", None)
        documents = variables.pop("documents", None)
        variables.update(messages=chat, tools=tools, documents=documents,
                         add_generation_prompt=bool(add_generation_prompt))
        try:
            return render_bounded(self._template, self.limits, variables)
        except jinja2.TemplateError as exc:        # raise_exception, undefined, sandbox, limits
            raise ValueError(f"{self.origin}: chat template error: {exc.message}") from None
        except Exception as exc:                   # the template's own expressions failed
            raise ValueError(f"{self.origin}: chat template error: {type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        return f"ChatTemplate({self.origin!r}, {len(self.source)} chars)"


# ----------------------------------------------------------------------------- loading

def _read_text(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such {what}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected a {what}")
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 (byte {exc.start}), expected a {what}") from None


def _token_text(value) -> str:
    # tokenizer_config.json writes special tokens as a string or an AddedToken dict
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _from_hf_directory(path: str):
    """(source, origin, bos, eos) of an HF directory's template, or None."""
    config, cfg_path = {}, os.path.join(path, HF_TOKENIZER_CONFIG)
    if os.path.isfile(cfg_path):
        try:
            config = json.loads(_read_text(cfg_path, "JSON file"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{cfg_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    jinja_path = os.path.join(path, HF_TEMPLATE_FILE)
    if os.path.isfile(jinja_path):               # transformers reads this file first, too
        return _read_text(jinja_path, "chat template"), jinja_path, bos, eos
    source = config.get("chat_template")
    if source is None:
        return None
    origin = f"{cfg_path} (chat_template)"
    if isinstance(source, list):                 # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(f"{origin}: a list of templates named {sorted(map(str, named))}, "
                             f"expected one named 'default'")
        source, origin = named["default"], f"{cfg_path} (chat_template 'default')"
    if not isinstance(source, str):
        raise ValueError(f"{origin}: expected a string, got {type(source).__name__}")
    return source, origin, bos, eos


def hf_directory_template(path) -> Optional[str]:
    """The template text of an HF directory (chat_template.jinja, else tokenizer_config.json's
    chat_template, its "default" if a list), None if it has none: what its chat uses, and what
    xllm-convert writes as the GGUF's tokenizer.chat_template."""
    found = _from_hf_directory(os.fspath(path))
    return None if found is None else found[0]


def _from_gguf(path: str):
    """(source, origin, bos, eos) of a GGUF file's tokenizer.chat_template, or None."""
    from .formats.gguf_reader import GGUFFile
    reader = GGUFFile(path)
    field = reader.fields.get(GGUF_TEMPLATE_KEY)
    if field is None:
        return None
    source, origin = field.contents(), f"{path} ({GGUF_TEMPLATE_KEY})"
    if not isinstance(source, str):
        raise ValueError(f"{origin}: expected a string, got {type(source).__name__}")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    tokens = tokens.contents() if tokens is not None else []

    def piece(key):
        f = reader.fields.get(key)
        i = f.contents() if f is not None else None
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""
    return source, origin, piece("tokenizer.ggml.bos_token_id"), piece("tokenizer.ggml.eos_token_id")


def load_chat_template(checkpoint_path, override_file=None, tokenizer=None) -> Optional[ChatTemplate]:
    """The template of a model: `override_file` (--chat-template) if given, else the GGUF's
    tokenizer.chat_template, else the HF directory's; None when there is none (llama2.c
    files have none).  bos/eos_token come from `tokenizer` (an xllm Tokenizer) when given,
    else from the model file."""
    found = None
    if override_file is not None:
        path = os.fspath(override_file)
        found = (_read_text(path, "chat template file"), path, "", "")
        if not found[0].strip():
            raise ValueError(f"{path}: the chat template file is empty")
    if checkpoint_path is not None:
        path = os.fspath(checkpoint_path)
        from_model = None
        if os.path.isdir(path):
            from_model = _from_hf_directory(path)
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                if f.read(4) == b"GGUF":
                    from_model = _from_gguf(path)
        if found is None:
            found = from_model
        elif from_model is not None:             # keep the model's token strings
            found = (*found[:2], from_model[2], from_model[3])
    if found is None:
        return None
    source, origin, bos, eos = found
    if tokenizer is not None:                    # the strings the encoder maps to BOS/EOS
        pieces = tokenizer.vocab.pieces
        bos, eos = pieces[tokenizer.bos_id], pieces[tokenizer.eos_id]
    return ChatTemplate(source, bos_token=bos, eos_token=eos, origin=origin)


# ----------------------------------------------------------------------------- tokenizing

def encode_rendered(tokenizer, text: str) -> List[int]:
    """Token ids of a rendered chat prompt: special-token text becomes those tokens (llama.cpp's
    parse_special), and a vocabulary that starts with BOS gets it exactly once (added unless
    the template wrote it)."""
    ids = tokenizer.encode(text, bos=False, special=True)
    if tokenizer.add_bos and (not ids or ids[0] != tokenizer.bos_id):
        ids.insert(0, tokenizer.bos_id)
    return ids


_PROBE = "xllm-probe-reply"


def end_of_turn_ids(template: ChatTemplate, tokenizer) -> List[int]:
    """EOS, plus the special token the template writes right after an assistant's reply
    (<|eot_id|>, <end_of_turn>, <|im_end|>, <|end|>, ...): generation stops at either."""
    from .tokenizer import CONTROL, USER_DEFINED
    stops = sorted(tokenizer.eos_ids)
    try:
        text = template.render([{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": _PROBE}], add_generation_prompt=False)
    except ValueError:          # a template with other expectations: EOS alone
        return stops
    at = text.rfind(_PROBE)
    tail = text[at + len(_PROBE):] if at >= 0 else ""
    ids = tokenizer.encode(tail, bos=False, special=True) if tail else []
    if ids and int(tokenizer.vocab.types[ids[0]]) in (CONTROL, USER_DEFINED) and ids[0] not in stops:
        stops.append(ids[0])
    return stops
