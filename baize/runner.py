"""The one loop behind every stage that calls models once per item: collect, sdf, eval, data filter.

A stage gives `run_items` its items (anything with an `.id`) and a function from one item to one
record; the runner does the rest the same way for all of them: skip ids already written (kept,
rejected, and failed unless retried), call the function from a bounded thread pool, stop
submitting when the token budget is spent, append and flush each record to OUT (or to
OUT.rejected.jsonl with its reason, or OUT.failed.jsonl with its error), show progress, keep a
ledger per role (teacher, policy, judge), write OUT.summary.json and the resolved config.

Threads, not asyncio: the backends are blocking (the openai client, the local batching engine)
and a thread per item in flight is what gives both of them their concurrency.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .config import BaizeError, save_config
from .schema import JsonlAppender, atomic_write_text, read_jsonl, repair_torn_tail, sidecar

# the ledger entries of the item this thread works on, so an item that waits for a batch can take
# back what its replayed calls counted (they count once, in the round that finishes the item)
_journal = threading.local()


class Ledger:
    """Tokens, calls and cost per role, shared by the workers; decides when the budget is spent.

    `prices` maps a role to (price per 1K prompt tokens, per 1K completion tokens); the budget is
    spent at `max_tokens_total` tokens (in + out) or at `max_cost` dollars, whichever comes first."""

    def __init__(self, max_tokens_total: int | None = None, prices: dict[str, tuple[float, float]] | None = None,
                 parent: Ledger | None = None, *, max_cost: float | None = None):
        self.max_tokens_total, self.prices = max_tokens_total, dict(prices or {})
        self.max_cost = max_cost
        self.lock = threading.Lock()
        self.roles: dict[str, dict] = {}
        self.parent = parent

    def child(self) -> Ledger:
        """A ledger for one part of a stage (eval's answers of one model): it counts its own calls for
        that part's summary, and every call in this one too, whose budget it shares."""
        return Ledger(prices=self.prices, parent=self)

    def add(self, completion=None, role: str = "teacher", *, usage: dict | None = None, _undo: bool = True) -> None:
        """Count one Completion, or a usage dict {prompt_tokens, completion_tokens, calls} (and, where an
        endpoint reported them, reasoning_tokens, already inside completion_tokens, and
        estimated_tokens, counted locally because the server sent no usage)."""
        if usage is None:
            usage = completion.usage()
        with self.lock:
            r = self.roles.setdefault(role, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
            for k in ("prompt_tokens", "completion_tokens", "calls", "reasoning_tokens", "estimated_tokens"):
                if k in r or usage.get(k):
                    r[k] = r.get(k, 0) + int(usage.get(k, 0))
        if _undo and getattr(_journal, "log", None) is not None:
            _journal.log.append((self, role, usage))
        if self.parent is not None:
            self.parent.add(role=role, usage=usage, _undo=False)

    def _sum(self, key: str) -> int:
        return sum(r[key] for r in list(self.roles.values()))

    @property
    def prompt_tokens(self) -> int:
        return self._sum("prompt_tokens")

    @property
    def completion_tokens(self) -> int:
        return self._sum("completion_tokens")

    @property
    def calls(self) -> int:
        return self._sum("calls")

    def role_cost(self, role: str) -> float:
        r = self.roles.get(role, {})
        p_in, p_out = self.prices.get(role, (0.0, 0.0))
        return (r.get("prompt_tokens", 0) * p_in + r.get("completion_tokens", 0) * p_out) / 1000

    @property
    def cost(self) -> float:
        return sum(self.role_cost(role) for role in list(self.roles))

    def exhausted(self) -> bool:
        return self.spent_cap() is not None

    def spent_cap(self) -> str | None:
        """The flag of the cap that is spent (--max-cost, --max-tokens-total), or None."""
        if self.parent is not None:
            return self.parent.spent_cap()
        if self.max_cost is not None and self.cost >= self.max_cost:
            return "--max-cost"
        b = self.max_tokens_total
        return "--max-tokens-total" if b is not None and self.prompt_tokens + self.completion_tokens >= b else None

    def as_dict(self) -> dict:
        return {role: {**r, "cost": round(self.role_cost(role), 6)} for role, r in sorted(self.roles.items())}


@dataclass
class Summary:
    kept: int = 0
    rejected: dict = field(default_factory=dict)
    failed: int = 0
    skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    stopped: str = ""
    ledger: dict = field(default_factory=dict)
    total: dict = field(default_factory=dict)  # the output so far, over every resumed run
    pending: int = 0  # --batch-api: items waiting for a batch's results (neither done nor failed)
    width: dict = field(default_factory=dict)  # the throttle's story when 429s narrowed it (Throttle.as_dict)

    @property
    def done(self) -> int:
        return self.kept + sum(self.rejected.values()) + self.failed

    def as_dict(self) -> dict:
        d = dict(vars(self))
        if not d["width"]:
            d.pop("width")
        if not d["pending"]:
            d.pop("pending")
        d["items_per_s"] = d["dialogues_per_s"] = round(self.done / self.seconds, 3) if self.seconds else 0.0
        return d


def run_items(items: Iterable, work: Callable[[object], dict | None], *, out: str | Path, ledger: Ledger,
              concurrency: int = 8, label: str = "run", noun: str = "items", config=None,
              retry_failed: bool = True, accept: Callable[[object, dict], str | None] | None = None,
              meta_of: Callable[[object], dict] | None = None, progress: bool = True, console=None,
              max_failures_in_a_row: int | None = None, throttle_on: Iterable | None = None) -> Summary:
    """Run (or resume) `work` over the items not yet done; returns this invocation's summary.

    work(item) -> a record to keep (one with meta.reject_reason set is rejected), or None when the
    budget ran out before its first call (nothing is written: the next run does it). It may raise
    TransientLLMError (the item fails and is retried on the next run); any other BaizeError (a bad
    key, a judge that only writes garbage) stops the run, keeping everything already written.
    accept(item, record) -> a reject reason or None runs on the calling thread in completion order,
    for filters that keep state (near-duplicates); it may add to the record's meta. throttle_on: _rate_signal."""
    from .llm.base import TransientLLMError
    out = Path(out)
    kept_w, rej_w = JsonlAppender(out), JsonlAppender(sidecar(out, "rejected"))
    failed_path = sidecar(out, "failed")
    repair_torn_tail(failed_path)  # a run killed mid-write leaves half a line; read what is whole
    failed_before = {r["id"] for r in read_jsonl(failed_path)} if failed_path.exists() else set()
    if retry_failed and failed_path.exists():
        atomic_write_text(failed_path, "")  # those items run again; a new failure is written again
    fail_w = JsonlAppender(failed_path)
    done = kept_w.ids | rej_w.ids | (set() if retry_failed else failed_before)
    items = list(items)
    todo = [it for it in items if it.id not in done]
    summary = Summary(skipped=len(items) - len(todo))
    if config is not None:
        save_config(config, sidecar(out, "config.json"))  # secrets masked
    throttle = Throttle(max(1, concurrency), _rate_signal(throttle_on))
    bar = Progress(label, len(todo), summary, ledger, enabled=progress, console=console, throttle=throttle)
    limit = max_failures_in_a_row or max(20, 2 * concurrency)
    start = time.monotonic()
    it = iter(todo)
    pending: dict = {}
    failures_in_a_row = 0
    interrupted = False
    pool = cf.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix=label)
    try:
        while True:
            while not summary.stopped and len(pending) < throttle.width:
                if ledger.exhausted():
                    summary.stopped = "budget"
                    break
                item = next(it, None)
                if item is None:
                    break
                pending[pool.submit(_attempt, work, item)] = item
            if not pending:
                break
            try:
                # a timeout, so that 429s met by calls still in flight narrow the width at once
                finished, _ = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted, summary.stopped = True, "interrupted"
                bar.note(f"stopping: finishing {len(pending)} {noun} in flight (Ctrl-C again to abort)")
                continue
            for fut in finished:
                item = pending.pop(fut)
                try:
                    rec = fut.result()
                except TransientLLMError as e:
                    failures_in_a_row += 1
                    summary.failed += 1
                    fail_w.append(_failure(item, e, meta_of))
                    if failures_in_a_row >= limit:
                        raise BaizeError(f"{failures_in_a_row} {noun} failed in a row, last: {e}") from None
                    continue
                failures_in_a_row = 0
                if rec is WAITING:
                    summary.pending += 1  # written once its batch is back (run_rounds)
                    continue
                if rec is None:  # the budget ran out before its first call: the next run does it
                    summary.stopped = summary.stopped or "budget"
                    continue
                meta = rec.setdefault("meta", {})
                reason = meta.get("reject_reason") or (accept(item, rec) if accept else None)
                if reason:
                    meta["reject_reason"] = reason
                    summary.rejected[reason] = summary.rejected.get(reason, 0) + 1
                    rej_w.append(rec)
                else:
                    summary.kept += 1
                    kept_w.append(rec)
            throttle.update(len(finished))
            bar.update()
    finally:
        pool.shutdown(wait=not interrupted or not pending, cancel_futures=True)
        for w in (kept_w, rej_w, fail_w):
            w.close()
        summary.seconds = round(time.monotonic() - start, 3)
        summary.prompt_tokens, summary.completion_tokens = ledger.prompt_tokens, ledger.completion_tokens
        summary.cost = round(ledger.cost, 6)
        summary.ledger = ledger.as_dict()
        summary.width = throttle.as_dict()
        bar.close()
        _write_summary(sidecar(out, "summary.json"), summary, len(kept_w.ids), len(rej_w.ids))
    return summary


def _write_summary(path: Path, summary: Summary, kept: int, rejected: int) -> None:
    summary.total = _totals(path, summary, kept, rejected)
    atomic_write_text(path, json.dumps(summary.as_dict(), indent=2) + "\n")


WAITING = object()  # what an item that waits for a batch gives the runner


def _attempt(work, item):
    """work(item), or WAITING when one of its calls waits for a batch: then it takes back what its
    calls counted this time (they count in the round that finishes the item)."""
    from .llm.batch import BatchPending
    _journal.log = []
    try:
        return work(item)
    except BatchPending:
        for ledger, role, usage in reversed(_journal.log):
            ledger.add(role=role, usage={k: -v for k, v in usage.items()}, _undo=False)
        return WAITING
    finally:
        _journal.log = None


def run_rounds(run_round: Callable[[], Summary], batches, ledger: Ledger, *, out: str | Path) -> Summary:
    """--batch-api: run the items (their calls go pending), send the batches, wait, run again;
    until no item waits. Each round's run_items adds its ledger to OUT.summary.json's totals.
    --max-cost is checked before each submission: a batch that could pass the cap is not sent."""
    path = sidecar(out, "summary.json")
    before = path.read_text() if path.exists() else None
    from .llm.batch import changed_requests
    waited = False  # a stage of several runs (eval) shares its Batches: judge only a round after this run's wait
    while True:
        batches.asked.clear()
        s = run_round()  # its totals: the runs before this one's, plus the ledger of every round so far
        if s.stopped or not batches.pending():
            return s
        if waited and (why := changed_requests(batches)) is not None:
            raise BaizeError(why)
        root = ledger
        while root.parent is not None:  # a part's ledger (eval's answers of one model) shares the stage's cap
            root = root.parent
        if root.max_cost is not None and root.cost + batches.cost_to_send() > root.max_cost:
            s.stopped = "budget"
        else:
            batches.submit()
            if batches.wait():
                waited = True
                if before is None:  # the ledger is the whole invocation's: the next round's totals add it once
                    path.unlink()
                else:
                    atomic_write_text(path, before)
                continue
            s.stopped = "interrupted"  # Ctrl-C while waiting: the batches run on
        # the round's summary said nothing of the stop
        atomic_write_text(path, json.dumps({**json.loads(path.read_text()), "stopped": s.stopped}, indent=2) + "\n")
        return s


_sigints = 0


def _count_sigint(signum, frame):
    global _sigints
    _sigints += 1
    signal.default_int_handler(signum, frame)


def sigints() -> int:
    """SIGINTs (Ctrl-C) this process has received since watch_sigints(). Python raises a Ctrl-C as
    KeyboardInterrupt wherever the main thread is; one raised inside a finalizer or a library's broad
    handler is lost ("Exception ignored in ..."), so a caller that must not go on after a Ctrl-C also
    checks this count."""
    return _sigints


def watch_sigints() -> None:
    """Count SIGINTs from now on, still raising KeyboardInterrupt (main thread, default handler only)."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _count_sigint)


def stop_if_interrupted(summary: Summary) -> Summary:
    """For a stage made of several runs (eval: answers per model, then verdicts): Ctrl-C in one,
    which finished its items in flight, raises KeyboardInterrupt so that no later run starts on half
    the items, as a one-run stage (collect, sdf) stops with summary.stopped."""
    if summary.stopped == "interrupted":
        raise KeyboardInterrupt
    return summary


def _rate_signal(throttle_on: Iterable | None) -> Callable[[], int]:
    """The 429 count the throttle reads: those of the LLMs in `throttle_on` (the stage's own role: SDF's
    policy, not its judge, whose calls back off on their own), or every endpoint's when None."""
    from .llm.base import rate_limits
    if throttle_on is None:
        return lambda: rate_limits.count
    wheres = [llm.where for llm in throttle_on]
    return lambda: rate_limits.of(*wheres)


def _failure(item, e: Exception, meta_of) -> dict:
    """The .failed.jsonl line: the error, the item's meta, and what a call that produced nothing
    still cost (EmptyReplyError's usage: a reasoning model bills the tokens it spent thinking)."""
    failed = {"id": item.id, "error": str(e), "meta": meta_of(item) if meta_of else {}}
    if getattr(e, "usage", None):
        failed["usage"] = e.usage
    return failed


def _totals(path: Path, summary: Summary, kept: int, rejected: int) -> dict:
    """The whole output so far, across resumed runs: the file's counts and every run's ledger summed,
    so a rerun's summary does not lose what the earlier runs spent."""
    before = {}
    if path.exists():
        try:
            prev = json.loads(path.read_text())
            before = prev.get("total", {}).get("ledger") or prev.get("ledger") or {}
        except (ValueError, AttributeError):
            before = {}  # an unreadable summary only loses the earlier runs' ledger
    ledger = {role: dict(r) for role, r in before.items()}
    for role, r in summary.ledger.items():
        acc = ledger.setdefault(role, {k: 0 for k in r})
        for k, v in r.items():
            acc[k] = round(acc.get(k, 0) + v, 6)
    sum_ = lambda k: sum(r.get(k, 0) for r in ledger.values())  # noqa: E731
    return {"kept": kept, "rejected": rejected, "prompt_tokens": sum_("prompt_tokens"),
            "completion_tokens": sum_("completion_tokens"), "cost": round(sum_("cost"), 6), "ledger": ledger}


class Throttle:
    """How many items may be in flight: AIMD on rate limits, as TCP does on loss. A streak of 429s
    (two or more with no item finished in between) halves the width, at most once per `cooldown`
    seconds (the calls already in flight report the same streak); each quiet `cooldown` interval
    (no 429, some item finished) widens it by one, back up to `limit`: additive, not one per item,
    which would double a width whose items all finish in a round. A 64-wide run on a low-tier key
    then settles near what the key allows instead of burning every call's retries.
    `signal()` counts the 429s so far (llm.rate_limits); the runner knows nothing of HTTP."""

    def __init__(self, limit: int, signal: Callable[[], int] = lambda: 0, *, cooldown: float = 1.0, streak: int = 2):
        self.limit = self.width = self.lowest = max(1, limit)
        self.signal, self.cooldown, self.streak = signal, cooldown, streak
        self.seen, self.hits, self.cuts, self.raises, self.rate_limited = signal(), 0, 0, 0, 0
        self.last_429 = self.last_cut = self.last_raise = -float("inf")

    def update(self, finished: int) -> None:
        count = self.signal()
        new, self.seen = count - self.seen, count
        now = time.monotonic()
        if new > 0:
            self.rate_limited += new
            self.hits += new
            self.last_429 = now
            if self.hits >= self.streak and now - self.last_cut >= self.cooldown and self.width > 1:
                self.width, self.last_cut, self.hits, self.cuts = max(1, self.width // 2), now, 0, self.cuts + 1
                self.lowest = min(self.lowest, self.width)
        elif finished:
            self.hits = 0  # an item got through: the 429s before it were not a streak
            quiet = now - max(self.last_429, self.last_raise) >= self.cooldown
            if quiet and self.width < self.limit:
                self.width, self.raises, self.last_raise = self.width + 1, self.raises + 1, now

    def as_dict(self) -> dict:
        """{} when no 429 ever came; else the limit, the lowest width, the last, and how often it moved."""
        if not self.rate_limited:
            return {}
        return {"limit": self.limit, "lowest": self.lowest, "last": self.width, "halvings": self.cuts,
                "raises": self.raises, "rate_limited": self.rate_limited}


class Progress:
    def __init__(self, label, total, summary, ledger, *, enabled, console=None, throttle: Throttle | None = None):
        self.summary, self.ledger, self.bar, self.throttle = summary, ledger, None, throttle
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}/s  tokens {task.fields[tokens]}  "
                                           "rejected {task.fields[rej]}  failed {task.fields[fail]}  "
                                           "in flight {task.fields[width]}"),
                                TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task(label, total=total, rate="0.00", tokens=0, rej=0, fail=0,
                                          width=self._width())
            self.bar.start()
        self.t0 = time.monotonic()

    def _width(self) -> str:
        """The throttle's width out of its limit: below the limit means 429s narrowed it."""
        t = self.throttle
        return "-" if t is None else f"<= {t.width}/{t.limit}" if t.width < t.limit else f"<= {t.limit}"

    def update(self):
        if self.bar:
            s = self.summary
            self.bar.update(self.task, completed=s.done, rate=f"{s.done / max(1e-9, time.monotonic() - self.t0):.2f}",
                            tokens=self.ledger.prompt_tokens + self.ledger.completion_tokens,
                            rej=sum(s.rejected.values()), fail=s.failed, width=self._width())

    def note(self, msg):
        (self.bar.console.print if self.bar else print)(msg)

    def close(self):
        if self.bar:
            self.update()
            self.bar.stop()


