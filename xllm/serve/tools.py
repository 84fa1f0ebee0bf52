"""Tool calls (function calling) for /v1/chat/completions: which format the model's chat template
teaches, the text to start a forced call with, and the model's output parsed into OpenAI's
`tool_calls`.

Formats (found from the template's text):

    hermes   <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>, one block per call,
             text before the first block is content (Qwen2 / 2.5, Hermes 2 Pro / 3)
    llama3   the whole reply is {"name": ..., "parameters": {...}} (several joined by ";"),
             optionally after <|python_tag|>; <|python_tag|>name.call(key="value", ...) for
             Llama 3.1's built-in tools (Llama 3.1 / 3.2 / 3.3)
    mistral  [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] (Mistral Nemo, Small)

A reply that does not parse, or that calls a function the request did not offer, is content:
the caller gets the text, not a made-up call.  There is no grammar-constrained decoding:
`tool_choice` "required" or a named function starts the assistant's reply with the format's
opening (and the name), so the model continues inside a call.
"""
from __future__ import annotations

import ast
import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

FORMATS = ("hermes", "llama3", "mistral")
PYTHON_TAG = "<|python_tag|>"
_MARKERS = {"hermes": ("<tool_call>", "</tool_call>"), "llama3": (PYTHON_TAG,), "mistral": ("[TOOL_CALLS]",)}
_ARGUMENT_KEY = {"hermes": "arguments", "llama3": "parameters", "mistral": "arguments"}
_OPENING = {"hermes": '<tool_call>\n{"name": "', "llama3": '{"name": "', "mistral": '[TOOL_CALLS][{"name": "'}
_BUILTIN_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\.call\((.*)\)\s*", re.S)


def detect_format(template_source: str) -> Optional[str]:
    """The tool-call format a chat template teaches, None if it takes no tools or teaches
    another format."""
    if "tools" not in template_source:
        return None
    if "<tool_call>" in template_source:
        return "hermes"
    if "[TOOL_CALLS]" in template_source:
        return "mistral"
    if PYTHON_TAG in template_source or '"parameters": ' in template_source:
        return "llama3"
    return None


@dataclass
class ToolCall:
    name: str
    arguments: str          # a JSON object, as OpenAI sends it
    id: str


def new_call_id(fmt: str) -> str:
    """call_<24 hex digits>; Mistral's templates insist on 9 letters and digits."""
    if fmt == "mistral":
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return "call_" + secrets.token_hex(12)


