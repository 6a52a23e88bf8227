"""What a real OpenAI-compatible endpoint accepts, learned once per (base URL, model) and said once.

OpenAI's reasoning models refuse `max_tokens` (they want `max_completion_tokens`, a cap that also
counts their hidden reasoning) and any `temperature`/`top_p` but 1; other models refuse
`reasoning_effort`; llama-cpp-python's server ignores `n`; llama.cpp's own server refuses it; some
servers send no usage. A reasoning model's caps get room for its reasoning on top of the stage's
max tokens (`Quirks.cap`), grown from what its replies spend (`Quirks.saw_reasoning`). `OpenAILLM`
(base.py) asks `Quirks.shape` for each request, `refusal` reads a refused request's error,
`Quirks.learn` remembers the fix for the rest of the process (every OpenAILLM on that endpoint and
model shares it) and logs one line that says what changed and what it means. Nothing here imports
openai or the LLM classes.
"""
from __future__ import annotations

import email.utils
import logging
import math
import re
import threading
import time

log = logging.getLogger("baize.llm.endpoints")

# parameters an endpoint may refuse, and what losing each means for a baize run
ADAPTABLE = ("max_tokens", "temperature", "top_p", "seed", "n", "stop", "reasoning_effort")
_MEANS = {
    "reasoning_effort": "the effort asked ({value}) has no effect: it runs at its own, if it reasons at all",
    "temperature": "the requested {value} cannot be set: it samples at its own default",
    "top_p": "the requested {value} cannot be set: it samples at its own default",
    "seed": "reruns draw different samples (cached results stay, new ones are not reproducible)",
    "n": "each of SDF's n candidates becomes its own call (n times the prompt tokens)",
    "stop": "replies may run past a turn marker (the parsers cut them there)",
}
_REFUSING = re.compile(r"unsupported|not supported|does not support|not allowed|not permitted|unrecognized|"
                       r"unknown (?:field|param)|extra (?:inputs|fields)|only one completion choice|must be (?:1|one)\b|"
                       r"at most 1\b", re.IGNORECASE)


# Hidden tokens one reply of a reasoning model spends, by reasoning effort: a guess, not a measure
# (OpenAI publishes no figure; its reasoning guide: medium, the default, can spend hundreds to
# thousands on one reply). The dry run's estimate per reply, and half the room a reasoning model's
# cap starts with before its replies show what it really spends.
REASONING_GUESS = {"minimal": 64, "low": 256, "medium": 1024, "high": 4096}  # config.REASONING_EFFORTS
# the most room a cap leaves for reasoning: one prompt that never stops thinking must not raise every
# later cap without end (OpenAI's rate limits count a request's cap toward the key's tokens a minute)
ROOM_MAX = 32768
DEFAULT_EFFORT = "medium"  # what OpenAI's reasoning models use when no effort is sent


def reasoning_guess(effort: str | None) -> int:
    return REASONING_GUESS.get(effort or DEFAULT_EFFORT, REASONING_GUESS[DEFAULT_EFFORT])


def refusal(body, message: str, sent: dict) -> str | None:
    """The request parameter an error refuses, if it is one we can adapt and we sent it, else None.
    `body` is the error object the openai client parsed (OpenAI's `error`, llama.cpp's, vLLM's)."""
    body = body if isinstance(body, dict) else {}
    text = " ".join(str(x) for x in (body.get("message"), message) if x)
    param = body.get("param")
    if param in ADAPTABLE and param in sent and (body.get("code") in ("unsupported_parameter", "unsupported_value")
                                                 or _REFUSING.search(text)):
        return param
    if not _REFUSING.search(text):
        return None  # a 400 about the prompt's length or a bad value is not a refusal to adapt to
    if "n" in sent and re.search(r"only one completion choice|['\"`]n['\"`]|\bn must\b", text, re.IGNORECASE):
        return "n"  # llama.cpp's server: "Only one completion choice is allowed"
    for p in ADAPTABLE:
        if p != "n" and p in sent and re.search(rf"['\"`]{p}['\"`]", text):
            return p
    return None


