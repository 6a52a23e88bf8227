"""A batching generation engine for local transformers models.

Requests from many threads (collection workers, server handlers) are gathered for a few
milliseconds and run through one `model.generate` call. transformers' generate takes one sampling
configuration per call, so per-request temperature, top-p, seed, stop strings, max tokens,
streaming and cancellation are plugged in through its own hooks (a logits processor that samples
each row with the row's settings, a stopping criterion per row, a streamer that decodes per row)
instead of a hand-written decoding loop.
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


def _draw(sp, si, u, top_ps=None):
    """Inverse-CDF sampling per row: sp are probabilities (sorted descending when top_ps is given, and
    then cut to the nucleus), si their token ids (None: sp is the whole vocabulary in order), u one
    uniform number per row from the row's own generator."""
    import torch
    if top_ps is not None:
        keep = sp.cumsum(-1) - sp < top_ps
        keep[:, 0] = True  # top_p=0 means the single most likely token, not none
        sp = sp * keep
    cum = sp.cumsum(-1)
    idx = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True).clamp_max(cum.shape[-1] - 1)
    return (idx if si is None else si.gather(1, idx)).squeeze(1)


class BatchEngine:
    """`select_adapter(adapter)` (optional) returns a context manager that makes a request's adapter the
    active one for a batch; a batch only ever holds requests for one adapter, because a peft model
    has one active adapter set per forward pass."""

    def __init__(self, model, tokenizer, *, max_batch: int = 16, wait_s: float = 0.02, eos_ids=(),
                 select_adapter=None):
        self.model, self.tok = model, tokenizer
        self.max_batch, self.wait_s = max_batch, wait_s
        self.select_adapter = select_adapter
        self._held: collections.deque[Request] = collections.deque()  # other adapters' requests, in order
        self.eos_ids = sorted({i for i in eos_ids if i is not None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._queue: queue.Queue[Request] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches_run = 0
        self.max_batch_seen = 0

    def submit(self, prompt_ids: list[int], params: GenParams, row_seed: int | None = None,
               adapter=None) -> Request:
        req = Request(prompt_ids, params, row_seed, adapter)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="baize-engine", daemon=True)
                self._thread.start()
                atexit.register(self.close)
        self._queue.put(req)
        return req

    def close(self) -> None:
        """Stop the engine thread (a torch thread killed at interpreter exit aborts the process)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _next_batch(self) -> list[Request] | None:
        """Up to max_batch requests for one adapter: held-back requests first (oldest first), then
        whatever arrives within wait_s of the first; requests for other adapters wait their turn."""
        if self._held:
            first = self._held.popleft()
        else:
            first = self._queue.get()
            if first is None:
                return None
        batch, rest = [first], collections.deque()
        while self._held:
            r = self._held.popleft()
            (batch if r.adapter == first.adapter and len(batch) < self.max_batch else rest).append(r)
        self._held = rest
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # handled after this batch
                break
            (batch if nxt.adapter == first.adapter else self._held).append(nxt)
        return batch

    def _loop(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [r for r in batch if not self._drop_cancelled(r)]
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as e:  # report to every waiter instead of killing the engine thread
                for r in batch:
                    if r.finish is None:
                        r.events.put(("error", e))

    @staticmethod
    def _drop_cancelled(r: Request) -> bool:
        if r.cancelled.is_set():
            r.events.put(("done", Completion("", len(r.prompt_ids), 0, "cancelled")))
            return True
        return False

    def _run(self, batch: list[Request]) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessor, StoppingCriteria
        self.batches_run += 1
        self.max_batch_seen = max(self.max_batch_seen, len(batch))
        width = max(len(r.prompt_ids) for r in batch)
        # left padding: every row's next token is at the same position
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        gens = []
        for r in batch:
            g = torch.Generator()
            g.manual_seed(r.row_seed if r.row_seed is not None else random.getrandbits(63))
            gens.append(g)
        engine = self

        temps = torch.tensor([r.params.temperature for r in batch], dtype=torch.float32)
        top_ps = torch.tensor([r.params.top_p for r in batch], dtype=torch.float32)
        greedy = (temps <= 0).to(self.model.device)
        top_ps = torch.where(greedy.cpu(), 0.0, top_ps)  # a greedy row must not force the slow full sort
        temps, top_ps = temps.clamp_min(1e-5).to(self.model.device)[:, None], top_ps.to(self.model.device)[:, None]

        class RowSampler(LogitsProcessor):
            # Samples each row with its own temperature/top-p/generator, then leaves only the chosen
            # token so generate's greedy step picks it. Batched, not one row at a time: with a 49k
            # vocabulary a per-row softmax+sort loop was most of the step time on CPU. Each row draws
            # its uniform number from its own generator, so a seed gives the same text in any batch.
            def __call__(self, input_ids, scores):
                scores = scores.float()
                choice = scores.argmax(-1)
                if not bool(greedy.all()):
                    probs = torch.softmax(scores / temps, dim=-1)
                    u = torch.stack([torch.rand((), generator=g) for g in gens]).to(probs.device)
                    sampled = torch.empty_like(choice)
                    whole = (top_ps >= 1.0).squeeze(1)  # no nucleus: sample from the whole distribution
                    if bool(whole.any()):
                        sampled[whole] = _draw(probs[whole], None, u[whole])
                    rest = ~whole
                    if bool(rest.any()):
                        # the nucleus is a prefix of the sorted probabilities: when the top k hold top_p of
                        # the mass, only they need sorting (~10x cheaper); rows with flatter distributions
                        # are sorted whole, on their own
                        sp, si = probs[rest].topk(min(256, probs.shape[-1]), dim=-1)
                        short = (sp.sum(-1, keepdim=True) < top_ps[rest]).squeeze(1)
                        part = _draw(sp, si, u[rest], top_ps[rest])
                        if bool(short.any()):
                            rows = rest.nonzero().squeeze(1)[short]
                            fp, fi = probs[rows].sort(dim=-1, descending=True)
                            part[short] = _draw(fp, fi, u[rows], top_ps[rows])
                        sampled[rest] = part
                    choice = torch.where(greedy, choice, sampled)
                out = torch.full_like(scores, float("-inf"))
                out[torch.arange(len(batch), device=out.device), choice] = 0.0
                return out

        class RowStop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.tensor([r.finish is not None for r in batch], dtype=torch.bool)

        class RowStreamer:
            first = True

            def put(self, value):
                if self.first:  # generate hands the prompt over first
                    self.first = False
                    return
                for r, t in zip(batch, value.view(-1).tolist()):
                    if r.finish is None:
                        engine._advance(r, t)

            def end(self):
                pass

        cfg = GenerationConfig(do_sample=False, max_new_tokens=max(r.params.max_tokens for r in batch),
                               pad_token_id=self.pad_id, eos_token_id=self.eos_ids or None)
        adapter = (self.select_adapter(batch[0].adapter) if self.select_adapter is not None
                   else contextlib.nullcontext())
        with adapter, torch.inference_mode():
            self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                generation_config=cfg, logits_processor=[RowSampler()],
                                stopping_criteria=[RowStop()], streamer=RowStreamer())
        for r in batch:
            if r.finish is None:
                self._finish(r, "length")

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
