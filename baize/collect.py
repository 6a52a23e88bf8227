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
from .filters import DEFAULT_REJECT_PATTERNS, NearDup, reject_reason  # noqa: F401  (re-exported: the filters used to live here)
from .filters import FilterConfig, apply_judge, check, check_config, compile_patterns, mark_rejected
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


@dataclass
class _CollectFields:
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
    retry_failed: bool = field(default=True, metadata={"help": "on rerun, retry seeds that failed before"})
    request_retries: int = field(default=6, metadata={"help": "HTTP retries per call (backoff, Retry-After)"})
    timeout: float = field(default=120.0, metadata={"help": "HTTP timeout per call, seconds"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class CollectConfig(FilterConfig, _CollectFields):
    """collect's own fields, then the filters' (--min-turns ... --off-topic, --judge, --min-score),
    which `baize data filter` shares: dataclasses put base fields in reverse MRO order, so listing
    FilterConfig first puts its flags after collect's in --help."""


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

def collect(cfg: CollectConfig, llm=None, *, judge_llm=None, console=None) -> Summary:
    """Run (or resume) a collection; returns the summary of this invocation."""
    from .models import load_llm
    from .seeds import load_seeds
    check_config(cfg)
    out = Path(cfg.out)
    seeds = load_seeds(cfg.seeds, field=cfg.seed_field, limit=cfg.limit, shard=cfg.shard)
    patterns = compile_patterns(cfg)
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
    judge = None
    if cfg.judge:
        from .judge import load_judge
        if judge_llm is None and cfg.judge == cfg.teacher and not cfg.judge.startswith("openai:"):
            judge_llm = llm  # one copy of a local model in memory
        judge = load_judge(cfg, out.with_name(out.stem + ".judge_cache"), judge_llm, orders=2)
    ledger = Ledger(cfg.max_tokens_total, {"teacher": (cfg.price_in, cfg.price_out),
                                           "judge": (cfg.judge_price_in, cfg.judge_price_out)})

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
        # the text filters are stateless, so they run here, in the worker; the judge too, so its
        # calls overlap the teacher's; near-duplicates keep state and wait for `accept`
        if (r := check(msgs, cfg, patterns, seed.text)):
            return mark_rejected(rec, r)
        return apply_judge(rec, judge, cfg, ledger) if judge else rec

    def accept(seed, rec) -> str | None:  # on the runner's thread: NearDup keeps state
        if (twin := neardup.match(seed.id, rec["messages"])):
            rec["meta"]["reject_detail"] = f"nearly {twin}"
            return "near_duplicate"
        return None

    secret = {"api_key": "***" if cfg.api_key else None, "judge_api_key": "***" if cfg.judge_api_key else None}
    try:
        return run_items(seeds, work, out=out, ledger=ledger, concurrency=cfg.concurrency, label="collect",
                         noun="seeds", config=cfg, config_extra=secret, retry_failed=cfg.retry_failed, accept=accept,
                         meta_of=meta_of, progress=cfg.progress, console=console)
    finally:
        if judge is not None:
            judge.close()


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
