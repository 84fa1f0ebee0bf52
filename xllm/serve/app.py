"""The front end of xllm-serve: FastAPI routes shaped as OpenAI's API, SSE streaming,
tokenization and chat templates, metrics.  The model runs in the engine process
(engine_process.EngineClient); this process never steps it.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Dict, List, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..sampling import SamplingParams, TokenLogprob
from ..tokenizer import Tokenizer
from . import protocol as P
from . import tools as T
from .engine_process import EngineClient, EngineDead, EngineRequestError
from .metrics import CONTENT_TYPE_LATEST, Metrics

OPEN_PATHS = ("/health", "/metrics")        # answered without the API key
ENDPOINTS = OPEN_PATHS + ("/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")
DEFAULT_COMPLETION_MAX_TOKENS = 16          # OpenAI's default for /v1/completions


class APIError(Exception):
    """An OpenAI-style error answer."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return P.ErrorResponse(error=P.ErrorInfo(message=self.message, type=self.type, param=self.param,
                                                 code=self.code)).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


@dataclass
class ServerState:
    client: EngineClient
    tokenizer: Tokenizer
    model_name: str
    template: object = None                 # xllm.chat.ChatTemplate, None: no chat
    end_of_turn: List[int] = field(default_factory=list)
    api_key: Optional[str] = None
    max_waiting: Optional[int] = None
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=lambda: int(time.time()))
    tool_format: Optional[str] = None       # the template's tool-call format (tools.FORMATS); create_app
    tool_markers: Dict[int, str] = field(default_factory=dict)

    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model {model!r} does not exist; this server serves "
                                f"{self.model_name!r}", param="model", code="model_not_found")

    def check_engine(self) -> None:
        if self.client.dead is not None:
            raise APIError(503, f"the engine is not running: {self.client.dead}", "server_error",
                           code="engine_dead")

    def admit(self, n_sequences: int) -> None:
        if self.max_waiting is None:
            return
        if n_sequences > self.max_waiting:
            raise APIError(400, f"the request asks for {n_sequences} sequences, more than --max-waiting "
                                f"{self.max_waiting} may wait", param="n")
        waiting = self.client.waiting
        if waiting + n_sequences > self.max_waiting:
            raise APIError(503, f"{waiting} sequences are waiting, the limit is --max-waiting "
                                f"{self.max_waiting}; retry later", "server_overloaded",
                           code="too_many_waiting", headers={"Retry-After": "1"})

    def check_fits(self, n_prompt: int, params: SamplingParams, param: str) -> None:
        try:
            self.client.limits.check(n_prompt, params)
        except ValueError as exc:
            raise APIError(400, str(exc), param=param, code="context_length_exceeded") from None

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.token_text(token_id)

    def encode_prompt(self, text: str) -> List[int]:
        """A completion prompt's ids: BOS as the vocabulary says; an empty text is BOS alone."""
        ids = self.tokenizer.encode(text)
        if not ids:
            if self.tokenizer.bos_id is None:
                raise APIError(400, "the prompt is empty and the model has no BOS token to start from",
                               param="prompt")
            ids = [self.tokenizer.bos_id]
        return ids


