"""A continuous-batching generation engine for local transformers models.

Requests from many threads (collection workers, server handlers) share the model: the engine thread
keeps a running batch per adapter and, between decode steps, prefills newly arrived requests,
merges their KV cache into the running batch, decodes one token for every active row per step, and
drops rows as soon as they finish or are cancelled. Rows of different adapters cannot share a
forward pass, so each adapter has its own running batch; the engine round-robins the groups one
decode step at a time, so none starves. Why not transformers' own continuous batching, and what was
measured to pay (or not) on a CPU: docs/engine.md.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import queue
import random
import threading
import time

from .base import Completion, GenParams
from .omp import release_threads
from .packing import sampled_logits
from .sampling import RowSampler, _draw  # noqa: F401  (_draw: tests import it from here)


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
        self.prefix = self.read = 0  # detokenization window: tokens[prefix:read] are already in text
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

    # -- decoding, on the engine thread ------------------------------------------------------------

    def advance(self, token: int, tok, eos_ids) -> None:
        """Take one sampled token: detokenize, stop on EOS, a stop string or max_tokens, stream what is safe."""
        if token in eos_ids:
            self.eos = True
            return self.finish_as("stop")
        self.tokens.append(token)
        # Incremental detokenization (vLLM's scheme): decode a short window, not the whole reply each
        # step; the window keeps the previous token(s) so a tokenizer's leading-space rules still apply.
        seen = tok.decode(self.tokens[self.prefix:self.read], skip_special_tokens=True)
        window = tok.decode(self.tokens[self.prefix:], skip_special_tokens=True)
        before = len(self.text)
        if window.endswith("\ufffd") or len(window) < len(seen):  # half a multi-byte character
            text = self.text + window[len(seen):]
        else:
            text = self.text = self.text + window[len(seen):]
            self.prefix, self.read = self.read, len(self.tokens)
        stops = self.params.stop
        start = max(0, before - max((len(s) for s in stops), default=0))
        hit = min((i for i in (text.find(s, start) for s in stops) if i != -1), default=-1)
        if hit != -1:
            self.text = text[:hit]
            return self.finish_as("stop")
        if self.cancelled.is_set() or len(self.tokens) >= self.params.max_tokens:
            self.text = text  # ending here: with what the last tokens decode to, even half a character
            return self.finish_as("cancelled" if self.cancelled.is_set() else "length")
        if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            return
        safe = len(text) - _held_back(text, stops)
        if safe > self.emitted:
            self.events.put(("delta", text[self.emitted:safe]))
            self.emitted = safe

    def finish_as(self, reason: str) -> None:
        self.finish = reason
        if len(self.text) > self.emitted:
            self.events.put(("delta", self.text[self.emitted:]))
            self.emitted = len(self.text)
        self.events.put(("done", Completion(self.text, len(self.prompt_ids), len(self.tokens) + self.eos, reason)))


class _Job:
    """Model work other than decoding (a judge's option scoring): run on the engine thread between
    decode steps, so the model never runs in two threads at once (two forward passes racing for two
    cores each are slower than the two one after the other, and the decode batch stalls meanwhile)."""

    def __init__(self, fn):
        self.fn, self.done = fn, threading.Event()
        self.value = self.error = None

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as e:  # handed to the caller's thread
            self.error = e
        self.done.set()


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that could still grow into a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-k:]):
                best = k
                break
    return best


def _similar_lengths(rows: list, waste: float = 0.25) -> list[list]:
    """Split rows into prefill batches of similar prompt length, so left padding (computed, then
    thrown away) stays under `waste` of each batch: prompts of 30 and 400 tokens in one batch would
    spend most of its work on padding."""
    rows = sorted(rows, key=lambda r: len(r.prompt_ids))
    out, cur = [], []
    for r in rows:  # ascending: the newest row is the longest
        if cur and (len(cur) + 1) * len(r.prompt_ids) * (1 - waste) > sum(len(c.prompt_ids) for c in cur) + len(r.prompt_ids):
            out.append(cur)
            cur = []
        cur.append(r)
    return out + [cur] if cur else out


def cache_kwarg(model) -> str:
    """The forward() keyword for a KV cache: `cache` in transformers >= 5.2x (which warns about the
    old name), `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg(type(base))


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls) -> str:
    import inspect
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def growing_cache():
    """A DynamicCache whose layers keep spare room, so a decode step writes its token in place
    instead of DynamicLayer's torch.cat of the whole cache (measured: a fifth of a 16-row decode step
    on a 2-core CPU). Falls back to the plain DynamicCache where the cache has no layer class hook."""
    from transformers import DynamicCache
    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is not None:
        cache.layer_class_to_replicate = _growing_layer_class()
    return cache


@functools.lru_cache(maxsize=None)
def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """keys/values are views of the first n positions of buffers with room for ROOM more; setting
        them (the engine merges, prunes and trims rows that way) stores the tensor as it is, and the
        next update that does not fit copies it into a new, roomier buffer."""
        ROOM = 128

        def __init__(self, *a, **kw):
            self._k = self._v = None
            self._kn = self._vn = 0  # each its own length: `keys = cat(keys, ...)` then `values = ...`
            super().__init__(*a, **kw)  # must not read values at the length keys just got

        @staticmethod
        def _length(t):
            return t.shape[-2] if t is not None and t.dim() == 4 else 0

        @property
        def keys(self):
            return self._k if self._k is None or self._k.dim() < 4 else self._k[:, :, :self._kn]

        @keys.setter
        def keys(self, t):
            self._k, self._kn = t, self._length(t)

        @property
        def values(self):
            return self._v if self._v is None or self._v.dim() < 4 else self._v[:, :, :self._vn]

        @values.setter
        def values(self, t):
            self._v, self._vn = t, self._length(t)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, add = self._kn, key_states.shape[-2]
            assert self._vn == n, "keys and values of a cache layer out of step"
            if (self._k.dim() < 4 or self._k.shape[2] < n + add or self._v.shape[2] < n + add
                    or self._k.shape[0] != key_states.shape[0]):
                shape = (*key_states.shape[:2], n + add + self.ROOM, key_states.shape[-1])
                k, v = key_states.new_empty(shape), value_states.new_empty(shape)
                if n:
                    k[:, :, :n], v[:, :, :n] = self._k[:, :, :n], self._v[:, :, :n]
                self._k, self._v = k, v
            self._k[:, :, n:n + add] = key_states
            self._v[:, :, n:n + add] = value_states
            self._kn = self._vn = n + add
            return self.keys, self.values

    return GrowingLayer


class _Group:
    """The running batch of one adapter: its rows, their KV cache, attention mask and last tokens."""

    def __init__(self, adapter, rows: list[Request], cache, mask, last):
        self.adapter = adapter
        self.rows = rows
        self.cache = cache  # transformers DynamicCache, batch axis = rows
        self.mask = mask  # (rows, cached positions + 1 for the next token) long, 0 where padded
        self.last = last  # (rows,) the token each row feeds next
        self.sampler = None

    def merge(self, batch, cache, mask, last) -> None:
        """Append prefilled rows: both caches are padded on the left (zeros, masked out) to a common
        length, then concatenated along the batch axis."""
        import torch
        n = max(self.mask.shape[1], mask.shape[1])

        def pad(t, axis):  # left-pad t along axis to length n
            if t.shape[axis] == n:
                return t
            shape = list(t.shape)
            shape[axis] = n - t.shape[axis]
            return torch.cat([t.new_zeros(shape), t], dim=axis)

        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([pad(old.keys, 2), pad(new.keys, 2)], dim=0)
            old.values = torch.cat([pad(old.values, 2), pad(new.values, 2)], dim=0)
        self.mask = torch.cat([pad(self.mask, 1), pad(mask, 1)], dim=0)
        self.last = torch.cat([self.last, last], dim=0)
        self.rows.extend(batch)
        self.sampler = None

    def decode(self, forward, device) -> list[int]:
        """One decode step for every row: the next token of each."""
        import torch
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        pos = (self.mask.sum(-1, keepdim=True) - 1)
        out = forward(self.adapter, self.cache, input_ids=self.last[:, None], attention_mask=self.mask,
                      position_ids=pos)
        if self.sampler is None:
            self.sampler = RowSampler([r.params for r in self.rows], [r.gen for r in self.rows], device)
        self.last = self.sampler(out.logits[:, -1])
        return self.last.tolist()

    def prune(self) -> None:
        """Drop finished rows from the cache and mask at once; trim padding no row needs."""
        import torch
        keep = [i for i, r in enumerate(self.rows) if r.finish is None]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.sampler = None
        if not keep:
            self.cache = self.mask = self.last = None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.last = self.mask[idx], self.last[idx]
        lead = int(self.mask.any(0).long().argmax())  # leading columns that are padding in every row
        if lead:
            self.mask = self.mask[:, lead:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]


class _Inbox:
    """What reaches the engine thread: requests waiting to be admitted (oldest first), other model work
    (jobs) and the close sentinel (None), filed from one queue that any thread may put into."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.waiting: collections.deque[Request] = collections.deque()  # arrived, not yet admitted
        self.jobs: collections.deque[_Job] = collections.deque()
        self.closing = False

    def collect(self, busy: bool, max_batch: int, wait_s: float) -> None:
        """Move arrived items to their lines. Idle: block for the first one, then gather what arrives
        within wait_s of it (so a burst starts as one batch); busy: take what is there."""
        if not busy and not self.waiting and not self.jobs:
            release_threads()  # idle: our OpenMP team would slow whichever thread uses torch next (llm/omp.py)
            first = self.queue.get()
            if not self._take(first):
                return
            if isinstance(first, _Job):
                return  # run it now; no batch to gather
            deadline = time.monotonic() + wait_s
            while len(self.waiting) < max_batch:
                try:
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if not self._take(nxt):
                    return
        while True:
            try:
                nxt = self.queue.get_nowait()
            except queue.Empty:
                return
            if not self._take(nxt):
                return

    def _take(self, item) -> bool:
        """File an item from the queue; False on the close sentinel."""
        if item is None:
            self.closing = True
            return False
        (self.jobs if isinstance(item, _Job) else self.waiting).append(item)
        return True


def _left_padded(prompts: list, pad_id: int):
    """Token ids and attention mask of prompts padded on the left to the longest (decoding appends on the right)."""
    import torch
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


class BatchEngine:
    """`select_adapter(adapter)` (optional) returns a context manager that makes a request's adapter the
    active one for a forward pass; a forward pass only ever holds rows of one adapter, because a peft
    model has one active adapter set per forward pass.

    max_batch bounds the rows decoding at once (all adapters together); later requests wait in order.
    pack_weights: run the model's float32 CPU linears on prepacked oneDNN weights (llm/packing.py).
    `batches_run` counts prefills (each joins one or more new requests to a running batch);
    `max_batch_seen` is the most rows one forward pass has held."""

    def __init__(self, model, tokenizer, *, max_batch: int = 16, wait_s: float = 0.02, eos_ids=(),
                 select_adapter=None, prefill_tokens: int = 512, pack_weights: bool = True):
        self.model, self.tok = model, tokenizer
        if pack_weights:  # skinny decode products: 1.5x faster 8-row steps on CPU (llm/packing.py)
            from .packing import lean_lora, pack_linears
            pack_linears(model, max_batch)
            lean_lora(model)  # an adapter's products in 3 ops, not peft's 7 (bench/lora_speed.py: 1.28x steps)
        self.max_batch, self.wait_s = max_batch, wait_s
        self.prefill_tokens = prefill_tokens
        self.select_adapter = select_adapter
        self.eos_ids = sorted({i for i in eos_ids if i is not None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._inbox = _Inbox()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._groups: dict = {}  # adapter -> _Group with rows
        self._turn = 0  # round-robin position over the groups
        self.batches_run = 0
        self.max_batch_seen = 0
        release_threads()  # the loading thread's team, which a server's main thread would keep idle

    def submit(self, prompt_ids: list[int], params: GenParams, row_seed: int | None = None,
               adapter=None) -> Request:
        req = Request(prompt_ids, params, row_seed, adapter)
        self._put(req)
        return req

    def call(self, fn):
        """Run fn() on the engine thread between decode steps and return its result (or raise its
        error) here: any other use of the model goes through this, so it never runs concurrently."""
        if threading.current_thread() is self._thread:
            return fn()
        job = _Job(fn)
        self._put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.value

    def _put(self, item) -> None:
        release_threads()  # the caller waits while the engine works: its OpenMP team would slow ours (llm/omp.py)
        with self._lock:
            if self._thread is None:
                self._inbox.closing = False
                self._thread = threading.Thread(target=self._loop, name="baize-engine", daemon=True)
                self._thread.start()
                atexit.register(self.close)
        self._inbox.queue.put(item)

    def close(self) -> None:
        """Stop the engine thread (a torch thread killed at interpreter exit aborts the process).
        Requests still running or waiting finish as cancelled, with the text they have."""
        if self._thread is not None:
            self._inbox.queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    # -- scheduling ------------------------------------------------------------------------------

    def _active(self) -> int:
        return sum(len(g.rows) for g in self._groups.values())

    def _admit(self) -> None:
        """Prefill waiting requests (oldest first, up to max_batch active rows) into their groups, at
        most prefill_tokens prompt tokens between two decode steps (at least one request): a burst of
        long prompts then does not freeze the rows already streaming, and a short request that arrives
        meanwhile waits for one slice, not for the whole burst."""
        room = self.max_batch - self._active()
        budget = self.prefill_tokens
        by_adapter: dict = {}
        later = collections.deque()
        waiting = self._inbox.waiting
        while waiting and room > 0:
            r = waiting.popleft()
            if self._drop_cancelled(r):
                continue
            if by_adapter and len(r.prompt_ids) > budget:  # first fit: a shorter one behind may pass it,
                later.append(r)  # and it is first in line next time (taken then whatever its length)
                continue
            by_adapter.setdefault(r.adapter, []).append(r)
            budget -= len(r.prompt_ids)
            room -= 1
        waiting.extendleft(reversed(later))
        for rows in by_adapter.values():
            for batch in _similar_lengths(rows):
                try:
                    self._run(batch)
                except Exception as e:  # report to these waiters instead of killing the engine thread
                    self._fail(batch, e)

    def _loop(self):
        while True:
            inbox = self._inbox
            inbox.collect(bool(self._groups), self.max_batch, self.wait_s)
            if inbox.closing:
                for r in [*(r for g in self._groups.values() for r in g.rows), *inbox.waiting]:
                    if r.finish is None:
                        r.finish_as("cancelled")
                self._groups.clear()
                inbox.waiting.clear()
                while inbox.jobs:  # a caller waits on each: finish them
                    inbox.jobs.popleft().run()
                return
            while inbox.jobs:
                inbox.jobs.popleft().run()
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

    def _forward(self, adapter, cache, **kw):
        import torch
        ctx = self.select_adapter(adapter) if self.select_adapter is not None else contextlib.nullcontext()
        with ctx, torch.inference_mode(), sampled_logits():  # only sampled from (llm/packing.py)
            # the cache object is updated in place, so the output's copy of it is not needed
            return self.model(use_cache=True, logits_to_keep=1, **{cache_kwarg(self.model): cache}, **kw)

    def _run(self, batch: list[Request]) -> None:
        """Prefill newly admitted requests of one adapter as one left-padded batch, sample their first
        token and merge them into the adapter's running batch."""
        import torch
        self.batches_run += 1
        self.max_batch_seen = max(self.max_batch_seen, len(batch))
        dev = self.model.device
        # the same prompt n times (SDF's n candidates) is prefilled once; its row is then copied
        prompts: dict = {}
        row_of = [prompts.setdefault(tuple(r.prompt_ids), len(prompts)) for r in batch]
        ids, mask = _left_padded(list(prompts), self.pad_id)
        for r in batch:
            r.gen = torch.Generator()
            r.gen.manual_seed(r.row_seed if r.row_seed is not None else random.getrandbits(63))
        mask = mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = growing_cache()
        out = self._forward(batch[0].adapter, cache, input_ids=ids.to(dev), attention_mask=mask,
                            position_ids=pos)
        logits = out.logits[:, -1]
        if len(prompts) < len(batch):
            idx = torch.tensor(row_of, device=dev)
            cache.batch_select_indices(idx)
            mask, logits = mask[idx], logits[idx]
        choice = RowSampler([r.params for r in batch], [r.gen for r in batch], dev)(logits)
        g = self._groups.get(batch[0].adapter)
        if g is None or not g.rows:
            g = self._groups[batch[0].adapter] = _Group(batch[0].adapter, list(batch), cache, mask, choice)
        else:
            g.merge(batch, cache, mask, choice)
        self._emit(g, choice.tolist(), batch)

    def _step(self, g: _Group) -> None:
        """One decode step for every row of a group."""
        for r in g.rows:
            if r.cancelled.is_set() and r.finish is None:
                r.finish_as("cancelled")
        g.prune()
        if not g.rows:
            return
        self.max_batch_seen = max(self.max_batch_seen, len(g.rows))
        self._emit(g, g.decode(self._forward, self.model.device), g.rows)

    def _emit(self, g: _Group, tokens: list[int], rows: list[Request]) -> None:
        for r, t in zip(rows, tokens):
            if r.finish is None:
                r.advance(t, self.tok, self.eos_ids)
        g.prune()
