"""Request and response bodies of the OpenAI-shaped API (pydantic models).

Field names, `object` values and defaults follow OpenAI's API; a few extensions that vLLM
and llama-server also accept (top_k, repetition_penalty, ignore_eos) are marked.  Unknown
fields are ignored, as OpenAI clients send some (user, service_tier ...).
"""
from __future__ import annotations

import time
import json
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..sampling import MAX_TOP_LOGPROBS, SamplingParams

MAX_N = 16          # completions per prompt one request may ask for


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)                                 # extension
    repetition_penalty: float = Field(1.0, gt=0)                # extension
    ignore_eos: bool = False                                    # extension: run to max_tokens
    seed: Optional[int] = None
    stop: Union[None, str, List[str]] = None
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stops)}")
        return v

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int, logprobs: Optional[int],
                        prompt_logprobs: Optional[int] = None) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                              presence_penalty=self.presence_penalty,
                              frequency_penalty=self.frequency_penalty, seed=self.seed,
                              stop_at_eos=not self.ignore_eos, stop=self.stop, n=self.n,
                              logprobs=logprobs, prompt_logprobs=prompt_logprobs).validate()


class CompletionRequest(_SamplingRequest):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def prompts(self) -> list:
        """The prompts: strings or token-id lists, at least one."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ValueError("prompt is empty")
        if isinstance(p[0], int):
            return [p]
        return list(p)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


# OpenAI's rule for function names
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCall(BaseModel):
    name: str
    arguments: str                      # a JSON object as text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")     # name ... reach the template

    role: str
    content: Union[str, List[TextPart], None] = None
    tool_calls: Optional[List[ToolCall]] = None  # an assistant's calls
    tool_call_id: Optional[str] = None           # a tool's answer: to which call

    @model_validator(mode="after")
    def _tool_fields(self):
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message of role 'tool' needs tool_call_id (the id of the call it answers)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls belong to assistant messages, not to role {self.role!r}")
        return self

    def as_template_message(self) -> dict:
        msg = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            msg["content"] = "".join(part.text for part in self.content)
        for call in msg.get("tool_calls", ()):
            # templates write the arguments with `| tojson`: they expect the object, not its
            # JSON text (as vLLM and llama-server hand it over)
            try:
                args = json.loads(call["function"]["arguments"])
            except json.JSONDecodeError:
                continue
            if isinstance(args, dict):
                call["function"]["arguments"] = args
        return msg


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=FUNCTION_NAME)
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None  # a JSON Schema object
    strict: Optional[bool] = None


class ToolDefinition(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingRequest):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Optional[List[ToolDefinition]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _tool_choice(self):
        names = [t.function.name for t in self.tools or ()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tools: function names must be unique, {dup[0]!r} is given more than once")
        choice = self.tool_choice
        if choice not in (None, "none") and not names:
            raise ValueError(f"tool_choice {self.tool_choice_name()!r} needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names the function {choice.function.name!r}, which is not "
                             f"among the tools ({', '.join(names)})")
        return self

    def tool_choice_name(self) -> str:
        c = self.tool_choice
        return c.function.name if isinstance(c, NamedToolChoice) else (c or ("auto" if self.tools else "none"))

    def tool_names(self) -> List[str]:
        """The functions the model may call: none unless tools are given and tool_choice is not "none"."""
        if not self.tools or self.tool_choice == "none":
            return []
        return [t.function.name for t in self.tools]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[List[ChatMessage]] = None
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    tokens: List[int]


# ----------------------------------------------------------------------------- responses

class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0              # prompt tokens read from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class CompletionLogprobs(BaseModel):
    tokens: List[str] = []
    token_logprobs: List[Optional[float]] = []
    top_logprobs: Optional[List[Optional[Dict[str, float]]]] = None     # None for an echoed first token
    text_offset: List[int] = []


class _Choice(BaseModel):
    index: int
    finish_reason: Optional[str] = None


class _Response(BaseModel):
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    usage: Optional[Usage] = None


class CompletionChoice(_Choice):
    text: str
    logprobs: Optional[CompletionLogprobs] = None


class CompletionResponse(_Response):
    object: str = "text_completion"
    choices: List[CompletionChoice]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: List[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: List[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: List[ChatTokenLogprob] = []


class ChatResponseMessage(BaseModel):
    role: str = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[List[ToolCall]] = None


class ChatChoice(_Choice):
    message: ChatResponseMessage
    logprobs: Optional[ChatLogprobs] = None


class ChatCompletionResponse(_Response):
    object: str = "chat.completion"
    choices: List[ChatChoice]


class ToolCallDelta(BaseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: FunctionCall


class ChatDelta(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None
    tool_calls: Optional[List[ToolCallDelta]] = None


class ChatChunkChoice(_Choice):
    delta: ChatDelta
    logprobs: Optional[ChatLogprobs] = None


class ChatCompletionChunk(_Response):
    object: str = "chat.completion.chunk"
    choices: List[ChatChunkChoice]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "xllm"
    max_model_len: int


class ModelList(BaseModel):
    object: str = "list"
    data: List[ModelCard]