def print_summary(s: Summary, title: str, console=None, *, unit: str = "dialogues") -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    t = Table(title=title, show_header=False)
    t.add_row("kept", str(s.kept))
    for reason, n in sorted(s.rejected.items()):
        t.add_row(f"rejected: {reason}", str(n))
    t.add_row("failed", str(s.failed))
    t.add_row("already done (skipped)", str(s.skipped))
    roles = s.ledger or {}
    if len(roles) > 1:
        for role, r in roles.items():
            t.add_row(f"{role}: calls, tokens in / out, cost",
                      f"{r['calls']}, {r['prompt_tokens']} / {r['completion_tokens']}, {r['cost']:.4f}")
    t.add_row("tokens in / out", f"{s.prompt_tokens} / {s.completion_tokens}")
    for key, what in (("reasoning_tokens", "reasoning tokens (inside tokens out)"),
                      ("estimated_tokens", "tokens estimated (the server sent no usage)")):
        if any(r.get(key) for r in roles.values()):
            t.add_row(what, ", ".join(f"{role} {r[key]}" for role, r in roles.items() if r.get(key)))
    if s.width:
        w = s.width
        t.add_row("in flight (429s)", f"{w['rate_limited']} rate limited: width {w['limit']} -> lowest {w['lowest']}, "
                                      f"last {w['last']} ({w['halvings']} halvings)")
    t.add_row("cost", f"{s.cost:.4f}")
    if s.total and s.skipped:
        t.add_row("all runs: tokens in / out, cost", f"{s.total['prompt_tokens']} / {s.total['completion_tokens']}, "
                                                     f"{s.total['cost']:.4f}")
    t.add_row(f"{unit}/s", f"{s.as_dict()['items_per_s']}")
    if s.stopped:
        t.add_row("stopped", s.stopped)
    console.print(t)