def _arguments(value) -> Optional[str]:
    """A call's arguments as JSON text of an object (a JSON string holding one is accepted)."""
    if value is None:
        value = {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else None


def _call(obj, key: str, fmt: str) -> Optional[ToolCall]:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = _arguments(obj.get(key, obj.get("arguments")))
    return None if args is None else ToolCall(obj["name"], args, new_call_id(fmt))


def _json_objects(text: str) -> Optional[list]:
    """Every JSON value of `text`, one after another, separated by whitespace or ';'."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and (text[i].isspace() or text[i] == ";"):
            i += 1
        if i == len(text):
            return out
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        out.append(value)


def _builtin_call(text: str) -> Optional[ToolCall]:
    """Llama 3.1's `name.call(key="value", ...)`: keyword arguments with literal values."""
    m = _BUILTIN_CALL.fullmatch(text)
    if m is None:
        return None
    try:
        call = ast.parse(f"f({m.group(2)})", mode="eval").body
        if call.args:
            return None
        args = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    if len(args) != len(call.keywords):
        return None
    try:
        return ToolCall(m.group(1), json.dumps(args, ensure_ascii=False), new_call_id("llama3"))
    except (TypeError, ValueError):         # bytes, sets ...: not JSON
        return None


def _parse_hermes(text: str) -> Tuple[str, Optional[list]]:
    start = text.find("<tool_call>")
    if start < 0:
        return text, None
    calls = []
    for block in text[start:].split("<tool_call>")[1:]:
        body = block.partition("</tool_call>")[0]     # the last may be unclosed (EOS came first)
        try:
            call = _call(json.loads(body), "arguments", "hermes")
        except json.JSONDecodeError:
            return text, None
        if call is None:
            return text, None
        calls.append(call)
    return text[:start], calls


def _parse_llama3(text: str) -> Tuple[str, Optional[list]]:
    body = text.lstrip()
    tagged = body.startswith(PYTHON_TAG)
    if tagged:
        body = body[len(PYTHON_TAG):]
    if body.lstrip().startswith("{"):
        values = _json_objects(body)
        calls = [_call(v, "parameters", "llama3") for v in values or []]
        if values and all(calls):
            return "", calls
        return text, None
    if tagged:
        call = _builtin_call(body)
        if call is not None:
            return "", [call]
    return text, None


def _parse_mistral(text: str) -> Tuple[str, Optional[list]]:
    start = text.find("[TOOL_CALLS]")
    if start < 0:
        return text, None
    values = _json_objects(text[start + len("[TOOL_CALLS]"):])
    if not values:
        return text, None
    items = [x for v in values for x in (v if isinstance(v, list) else [v])]
    calls = [_call(v, "arguments", "mistral") for v in items]
    if not calls or not all(calls):
        return text, None
    return text[:start], calls


_PARSERS = {"hermes": _parse_hermes, "llama3": _parse_llama3, "mistral": _parse_mistral}


def parse_tool_calls(fmt: str, text: str, names: Optional[Sequence[str]] = None
                     ) -> Tuple[Optional[str], List[ToolCall]]:
    """(content, calls) of a model's reply in format `fmt`.  No calls: the whole text is the
    content.  Calls: the text before them (None if only whitespace).  A call of a function
    not in `names` (when given) makes the whole reply content."""
    content, calls = _PARSERS[fmt](text)
    if not calls or (names is not None and any(c.name not in names for c in calls)):
        return text, []
    return (content if content.strip() else None), calls


def forced_opening(fmt: str, name: Optional[str] = None) -> str:
    """The start of the assistant's reply for tool_choice "required" (any function) or a
    named function: the format's opening of a call, with the name and the arguments' key."""
    if name is None:
        return _OPENING[fmt]
    return _OPENING[fmt] + json.dumps(name)[1:] + f', "{_ARGUMENT_KEY[fmt]}": '


# ----------------------------------------------------------------------------- the model's text

def marker_tokens(fmt: str, tokenizer) -> Dict[int, str]:
    """The format's markers that are one token which decoding hides (a control token such as
    <|python_tag|> or [TOOL_CALLS]): id -> its text, so replies are parsed with them."""
    out = {}
    for marker in _MARKERS[fmt]:
        ids = tokenizer.encode(marker, bos=False, special=True)
        if len(ids) == 1 and tokenizer.decode(ids) != marker:
            out[ids[0]] = marker
    return out


class Renderer:
    """The text of generated ids as they arrive, with the marker tokens written out (the
    tokenizer's stream decoder after the prompt, as the engine's text)."""

    def __init__(self, tokenizer, markers: Dict[int, str], context: Sequence[int] = ()):
        self.decoder = tokenizer.stream_decoder(context)
        self.markers, self.parts = markers, []

    def push(self, ids: Sequence[int]) -> str:
        for i in ids:
            self.parts.append(self.markers[i] if i in self.markers else self.decoder.push(i))
        return "".join(self.parts)

    def final(self) -> str:
        self.parts.append(self.decoder.flush())
        return "".join(self.parts)


def _held_suffix(text: str, patterns: Sequence[str]) -> int:
    """Length of the longest end of `text` that begins one of `patterns` (it may still
    become it)."""
    best = 0
    for p in patterns:
        for k in range(min(len(p) - 1, len(text)), best, -1):
            if text.endswith(p[:k]):
                best = k
                break
    return best


class ReplyStream:
    """One choice's reply in a request with tools, streamed: content is handed out as long as
    no call can have begun; from a call's opening on, the rest waits for `finish`.

    update(text) takes the whole reply so far (render of every id) and returns the new
    content; finish(text) returns (the content not yet sent, the calls).  Stop strings cut
    the text as the engine does (before the first), and are never split."""

    def __init__(self, fmt: str, names: Sequence[str], opening: str = "", stops: Sequence[str] = (),
                 parallel: bool = True):
        self.fmt, self.names, self.opening = fmt, list(names), opening
        self.stops, self.parallel = list(stops), parallel
        self.sent = 0                   # characters of the reply handed out as content
        self.in_call = bool(opening)

    def _cut(self, text: str) -> str:
        text = self.opening + text
        for s in self.stops:
            at = text.find(s)
            if at >= 0:
                text = text[:at]
        return text

    def update(self, text: str) -> str:
        text = self._cut(text)
        if self.in_call:
            return ""
        end = len(text) - _held_suffix(text, self.stops)
        while end > self.sent and text[end - 1] == "\ufffd":     # a character still being decoded
            end -= 1
        if self.fmt == "llama3":        # a call is the whole reply: decided by how it starts
            head = text.lstrip()
            if not head or PYTHON_TAG.startswith(head):
                return ""
            if head[0] == "{" or head.startswith(PYTHON_TAG):
                self.in_call = True
                return ""
        else:
            marker = _MARKERS[self.fmt][0]
            at = text.find(marker, self.sent)
            if at >= 0:
                self.in_call, end = True, min(end, at)
            else:
                end = min(end, len(text) - _held_suffix(text, [marker]))
        if end <= self.sent or not text[:end].strip():      # whitespace alone is no content (yet)
            return ""
        out, self.sent = text[self.sent:end], end
        return out

    def finish(self, text: str) -> Tuple[str, List[ToolCall]]:
        text = self._cut(text)
        content, calls = parse_tool_calls(self.fmt, text, self.names)
        if not self.parallel:
            calls = calls[:1]
        rest = (content or "") if calls else text
        return rest[self.sent:], calls


@dataclass
class ToolRequest:
    """What a chat request with callable tools needs while its replies are generated."""
    fmt: str
    names: List[str]
    opening: str                    # the forced start of the reply ("" for tool_choice "auto")
    markers: Dict[int, str]
    stops: List[str]
    parallel: bool = True

    def reply(self, tokenizer, prompt_ids: Sequence[int]) -> "Reply":
        return Reply(Renderer(tokenizer, self.markers, prompt_ids),
                     ReplyStream(self.fmt, self.names, self.opening, self.stops, self.parallel))


class Reply:
    """One choice: feed(ids) -> content to send now; finish() -> (content not sent yet, calls)."""

    def __init__(self, renderer: Renderer, stream: ReplyStream):
        self.renderer, self.stream = renderer, stream

    def feed(self, ids: Sequence[int]) -> str:
        return self.stream.update(self.renderer.push(ids))

    def finish(self) -> Tuple[str, List[ToolCall]]:
        return self.stream.finish(self.renderer.final())
