"""A continuous-batching generation engine for local transformers models.

Requests from many threads (collection workers, server handlers) share the model: the engine thread
keeps a running batch per adapter and, between decode steps, prefills newly arrived requests (one
left-padded forward pass), merges their KV cache into the running batch (caches padded on the left to
a common length, masked), decodes one token for every active row per step, and drops rows as soon as
they finish or are cancelled. A short request submitted while a long one decodes joins it and leaves
early, instead of waiting for the long one's `generate` call to end.

Why not transformers' own continuous batching (`model.init_continuous_batching()` /
`generate_batch`, transformers 5): it switches the model to paged attention and samples with one
global RNG (no per-request seed, so a seeded request would not give the same text in every batch),
has no per-request stop strings with held-back streaming text, and no per-request peft adapter (one
active adapter set per forward pass). The per-row sampling, stops, streaming and cancellation here
are the same code the generate-based engine used, now called from our own decode loop.

Rows of different adapters cannot share a forward pass, so each adapter has its own running batch
(own cache); the engine round-robins the groups one decode step at a time, so every adapter's
requests progress (at 1/groups of the speed each while several are busy) and none starves.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import queue
import random
import threading
import time
from dataclasses import dataclass, field

from .sampling import RowSampler, _draw  # noqa: F401  (_draw: tests import it from here)


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


class Request:
    def __init__(self, prompt_ids: list[int], params: GenParams, row_seed: int | None = None,
                 adapter=None):
        self.prompt_ids = prompt_ids
        self.params = params
        self.row_seed = row_seed
        self.adapter = adapter  # which adapter(s) this row runs under (None: the model as loaded)
        self.events: queue.Queue = queue.Queue()  # ("delta", str) ... then ("done", Completion) | ("error", exc)
        self.cancelled = threading.Event()
        # decoding state, touched only by the engine thread
        self.tokens: list[int] = []
        self.emitted = 0
        self.text = ""
        self.finish: str | None = None
        self.eos = False
        self.gen = None  # the row's torch.Generator, seeded when the row is admitted

    def cancel(self) -> None:
        self.cancelled.set()

    def result(self) -> Completion:
        while True:
            kind, value = self.events.get()
            if kind == "done":
                return value
            if kind == "error":
                raise value

    def deltas(self):
        """Yield text pieces as they are decoded; the final Completion is returned by the generator."""
        try:
            while True:
                kind, value = self.events.get()
                if kind == "delta":
                    yield value
                elif kind == "done":
                    return value
                else:
                    raise value
        finally:  # the consumer went away (client disconnected): stop generating for this row
            self.cancel()


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that could still grow into a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-k:]):
                best = k
                break
    return best


class _Group:
    """The running batch of one adapter: its rows, their KV cache, attention mask and last tokens."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.rows: list[Request] = []
        self.cache = None  # transformers DynamicCache, batch axis = rows
        self.mask = None  # (rows, cached positions + 1 for the next token) long, 0 where padded
        self.last = None  # (rows,) the token each row feeds next
        self.sampler = None


def _merge(g: _Group, batch, cache, mask, last) -> None:
    """Append prefilled rows to a running batch: both caches are padded on the left (zeros, masked
    out) to a common length, then concatenated along the batch axis."""
    import torch
    n = max(g.mask.shape[1], mask.shape[1])

    def pad(t, axis):  # left-pad t along axis to length n
        if t.shape[axis] == n:
            return t
        shape = list(t.shape)
        shape[axis] = n - t.shape[axis]
        return torch.cat([t.new_zeros(shape), t], dim=axis)

    for old, new in zip(g.cache.layers, cache.layers):
        old.keys = torch.cat([pad(old.keys, 2), pad(new.keys, 2)], dim=0)
        old.values = torch.cat([pad(old.values, 2), pad(new.values, 2)], dim=0)
    g.mask = torch.cat([pad(g.mask, 1), pad(mask, 1)], dim=0)
    g.last = torch.cat([g.last, last], dim=0)
    g.rows.extend(batch)


