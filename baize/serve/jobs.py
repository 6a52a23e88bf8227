"""Generations as jobs, shared by the API and the web UI.

A job has `.events` (a blocking queue of ("delta", str)..., then ("done", Completion) or
("error", exception)) and `.cancel()`: the batching engine's requests are jobs already, and
ThreadJob gives every other backend the same interface. `events()` merges jobs onto the event loop.
"""
from __future__ import annotations

import asyncio
import queue
import threading

from ..llm.base import Completion
from .loading import ServedLLM


class ThreadJob:
    """A backend without the batching engine (OpenAI proxy, llama.cpp, test stubs) run in a thread,
    with the engine Request's events/cancel interface. Streaming uses llm.stream (cancelled between
    pieces); otherwise llm.chat, whose Completion carries the backend's real token usage."""

    def __init__(self, llm, messages, kw, stream: bool = True):
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        threading.Thread(target=self._stream if stream else self._chat, args=(llm, messages, kw), daemon=True).start()

    def cancel(self):
        self.cancelled.set()

    def _chat(self, llm, messages, kw):
        try:
            (c,) = llm.chat(messages, n=1, **kw)
            self.events.put(("delta", c.text))
            self.events.put(("done", c))
        except Exception as e:
            self.events.put(("error", e))

    def _stream(self, llm, messages, kw):
        text, pieces, gen = "", 0, None
        try:
            gen = llm.stream(messages, **kw)
            for piece in gen:
                if self.cancelled.is_set():
                    break
                text += piece
                pieces += 1
                self.events.put(("delta", piece))
            # the backend does not say how many tokens it streamed: count pieces
            self.events.put(("done", Completion(text, 0, pieces, "cancelled" if self.cancelled.is_set() else "stop")))
        except Exception as e:
            self.events.put(("error", e))
        finally:
            # stream() may return any iterator; a generator's close() runs its cleanup now, not at GC
            if gen is not None and hasattr(gen, "close"):
                gen.close()


def start(llm, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None,
          prompt_ids=None, stream=True) -> list:
    """Start n generations; each returned job has .events (("delta", str)..., ("done", Completion)) and .cancel()."""
    kw = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, seed=seed)
    if isinstance(llm, ServedLLM):  # the server's own view: reuses the prompt ids it counted for the limits
        return llm.submit(messages, n=n, prompt_ids=prompt_ids, **kw)
    if llm.is_local:
        return llm.submit(messages, n=n, **kw)
    return [ThreadJob(llm, messages, dict(kw, seed=None if seed is None else seed + i), stream) for i in range(n)]


async def events(jobs):
    """Merge the jobs' events into (index, kind, value) on the event loop, with the text tidied so that
    streamed pieces add up to exactly the final text (no leading space after the role marker, no
    trailing whitespace before a stop string). Leaving early cancels every job."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    for i, job in enumerate(jobs):  # one thread per job: the engine's queues are blocking
        threading.Thread(target=_pump, args=(loop, q, i, job), daemon=True).start()
    started, pending, open_ = [False] * len(jobs), [""] * len(jobs), len(jobs)
    try:
        while open_:
            i, kind, value = await q.get()
            if kind == "delta":
                piece = value if started[i] else value.lstrip()
                started[i] = started[i] or bool(piece)
                piece = pending[i] + piece
                body = piece.rstrip()
                pending[i] = piece[len(body):]
                if body:
                    yield i, "delta", body
            else:
                open_ -= 1
                if kind == "done":
                    value.text = value.text.strip()
                yield i, kind, value
    finally:
        for job in jobs:
            job.cancel()


def _pump(loop, q: asyncio.Queue, i: int, job) -> None:
    """Move one job's events onto the loop's queue until its last one."""
    while True:
        items = [job.events.get()]
        while items[-1][0] == "delta":  # coalesce what is already waiting: one wake-up, one chunk
            try:
                kind, value = job.events.get_nowait()
            except queue.Empty:
                break
            if kind == "delta":
                items[-1] = ("delta", items[-1][1] + value)
            else:
                items.append((kind, value))
        try:
            loop.call_soon_threadsafe(lambda items=items: [q.put_nowait((i, *it)) for it in items])
        except RuntimeError:  # the loop is gone
            job.cancel()
            return
        if items[-1][0] != "delta":
            return
