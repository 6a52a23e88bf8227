"""The one interface every stage talks to models through, and its backends.

    llm = models.load_llm("openai:gpt-4o-mini" | "default" | "hf:PATH[+ADAPTER]" | RUN_DIR | "gguf:PATH")
    llm.chat(messages, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None)
        -> list[Completion]
    for piece in llm.stream(messages, ...): ...

This module holds the interface, its value types and the backends that need no torch (HTTP,
llama.cpp); the local transformers backend (HFLLM) and `load_llm` live in models.py, above the
engine, so the engine can use these value types without an import circle.

Concurrency comes from the caller's threads: the HTTP backend is thread-safe, the local backends
batch concurrent calls together. Retries (429, 5xx, timeouts, Retry-After) live in the HTTP
backend alone. What a backend can do beyond chat/stream is declared on its class (the `can_*`
flags of `LLM`), never probed with hasattr.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator

from .config import BaizeError

__all__ = ["LLM", "Completion", "GenParams", "LLMError", "TransientLLMError", "OpenAILLM", "LlamaCppLLM"]


@dataclass
class GenParams:
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # stop | length | cancelled


class LLMError(BaizeError):
    """Not worth retrying: bad key, unknown model, bad request."""


class TransientLLMError(LLMError):
    """Retries ran out (rate limits, server errors, timeouts, malformed replies): the item failed."""


class LLM:
    """The interface, with what a backend can do declared as flags (as simonw/llm declares
    `can_stream`), so a stage asks the flag instead of probing attributes:

    - `can_score_options`: `option_logprobs(messages, prefix, options)` gives log P(option) (a
      judge can choose its verdict among fixed options instead of writing it);
    - `can_count_tokens`: `prompt_ids(messages)` gives the exact prompt tokens (history trimming);
    - `is_local`: a transformers model in this process: `.model`, `.tokenizer`, `.format`,
      `.system`, `.engine` (NLL, scoring on the engine thread) and `submit()` (the server's
      streaming requests).
    """
    name: str = ""
    context_length: int | None = None  # prompt + answer tokens the model takes, where known
    can_stream: bool = True
    can_score_options: bool = False
    can_count_tokens: bool = False
    is_local: bool = False

    def check(self) -> None:
        """Fail fast, in one line, when the model cannot be reached; nothing to check by default."""

    def close(self) -> None:
        """Free what the backend holds (threads, memory); nothing by default."""

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, top_p: float = 0.95,
             max_tokens: int = 512, stop: list[str] | None = None, seed: int | None = None) -> list[Completion]:
        raise NotImplementedError

    def stream(self, messages: list[dict], **kw) -> Iterator[str]:
        raise NotImplementedError


class OpenAILLM(LLM):
    """Any OpenAI-compatible endpoint through the official client (OpenAI, vLLM, llama.cpp, Ollama)."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_retries: int = 6, timeout: float = 120.0, malformed_retries: int = 3):
        import openai
        self.name = model
        self.model = model
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not base_url:
                raise LLMError(f"openai:{model}: no API key: set OPENAI_API_KEY, or --base-url for a local server")
            api_key = "EMPTY"  # local servers (vLLM, llama.cpp, Ollama) accept any key
        self.base_url = base_url or "https://api.openai.com/v1"
        # the client's own retry loop: exponential backoff with jitter on 408/409/429/5xx and
        # connection errors/timeouts, honouring Retry-After
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout)
        self.malformed_retries = malformed_retries

    def check(self) -> None:
        """Fail fast, in one line, when the endpoint is unreachable or the key is refused."""
        import openai
        where = f"openai:{self.model} at {self.base_url}"
        try:
            self.client.with_options(max_retries=1, timeout=15).models.list()
        except openai.AuthenticationError:
            raise LLMError(f"{where}: 401, the API key was refused: set OPENAI_API_KEY or --api-key") from None
        except openai.APIConnectionError:
            raise LLMError(f"{where}: cannot connect: is the server running? (set --base-url or OPENAI_BASE_URL)") from None
        except openai.APIError:
            pass  # some servers have no /models; the first real call will tell

    def _call(self, **kw):
        import openai
        where = f"openai:{self.model} at {self.base_url}"
        for attempt in range(self.malformed_retries + 1):
            try:
                resp = self.client.chat.completions.create(model=self.model, **kw)
                if kw.get("stream"):
                    return resp
                if not resp.choices or resp.choices[0].message is None:
                    raise ValueError("reply has no choices")
                return resp
            except openai.AuthenticationError:
                raise LLMError(f"{where}: 401, the API key was refused: set OPENAI_API_KEY or --api-key") from None
            except openai.PermissionDeniedError as e:
                raise LLMError(f"{where}: 403, not allowed: {e.message}") from None
            except openai.NotFoundError:
                raise LLMError(f"{where}: 404, unknown model or wrong base URL: check the model name and "
                               f"--base-url (it usually ends in /v1)") from None
            except openai.BadRequestError as e:
                raise LLMError(f"{where}: 400, request refused: {e.message}") from None
            except openai.APITimeoutError:
                raise TransientLLMError(f"{where}: timed out after retries") from None
            except openai.APIConnectionError:
                raise TransientLLMError(f"{where}: cannot connect: is the server running? "
                                        f"(set --base-url or OPENAI_BASE_URL)") from None
            except openai.APIStatusError as e:
                raise TransientLLMError(f"{where}: HTTP {e.status_code} after retries") from None
            except (ValueError, TypeError, AttributeError, KeyError, openai.APIResponseValidationError) as e:
                # a 200 with a body that is not a chat completion: retry a few times, then fail the item
                if attempt == self.malformed_retries:
                    raise TransientLLMError(f"{where}: malformed reply ({type(e).__name__}) after retries") from None

    @staticmethod
    def _request(messages, temperature, top_p, max_tokens, stop, seed, **extra) -> dict:
        kw = dict(messages=messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens, **extra)
        if stop:
            kw["stop"] = stop[:4]  # OpenAI allows at most four
        if seed is not None:
            kw["seed"] = seed
        return kw

    def chat(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        resp = self._call(**self._request(messages, temperature, top_p, max_tokens, stop, seed, n=n))
        usage = resp.usage
        pt = usage.prompt_tokens if usage else 0
        ct = usage.completion_tokens if usage else 0
        out = []
        for i, c in enumerate(resp.choices):
            # the request's usage is split over its choices so that summing completions counts it once
            out.append(Completion(c.message.content or "", pt if i == 0 else 0,
                                  ct if i == 0 else 0, c.finish_reason or "stop"))
        return out

    def stream(self, messages, *, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        resp = self._call(**self._request(messages, temperature, top_p, max_tokens, stop, seed, stream=True))
        try:
            for chunk in resp:
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            resp.close()


def gguf_prompting(meta: dict) -> tuple[list[str], str | None]:
    """(stop strings, system prompt) that `baize export` recorded in a GGUF's metadata, else ([], None).
    Values come as the gguf package reads them, or as llama.cpp renders them to strings."""
    stop = meta.get("baize.stop")
    if isinstance(stop, str):  # llama.cpp's rendering of a string array: ["a", "b"]
        try:
            stop = json.loads(stop, strict=False)
        except ValueError:
            stop = None
    stop = [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []
    system = meta.get("baize.system")
    return stop, system if isinstance(system, str) and system else None


def gguf_string_arrays(path: str, keys) -> dict:
    """String-array metadata values of a GGUF file, by the gguf package (a few seconds on a large
    vocabulary, so only for the keys llama.cpp does not hand over); {} when unreadable."""
    try:
        from gguf import GGUFReader
        reader = GGUFReader(path)
        fields = {k: reader.get_field(k) for k in keys}
        return {k: [bytes(f.parts[i]).decode("utf-8") for i in f.data] for k, f in fields.items() if f is not None}
    except Exception:  # no gguf package, an odd file: the defaults are a convenience, not a requirement
        return {}


class LlamaCppLLM(LLM):
    """A GGUF file through llama.cpp (pip install 'baize[llamacpp]'); one request at a time."""

    def __init__(self, path: str, *, n_ctx: int = 4096):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise LLMError("gguf: specs need llama.cpp: pip install llama-cpp-python") from None
        if not os.path.isfile(path):
            raise LLMError(f"gguf:{path}: no such file: give the path of a .gguf model file (or gguf:default)")
        self.name = f"gguf:{path}"
        self.llama = Llama(model_path=path, n_ctx=n_ctx, verbose=False)
        meta = getattr(self.llama, "metadata", None)
        meta = dict(meta) if isinstance(meta, dict) else {}
        if "baize.format" in meta and "baize.stop" not in meta:
            meta.update(gguf_string_arrays(path, ("baize.stop",)))  # llama.cpp drops array values
        self.stop, self.system = gguf_prompting(meta)
        self._lock = threading.Lock()  # a llama.cpp context is not thread-safe

    def _args(self, messages, stop):
        """The file's system prompt when the dialogue has none; its stop strings besides the caller's."""
        if self.system and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": self.system}] + list(messages)
        return messages, list(dict.fromkeys(list(stop or []) + self.stop)) or None

    def chat(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        messages, stop = self._args(messages, stop)
        out = []
        for i in range(n):
            with self._lock:
                self.llama.reset()  # no reuse of the last prompt's cache: the same request gives the same text
                r = self.llama.create_chat_completion(messages=messages, temperature=temperature, top_p=top_p,
                                                      max_tokens=max_tokens, stop=stop,
                                                      seed=None if seed is None else seed + i)
            u = r.get("usage", {})
            out.append(Completion(r["choices"][0]["message"]["content"] or "", u.get("prompt_tokens", 0),
                                  u.get("completion_tokens", 0), r["choices"][0].get("finish_reason") or "stop"))
        return out

    def stream(self, messages, *, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        messages, stop = self._args(messages, stop)
        with self._lock:
            self.llama.reset()
            for chunk in self.llama.create_chat_completion(messages=messages, temperature=temperature, top_p=top_p,
                                                           max_tokens=max_tokens, stop=stop, seed=seed,
                                                           stream=True):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
