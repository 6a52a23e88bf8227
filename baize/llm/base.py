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
backend alone, and so does adapting to what an endpoint accepts (endpoints.py: learned once per
endpoint and model, logged once); 429s are counted per endpoint in `rate_limits` for the
runner's throttle. What a backend can do beyond chat/stream is declared on its class (the
`can_*` flags of `LLM`, `honours_n`), never probed with hasattr.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from ..config import BaizeError
from .endpoints import ADAPTABLE, estimate_tokens, quirks_for, refusal, retry_after

__all__ = ["LLM", "Completion", "GenParams", "LLMError", "TransientLLMError", "EmptyReplyError", "OpenAILLM",
           "LlamaCppLLM", "rate_limits"]


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
    reasoning_tokens: int = 0  # hidden thinking, already inside completion_tokens (as OpenAI bills it)
    estimated: bool = False  # the server sent no usage: the token counts are local estimates

    def usage(self) -> dict:
        """This completion's share of a ledger: reasoning and estimated tokens only where there are any."""
        u = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "calls": 1}
        if self.reasoning_tokens:
            u["reasoning_tokens"] = self.reasoning_tokens
        if self.estimated:
            u["estimated_tokens"] = self.prompt_tokens + self.completion_tokens
        return u


class LLMError(BaizeError):
    """Not worth retrying: bad key, unknown model, bad request."""


class TransientLLMError(LLMError):
    """Retries ran out (rate limits, server errors, timeouts, malformed replies): the item failed."""


class EmptyReplyError(TransientLLMError):
    """The reply hit its token cap before any text (a reasoning model that spent it all thinking).
    A failure, not a rejection: the item is retried on the next run, which a higher --max-tokens
    fixes; `usage` says what the call cost."""

    def __init__(self, message: str, usage: dict | None = None, choices: int | None = None):
        super().__init__(message)
        self.usage = usage or {}
        # how many replies came back cut: one from a server that ignores n, whatever n was asked
        self.choices = choices


class LLM:
    """The interface, with what a backend can do declared as flags (as simonw/llm declares
    `can_stream`), so a stage asks the flag instead of probing attributes:

    - `can_score_options`: `option_logprobs(messages, prefix, options)` gives log P(option) (a
      judge can choose its verdict among fixed options instead of writing it);
    - `can_count_tokens`: `prompt_ids(messages)` gives the exact prompt tokens (history trimming);
    - `honours_n`: one call with n > 1 gives n choices (None: not known yet; an HTTP endpoint
      learns it from its first such reply, and SDF tops up with single calls where it is False);
    - `is_local`: a transformers model in this process: `.model`, `.tokenizer`, `.format`,
      `.system`, `.engine` (NLL, scoring on the engine thread) and `submit()` (the server's
      streaming requests);
    - `keeps_replies`: answers from a store of its own that a rerun reads too (--batch-api's
      BatchLLM): a judge's cache would only lose the cost of a reply asked again.

    `weights` names what the same spec runs in when that is not its checkpoint's own float32 (a
    local model loaded in bfloat16): its replies may differ, so a judge's cache keeps them apart.
    """
    name: str = ""
    where: str = ""  # the endpoint its calls go to ("" in process): 429s are counted per endpoint
    context_length: int | None = None  # prompt + answer tokens the model takes, where known
    can_stream: bool = True
    can_score_options: bool = False
    can_count_tokens: bool = False
    honours_n: bool | None = None
    is_local: bool = False
    keeps_replies: bool = False
    weights: str | None = None

    def check(self) -> None:
        """Fail fast, in one line, when the model cannot be reached; nothing to check by default."""

    def close(self) -> None:
        """Free what the backend holds (threads, memory); nothing by default."""

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, top_p: float = 0.95,
             max_tokens: int = 512, stop: list[str] | None = None, seed: int | None = None) -> list[Completion]:
        raise NotImplementedError

    def stream(self, messages: list[dict], **kw) -> Iterator[str]:
        raise NotImplementedError


class RateLimits:
    """How many 429s the HTTP backends met in this process, per endpoint (an LLM's `where`): the
    runner (runner.py) narrows the number of items in flight when its own role's endpoint sends
    them in a streak, so a judge's 429s do not narrow the policy's width."""

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def hit(self, where: str = "") -> None:
        with self._lock:
            self._counts[where] = self._counts.get(where, 0) + 1

    def of(self, *wheres: str) -> int:
        """The 429s met by these endpoints so far."""
        with self._lock:
            return sum(self._counts.get(w, 0) for w in set(wheres))

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts.values())


rate_limits = RateLimits()