class BatchEngine:
    """`select_adapter(adapter)` (optional) returns a context manager that makes a request's adapter the
    active one for a forward pass; a forward pass only ever holds rows of one adapter, because a peft
    model has one active adapter set per forward pass.

    max_batch bounds the rows decoding at once (all adapters together); later requests wait in order.
    `batches_run` counts prefills (each joins one or more new requests to a running batch);
    `max_batch_seen` is the most rows one forward pass has held."""

    def __init__(self, model, tokenizer, *, max_batch: int = 16, wait_s: float = 0.02, eos_ids=(),
                 select_adapter=None):
        self.model, self.tok = model, tokenizer
        self.max_batch, self.wait_s = max_batch, wait_s
        self.select_adapter = select_adapter
        self.eos_ids = sorted({i for i in eos_ids if i is not None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._queue: queue.Queue[Request] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._waiting: collections.deque[Request] = collections.deque()  # arrived, not yet admitted
        self._groups: dict = {}  # adapter -> _Group with rows
        self._turn = 0  # round-robin position over the groups
        self._closing = False
        self.batches_run = 0
        self.max_batch_seen = 0

    def submit(self, prompt_ids: list[int], params: GenParams, row_seed: int | None = None,
               adapter=None) -> Request:
        req = Request(prompt_ids, params, row_seed, adapter)
        with self._lock:
            if self._thread is None:
                self._closing = False
                self._thread = threading.Thread(target=self._loop, name="baize-engine", daemon=True)
                self._thread.start()
                atexit.register(self.close)
        self._queue.put(req)
        return req

    def close(self) -> None:
        """Stop the engine thread (a torch thread killed at interpreter exit aborts the process).
        Requests still running or waiting finish as cancelled, with the text they have."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    # -- scheduling ------------------------------------------------------------------------------

    def _active(self) -> int:
        return sum(len(g.rows) for g in self._groups.values())

    def _collect(self) -> None:
        """Move arrived requests to the waiting line. Idle: block for the first one, then gather what
        arrives within wait_s of it (so a burst starts as one batch); busy: take what is there."""
        idle = not self._groups and not self._waiting
        if idle:
            first = self._queue.get()
            if first is None:
                self._closing = True
                return
            self._waiting.append(first)
            deadline = time.monotonic() + self.wait_s
            while len(self._waiting) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._closing = True
                    break
                self._waiting.append(nxt)
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return
            if nxt is None:
                self._closing = True
                return
            self._waiting.append(nxt)

    def _admit(self) -> None:
        """Prefill waiting requests (oldest first, up to max_batch active rows) into their groups."""
        room = self.max_batch - self._active()
        by_adapter: dict = {}
        while self._waiting and room > 0:
            r = self._waiting.popleft()
            if self._drop_cancelled(r):
                continue
            by_adapter.setdefault(r.adapter, []).append(r)
            room -= 1
        for batch in by_adapter.values():
            try:
                self._run(batch)
            except Exception as e:  # report to these waiters instead of killing the engine thread
                self._fail(batch, e)

    def _loop(self):
        while True:
            self._collect()
            if self._closing:
                for r in [*(r for g in self._groups.values() for r in g.rows), *self._waiting]:
                    if r.finish is None:
                        self._finish(r, "cancelled")
                self._groups.clear()
                self._waiting.clear()
                return
            self._admit()
            if not self._groups:
                continue
            keys = list(self._groups)
            self._turn = (self._turn + 1) % len(keys)
            g = self._groups[keys[self._turn]]
            try:
                self._step(g)
            except Exception as e:
                self._fail(g.rows, e)
                g.rows = []
            if not g.rows:
                self._groups.pop(g.adapter, None)

    def _fail(self, rows, e) -> None:
        for r in rows:
            if r.finish is None:
                r.finish = "error"
                r.events.put(("error", e))

    @staticmethod
    def _drop_cancelled(r: Request) -> bool:
        if r.cancelled.is_set():
            r.finish = "cancelled"
            r.events.put(("done", Completion("", len(r.prompt_ids), 0, "cancelled")))
            return True
        return False

    # -- model work ------------------------------------------------------------------------------

    def _forward(self, adapter, **kw):
        import torch
        ctx = self.select_adapter(adapter) if self.select_adapter is not None else contextlib.nullcontext()
        with ctx, torch.inference_mode():
            return self.model(use_cache=True, logits_to_keep=1, **kw)

    def _run(self, batch: list[Request]) -> None:
        """Prefill newly admitted requests of one adapter as one left-padded batch, sample their first
        token and merge them into the adapter's running batch."""
        import torch
        from transformers import DynamicCache
        self.batches_run += 1
        self.max_batch_seen = max(self.max_batch_seen, len(batch))
        dev = self.model.device
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
            r.gen = torch.Generator()
            r.gen.manual_seed(r.row_seed if r.row_seed is not None else random.getrandbits(63))
        mask = mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        out = self._forward(batch[0].adapter, input_ids=ids.to(dev), attention_mask=mask,
                            position_ids=pos, past_key_values=cache)
        sampler = RowSampler([r.params for r in batch], [r.gen for r in batch], dev)
        choice = sampler(out.logits[:, -1])
        g = self._groups.get(batch[0].adapter)
        if g is None or not g.rows:
            g = self._groups[batch[0].adapter] = _Group(batch[0].adapter)
            g.rows, g.cache, g.mask, g.last = list(batch), out.past_key_values, mask, choice
        else:
            _merge(g, batch, out.past_key_values, mask, choice)
        g.sampler = None
        self._emit(g, choice.tolist(), batch)

    def _step(self, g: _Group) -> None:
        """One decode step for every row of a group."""
        import torch
        for r in g.rows:
            if r.cancelled.is_set() and r.finish is None:
                self._finish(r, "cancelled")
        self._prune(g)
        if not g.rows:
            return
        self.max_batch_seen = max(self.max_batch_seen, len(g.rows))
        g.mask = torch.cat([g.mask, g.mask.new_ones((len(g.rows), 1))], dim=1)
        pos = (g.mask.sum(-1, keepdim=True) - 1)
        out = self._forward(g.adapter, input_ids=g.last[:, None], attention_mask=g.mask, position_ids=pos,
                            past_key_values=g.cache)
        g.cache = out.past_key_values
        if g.sampler is None:
            g.sampler = RowSampler([r.params for r in g.rows], [r.gen for r in g.rows], self.model.device)
        g.last = g.sampler(out.logits[:, -1])
        self._emit(g, g.last.tolist(), g.rows)

    def _emit(self, g: _Group, tokens: list[int], rows: list[Request]) -> None:
        for r, t in zip(rows, tokens):
            if r.finish is None:
                self._advance(r, t)
        self._prune(g)

    def _prune(self, g: _Group) -> None:
        """Drop finished rows from the group's cache and mask at once; trim padding no row needs."""
        import torch
        keep = [i for i, r in enumerate(g.rows) if r.finish is None]
        if len(keep) == len(g.rows):
            return
        g.rows = [g.rows[i] for i in keep]
        g.sampler = None
        if not keep:
            g.cache = g.mask = g.last = None
            return
        idx = torch.tensor(keep, device=g.mask.device)
        g.cache.batch_select_indices(idx)
        g.mask, g.last = g.mask[idx], g.last[idx]
        lead = int(g.mask.any(0).long().argmax())  # leading columns that are padding in every row
        if lead:
            g.mask = g.mask[:, lead:]
            for layer in g.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]


    def _advance(self, r: Request, token: int) -> None:
        if token in self.eos_ids:
            r.eos = True
            return self._finish(r, "stop")
        r.tokens.append(token)
        text = self.tok.decode(r.tokens, skip_special_tokens=True)
        hit = min((i for i in (text.find(s) for s in r.params.stop) if i != -1), default=-1)
        if hit != -1:
            r.text = text[:hit]
            return self._finish(r, "stop")
        r.text = text
        if r.cancelled.is_set():
            return self._finish(r, "cancelled")
        if len(r.tokens) >= r.params.max_tokens:
            return self._finish(r, "length")
        if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            return
        safe = len(text) - _held_back(text, r.params.stop)
        if safe > r.emitted:
            r.events.put(("delta", text[r.emitted:safe]))
            r.emitted = safe

    def _finish(self, r: Request, reason: str) -> None:
        r.finish = reason
        if len(r.text) > r.emitted:
            r.events.put(("delta", r.text[r.emitted:]))
            r.emitted = len(r.text)
        r.events.put(("done", Completion(r.text, len(r.prompt_ids), len(r.tokens) + r.eos, reason)))
