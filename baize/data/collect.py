"""Self-chat collection: a teacher LLM writes both sides of a dialogue about each seed.

Two modes: `oneshot` (the paper's v1 template, one call writes the whole transcript, parsed into
messages) and `turns` (v2: the teacher writes the next human message, then answers it as the
assistant). Concurrent, resumable, under a token budget, with quality filters that record why a
dialogue was rejected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import BatchFields, EndpointFields, PlanFields, RunFields, add_dataclass_args, dataclass_from_args, effort_opt, opt
from ..runner import Ledger, Summary, run_items, run_rounds
from ..runner import print_summary as _print_summary
from ..schema import JsonlAppender, read_jsonl, repair_torn_tail, sidecar
from .filters import DialogueFilter, FilterConfig, check_config

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
    seeds: str = opt("quora", "JSONL/CSV/TXT file, MedQuAD XML folder, hf:DATASET[:SPLIT]:FIELD, or "
                              "quora|stackoverflow|medquad|alpaca")
    out: str = opt("data/dialogues.jsonl", "output JSONL; .rejected.jsonl, .failed.jsonl, .config.json, "
                                           ".summary.json beside it")
    teacher: str = opt("default", "model spec: default, hf:PATH, openai:MODEL, gguf:PATH")
    mode: str = opt("oneshot", "oneshot: the paper's template; turns: turn by turn", choices=["oneshot", "turns"])
    seed_field: str | None = opt(None, "field/column holding the seed text")
    limit: int | None = opt(None, "use the first N seeds (after dedup and sharding)")
    shard: str | None = opt(None, "I/N: this machine's disjoint part of the seeds")
    max_turns: int = opt(4, "turns mode: most human/AI exchanges per dialogue")
    first_turn: str = opt("seed", "turns mode: the first human message is the seed itself, or the teacher writes it",
                          choices=["seed", "generate"])
    max_tokens: int = opt(1024, "max new tokens per teacher call (a reasoning teacher gets room for its reasoning on top)")
    reasoning_effort: str | None = effort_opt("an openai: teacher")
    temperature: float = opt(1.0, "teacher sampling temperature")
    top_p: float = opt(1.0, "teacher nucleus sampling")
    price_in: float = opt(0.0, "teacher price per 1K prompt tokens, for the cost ledger")
    price_out: float = opt(0.0, "teacher price per 1K completion tokens")


@dataclass
class CollectConfig(PlanFields, BatchFields, RunFields, FilterConfig, EndpointFields, _CollectFields):
    """collect's own fields, then the endpoint's (the teacher's), the filters' (--min-turns ...
    --off-topic, --judge, --min-score, which `baize data filter` shares) and the run's: dataclasses
    put base fields in reverse MRO order, so the last base's flags come first in --help."""


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


# --- the teacher's calls, declared once: self_chat makes them and plan() counts them ---------------

def oneshot_messages(seed: str) -> list[dict]:
    return [{"role": "user", "content": SELF_CHAT_TEMPLATE.replace("${SEED}", seed)}]


def human_messages(seed: str, msgs: list[dict]) -> list[dict]:
    """The teacher, playing the human, writes the next user line from the transcript so far."""
    transcript = "\n".join(("[Human] " if m["role"] == "user" else "[AI] ") + m["content"] for m in msgs)
    return [{"role": "system", "content": HUMAN_PROMPT.format(seed=seed)},
            {"role": "user", "content": "Conversation so far:\n" + (transcript or "(none yet)")
             + "\n\nThe human's next message:"}]


def assistant_messages(seed: str, msgs: list[dict]) -> list[dict]:
    return [{"role": "system", "content": ASSISTANT_PROMPT.format(seed=seed)}] + msgs


def human_max_tokens(cfg) -> int:
    return min(cfg.max_tokens, 256)  # a question, not an essay


def exchanges(cfg) -> list[tuple[str, ...]]:
    """The teacher's calls per exchange of a turns-mode dialogue, at most --max-turns of them: the
    human line (unless the first is the seed itself), then the assistant's answer."""
    return [("assistant",) if turn == 0 and cfg.first_turn == "seed" else ("human", "assistant")
            for turn in range(cfg.max_turns)]


def self_chat(llm, seed, cfg: CollectConfig, ledger: Ledger,
              so_far: dict | None = None) -> tuple[list[dict], dict, str, bool]:
    """One dialogue: (messages, token usage, the teacher's raw one-shot text, finished). Turns mode
    goes on from `so_far` (the messages and usage of a dialogue the budget stopped); finished is
    False when the budget stops it before its end, so that it is not kept as a short dialogue."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
    if cfg.mode == "oneshot":
        c = _ask(llm, ledger, usage, oneshot_messages(seed.text), cfg)
        return parse_transcript(c.text, truncated=c.finish_reason == "length"), usage, c.text, True
    msgs: list[dict] = list((so_far or {}).get("messages") or [])
    usage.update((so_far or {}).get("usage") or {})  # the dialogue's usage over every run that wrote it
    for asks in exchanges(cfg)[len(msgs) // 2:]:
        if ledger.exhausted():
            return msgs, usage, "", False  # overshoot stays within the calls in flight
        if "human" not in asks:
            human = seed.text
        else:
            h = _ask(llm, ledger, usage, human_messages(seed.text, msgs), cfg, max_tokens=human_max_tokens(cfg))
            human = "" if h.finish_reason == "length" else _strip_marker(h.text)
            if not human or "[END]" in human.upper():
                break
        msgs.append({"role": "user", "content": human})
        a = _ask(llm, ledger, usage, assistant_messages(seed.text, msgs), cfg)
        answer = _complete_sentences(a.text) if a.finish_reason == "length" else a.text.strip()
        if not answer:
            msgs.pop()
            break
        msgs.append({"role": "assistant", "content": answer})
        if a.finish_reason == "length":
            break  # the teacher ran out of room: end on the last full sentence
    return msgs, usage, "", True


# --- the run ------------------------------------------------------------------------------------

def collect(cfg: CollectConfig, llm=None, *, judge_llm=None, console=None) -> Summary:
    """Run (or resume) a collection; returns the summary of this invocation."""
    from ..llm.models import load_endpoint
    check_config(cfg)  # a bad knob fails before any model loads
    out = Path(cfg.out)
    seeds = _seeds(cfg)
    if llm is None:
        llm = load_endpoint(cfg.teacher, cfg, max_batch=cfg.concurrency)
    else:
        llm.check()  # an unreachable endpoint or a bad key fails now, in one line, not per seed
    if judge_llm is None and cfg.judge == cfg.teacher and not (cfg.judge or "").startswith("openai:"):
        judge_llm = llm  # one copy of a local model in memory
    share = cfg.batch_discount if cfg.batch_api else 1.0  # batch calls are billed at the discount
    prices = {"teacher": (cfg.price_in * share, cfg.price_out * share),
              "judge": (cfg.judge_price_in * share, cfg.judge_price_out * share)}
    ledger = Ledger(cfg.max_tokens_total, prices, max_cost=cfg.max_cost)
    batches = None
    if cfg.batch_api:
        from ..llm.batch import Batches
        batches = Batches(out, poll=cfg.batch_poll, tries=cfg.batch_tries)
        llm = batches.wrap(llm, prices["teacher"])
        if (cfg.judge or "").startswith("openai:"):
            from ..llm.models import load_endpoint as _load
            judge_llm = batches.wrap(judge_llm or _load(cfg.judge, cfg, judge=True), prices["judge"])
        batches.check()
    filt = DialogueFilter(cfg, out, ledger, judge_llm=judge_llm)

    def meta_of(seed) -> dict:
        return {"seed": seed.text, "source": seed.source, "teacher": llm.name, "mode": cfg.mode,
                **({"seed_meta": seed.meta} if seed.meta else {})}

    unfinished = _Unfinished(sidecar(out, "unfinished"))

    def work(seed) -> dict | None:
        msgs, usage, raw, finished = self_chat(llm, seed, cfg, ledger, unfinished.get(seed.id))
        if not finished or (not msgs and not usage["calls"]):
            # the budget stopped it before its end (or before its first call): the runner records
            # nothing, and the next run goes on from the exchanges kept here
            if msgs:
                unfinished.put(seed.id, msgs, usage)
            return None
        rec = {"id": seed.id, "messages": msgs, "meta": {**meta_of(seed), "usage": usage}}
        if raw and not msgs:
            rec["meta"]["raw"] = raw  # kept so a template or parser problem can be diagnosed
        return filt(rec, seed.text)

    def one_round() -> Summary:
        return run_items(seeds, work, out=out, ledger=ledger, concurrency=cfg.concurrency, label="collect",
                         noun="seeds", config=cfg, retry_failed=cfg.retry_failed,
                         accept=lambda seed, rec: filt.accept(seed.id, rec), meta_of=meta_of, progress=cfg.progress,
                         console=console, throttle_on=[llm])  # a judge filter's 429s back off in its own calls

    try:
        return run_rounds(one_round, batches, ledger, out=out) if batches else one_round()
    finally:
        filt.close()
        unfinished.close()


class _Unfinished:
    """OUT.unfinished.jsonl: turns-mode dialogues the budget stopped mid-way, the last line per id
    wins; a rerun continues them (their tokens were paid for) and the finished record goes to OUT."""

    def __init__(self, path: Path):
        import threading
        self.path, self.lock, self.w = path, threading.Lock(), None
        repair_torn_tail(path)  # a kill mid-write leaves half a line
        self.held = {r["id"]: r for r in read_jsonl(path)} if path.exists() else {}

    def get(self, id_: str) -> dict | None:
        return self.held.get(id_)

    def put(self, id_: str, messages: list[dict], usage: dict) -> None:
        with self.lock:  # workers append from their threads; the file exists only once one is needed
            self.w = self.w or JsonlAppender(self.path)
            self.w.append({"id": id_, "messages": messages, "usage": usage})

    def close(self) -> None:
        if self.w:
            self.w.close()


def _seeds(cfg: CollectConfig):
    from ..plan import limit_warning, warn
    from .seeds import load_seeds
    seeds = load_seeds(cfg.seeds, field=cfg.seed_field, limit=cfg.limit, shard=cfg.shard)
    warn(limit_warning("--limit", cfg.limit, len(seeds), f"{cfg.seeds} has" + (" in this shard" if cfg.shard else "")))
    return seeds


def plan(cfg: CollectConfig, seeds=None):
    """The --dry-run plan: the teacher's (and --judge's) calls, from the prompts self_chat sends with
    every reply at its cap, and the judge's score prompt for each AI turn (judged_turns), nothing called.
    A dialogue ends early when the teacher's human says [END] or the text filters reject it first,
    so the judge's count is at most this (oneshot: an estimate, a transcript of --max-turns exchanges)."""
    from ..judge.core import planned_aggregator
    from ..plan import Plan, add_prompts, add_reasoning, bound, judge_completion
    from .filters import judged_turns
    check_config(cfg)
    seeds = _seeds(cfg) if seeds is None else seeds
    p = Plan(items={"collect": f"{len(seeds):,} seeds, mode {cfg.mode}"})
    teacher = p.row("collect", "teacher", cfg.teacher, (cfg.price_in, cfg.price_out))
    judge = p.row("collect", "judge", cfg.judge, (cfg.judge_price_in, cfg.judge_price_out)) if cfg.judge else None
    agg = planned_aggregator(cfg, cfg.judge) if cfg.judge else None
    for seed in seeds:
        if cfg.mode == "oneshot":
            add_prompts(teacher, [oneshot_messages(seed.text)], cfg.max_tokens)
            # the transcript is one reply of at most --max-tokens, shared by its turns
            share = bound(cfg.max_tokens // max(1, cfg.max_turns))
            msgs = [{"role": "user", "content": seed.text}, {"role": "assistant", "content": share}] * cfg.max_turns
        else:
            msgs = []
            for asks in exchanges(cfg):
                human = seed.text
                if "human" in asks:
                    add_prompts(teacher, [human_messages(seed.text, msgs)], human_max_tokens(cfg))
                    human = bound(human_max_tokens(cfg))
                msgs.append({"role": "user", "content": human})
                add_prompts(teacher, [assistant_messages(seed.text, msgs)], cfg.max_tokens)
                msgs.append({"role": "assistant", "content": bound(cfg.max_tokens)})
        if judge is not None:
            add_prompts(judge, [agg.score_prompt(ctx, answer) for ctx, answer in judged_turns(msgs)],
                        judge_completion(cfg, agg))
    if cfg.batch_api:
        p.batch_api("collect", cfg.batch_discount)
    return add_reasoning(p, {"teacher": cfg.reasoning_effort, "judge": cfg.judge_reasoning_effort})


def print_summary(s: Summary, out: str, console=None) -> None:
    _print_summary(s, f"collect -> {out}", console)


def add_cli(sub) -> None:
    p = sub.add_parser("collect", help="self-chat: a teacher LLM writes dialogues about each seed")
    add_dataclass_args(p, CollectConfig)
    p.set_defaults(func=_main)


def _main(args) -> int:
    from ..plan import check_plan_out, dry_run, stopped_line
    cfg = dataclass_from_args(CollectConfig, args)
    check_plan_out(cfg)
    if cfg.dry_run:
        return dry_run(plan(cfg), cfg)
    s = collect(cfg)
    print_summary(s, cfg.out)
    if s.stopped == "budget":
        print(stopped_line(cfg, s))
    return 130 if s.stopped == "interrupted" else 0
