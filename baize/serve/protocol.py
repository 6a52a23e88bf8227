"""The wire format of the OpenAI chat API as this server speaks it: the request models (pydantic,
strict: a string is not silently a number), the response and error bodies, and APIError.

Responses are built as plain dicts, not pydantic models: the OpenAI client reads fields such as
"logprobs": null that a model with exclude_none would drop, and a dict costs nothing per SSE chunk.
Only imported when serving: pydantic stays out of `baize --help`.
"""
from __future__ import annotations

import json
from typing import Annotated, Literal

from annotated_types import Ge, Le
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from ..llm.base import Completion

_STRICT = ConfigDict(strict=True, extra="ignore")
# a request keeps its unknown fields, so that those we would silently ignore but cannot honour
# (UNSUPPORTED) are refused by name; the rest (user, store, metadata, ...) are ignored, as most
# compatible servers do
_REQUEST = ConfigDict(strict=True, extra="allow")


def _unicode(text: str) -> str:
    # JSON may carry a lone UTF-16 surrogate ("\ud800"): Python decodes it, the tokenizer cannot
    # encode it (a 500 deep in the model); it is not text, so it is the client's error
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains a lone surrogate ({text[e.start]!r}), which is not valid Unicode text: "
                         f"send the text as UTF-8") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


def _integral(value):
    # JSON Schema's "integer" includes 5.0 (a number with no fraction), which strict pydantic refuses:
    # take it as 5, so a body the published schema allows is one the server takes; 5.5 and "5" stay refused
    return int(value) if isinstance(value, float) and value.is_integer() else value


def Int(ge: int | None = None, le: int | None = None):
    """An integer within [ge, le] that takes 5.0 as 5; the limits come before the validator, so the
    schema states them as JSON Schema's minimum and maximum."""
    limits = [x for x in (ge is not None and Ge(ge), le is not None and Le(le)) if x]
    return Annotated[(int, *limits, BeforeValidator(_integral))]


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: Text


Content = Text | list[TextPart]
NonEmpty = Annotated[Text, Field(min_length=1)]
# at most 4 non-empty stop strings (OpenAI's limit, checked again by n_and_stops)
Stop = NonEmpty | Annotated[list[NonEmpty], Field(max_length=4)]
# what the server refuses at run time stated in the schema too, so that a client (or a fuzzer) reading
# it learns the truth: only false (or nothing) is served
_ONLY_FALSE = {"enum": [False, None], "description": "not supported by this server: false or absent"}


class _Message(BaseModel):
    model_config = _STRICT

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class SystemMessage(_Message):
    role: Literal["system", "developer"]  # developer is OpenAI's newer name for system
    content: Content


class UserMessage(_Message):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: Content | None = None  # OpenAI's: an assistant turn may be empty


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


Seed = Int(-(2 ** 62), 2 ** 62)


class ChatRequest(BaseModel):
    model_config = _REQUEST
    model: Text  # a lone surrogate in the name is the client's 400, not an error writing the 404
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Int(1, 128) = 1
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: Int(1) | None = None
    max_completion_tokens: Int(1) | None = None
    stop: Stop | None = None
    seed: Seed | None = None
    logprobs: bool | None = Field(None, json_schema_extra=_ONLY_FALSE)


class CompletionRequest(BaseModel):
    """POST /v1/completions as lm-evaluation-harness's local-completions model sends it: a prompt
    (text, texts, token ids or lists of them), echo and logprobs to score the prompt itself."""
    model_config = _REQUEST
    model: Text
    prompt: (NonEmpty | Annotated[list[NonEmpty], Field(min_length=1)] | Annotated[list[Int(0)], Field(min_length=1)]
             | Annotated[list[Annotated[list[Int(0)], Field(min_length=1)]], Field(min_length=1)])
    # None: `baize serve --max-tokens`, as chat's (OpenAI's own default here is 16)
    max_tokens: Int(0) | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: Int(1, 128) = 1
    stop: Stop | None = None
    seed: Seed | None = None
    logprobs: Int(0, 5) | None = None
    echo: bool = False
    stream: bool = Field(False, json_schema_extra=_ONLY_FALSE)


def _off(value) -> bool:
    return value in (None, 0, "", [], {}, False)


# what a request may carry that this server cannot honour, with the values that ask for nothing
# (clients send some of them by default: LangChain sends zero penalties, SDKs an empty logit_bias)
UNSUPPORTED = {
    "tools": _off, "functions": _off, "tool_choice": lambda v: _off(v) or v == "none",
    "function_call": lambda v: _off(v) or v == "none", "response_format": lambda v: _off(v) or v == {"type": "text"},
    "logit_bias": _off, "top_logprobs": _off, "presence_penalty": _off, "frequency_penalty": _off,
    "audio": _off, "modalities": lambda v: _off(v) or v == ["text"], "prediction": _off,
    "suffix": _off, "best_of": lambda v: _off(v) or v == 1,
}


def n_and_stops(body: BaseModel, max_batch: int) -> list[str]:
    """n within what one batch can hold, and at most 4 non-empty stop strings (OpenAI's limit), for
    chat and completions alike; returns the stop strings as a list."""
    if body.n > max_batch:
        raise APIError(400, f"n={body.n} is over this server's limit of {max_batch}", param="n")
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop: at most 4 non-empty strings", param="stop")
    return stop


def refuse_unsupported(body: BaseModel) -> None:
    """A 400 naming the first parameter the request sets that this server would otherwise ignore."""
    for name, value in (body.model_extra or {}).items():
        harmless = UNSUPPORTED.get(name)
        if harmless is not None and not harmless(value):
            raise APIError(400, f"{name} is not supported by this server (baize serves plain text generation); "
                                f"send the request without {name}", param=name, code="unsupported_parameter")


class APIError(Exception):
    """An error answered as OpenAI's {"error": {...}} body with this HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message, type="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "baize"}


def finish_reason(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def usage(done: list[Completion]) -> dict:
    # every choice saw the same prompt: count it once, as OpenAI does
    pt = max((c.prompt_tokens for c in done), default=0)
    ct = sum(c.completion_tokens for c in done)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


def completion(cid: str, created: int, model: str, done: list[Completion]) -> dict:
    """The body of a non-streamed chat completion."""
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "logprobs": None, "finish_reason": finish_reason(c)} for i, c in enumerate(done)],
            "usage": usage(done)}


def sse(data: dict | str, *, ensure_ascii: bool = False) -> str:
    """One server-sent event."""
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=ensure_ascii)) + "\n\n"


def chunk(cid: str, created: int, model: str, choices: list[dict], **extra) -> str:
    """One chat.completion.chunk event."""
    return sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra})


def choice_delta(i: int, delta: dict, finish: str | None = None) -> dict:
    return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}


def text_completion(cid: str, created: int, model: str, choices: list[dict], prompt_tokens: int) -> dict:
    """The body of a /v1/completions answer (object "text_completion")."""
    ct = sum(c.pop("completion_tokens") for c in choices)
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ct, "total_tokens": prompt_tokens + ct}}