# the one-line fixes said both by check() and by a failed call
KEY_REFUSED = "401, the API key was refused: set OPENAI_API_KEY or --api-key"
NO_SERVER = "cannot connect: is the server running? (set --base-url or OPENAI_BASE_URL)"


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter (the openai client's own curve: 0.5 s doubling, at most 8 s)."""
    return min(0.5 * 2 ** max(0, attempt - 1), 8.0) * (1 - 0.25 * random.random())


class _Refused(Exception):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class OpenAILLM(LLM):
    """Any OpenAI-compatible endpoint through the official client (OpenAI, vLLM, llama.cpp, Ollama).

    Retries are ours, not the client's (its max_retries is 0): a 429 must reach the runner's
    throttle, and llama.cpp refuses `n` with a 500 that is worth adapting to, not retrying."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_retries: int = 6, timeout: float = 120.0, malformed_retries: int = 3, count_tokens=None,
                 reasoning_effort: str | None = None, flags: tuple[str, str] = ("--max-tokens", "--reasoning-effort")):
        import openai
        self.name = model
        # sent where the endpoint takes it (endpoints.py drops it, once, where refused); one per role,
        # as are the flags an error names: a judge's are --judge-max-tokens, --judge-reasoning-effort
        self.reasoning_effort, self.flags = reasoning_effort, flags
        self.model = model
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not base_url:
                raise LLMError(f"openai:{model}: no API key: set OPENAI_API_KEY, or --base-url for a local server")
            api_key = "EMPTY"  # local servers (vLLM, llama.cpp, Ollama) accept any key
        self.base_url = base_url or "https://api.openai.com/v1"
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.max_retries, self.malformed_retries = max_retries, malformed_retries
        # a rate limit is the server asking us to wait, not failing: it gets a larger budget of its own
        self.rate_limit_retries = max(12, 2 * max_retries)
        self.count_tokens = count_tokens  # text -> tokens, for servers that send no usage
        self.quirks = quirks_for(self.base_url, model)
        self.where = f"openai:{model} at {self.base_url}"

    @property
    def honours_n(self) -> bool | None:
        return self.quirks.honours_n

    @honours_n.setter
    def honours_n(self, value: bool | None) -> None:
        self.quirks.honours_n = value

    def check(self) -> None:
        """Fail fast, in one line, when the endpoint is unreachable or the key is refused."""
        import openai
        try:
            self.client.with_options(max_retries=1, timeout=15).models.list()
        except openai.AuthenticationError:
            raise LLMError(f"{self.where}: {KEY_REFUSED}") from None
        except openai.APIConnectionError:
            raise LLMError(f"{self.where}: {NO_SERVER}") from None
        except openai.APIError:
            pass  # some servers have no /models; the first real call will tell

    def _call(self, wish: dict):
        """Send `wish` shaped to what the endpoint accepts; on a refused parameter, learn and resend."""
        last = None
        for _ in range(len(ADAPTABLE) + 1):
            kw = self.quirks.shape(wish)
            try:
                return self._send(kw)
            except _Refused as r:
                last = r
                self.quirks.learn(r.param, kw, str(r))
        raise LLMError(f"{self.where}: request refused even after adapting to it: {last}")

    def _send(self, kw: dict):
        """One request, retried: 429s after Retry-After, 408/409/5xx/timeouts/connection errors and
        malformed bodies with backoff; other errors fail at once in one line that says the fix."""
        import openai
        tries = {"rate": 0, "transient": 0, "malformed": 0}
        while True:
            try:
                resp = self.client.chat.completions.create(model=self.model, **kw)
                if kw.get("stream"):
                    return resp
                if not resp.choices or resp.choices[0].message is None:
                    raise ValueError("reply has no choices")
                return resp
            except openai.RateLimitError as e:
                rate_limits.hit(self.where)
                if _error_code(e) == "insufficient_quota":
                    raise LLMError(f"{self.where}: 429 insufficient_quota: the key has no credit left: add "
                                   f"credit or use another key") from None
                tries["rate"] += 1
                if tries["rate"] > self.rate_limit_retries:
                    raise TransientLLMError(f"{self.where}: HTTP 429 (rate limited) after {tries['rate'] - 1} "
                                            f"retries: lower --concurrency or wait for the key's limit") from None
                # never sooner than asked, and later with each 429 in a row: calls already in flight
                # spread out while the runner narrows the width for the next ones
                wait = min(max(retry_after(e.response.headers) or 0.0, _backoff(tries["rate"])), 120.0)
            except openai.APIStatusError as e:
                wait = self._status_error(e, kw, tries)
            except openai.APITimeoutError:
                tries["transient"] += 1
                if tries["transient"] > self.max_retries:
                    raise TransientLLMError(f"{self.where}: timed out after retries") from None
                wait = _backoff(tries["transient"])
            except openai.APIConnectionError:
                tries["transient"] += 1
                if tries["transient"] > self.max_retries:
                    raise TransientLLMError(f"{self.where}: {NO_SERVER}") from None
                wait = _backoff(tries["transient"])
            except (ValueError, TypeError, AttributeError, KeyError, openai.APIResponseValidationError) as e:
                # a 200 with a body that is not a chat completion: retry a few times, then fail the item
                tries["malformed"] += 1
                if tries["malformed"] > self.malformed_retries:
                    raise TransientLLMError(f"{self.where}: malformed reply ({type(e).__name__}) after "
                                            f"retries") from None
                wait = 0.0
            time.sleep(wait)

    def _status_error(self, e, kw: dict, tries: dict) -> float:
        """The wait before retrying an HTTP error, or the exception that ends the request."""
        status, body = e.status_code, e.body if isinstance(e.body, dict) else {}
        message = body.get("message") or e.message
        if status in (400, 422, 500, 501) and (param := refusal(body, e.message, kw)):
            raise _Refused(param, str(message))
        if status == 401:
            raise LLMError(f"{self.where}: {KEY_REFUSED}") from None
        if status == 403:
            raise LLMError(f"{self.where}: 403, not allowed: {message}") from None
        if status == 404:
            raise LLMError(f"{self.where}: 404, unknown model or wrong base URL: check the model name and "
                           f"--base-url (it usually ends in /v1)") from None
        if status < 500 and status not in (408, 409):
            raise LLMError(f"{self.where}: {status}, request refused: {message}") from None
        tries["transient"] += 1
        if tries["transient"] > self.max_retries:
            raise TransientLLMError(f"{self.where}: HTTP {status} after retries") from None
        wait = retry_after(e.response.headers)
        return _backoff(tries["transient"]) if wait is None else min(wait, 120.0)

    def chat(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        wish = dict(messages=messages, n=n, temperature=temperature, top_p=top_p, stop=list(stop or [])[:4] or None,
                    seed=seed, reasoning_effort=self.reasoning_effort)  # OpenAI allows at most four stops
        billed = {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0}
        for attempt in (1, 2):
            resp = self._call({**wish, "max_tokens": max_tokens})  # shaped with room for reasoning, where it reasons
            cap = self.quirks.cap(max_tokens, self.reasoning_effort)  # what was sent (another thread may grow it)
            self.quirks.saw_choices(n, len(resp.choices))
            self.quirks.saw_usage(resp.usage is not None)
            out, usage, cut = _read_reply(resp, messages, self.count_tokens)
            for k in billed:  # a reply cut inside its reasoning is billed all the same: counted with its retry
                billed[k] += usage[k]
            # a reasoning model's reply cut before any text spent its whole cap unseen, whatever its usage
            # calls it; a server not known to reason (llama.cpp, vLLM) that cuts a reply is no such sign
            spent = usage["reasoning_tokens"] or (usage["completion_tokens"] if cut and self.quirks.reasons else 0)
            self.quirks.saw_reasoning(-(-spent // len(resp.choices)), cap, bool(cut) and not out)
            if out or not cut or attempt == 2 or self.quirks.cap(max_tokens, self.reasoning_effort) <= cap:
                break  # asked once more only when the cut has grown the room for reasoning
        if not out:
            rt, ct = billed["reasoning_tokens"], billed["completion_tokens"]
            spent = f" ({rt:,} of {ct:,} tokens spent reasoning{', in two tries' if attempt == 2 else ''})" if rt else ""
            fix = f"raise {self.flags[0]}" + (f" or lower {self.flags[1]}" if self.quirks.reasons else "")
            raise EmptyReplyError(f"{self.where}: the reply hit its cap of {cap:,} completion tokens before any "
                                  f"text{spent}: {fix}", usage={**billed, "calls": 1},
                                  choices=len(resp.choices))
        first = out[0]  # the request's usage rides on its first completion: summing counts it once
        first.prompt_tokens, first.completion_tokens, first.reasoning_tokens = (
            billed["prompt_tokens"], billed["completion_tokens"], billed["reasoning_tokens"])
        return out

    def stream(self, messages, *, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        resp = self._call(dict(messages=messages, temperature=temperature, top_p=top_p,
                               max_tokens=max_tokens,
                               stop=list(stop or [])[:4] or None, seed=seed, stream=True,
                               reasoning_effort=self.reasoning_effort))
        try:
            for chunk in resp:
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            resp.close()


def _read_reply(resp, messages, count_tokens) -> tuple[list[Completion], dict, int]:
    """(the choices that have text, the request's usage, how many choices were cut before any text).
    Reasoning tokens are inside completion_tokens, as OpenAI bills them: shown, never added again."""
    usage = resp.usage
    if usage is not None:
        pt, ct = usage.prompt_tokens or 0, usage.completion_tokens or 0
        details = getattr(usage, "completion_tokens_details", None)
        rt = (getattr(details, "reasoning_tokens", None) or 0) if details is not None else 0
    else:
        pt = estimate_tokens("\n".join(str(m.get("content") or "") for m in messages), count_tokens)
        ct = sum(estimate_tokens(c.message.content or "", count_tokens) for c in resp.choices)
        rt = 0
    out, cut = [], 0
    for c in resp.choices:
        text, finish = c.message.content or "", c.finish_reason or "stop"
        if finish == "length" and not text.strip():
            cut += 1  # the budget went on hidden reasoning: no answer, not an empty one
            continue
        out.append(Completion(text, 0, 0, finish, 0, usage is None))
    return out, {"prompt_tokens": pt, "completion_tokens": ct, "reasoning_tokens": rt}, cut


def _error_code(e) -> str | None:
    body = e.body if isinstance(e.body, dict) else {}
    return body.get("code") or getattr(e, "code", None)


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
    honours_n = True  # n choices are n sequential generations

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