class Quirks:
    """What one endpoint and model accept; shared by every OpenAILLM on them in this process."""

    def __init__(self, label: str):
        self.label = label  # the model's name as the user wrote it, for the log line
        self.max_tokens_key = "max_tokens"
        self.dropped: set[str] = set()
        self.honours_n: bool | None = None  # None until a reply with n > 1 tells
        self.sends_usage: bool | None = None
        self.reasons = False  # spends hidden reasoning tokens inside its completion cap
        self.room = 0  # tokens each cap leaves for that reasoning: twice the most one reply spent
        self.learned: list[str] = []  # the log lines, in order (summaries and tests read them)
        self.lock = threading.Lock()

    def shape(self, wish: dict) -> dict:
        """The request to send for `wish` (messages, n, temperature, top_p, max_tokens, stop, seed,
        stream, reasoning_effort): what this endpoint refused left out, `max_tokens` under the name it
        wants, with room for a reasoning model's hidden tokens."""
        kw = {k: v for k, v in wish.items() if v is not None and k not in self.dropped}
        if kw.get("max_tokens") is not None:
            kw["max_tokens"] = self.cap(kw["max_tokens"], wish.get("reasoning_effort"))
        if kw.get("n") == 1 or (self.honours_n is False and "n" in kw):
            kw.pop("n")  # one choice needs no n, and a server that ignores or refuses it gets none
        if not kw.get("stop"):
            kw.pop("stop", None)
        if "max_tokens" in kw and self.max_tokens_key != "max_tokens":
            kw[self.max_tokens_key] = kw.pop("max_tokens")
        return kw

    def learn(self, param: str, sent: dict, message: str = "") -> bool:
        """Remember that `param` was refused (True: resend). Another thread may have learned it
        since this request was shaped: then there is nothing new to say, only to resend."""
        with self.lock:
            if param == "max_tokens":
                if self.max_tokens_key == "max_completion_tokens":
                    return True
                self.max_tokens_key = "max_completion_tokens"
                self.reasons = True  # only OpenAI's reasoning models refuse max_tokens for it
                note = (f"{self.label} refuses max_tokens: a reasoning model; sending max_completion_tokens, a cap "
                        f"that also counts its hidden reasoning, so each cap leaves room for that on top of the "
                        f"max tokens asked ({2 * REASONING_GUESS[DEFAULT_EFFORT]:,} at medium effort, then twice "
                        f"the most one reply spent)")
            else:
                if param in self.dropped:
                    return True  # another thread learned it first: just resend
                self.dropped.add(param)
                if param == "n":
                    self.honours_n = False
                verb = "refuses" if param in ("n", "seed", "stop", "reasoning_effort") else "ignores"
                note = f"{self.label} {verb} {param}: " + _MEANS[param].format(value=sent.get(param))
            self.learned.append(note)
        log.warning(note)
        return True

    def cap(self, max_tokens: int, effort: str | None) -> int:
        """The completion cap to send for `max_tokens` of answer: a reasoning model's hidden tokens
        count inside it, so they get room of their own on top."""
        if not self.reasons:
            return max_tokens
        return max_tokens + max(self.room, 2 * reasoning_guess(effort))

    def saw_reasoning(self, per_reply: int, cap: int, cut: bool) -> None:
        """A reply spent `per_reply` hidden tokens (`cut`: all of its `cap` before any text). The
        first says this is a reasoning model; each grows the room to twice the most one reply spent,
        as reasoning varies from prompt to prompt. A cut is said once per growth it causes."""
        if per_reply <= 0:
            return
        with self.lock:
            new = not self.reasons
            self.reasons = True
            grew = min(2 * per_reply, ROOM_MAX) > self.room
            self.room = max(self.room, min(2 * per_reply, ROOM_MAX))
            note = None
            if cut and grew:
                note = (f"{self.label} spent a reply's whole cap of {cap:,} tokens reasoning, before any text: every "
                        f"cap now leaves {self.room:,} tokens for reasoning (a reply cut so is asked once more)")
            elif new:
                note = (f"{self.label} is a reasoning model ({per_reply:,} hidden tokens in a reply): every cap now "
                        f"leaves at least {self.room:,} tokens for reasoning on top of the max tokens asked")
            if note:
                self.learned.append(note)
        if note:
            log.warning(note)

    def saw_choices(self, asked: int, got: int) -> None:
        """A reply to n > 1: does the endpoint honour n? Learned from the first one, logged once."""
        if asked > 1:
            self._first("honours_n", got >= asked, f"{self.label} ignores n: asked for {asked} choices, got {got}; "
                        f"SDF tops up with one call per missing candidate, then makes n calls from the start")

    def saw_usage(self, present: bool) -> None:
        self._first("sends_usage", present, f"{self.label} sends no token usage: tokens are counted locally "
                    f"(a tokenizer, else ~4 characters a token) and marked estimated")

    def _first(self, attr: str, value: bool, note_if_false: str) -> None:
        """Set a flag from the first reply that tells (later ones change nothing); say so when it is False."""
        with self.lock:
            if getattr(self, attr) is not None:
                return
            setattr(self, attr, value)
            if not value:
                self.learned.append(note_if_false)
        if not value:
            log.warning(note_if_false)


_QUIRKS: dict[tuple[str, str], Quirks] = {}
_QUIRKS_LOCK = threading.Lock()


def quirks_for(base_url: str, model: str) -> Quirks:
    with _QUIRKS_LOCK:
        return _QUIRKS.setdefault((base_url.rstrip("/"), model), Quirks(model))


def learned() -> dict[str, list[str]]:
    """Every adaptation of this process: {"model at base_url": [log lines]}."""
    with _QUIRKS_LOCK:
        return {f"{m} at {u}": list(q.learned) for (u, m), q in _QUIRKS.items() if q.learned}


def retry_after(headers) -> float | None:
    """Seconds a 429/503 asks us to wait (retry-after-ms, retry-after in seconds or as an HTTP date)."""
    if headers is None:
        return None
    for key, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(key)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
        except ValueError:
            pass
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


def estimate_tokens(text: str, count=None) -> int:
    """Tokens in `text` by `count` (a local tokenizer's) when given, else ~4 characters a token."""
    if count is not None:
        return int(count(text))
    return max(1, math.ceil(len(text) / 4)) if text else 0
