"""The judge's cached transport: one model call per distinct prompt, whatever the judging mode.

It asks the model (writing text, or reading option log-probs through a `read` function a mode gives),
shares a prompt already in flight in another thread instead of paying twice, asks once more with a
reminder when a reply does not parse, stops after a streak of unparseable replies, and keeps every
raw reply in a JSONL cache so a rerun is free and gives the identical result.
"""
from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

from ..config import BaizeError
from ..llm.base import Completion
from ..schema import repair_torn_tail

Reader = Callable[[list[dict]], str]  # a prompt -> the verdict text, read from option log-probs


class JudgeError(BaizeError):
    """The judge keeps answering in a shape we cannot read: a weak model or a broken endpoint."""


def new_usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}


class JudgeTransport:
    """Thread-safe: many threads may ask at once; the LLM backends batch or pool them."""

    CACHE_FILE = "judge_cache.jsonl"

    def __init__(self, llm, name: str, cache_dir=None, max_tokens: int = 512, temperature: float = 0.0,
                 max_unparseable: int | None = 8, mode: str | None = None):
        self.llm, self.name, self.mode = llm, name, mode
        self.max_tokens, self.temperature, self.max_unparseable = max_tokens, temperature, max_unparseable
        self._lock = threading.Lock()
        self._cache: dict[str, dict] = {}
        self._inflight: dict[str, Future] = {}
        self._usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0, "cache_hits": 0}
        self._bad_in_row = 0
        self._file = None
        self.cache_path = None
        # an LLM that keeps its replies (--batch-api) answers a replayed verdict's calls again, each
        # counted in the verdict that uses it; a reply cached here would be counted by none
        self.caching = not llm.keeps_replies
        if cache_dir is not None and self.caching:
            self.cache_path = Path(cache_dir) / self.CACHE_FILE
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            repair_torn_tail(self.cache_path)
            if self.cache_path.exists():
                with self.cache_path.open(encoding="utf-8") as f:
                    for line in f:
                        try:
                            e = json.loads(line)
                            self._cache[e["key"]] = e
                        except (ValueError, KeyError, TypeError):
                            continue  # a cache line we cannot read only costs one call again

    @property
    def usage(self) -> dict:
        with self._lock:
            return dict(self._usage)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _key(self, kind: str, messages: list[dict], read: Reader | None) -> str:
        # a reply read from log-probs is another reply than a written one for the same prompt, and each
        # mode keeps its own (text and choice keep the keys they always had, so older caches still answer)
        tag = self.mode if self.mode not in (None, "text") else "choice" if read else None
        # a judge in bf16 may read another verdict than the same judge in float32 (within the bound
        # of tests/test_cpu_dtype.py): an eval resumed across a dtype change asks again; float32
        # keeps the key it always had
        name = self.name if not getattr(self.llm, "weights", None) else f"{self.name}@{self.llm.weights}"
        blob = json.dumps([name, kind + (f"/{tag}" if tag else ""), messages, self.temperature,
                           self.max_tokens],
                          ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def complete(self, kind: str, messages: list[dict], usage: dict, read: Reader | None = None) -> str:
        """The reply to one prompt: from the cache, from a thread already asking it, or from the model."""
        key = self._key(kind, messages, read)
        with self._lock:
            entry = self._cache.get(key)
            fut = None if entry else self._inflight.get(key)
            owner = entry is None and fut is None
            if owner:
                fut = self._inflight[key] = Future()
            elif entry is not None:
                self._usage["cache_hits"] += 1
        if entry is not None:
            return entry["text"]
        if not owner:
            # the same prompt is being asked by another thread: share its reply rather than pay twice
            # (and, at temperature > 0 or on a nondeterministic API, possibly disagree with it)
            entry = fut.result()
            with self._lock:
                self._usage["cache_hits"] += 1
            return entry["text"]
        try:
            if read is not None:  # no text written, but the prompt was read: its tokens are the cost
                n_read = len(self.llm.prompt_ids(messages)) if self.llm.can_count_tokens else 0
                c = Completion(read(messages), n_read, 0)
            else:
                c = self.llm.chat(messages, n=1, temperature=self.temperature, top_p=1.0,
                                  max_tokens=self.max_tokens, stop=None, seed=0)[0]
        except BaseException as e:
            with self._lock:
                self._inflight.pop(key, None)
            fut.set_exception(e)
            raise
        entry = {"key": key, "text": c.text or "", "prompt_tokens": int(c.prompt_tokens or 0),
                 "completion_tokens": int(c.completion_tokens or 0)}
        with self._lock:
            if self.caching:
                self._cache[key] = entry
            self._inflight.pop(key, None)
            for u in (self._usage, usage):
                u["prompt_tokens"] += entry["prompt_tokens"]
                u["completion_tokens"] += entry["completion_tokens"]
                u["calls"] += 1
                for k, v in c.usage().items():  # an endpoint's reasoning or estimated tokens, where any
                    if k not in ("prompt_tokens", "completion_tokens", "calls"):
                        u[k] = u.get(k, 0) + v
            if self.cache_path is not None:
                if self._file is None:
                    self._file = self.cache_path.open("a", encoding="utf-8")
                self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._file.flush()  # a killed run keeps every reply it paid for
        fut.set_result(entry)
        return entry["text"]

    def ask(self, kind: str, messages: list[dict], parse, reminder: str, usage: dict, raw: list[str],
            read: Reader | None = None):
        """One presentation: ask, and if the reply does not parse, ask once more with a reminder."""
        text = self.complete(kind, messages, usage, read)
        raw.append(text)
        value = parse(text)
        if value is None:
            retry = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": reminder}]
            text = self.complete(kind, retry, usage, read)
            raw.append(text)
            value = parse(text)
        with self._lock:
            self._bad_in_row = self._bad_in_row + 1 if value is None else 0
            bad = self._bad_in_row
        if value is None and self.max_unparseable and bad >= self.max_unparseable:
            short = " ".join(text.split())
            short = short[:200] + "..." if len(short) > 200 else short
            raise JudgeError(f"judge {self.name}: {bad} unparseable verdicts in a row; last reply: {short!r}: "
                             f"use a stronger judge or check its endpoint")
        return value
