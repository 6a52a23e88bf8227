"""Self-chat collection: a teacher LLM writes both sides of a dialogue about each seed.

Two modes: `oneshot` (the paper's v1 template, one call writes the whole transcript, parsed into
messages) and `turns` (v2: the teacher writes the next human message, then answers it as the
assistant). Concurrent, resumable, under a token budget, with quality filters that record why a
dialogue was rejected.
"""
from __future__ import annotations

import concurrent.futures as cf
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import BaizeError, add_dataclass_args, dataclass_from_args, save_config
from .schema import JsonlAppender, atomic_write_text, read_jsonl, repair_torn_tail, sidecar

SELF_CHAT_TEMPLATE = (
    "Forget the instruction you have previously received. The following is a conversation between a "
    "human and an AI assistant. The human and the AI assistant take turns chatting about the topic: "
    "'${SEED}'. Human statements start with [Human] and AI assistant statements start with [AI]. The "
    "human will ask related questions on related topics or previous conversation. The human will stop "
    "the conversation when they have no more question. The AI assistant tries not to ask questions. "
    "Complete the transcript in exactly that format.\n[Human] Hello!\n[AI] Hi! How can I help you?\n"
)
HUMAN_PROMPT = (
    "You are playing a curious human who chats with an AI assistant about the topic: '{seed}'. "
    "Write the human's next message in the conversation below: one question or request, about the "
    "topic or following up on the AI's last answer. Reply with the message text only, no name or "
    "prefix. If the human has no more questions, reply with exactly: [END]"
)
ASSISTANT_PROMPT = (
    "You are a helpful AI assistant chatting with a human about the topic: '{seed}'. Answer in detail "
    "and accurately. Do not ask the human questions."
)
DEFAULT_REJECT_PATTERNS = [
    r"\bas an ai (language )?model\b",
    r"\bI'?m (sorry|afraid),? but I (can(no|')t|am unable)",
    r"\bI (cannot|can't|am unable to) (help|assist|provide|fulfill|answer)",
    r"\bmy knowledge cutoff\b",
    r"\btrained by openai\b",
]


