"""Self-chat collection: a teacher LLM writes both sides of a dialogue about each seed.

Two modes: `oneshot` (the paper's v1 template, one call writes the whole transcript, parsed into
messages) and `turns` (v2: the teacher writes the next human message, then answers it as the
assistant). Concurrent, resumable, under a token budget, with quality filters that record why a
dialogue was rejected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import add_dataclass_args, dataclass_from_args
from .runner import Ledger, Summary, print_summary as _print_summary, run_items
from .schema import read_jsonl, repair_torn_tail

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

def _ask(llm, ledger, usage, messages, cfg, **kw):
    c = llm.chat(messages, temperature=cfg.temperature, top_p=cfg.top_p,
                 max_tokens=kw.pop("max_tokens", cfg.max_tokens), **kw)[0]
    ledger.add(c, "teacher")
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

def collect(cfg: CollectConfig, llm=None, *, console=None) -> Summary:
    """Run (or resume) a collection; returns the summary of this invocation."""
    from .llm import load_llm
    from .seeds import load_seeds
    out = Path(cfg.out)
    seeds = load_seeds(cfg.seeds, field=cfg.seed_field, limit=cfg.limit, shard=cfg.shard)
    patterns = [re.compile(p, re.IGNORECASE) for p in
                (DEFAULT_REJECT_PATTERNS if cfg.default_reject_patterns else []) + list(cfg.reject_pattern)]
    neardup = NearDup(cfg.near_dup)
    if out.exists():
        repair_torn_tail(out)
        for r in read_jsonl(out):
            neardup.seen(r["id"], r["messages"])
    if llm is None:
        llm = load_llm(cfg.teacher, base_url=cfg.base_url, api_key=cfg.api_key,
                       max_retries=cfg.request_retries, timeout=cfg.timeout, max_batch=max(1, cfg.concurrency))
    if hasattr(llm, "check"):
        llm.check()  # an unreachable endpoint or a bad key fails now, in one line, not per seed
    ledger = Ledger(cfg.max_tokens_total, {"teacher": (cfg.price_in, cfg.price_out)})

    def meta_of(seed) -> dict:
        return {"seed": seed.text, "source": seed.source, "teacher": llm.name, "mode": cfg.mode,
                **({"seed_meta": seed.meta} if seed.meta else {})}

    def work(seed) -> dict | None:
        msgs, usage, raw = self_chat(llm, seed, cfg, ledger)
        if not msgs and not usage["calls"]:
            return None  # the budget was spent before this dialogue's first call
        rec = {"id": seed.id, "messages": msgs, "meta": {**meta_of(seed), "usage": usage}}
        if raw and not msgs:
            rec["meta"]["raw"] = raw  # kept so a template or parser problem can be diagnosed
        return rec

    def accept(seed, rec) -> str | None:  # on the runner's thread: NearDup keeps state
        reason = reject_reason(rec["messages"], cfg, patterns)
        if reason is None and neardup.seen(seed.id, rec["messages"]):
            reason = "near_duplicate"
        return reason

    return run_items(seeds, work, out=out, ledger=ledger, concurrency=cfg.concurrency, label="collect", noun="seeds",
                     config=cfg, config_extra={"api_key": "***" if cfg.api_key else None},
                     retry_failed=cfg.retry_failed, accept=accept, meta_of=meta_of, progress=cfg.progress,
                     console=console)


def print_summary(s: Summary, out: str, console=None) -> None:
    _print_summary(s, f"collect -> {out}", console)


def add_cli(sub) -> None:
    p = sub.add_parser("collect", help="self-chat: a teacher LLM writes dialogues about each seed")
    add_dataclass_args(p, CollectConfig)
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = dataclass_from_args(CollectConfig, args)
    s = collect(cfg)
    print_summary(s, cfg.out)
    return 130 if s.stopped == "interrupted" else 0