class FrontDoor:
    """ASGI middleware: the API key, and HTTP requests counted by endpoint and status.
    (A pure ASGI layer, so streamed responses and client disconnects pass straight through.)"""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"      # bounded label values
        counter = self.state.metrics.http_requests
        key = self.state.api_key
        if key is not None and path not in OPEN_PATHS:
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if auth != f"Bearer {key}":
                err = APIError(401, "missing API key (Authorization: Bearer ...)" if not auth else
                               "incorrect API key provided", code="invalid_api_key")
                counter.labels(endpoint, "401").inc()
                return await err.response()(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                counter.labels(endpoint, str(message["status"])).inc()
            await send(message)
        await self.app(scope, receive, counting_send)


# ----------------------------------------------------------------------------- running requests

def _openai_reason(reason: Optional[str]) -> Optional[str]:
    return None if reason is None else ("length" if reason == "length" else "stop")


async def _outputs(st: ServerState, t0: float, subs: List[tuple]) -> AsyncIterator[tuple]:
    """(prompt index, StepOutput) of every step, recording metrics on the way."""
    index_of = {rid: i for i, (rid, *_) in enumerate(subs)}
    m = st.metrics
    m.prompt_tokens.inc(sum(len(ids) for _, ids, _, _ in subs))
    open_seqs = sum(params.n for *_, params, _ in subs)
    last: Dict[tuple, float] = {}
    seen = set()
    try:
        async with aclosing(st.client.generate(subs)) as outs:
            async for out in outs:
                now = time.monotonic()
                key = (out.request_id, out.index)
                if key not in seen:
                    seen.add(key)
                    m.cached_tokens.inc(_cached_of(out))
                if out.token_ids:
                    if key in last:
                        m.tpot.observe((now - last[key]) / len(out.token_ids))
                    else:
                        m.ttft.observe(now - t0)
                    last[key] = now
                    m.generation_tokens.inc(len(out.token_ids))
                if out.finish_reason is not None:
                    m.finished.labels(_openai_reason(out.finish_reason)).inc()
                    open_seqs -= 1
                yield index_of[out.request_id], out
    except EngineDead:
        m.finished.labels("error").inc(open_seqs)
        open_seqs = 0
        raise
    finally:
        if open_seqs:
            m.finished.labels("abort").inc(open_seqs)


async def _collect(st: ServerState, request: Request, t0: float, subs: List[tuple]) -> Dict[tuple, dict]:
    """Run to the end (non-streaming); a client that leaves meanwhile aborts its request."""
    results: Dict[tuple, dict] = {}

    async def run():
        async with aclosing(_outputs(st, t0, subs)) as outs:
            async for i, out in outs:
                r = results.setdefault((i, out.index), {"text": [], "logprobs": [], "n": 0, "finish": None,
                                                        "prompt_logprobs": out.prompt_logprobs,
                                                        "cached": _cached_of(out), "ids": []})
                r["text"].append(out.text)
                r["ids"] += out.token_ids
                r["logprobs"] += out.logprobs or []
                r["n"] = out.num_generated
                r["finish"] = out.finish_reason
    task = asyncio.ensure_future(run())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                task.cancel()
        task.result()
        return results
    finally:
        if not task.done():
            task.cancel()


def _engine_failed(exc: Exception) -> APIError:
    if isinstance(exc, EngineRequestError):
        return APIError(400, str(exc))
    return APIError(500, f"the engine failed while generating: {exc}", "server_error", code="engine_dead")


def _sse(model) -> str:
    return f"data: {model.model_dump_json()}\n\n"


def _sse_error(err: APIError) -> str:
    import json
    return f"data: {json.dumps(err.body())}\n\n"


def _usage(n_prompt: int, n_generated: int, n_cached: int = 0) -> P.Usage:
    return P.Usage(prompt_tokens=n_prompt, completion_tokens=n_generated, total_tokens=n_prompt + n_generated,
                   prompt_tokens_details=P.PromptTokensDetails(cached_tokens=n_cached))


def _cached_of(out) -> int:
    """A prompt's cached tokens: those of its first completion (the others share its blocks)."""
    return out.num_cached_tokens if out.index == 0 else 0


def _completion_logprobs(st: ServerState, lps: List[TokenLogprob], offset: int,
                         echo_ids: Optional[List[int]] = None) -> P.CompletionLogprobs:
    """OpenAI's legacy logprobs; with `echo_ids` (an echoed prompt, its prompt logprobs
    first in `lps`) the prompt's tokens come first: a leading BOS is not listed (it is no
    text), a first token without one before it has no logprob."""
    out = P.CompletionLogprobs(top_logprobs=[])
    if echo_ids and echo_ids[0] != st.tokenizer.bos_id:
        text = st.token_text(echo_ids[0])
        out.tokens.append(text)
        out.token_logprobs.append(None)
        out.top_logprobs.append(None)
        out.text_offset.append(offset)
        offset += len(text)
    for lp in lps:
        text = st.token_text(lp.token_id)
        out.tokens.append(text)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({st.token_text(i): v for i, v in lp.top})
        out.text_offset.append(offset)
        offset += len(text)
    return out


def _chat_logprobs(st: ServerState, lps: List[TokenLogprob]) -> P.ChatLogprobs:
    def entry(i, v, cls=P.TopLogprob, **kw):
        text = st.token_text(i)
        return cls(token=text, logprob=v, bytes=list(text.encode("utf-8")), **kw)
    return P.ChatLogprobs(content=[entry(lp.token_id, lp.logprob, P.ChatTokenLogprob,
                                         top_logprobs=[entry(i, v) for i, v in lp.top]) for lp in lps])


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# ----------------------------------------------------------------------------- the app

def create_app(st: ServerState) -> FastAPI:
    if st.template is not None:
        st.tool_format = T.detect_format(st.template.source)
        if st.tool_format is not None:
            st.tool_markers = T.marker_tokens(st.tool_format, st.tokenizer)

    @asynccontextmanager
    async def lifespan(app):
        st.client.attach(asyncio.get_running_loop())
        yield

    app = FastAPI(title="xllm-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = st
    app.add_middleware(FrontDoor, state=st)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            msg, param = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
        else:
            param = ".".join(loc) or None
            msg = f"{param}: {first['msg']}" if param else first["msg"]
        return APIError(400, msg, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500
                        else "server_error").response()

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    @app.get("/health")
    async def health():
        if st.client.dead is not None:
            return JSONResponse({"status": "error", "message": st.client.dead}, status_code=503)
        return {"status": "ok", "engine_pid": st.client.pid}

    @app.get("/metrics")
    async def metrics():
        return Response(st.metrics.render(st.client), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        card = P.ModelCard(id=st.model_name, created=st.created, max_model_len=st.client.limits.max_seq_len)
        return P.ModelList(data=[card]).model_dump()

    @app.post("/tokenize")
    async def tokenize(body: P.TokenizeRequest):
        st.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt and messages", param="prompt")
        if body.prompt is not None:
            ids = st.tokenizer.encode(body.prompt, bos=None if body.add_special_tokens else False)
        else:
            ids = _chat_ids(st, body.messages)
        return {"tokens": ids, "count": len(ids), "max_model_len": st.client.limits.max_seq_len}

    @app.post("/detokenize")
    async def detokenize(body: P.DetokenizeRequest):
        st.check_model(body.model)
        try:
            st.client.limits.check_ids(body.tokens)
        except ValueError as exc:
            raise APIError(400, str(exc), param="tokens") from None
        return {"prompt": st.tokenizer.decode(body.tokens)}

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request):
        t0 = time.monotonic()
        st.check_model(body.model)
        st.check_engine()
        try:
            prompts = body.prompts()
        except ValueError as exc:
            raise APIError(400, str(exc), param="prompt") from None
        encoded = []
        for p in prompts:
            if isinstance(p, str):
                encoded.append((st.encode_prompt(p), p))
            else:
                try:
                    st.client.limits.check_ids(p)
                except ValueError as exc:
                    raise APIError(400, str(exc), param="prompt") from None
                encoded.append((list(p), st.tokenizer.decode(p)))
        max_tokens = DEFAULT_COMPLETION_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        params = _params(body, max_tokens, body.logprobs, body.logprobs if body.echo else None)
        for ids, _ in encoded:
            st.check_fits(len(ids), params, "max_tokens")
        st.admit(params.n * len(encoded))
        rid = _new_id("cmpl")
        subs = [(f"{rid}-{i}", ids, params, text) for i, (ids, text) in enumerate(encoded)]
        n_prompt = sum(len(ids) for ids, _ in encoded)
        if body.stream:
            return _event_stream(_stream_completion(st, body, rid, t0, subs, n_prompt))
        try:
            results = await _collect(st, request, t0, subs)
        except (EngineDead, EngineRequestError) as exc:
            raise _engine_failed(exc) from None
        choices = []
        for (i, j), r in sorted(results.items()):
            text = "".join(r["text"])
            if body.echo:
                text = encoded[i][1] + text
            lp = None
            if body.logprobs is not None and body.echo:
                lp = _completion_logprobs(st, (r["prompt_logprobs"] or []) + r["logprobs"], 0, encoded[i][0])
            elif body.logprobs is not None:
                lp = _completion_logprobs(st, r["logprobs"], 0)
            choices.append(P.CompletionChoice(index=i * params.n + j, text=text, logprobs=lp,
                                              finish_reason=_openai_reason(r["finish"])))
        usage = _usage(n_prompt, sum(r["n"] for r in results.values()),
                       sum(r["cached"] for r in results.values()))
        return P.CompletionResponse(id=rid, model=st.model_name, choices=choices, usage=usage).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatCompletionRequest, request: Request):
        t0 = time.monotonic()
        st.check_model(body.model)
        st.check_engine()
        tool_req = _tool_request(st, body)
        ids = _chat_ids(st, body.messages, [t.model_dump(exclude_none=True) for t in body.tools]
                        if tool_req else None, tool_req.opening if tool_req else "")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is None:                       # as much as the context leaves
            max_tokens = max(1, st.client.limits.max_seq_len - len(ids) + 1)
        params = _params(body, max_tokens, (body.top_logprobs or 0) if body.logprobs else None)
        params = replace(params, stop_token_ids=list(st.end_of_turn))
        st.check_fits(len(ids), params, "max_completion_tokens" if body.max_completion_tokens is not None
                      else "max_tokens" if body.max_tokens is not None else "messages")
        st.admit(params.n)
        rid = _new_id("chatcmpl")
        subs = [(rid, ids, params, None)]
        if body.stream:
            return _event_stream(_stream_chat(st, body, rid, t0, subs, len(ids), tool_req))
        try:
            results = await _collect(st, request, t0, subs)
        except (EngineDead, EngineRequestError) as exc:
            raise _engine_failed(exc) from None
        choices = []
        for (_, j), r in sorted(results.items()):
            message, reason = P.ChatResponseMessage(content="".join(r["text"])), _openai_reason(r["finish"])
            if tool_req is not None:
                reply = tool_req.reply(st.tokenizer, ids)
                reply.feed(r["ids"])
                content, calls = reply.finish()
                message = P.ChatResponseMessage(content=content or None, tool_calls=_tool_calls(calls))
                reason = "tool_calls" if calls else reason
            choices.append(P.ChatChoice(index=j, message=message, finish_reason=reason,
                                        logprobs=_chat_logprobs(st, r["logprobs"]) if body.logprobs else None))
        usage = _usage(len(ids), sum(r["n"] for r in results.values()),
                       sum(r["cached"] for r in results.values()))
        return P.ChatCompletionResponse(id=rid, model=st.model_name, choices=choices, usage=usage).model_dump()

    return app


def _params(body, max_tokens: int, logprobs: Optional[int], prompt_logprobs: Optional[int] = None) -> SamplingParams:
    try:
        return body.sampling_params(max_tokens, logprobs, prompt_logprobs)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


def _chat_ids(st: ServerState, messages, tools: Optional[list] = None, opening: str = "") -> List[int]:
    """The prompt of a conversation (with the tools the model may call, and the forced
    start of its reply)."""
    from ..chat import encode_rendered
    if st.template is None:
        raise APIError(400, f"the model {st.model_name!r} has no chat template; start xllm-serve with "
                            f"--chat-template FILE", param="messages", code="no_chat_template")
    try:
        text = st.template.render([m.as_template_message() for m in messages], add_generation_prompt=True,
                                  **({"tools": tools} if tools else {}))
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from None
    return encode_rendered(st.tokenizer, text + opening)


def _tool_request(st: ServerState, body: P.ChatCompletionRequest) -> Optional[T.ToolRequest]:
    """None without callable tools (none given, or tool_choice "none": the template gets no
    tools); a 400 when the model's template has no tool-call format xllm parses."""
    names = body.tool_names()
    if not names:
        return None
    if st.template is not None and st.tool_format is None:
        raise APIError(400, f"the chat template of {st.model_name!r} ({st.template.origin}) has no tool-call "
                            f"format xllm parses (supported: {', '.join(T.FORMATS)}); pass tool_choice "
                            f"'none' or start xllm-serve with --chat-template FILE", param="tools",
                       code="tools_not_supported")
    if st.template is None:
        return None                         # _chat_ids answers no_chat_template
    choice = body.tool_choice
    forced = (choice.function.name if isinstance(choice, P.NamedToolChoice) else None)
    opening = T.forced_opening(st.tool_format, forced) if choice == "required" or forced else ""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return T.ToolRequest(st.tool_format, names, opening, st.tool_markers, stops, body.parallel_tool_calls)


def _tool_calls(calls) -> Optional[List[P.ToolCall]]:
    return [P.ToolCall(id=c.id, function=P.FunctionCall(name=c.name, arguments=c.arguments))
            for c in calls] or None


class EventStream(StreamingResponse):
    """SSE over starlette's StreamingResponse; the event generator is closed however the
    response ends (a client gone while a chunk was being sent included), so its request
    is aborted at once rather than when the generator is garbage-collected."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _event_stream(gen) -> StreamingResponse:
    return EventStream(gen, media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream_completion(st: ServerState, body: P.CompletionRequest, rid: str, t0: float,
                             subs: List[tuple], n_prompt: int):
    created = int(time.time())
    n = subs[0][2].n
    echoed, offsets, generated, cached = set(), {}, {}, {}
    try:
        async with aclosing(_outputs(st, t0, subs)) as outs:
            async for i, out in outs:
                index = i * n + out.index
                cached[index] = _cached_of(out)
                text, lps, echo_ids = out.text, out.logprobs or [], None
                if body.echo and index not in echoed:
                    text = subs[i][3] + text
                    lps, echo_ids = (out.prompt_logprobs or []) + lps, subs[i][1]
                    echoed.add(index)
                generated[index] = out.num_generated
                lp = None
                if body.logprobs is not None:
                    lp = _completion_logprobs(st, lps, offsets.get(index, 0), echo_ids)
                    offsets[index] = offsets.get(index, 0) + len(text)
                if not text and out.finish_reason is None and lp is None:
                    continue                        # text held back (a possible stop string)
                choice = P.CompletionChoice(index=index, text=text, logprobs=lp,
                                            finish_reason=_openai_reason(out.finish_reason))
                yield _sse(P.CompletionResponse(id=rid, created=created, model=st.model_name, choices=[choice]))
    except (EngineDead, EngineRequestError) as exc:
        yield _sse_error(_engine_failed(exc))
        return
    if body.include_usage():
        yield _sse(P.CompletionResponse(id=rid, created=created, model=st.model_name, choices=[],
                                        usage=_usage(n_prompt, sum(generated.values()), sum(cached.values()))))
    yield "data: [DONE]\n\n"


async def _stream_chat(st: ServerState, body: P.ChatCompletionRequest, rid: str, t0: float,
                       subs: List[tuple], n_prompt: int, tool_req: Optional[T.ToolRequest] = None):
    created = int(time.time())

    def chunk(choices, usage=None):
        return _sse(P.ChatCompletionChunk(id=rid, created=created, model=st.model_name, choices=choices,
                                          usage=usage))
    n = subs[0][2].n
    for j in range(n):
        yield chunk([P.ChatChunkChoice(index=j, delta=P.ChatDelta(role="assistant", content=""))])
    generated, cached = {}, {}
    replies = {j: tool_req.reply(st.tokenizer, subs[0][1]) for j in range(n)} if tool_req else {}
    try:
        async with aclosing(_outputs(st, t0, subs)) as outs:
            async for _, out in outs:
                generated[out.index] = out.num_generated
                cached[out.index] = _cached_of(out)
                lp = _chat_logprobs(st, out.logprobs or []) if body.logprobs else None
                text, reason, calls = out.text, _openai_reason(out.finish_reason), None
                if tool_req is not None:
                    text = replies[out.index].feed(out.token_ids)
                    if out.finish_reason is not None:
                        rest, found = replies[out.index].finish()
                        text += rest
                        if found:
                            reason = "tool_calls"
                            calls = [P.ToolCallDelta(index=k, id=c.id, type="function", function=P.FunctionCall(
                                name=c.name, arguments=c.arguments)) for k, c in enumerate(found)]
                if not text and out.finish_reason is None and lp is None:
                    continue
                if calls:                   # content first, then the calls, then the reason
                    if text or lp is not None:
                        yield chunk([P.ChatChunkChoice(index=out.index, delta=P.ChatDelta(content=text or None),
                                                       logprobs=lp)])
                    yield chunk([P.ChatChunkChoice(index=out.index, delta=P.ChatDelta(tool_calls=calls))])
                    text, lp = "", None
                yield chunk([P.ChatChunkChoice(index=out.index, delta=P.ChatDelta(content=text or None),
                                               logprobs=lp, finish_reason=reason)])
    except (EngineDead, EngineRequestError) as exc:
        yield _sse_error(_engine_failed(exc))
        return
    if body.include_usage():
        yield chunk([], _usage(n_prompt, sum(generated.values()), sum(cached.values())))
    yield "data: [DONE]\n\n"