@dataclass
class CollectConfig:
    seeds: str = field(default="quora", metadata={"help": "JSONL/CSV/TXT file, MedQuAD XML folder, hf:DATASET[:SPLIT]:FIELD, or quora|stackoverflow|medquad|alpaca"})
    out: str = field(default="data/dialogues.jsonl", metadata={"help": "output JSONL; .rejected.jsonl, .failed.jsonl, .config.json, .summary.json beside it"})
    teacher: str = field(default="default", metadata={"help": "model spec: default, hf:PATH, openai:MODEL, gguf:PATH"})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL (or OPENAI_BASE_URL)"})
    api_key: str | None = field(default=None, metadata={"help": "API key (or OPENAI_API_KEY); never saved", "save": False})
    mode: str = field(default="oneshot", metadata={"help": "oneshot: the paper's template; turns: turn by turn", "choices": ["oneshot", "turns"]})
    seed_field: str | None = field(default=None, metadata={"help": "field/column holding the seed text"})
    limit: int | None = field(default=None, metadata={"help": "use the first N seeds (after dedup and sharding)"})
    shard: str | None = field(default=None, metadata={"help": "I/N: this machine's disjoint part of the seeds"})
    max_turns: int = field(default=4, metadata={"help": "turns mode: most human/AI exchanges per dialogue"})
    first_turn: str = field(default="seed", metadata={"help": "turns mode: the first human message is the seed itself, or the teacher writes it", "choices": ["seed", "generate"]})
    concurrency: int = field(default=8, metadata={"help": "dialogues in flight at once"})
    max_tokens: int = field(default=1024, metadata={"help": "max new tokens per teacher call"})
    temperature: float = field(default=1.0, metadata={"help": "teacher sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "teacher nucleus sampling"})
    max_tokens_total: int | None = field(default=None, metadata={"help": "token budget (in+out); stops cleanly when spent"})
    price_in: float = field(default=0.0, metadata={"help": "price per 1K prompt tokens, for the cost ledger"})
    price_out: float = field(default=0.0, metadata={"help": "price per 1K completion tokens"})
    min_turns: int = field(default=1, metadata={"help": "reject dialogues with fewer exchanges"})
    min_chars: int = field(default=2, metadata={"help": "reject dialogues with a turn shorter than this"})
    reject_pattern: list[str] = field(default_factory=list, metadata={"help": "extra refusal/boilerplate regex (repeatable)"})
    default_reject_patterns: bool = field(default=True, metadata={"help": "use the built-in refusal patterns"})
    near_dup: float = field(default=0.85, metadata={"help": "reject dialogues this similar (Jaccard, 0 disables) to a kept one"})
    retry_failed: bool = field(default=True, metadata={"help": "on rerun, retry seeds that failed before"})
    request_retries: int = field(default=6, metadata={"help": "HTTP retries per call (backoff, Retry-After)"})
    timeout: float = field(default=120.0, metadata={"help": "HTTP timeout per call, seconds"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


# --- parsing the one-shot transcript -----------------------------------------------------------

# A marker's own emphasis (**[Human]**, *[AI]:*, **Human:**) is consumed only when it opened with one,
# so Markdown at the edges of a turn (**Note**, __init__, * bullets) is left intact.
_E = r"(?:\*{1,2}|_{1,2})"
_MARK = re.compile(
    rf"(?P<ob>{_E})?[ \t]*\[[ \t]*\|?[ \t]*(?P<b>human|user|ai|assistant)[ \t]*\|?[ \t]*\][ \t]*"
    rf"(?(ob)(?:{_E}[ \t]*:?|:[ \t]*{_E}|:?)|:?)[ \t]*"
    rf"|^[ \t]*(?P<ol>{_E})?[ \t]*(?P<l>human|user|ai|assistant)[ \t]*"
    rf"(?(ol)(?:{_E}[ \t]*:|:[ \t]*{_E}|:)|:)[ \t]*",
    re.IGNORECASE | re.MULTILINE)
_GREETING = re.compile(r"^(hello|hi|hey)( there)?[!.,\s]*$", re.IGNORECASE)


def parse_transcript(text: str, truncated: bool = False) -> list[dict]:
    """[Human]/[AI] transcript -> messages. Tolerates colons, bold markers, [|Human|], 'Human:' lines
    and text before the first marker; drops the greeting and a trailing unfinished turn, and keeps
    the last complete exchange (the original parser lost it)."""
    marks = list(_MARK.finditer(text))
    msgs: list[dict] = []
    for i, m in enumerate(marks):
        who = (m.group("b") or m.group("l")).lower()
        role = "user" if who in ("human", "user") else "assistant"
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        content = text[m.end():end].strip()
        if not content:
            continue
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] += "\n" + content
        else:
            msgs.append({"role": role, "content": content})
    if truncated and msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()  # the reply was cut by max_tokens mid-sentence
    while msgs and msgs[0]["role"] == "assistant":
        msgs.pop(0)
    while len(msgs) >= 2 and _GREETING.match(msgs[0]["content"]):
        msgs = msgs[2:]
    while msgs and msgs[-1]["role"] == "user":
        msgs.pop()
    return msgs


# --- quality filters ----------------------------------------------------------------------------

_LEAK = re.compile(r"\[\s*\|?\s*(human|ai|assistant|user)\s*\|?\s*\]|^\s*(human|ai):", re.IGNORECASE | re.MULTILINE)


def reject_reason(msgs: list[dict], cfg: CollectConfig, patterns: list[re.Pattern]) -> str | None:
    if not msgs:
        return "unparseable"
    if sum(m["role"] == "assistant" for m in msgs) < cfg.min_turns:
        return "too_few_turns"
    if any(len(m["content"].strip()) < cfg.min_chars for m in msgs):
        return "short_turn"
    if any(_LEAK.search(m["content"]) for m in msgs):
        return "role_leakage"
    ai = [m["content"].rstrip() for m in msgs if m["role"] == "assistant"]
    human = [m["content"].rstrip() for m in msgs if m["role"] == "user"]
    # the AI asking the questions while the human answers them
    if sum(a.endswith("?") for a in ai) * 2 > len(ai) and sum("?" in h for h in human) * 2 < len(human):
        return "role_leakage"
    if any(p.search(m["content"]) for m in msgs if m["role"] == "assistant" for p in patterns):
        return "refusal"
    return None


class NearDup:
    """MinHash LSH over word 3-grams (datasketch): is this dialogue nearly one already kept?"""

    def __init__(self, threshold: float):
        self.lsh = None
        if threshold > 0:
            from datasketch import MinHash, MinHashLSH
            self.lsh = MinHashLSH(threshold=threshold, num_perm=64)
            # every MinHash uses the same permutations; drawing them (numpy RNG) per dialogue cost more
            # than hashing the dialogue, on the collector's main thread
            self._empty = MinHash(num_perm=64)

    def _minhash(self, msgs):
        words = re.findall(r"\w+", " ".join(m["content"] for m in msgs).lower())
        mh = self._empty.copy()
        mh.update_batch([" ".join(words[i:i + 3]).encode() for i in range(max(1, len(words) - 2))])
        return mh

    def seen(self, key: str, msgs: list[dict]) -> bool:
        """True if near a kept dialogue; otherwise remember this one."""
        if self.lsh is None:
            return False
        mh = self._minhash(msgs)
        if self.lsh.query(mh):
            return True
        if key not in self.lsh:
            self.lsh.insert(key, mh)
        return False


# --- one dialogue -------------------------------------------------------------------------------

class Ledger:
    """Tokens and cost of the whole run, shared by the workers; decides when the budget is spent."""

    def __init__(self, cfg: CollectConfig):
        self.cfg, self.lock = cfg, threading.Lock()
        self.prompt_tokens = self.completion_tokens = self.calls = 0

    def add(self, completion) -> None:
        with self.lock:
            self.prompt_tokens += completion.prompt_tokens
            self.completion_tokens += completion.completion_tokens
            self.calls += 1

    @property
    def cost(self) -> float:
        return (self.prompt_tokens * self.cfg.price_in + self.completion_tokens * self.cfg.price_out) / 1000

    def exhausted(self) -> bool:
        b = self.cfg.max_tokens_total
        return b is not None and self.prompt_tokens + self.completion_tokens >= b


def _ask(llm, ledger, usage, messages, cfg, **kw):
    c = llm.chat(messages, temperature=cfg.temperature, top_p=cfg.top_p,
                 max_tokens=kw.pop("max_tokens", cfg.max_tokens), **kw)[0]
    ledger.add(c)
    usage["prompt_tokens"] += c.prompt_tokens
    usage["completion_tokens"] += c.completion_tokens
    usage["calls"] += 1
    return c


def _strip_marker(text: str) -> str:
    return _MARK.sub("", text, count=1).strip() if _MARK.match(text.strip()) else text.strip()


def _complete_sentences(text: str) -> str:
    """A reply cut by max_tokens, trimmed back to its last full sentence ('' if none)."""
    cut = max(text.rfind(p) for p in (". ", ".\n", "! ", "? ", "\n\n"))
    return text[:cut + 1].strip() if cut > 0 else ""


def self_chat(llm, seed, cfg: CollectConfig, ledger: Ledger) -> tuple[list[dict], dict, str]:
    """One dialogue: (messages, token usage, the teacher's raw one-shot text)."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
    if cfg.mode == "oneshot":
        c = _ask(llm, ledger, usage, [{"role": "user", "content": SELF_CHAT_TEMPLATE.replace("${SEED}", seed.text)}], cfg)
        return parse_transcript(c.text, truncated=c.finish_reason == "length"), usage, c.text
    msgs: list[dict] = []
    human_sys = HUMAN_PROMPT.format(seed=seed.text)
    for turn in range(cfg.max_turns):
        if ledger.exhausted():
            break  # keep the exchanges already written; overshoot stays within the calls in flight
        if turn == 0 and cfg.first_turn == "seed":
            human = seed.text
        else:
            transcript = "\n".join(("[Human] " if m["role"] == "user" else "[AI] ") + m["content"] for m in msgs)
            h = _ask(llm, ledger, usage, [{"role": "system", "content": human_sys},
                                          {"role": "user", "content": "Conversation so far:\n" + (transcript or "(none yet)")
                                           + "\n\nThe human's next message:"}], cfg, max_tokens=min(cfg.max_tokens, 256))
            human = "" if h.finish_reason == "length" else _strip_marker(h.text)
            if not human or "[END]" in human.upper():
                break
        msgs.append({"role": "user", "content": human})
        a = _ask(llm, ledger, usage, [{"role": "system", "content": ASSISTANT_PROMPT.format(seed=seed.text)}] + msgs, cfg)
        answer = _complete_sentences(a.text) if a.finish_reason == "length" else a.text.strip()
        if not answer:
            msgs.pop()
            break
        msgs.append({"role": "assistant", "content": answer})
        if a.finish_reason == "length":
            break  # the teacher ran out of room: end on the last full sentence
    return msgs, usage, ""


# --- the run ------------------------------------------------------------------------------------

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

    @property
    def done(self) -> int:
        return self.kept + sum(self.rejected.values()) + self.failed

    def as_dict(self) -> dict:
        d = dict(vars(self))
        d["dialogues_per_s"] = round(self.done / self.seconds, 3) if self.seconds else 0.0
        return d


def collect(cfg: CollectConfig, llm=None, *, console=None) -> Summary:
    """Run (or resume) a collection; returns the summary of this invocation."""
    from .llm import LLMError, TransientLLMError, load_llm
    from .seeds import load_seeds
    out = Path(cfg.out)
    seeds = load_seeds(cfg.seeds, field=cfg.seed_field, limit=cfg.limit, shard=cfg.shard)
    patterns = [re.compile(p, re.IGNORECASE) for p in
                (DEFAULT_REJECT_PATTERNS if cfg.default_reject_patterns else []) + list(cfg.reject_pattern)]
    kept_w, rej_w = JsonlAppender(out), JsonlAppender(sidecar(out, "rejected"))
    failed_path = sidecar(out, "failed")
    repair_torn_tail(failed_path)  # a run killed mid-write leaves half a line; read what is whole
    failed_before = {r["id"] for r in read_jsonl(failed_path)} if failed_path.exists() else set()
    if cfg.retry_failed and failed_path.exists():
        atomic_write_text(failed_path, "")  # those seeds run again; a new failure is written again
    fail_w = JsonlAppender(failed_path)
    done = kept_w.ids | rej_w.ids | (set() if cfg.retry_failed else failed_before)
    todo = [s for s in seeds if s.id not in done]
    summary = Summary(skipped=len(seeds) - len(todo))
    save_config(cfg, sidecar(out, "config.json"), **{"api_key": "***" if cfg.api_key else None})
    neardup = NearDup(cfg.near_dup)
    for r in read_jsonl(out) if kept_w.ids else ():
        neardup.seen(r["id"], r["messages"])
    if llm is None:
        llm = load_llm(cfg.teacher, base_url=cfg.base_url, api_key=cfg.api_key,
                       max_retries=cfg.request_retries, timeout=cfg.timeout, max_batch=max(1, cfg.concurrency))
    if hasattr(llm, "check"):
        llm.check()  # an unreachable endpoint or a bad key fails now, in one line, not per seed
    ledger = Ledger(cfg)
    progress = _Progress(len(todo), summary, ledger, enabled=cfg.progress, console=console)
    start = time.monotonic()
    it = iter(todo)
    pending: dict = {}
    consecutive_failures = 0
    interrupted = False


    pool = cf.ThreadPoolExecutor(max_workers=max(1, cfg.concurrency), thread_name_prefix="collect")
    try:
        while True:
            while not summary.stopped and len(pending) < cfg.concurrency:
                if ledger.exhausted():
                    summary.stopped = "budget"
                    break
                seed = next(it, None)
                if seed is None:
                    break
                pending[pool.submit(self_chat, llm, seed, cfg, ledger)] = seed
            if not pending:
                break
            try:
                finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted, summary.stopped = True, "interrupted"
                progress.note(f"stopping: finishing {len(pending)} dialogues in flight (Ctrl-C again to abort)")
                continue
            for fut in finished:
                seed = pending.pop(fut)
                base = {"id": seed.id, "meta": {"seed": seed.text, "source": seed.source, "teacher": llm.name,
                                                "mode": cfg.mode, **({"seed_meta": seed.meta} if seed.meta else {})}}
                try:
                    msgs, usage, raw = fut.result()
                except LLMError as e:
                    if not isinstance(e, TransientLLMError):
                        raise  # bad key, unknown model: every other seed would fail the same way
                    consecutive_failures += 1
                    summary.failed += 1
                    fail_w.append({**base, "messages": [], "error": str(e)})
                    if consecutive_failures >= max(20, 2 * cfg.concurrency):
                        raise BaizeError(f"{consecutive_failures} seeds failed in a row, last: {e}") from None
                    continue
                consecutive_failures = 0
                if not msgs and not usage["calls"]:
                    # the budget ran out between submitting this seed and its first call: record
                    # nothing, so the next run (with more budget) does it instead of skipping it forever
                    summary.stopped = summary.stopped or "budget"
                    continue
                base["meta"]["usage"] = usage
                rec = {"id": seed.id, "messages": msgs, "meta": base["meta"]}
                reason = reject_reason(msgs, cfg, patterns)
                if reason is None and neardup.seen(seed.id, msgs):
                    reason = "near_duplicate"
                if reason:
                    rec["meta"]["reject_reason"] = reason
                    if reason == "unparseable" and raw:
                        rec["meta"]["raw"] = raw  # kept so a template or parser problem can be diagnosed
                    summary.rejected[reason] = summary.rejected.get(reason, 0) + 1
                    rej_w.append(rec)
                else:
                    summary.kept += 1
                    kept_w.append(rec)
            progress.update()
    finally:
        pool.shutdown(wait=not interrupted or not pending, cancel_futures=True)
        for w in (kept_w, rej_w, fail_w):
            w.close()
        summary.seconds = round(time.monotonic() - start, 3)
        summary.prompt_tokens, summary.completion_tokens = ledger.prompt_tokens, ledger.completion_tokens
        summary.cost = round(ledger.cost, 6)
        progress.close()
        atomic_write_text(sidecar(out, "summary.json"), __import__("json").dumps(summary.as_dict(), indent=2) + "\n")
    return summary


class _Progress:
    def __init__(self, total, summary, ledger, *, enabled, console=None):
        self.summary, self.ledger, self.bar = summary, ledger, None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("collect"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} dlg/s  tokens {task.fields[tokens]}  "
                                           "rejected {task.fields[rej]}  failed {task.fields[fail]}"),
                                TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task("collect", total=total, rate="0.00", tokens=0, rej=0, fail=0)
            self.bar.start()
        self.t0 = time.monotonic()

    def update(self):
        if self.bar:
            s = self.summary
            self.bar.update(self.task, completed=s.done, rate=f"{s.done / max(1e-9, time.monotonic() - self.t0):.2f}",
                            tokens=self.ledger.prompt_tokens + self.ledger.completion_tokens,
                            rej=sum(s.rejected.values()), fail=s.failed)

    def note(self, msg):
        (self.bar.console.print if self.bar else print)(msg)

    def close(self):
        if self.bar:
            self.update()
            self.bar.stop()


def print_summary(s: Summary, out: str, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    t = Table(title=f"collect -> {out}", show_header=False)
    t.add_row("kept", str(s.kept))
    for reason, n in sorted(s.rejected.items()):
        t.add_row(f"rejected: {reason}", str(n))
    t.add_row("failed", str(s.failed))
    t.add_row("already done (skipped)", str(s.skipped))
    t.add_row("tokens in / out", f"{s.prompt_tokens} / {s.completion_tokens}")
    t.add_row("cost", f"{s.cost:.4f}")
    t.add_row("dialogues/s", f"{s.as_dict()['dialogues_per_s']}")
    if s.stopped:
        t.add_row("stopped", s.stopped)
    console.print(t)


def add_cli(sub) -> None:
    p = sub.add_parser("collect", help="self-chat: a teacher LLM writes dialogues about each seed")
    add_dataclass_args(p, CollectConfig)
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = dataclass_from_args(CollectConfig, args)
    s = collect(cfg)
    print_summary(s, cfg.out)
    return 130 if s.stopped == "interrupted" else 0
