"""Cost before and budget during: what a stage (or the whole pipeline) would call, without calling.

    baize collect ... --dry-run      baize sdf ... --dry-run      baize eval ... --dry-run
    baize pipeline ... --dry-run     # every stage, with --teacher-/--policy-/--judge-price-in/-out

A plan counts, per stage and role (teacher, policy, judge), the calls and the prompt and
completion tokens, from the seeds' and questions' own text, the turns, n, the judge's orders and
the max-token flags, and prices them per 1K tokens as the ledger does. Nothing is loaded or
written: tokens are characters / 4 (English prose averages about 4 characters a token in the
GPT and LLaMA tokenizers), so no tokenizer is needed.

Completion tokens are an upper bound: every call is counted at its max tokens and every dialogue
at --max-turns, and prompts that carry earlier replies carry them at that bound too. A budget plan
that under-promises is the one that hurts, so the plan never guesses a fraction; the ledger's
caps (--max-cost, --max-tokens-total) stop the real run at what it really spent.

This module sits below the stages: they hand it their prompts and loaded items.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

CHARS_PER_TOKEN = 4
MESSAGE_TOKENS = 4  # role and separators per chat message, as OpenAI counts them
REPLY_TOKENS = 3    # the assistant's turn opening that every chat prompt ends with

NOTES = [
    "tokens: characters / 4 plus 4 per chat message (no tokenizer loaded)",
    "completion tokens are an upper bound: every call at its max tokens, every dialogue at --max-turns "
    "(prompts that carry earlier replies are bounded the same way); real runs spend less",
    "not counted: a verdict that does not parse is asked once more; a policy endpoint that ignores n is asked "
    "n times, each paying the prompt; training and NLL run locally and call no API",
]


def tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def chat_tokens(messages: list[dict]) -> int:
    return sum(tokens(m["content"]) + MESSAGE_TOKENS for m in messages) + REPLY_TOKENS


def is_local(spec: str | None) -> bool:
    return not (spec or "").startswith("openai:")


@dataclass
class Row:
    stage: str
    role: str
    model: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price_in: float = 0.0   # per 1K tokens, as the stages' --price-in flags
    price_out: float = 0.0
    reasoning_tokens: int = 0  # a reasoning model's hidden tokens: an estimate, billed as completion tokens
    effort: str | None = None  # the reasoning effort that estimate is for

    def add(self, calls: int, prompt: int, completion: int) -> None:
        self.calls += calls
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    @property
    def cost(self) -> float:
        return (self.prompt_tokens * self.price_in + (self.completion_tokens + self.reasoning_tokens) * self.price_out) / 1000


@dataclass
class Plan:
    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    items: dict[str, str] = field(default_factory=dict)  # stage -> what it runs over, in words
    # role -> the flags that price it (a stage's own; the pipeline names each role's)
    price_flags: dict[str, str] = field(default_factory=lambda: {"judge": "--judge-price-in/--judge-price-out"})

    def row(self, stage: str, role: str, model: str, prices: tuple[float, float] = (0.0, 0.0)) -> Row:
        r = Row(stage, role, model, price_in=prices[0], price_out=prices[1])
        self.rows.append(r)
        return r

    def extend(self, other: Plan) -> Plan:
        self.rows += other.rows
        self.warnings += other.warnings
        self.items.update(other.items)
        return self

    @property
    def cost(self) -> float:
        return sum(r.cost for r in self.rows)

    @property
    def total_tokens(self) -> int:
        return sum(r.prompt_tokens + r.completion_tokens + r.reasoning_tokens for r in self.rows)


def limit_warning(flag: str, asked: int | None, got: int, what: str) -> str | None:
    """One line when a limit asks for more items than there are (never silent); None otherwise."""
    if asked is None or got >= asked:
        return None
    return f"{flag} {asked}: {what} {got}; using {got}"


def warn(line: str | None) -> None:
    if line:
        print(f"baize: warning: {line}", file=sys.stderr, flush=True)


# OpenAI's reasoning families (o1, o3, o4-mini, gpt-5; not gpt-5-chat): known by name, as a dry run calls nothing
_REASONING_NAME = re.compile(r"openai:(o\d|gpt-5(?!-chat))", re.IGNORECASE)


def add_reasoning(plan: Plan, efforts: dict[str, str | None], replies: dict[str, int] | None = None) -> Plan:
    """Each endpoint row of a reasoning model (known by name, or declared by its role's
    --reasoning-effort) gets an estimate of its hidden tokens: llm/endpoints.py's guess per reply at
    that effort, times the replies (`replies`: per call, by role; SDF's policy writes n)."""
    from .llm.endpoints import DEFAULT_EFFORT, reasoning_guess
    for r in plan.rows:
        effort = efforts.get(r.role)
        if r.role not in efforts or is_local(r.model) or not (effort or _REASONING_NAME.match(r.model)):
            continue
        r.effort = effort or DEFAULT_EFFORT
        r.reasoning_tokens = r.calls * (replies or {}).get(r.role, 1) * reasoning_guess(r.effort)
    return plan


# --- the stages ---------------------------------------------------------------------------------

def collect_plan(cfg, seeds: list[str], *, self_chat: str, human: str, assistant: str) -> Plan:
    """collect: one call per seed (oneshot), or per exchange a human call and an assistant call
    (turns; the first human line is the seed itself unless --first-turn generate); --judge scores
    every AI turn once."""
    plan = Plan(items={"collect": f"{len(seeds):,} seeds, mode {cfg.mode}"})
    teacher = plan.row("collect", "teacher", cfg.teacher, (cfg.price_in, cfg.price_out))
    judge = plan.row("collect", "judge", cfg.judge, (cfg.judge_price_in, cfg.judge_price_out)) if cfg.judge else None
    human_max = min(cfg.max_tokens, 256)  # collect caps the human line
    for seed in seeds:
        if cfg.mode == "oneshot":
            teacher.add(1, chat_tokens([{"role": "user", "content": self_chat.replace("${SEED}", seed)}]),
                        cfg.max_tokens)
            # the transcript fits in max_tokens: each scored turn's context is at most all of it
            ai_turns = [tokens(seed) + cfg.max_tokens] * cfg.max_turns
        else:
            ai_turns, history = [], 0
            for turn in range(cfg.max_turns):
                if turn == 0 and cfg.first_turn == "seed":
                    line = tokens(seed) + MESSAGE_TOKENS
                else:
                    teacher.add(1, tokens(human.format(seed=seed)) + history + 2 * MESSAGE_TOKENS + REPLY_TOKENS + 16,
                                human_max)
                    line = human_max + MESSAGE_TOKENS
                history += line
                teacher.add(1, tokens(assistant.format(seed=seed)) + history + MESSAGE_TOKENS + REPLY_TOKENS,
                            cfg.max_tokens)
                history += cfg.max_tokens + MESSAGE_TOKENS
                ai_turns.append(history)
        if judge is not None:
            from .judge.prompts import SCORE_SYSTEM, SCORE_USER
            frame = tokens(SCORE_SYSTEM) + tokens(SCORE_USER.format(context="", answer="")) + 2 * MESSAGE_TOKENS + 20
            for ctx in ai_turns:
                judge.add(1, frame + ctx, _judge_out(cfg, cfg.judge))
    return plan


def _judge_mode(cfg, spec: str) -> str:
    """The mode the Judge will run in: auto is judge.LOCAL_MODE for a local model, text for an endpoint."""
    from .judge.core import LOCAL_MODE
    if cfg.judge_mode == "auto":
        return LOCAL_MODE if is_local(spec) else "text"
    return cfg.judge_mode


def _judge_out(cfg, spec: str) -> int:
    """A local judge (choice or debiased mode) reads its prompt and writes nothing (option log-probabilities)."""
    return 0 if _judge_mode(cfg, spec) in ("choice", "debiased") else cfg.judge_max_tokens


def sdf_plan(cfg, contexts: list[list[dict]], *, policy: str | None = None) -> Plan:
    """sdf: per prompt one policy call for n candidates (the prompt paid once), then the judge ranks
    them in min(--judge-orders, distinct orders) presentations (a debiased local judge: all n rotations),
    each a call with every candidate."""
    from .judge.modes import _presentations
    from .judge.prompts import RANK_ANSWER, RANK_SYSTEM, RANK_USER, render_context
    plan = Plan(items={"sdf": f"{len(contexts):,} prompts, n {cfg.n}"})
    pol = plan.row("sdf", "policy", policy or cfg.policy, (cfg.price_in, cfg.price_out))
    judge = plan.row("sdf", "judge", cfg.judge, (cfg.judge_price_in, cfg.judge_price_out))
    debiased = _judge_mode(cfg, cfg.judge) == "debiased"
    orders = cfg.n if debiased else len(_presentations(cfg.n, cfg.judge_orders))
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    shown = cfg.n * (cfg.max_tokens + tokens(RANK_ANSWER.format(label="10", answer="")))
    for ctx in contexts:
        pol.add(1, chat_tokens(system + ctx if ctx[0]["role"] != "system" else ctx), cfg.n * cfg.max_tokens)
        user = tokens(RANK_USER.format(context=render_context(ctx), answers="", k=cfg.n)) + shown
        judge.add(orders, orders * (tokens(RANK_SYSTEM) + user + 2 * MESSAGE_TOKENS + REPLY_TOKENS),
                  orders * _judge_out(cfg, cfg.judge))
    return plan


def eval_plan(cfg, models: dict[str, str], questions: list, *, judge_inputs, reference,
              prices: dict[str, tuple[float, float]] | None = None) -> Plan:
    """eval: every model answers every turn seeing its own earlier answers; the judge gives each pair
    of models a verdict per question in both orders (2 calls, all turns in one prompt) and each model
    a score per question (1 call)."""
    from .judge.prompts import PAIR_SYSTEM, PAIR_USER, SCORE_REF_SYSTEM, SCORE_REF_USER, SCORE_SYSTEM, SCORE_USER, render_context
    prices = prices or {}
    turns = sum(len(q.turns) for q in questions)
    plan = Plan(items={"eval": f"{len(questions)} questions ({turns} turns), {len(models)} models"})
    for name, spec in models.items():
        r = plan.row("eval", "policy", spec, prices.get(name, (0.0, 0.0)))
        for q in questions:
            history = REPLY_TOKENS
            for t in q.turns:
                history += tokens(t) + MESSAGE_TOKENS
                r.add(1, history, cfg.max_tokens)
                history += cfg.max_tokens + MESSAGE_TOKENS
    judged = cfg.judge and cfg.judge.lower() != "none"
    if not judged or not (cfg.pairwise or cfg.single):
        return plan
    judge = plan.row("eval", "judge", cfg.judge, (cfg.judge_price_in, cfg.judge_price_out))
    n = len(models)
    pairs = (n - 1 if cfg.baseline else n * (n - 1) // 2) if cfg.pairwise else 0
    out = _judge_out(cfg, cfg.judge)
    for q in questions:
        ctx, frame = judge_inputs(q, [""] * len(q.turns))
        answer = tokens(frame) + len(q.turns) * cfg.max_tokens
        ctx = render_context(ctx)
        if pairs:
            pair = tokens(PAIR_SYSTEM) + tokens(PAIR_USER.format(context=ctx, a="", b="")) + 2 * answer
            judge.add(2 * pairs, 2 * pairs * (pair + 2 * MESSAGE_TOKENS + REPLY_TOKENS), 2 * pairs * out)
        if cfg.single:
            ref = reference(q)
            system, user = (SCORE_SYSTEM, SCORE_USER) if ref is None else (SCORE_REF_SYSTEM, SCORE_REF_USER)
            one = tokens(system) + tokens(user.format(context=ctx, answer="", reference=ref or "")) + answer
            judge.add(n, n * (one + 2 * MESSAGE_TOKENS + REPLY_TOKENS), n * out)
    return plan


# --- printing -----------------------------------------------------------------------------------

def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def print_plan(plan: Plan, console=None, *, max_cost: float | None = None, max_tokens_total: int | None = None,
               spent: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    for w in plan.warnings:
        console.print(f"warning: {w}", style="yellow", soft_wrap=True)
    t = Table(title="plan (--dry-run: nothing was called or written)")
    reasoning = [r for r in plan.rows if r.reasoning_tokens]
    cols = [("stage", "left"), ("role", "left"), ("model", "left"), ("calls", "right"), ("prompt tokens", "right"),
            ("completion tokens (at most)", "right")]
    cols += [("reasoning tokens (estimate)", "right")] if reasoning else []
    for col, just in cols + [("cost", "right")]:
        t.add_column(col, justify=just)

    def cells(rows: list[Row]) -> list[str]:
        out = [f"{sum(r.calls for r in rows):,}", f"{sum(r.prompt_tokens for r in rows):,}",
               f"{sum(r.completion_tokens for r in rows):,}"]
        guess = sum(r.reasoning_tokens for r in rows)
        return out + ([f"~{guess:,}" if guess else ""] if reasoning else [])
    for r in plan.rows:
        local = is_local(r.model) and not r.price_in and not r.price_out
        t.add_row(r.stage, r.role, r.model, *cells([r]), "local" if local else _money(r.cost))
    roles: dict[str, list[Row]] = {}
    for r in plan.rows:
        roles.setdefault(r.role, []).append(r)
    t.add_section()
    for role, rows in roles.items():
        local = all(is_local(r.model) and not r.price_in and not r.price_out for r in rows)
        t.add_row("all", role, "", *cells(rows), "local" if local else _money(sum(r.cost for r in rows)))
    t.add_row("all", "total", "", *cells(plan.rows), _money(plan.cost))
    console.print(t)
    console.print("runs over: " + "; ".join(f"{k} {v}" for k, v in plan.items.items()), soft_wrap=True)
    for note in NOTES + _reasoning_notes(reasoning):
        console.print(f"- {note}", soft_wrap=True)
    for role, model in sorted({(r.role, r.model) for r in plan.rows if not is_local(r.model) and not r.price_in
                               and not r.price_out}):
        flags = plan.price_flags.get(role, "--price-in/--price-out")
        console.print(f"no price given for the {role} ({model}): its cost shows as $0; give {flags} (dollars per 1K "
                      f"tokens)", soft_wrap=True)
    if spent and (spent["cost"] or spent["tokens"]):
        console.print(f"already spent in earlier runs: {spent['tokens']:,} tokens, {_money(spent['cost'])} "
                      f"(finished work is skipped on a rerun)", soft_wrap=True)
    for flag, cap, need, shown in (("--max-cost", max_cost, plan.cost, _money(plan.cost)),
                                   ("--max-tokens-total", max_tokens_total, plan.total_tokens,
                                    f"{plan.total_tokens:,} tokens")):
        if cap is not None:
            fits = "within it" if need <= cap else "over it: the run stops cleanly when the ledger reaches the cap"
            what = "upper bound with the reasoning estimate" if reasoning else "upper bound"
            console.print(f"{flag} {cap:g}: the plan's {what}, {shown}, is {fits}", soft_wrap=True)


def _reasoning_notes(rows: list[Row]) -> list[str]:
    """What the reasoning column is: a guess per reply, not a bound, and where it comes from."""
    if not rows:
        return []
    from .llm.endpoints import reasoning_guess
    said = sorted({(r.model, r.effort) for r in rows})
    each = ", ".join(f"{m} at {e} effort ~{reasoning_guess(e):,}" for m, e in said)
    return [f"reasoning tokens are an estimate, not a bound: hidden tokens per reply ({each}; set by "
            f"--reasoning-effort / --judge-reasoning-effort); they bill as completion tokens, so the cost and the "
            f"total include them; the ledger counts the real ones"]


# --- budgets across runs and stages ---------------------------------------------------------------

def spent(paths) -> dict:
    """Tokens and cost every earlier run wrote into the summaries at `paths` (their `total`, which
    sums every resumed run): what a later stage of the same pipeline has left to spend."""
    tokens_, cost = 0, 0.0
    for p in paths:
        p = Path(p)
        if not p.is_file():
            continue
        try:
            s = json.loads(p.read_text())
        except ValueError:
            continue  # an unreadable summary only loses its own count
        tot = s.get("total") or s
        tokens_ += int(tot.get("prompt_tokens", 0)) + int(tot.get("completion_tokens", 0))
        cost += float(tot.get("cost", 0.0))
    return {"tokens": tokens_, "cost": round(cost, 6)}


def budget_hint(flag: str, cap: float, used: float, *, scope: str = "this run") -> str:
    """The one line a capped run ends with: which cap, what was spent, and the value to rerun with."""
    used_s = _money(used) if flag == "--max-cost" else f"{int(used):,} tokens"
    more = max(cap * 2, used * 1.5) if cap else 1
    raise_to = f"{round(more, 2):g}" if flag == "--max-cost" else f"{int(more)}"
    if scope == "this run":  # a stage's cap is per run: the same command goes on, another cap's worth
        return (f"budget spent: {used_s} of {flag} {cap:g} (this run); everything written is kept: rerun the same "
                f"command to go on (each run may spend {flag}), or raise it, e.g. {flag} {raise_to}")
    return (f"budget spent: {used_s} of {flag} {cap:g} ({scope}); everything written is kept: rerun the same "
            f"command with {flag} {raise_to} (or higher) to continue")


def stopped_line(cfg, summary) -> str:
    """A stage's one line after its budget stopped it: which of this run's caps, and how to go on."""
    if cfg.max_cost is not None and summary.cost >= cfg.max_cost:
        return budget_hint("--max-cost", cfg.max_cost, summary.cost)
    return budget_hint("--max-tokens-total", cfg.max_tokens_total or 0,
                       summary.prompt_tokens + summary.completion_tokens)
