"""The wire format of the OpenAI chat API as this server speaks it: the request models (pydantic,
strict: a string is not silently a number), the response and error bodies, and APIError.

Responses are built as plain dicts, not pydantic models: the OpenAI client reads fields such as
"logprobs": null that a model with exclude_none would drop, and a dict costs nothing per SSE chunk.
Only imported when serving: pydantic stays out of `baize --help`.
"""
from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..llm import Completion

# unknown fields (user, presence_penalty, ...) are ignored, as most compatible servers do
_STRICT = ConfigDict(strict=True, extra="ignore")


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = _STRICT
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2 ** 62), le=2 ** 62)
    logprobs: bool | None = None


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
