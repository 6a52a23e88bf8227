"""Cost before and budget during: what a stage (or the whole pipeline) would call, without calling.

    baize collect ... --dry-run      baize sdf ... --dry-run      baize eval ... --dry-run
    baize judge-check ... --dry-run  baize pipeline ... --dry-run     # every stage: --teacher-/--policy-/--judge-price-in/-out

A plan counts, per stage and role (the ledger's: teacher, policy, judge, eval's model names), the
calls and the prompt and completion tokens, and prices them per 1K tokens as the ledger does. Each
stage counts its own calls in its plan(): the prompts its run would send, built by the same
functions from the same items, with every reply not yet written at its cap (bound()). `--plan-out
FILE` writes the rows as JSON. Nothing is loaded or written: tokens are characters / 4 (English
prose averages about 4 characters a token in the GPT and LLaMA tokenizers), so no tokenizer is needed.

Completion tokens are an upper bound: every call is counted at its max tokens and every dialogue
at --max-turns, and prompts that carry earlier replies carry them at that bound too. A budget plan
that under-promises is the one that hurts, so the plan never guesses a fraction; the ledger's
caps (--max-cost, --max-tokens-total) stop the real run at what it really spent.

This module sits below the stages and the judge: each stage counts its own calls (its plan()) and
hands the rows to Plan; nothing here knows a stage's call pattern.
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
    "calls are the stage's own prompts, counted before the run sends them; 'A to B': an endpoint that ignores n "
    "is asked n times a prompt (tokens and cost counted at B); fewer when a dialogue ends early or candidates "
    "coincide; not counted: a verdict that does not parse is asked once more; training and NLL call no API",
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
    # where the count depends on the server (an endpoint that ignores n makes SDF ask n times): the
    # most calls; the tokens and cost are counted at that bound
    calls_max: int | None = None
    reasoning_tokens: int = 0  # a reasoning model's hidden tokens: an estimate, billed as completion tokens
    effort: str | None = None  # the reasoning effort that estimate is for
    discount: float | None = None  # --batch-api: billed at this share of the price (--batch-discount)

    def add(self, calls: int, prompt: int, completion: int, *, calls_max: int | None = None) -> None:
        if calls_max is not None or self.calls_max is not None:
            self.calls_max = (self.calls if self.calls_max is None else self.calls_max) + (
                calls if calls_max is None else calls_max)
        self.calls += calls
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def as_json(self) -> dict:
        """--plan-out's row: `role` is the ledger's name for it (teacher, policy, judge, a model's name)."""
        row = {"stage": self.stage, "role": self.role, "model": self.model, "calls": self.calls,
               "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "cost": round(self.cost, 6)}
        if self.calls_max is not None:
            row["calls_max"] = self.calls_max
        if self.reasoning_tokens:  # an estimate (the effort's guess per reply), already inside cost
            row.update(reasoning_tokens=self.reasoning_tokens, reasoning_effort=self.effort)
        return row

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

    def batch_cost(self, rows: list[Row] | None = None) -> float:
        """The rows' cost as billed: a --batch-api stage's endpoint rows at its --batch-discount."""
        return sum(r.cost * (r.discount or 1.0) for r in (self.rows if rows is None else rows))

    @property
    def discounts(self) -> list[float]:
        return sorted({r.discount for r in self.rows if r.discount is not None})

    def batch_api(self, stage: str, discount: float) -> None:
        """A --batch-api stage: its endpoint rows are billed at `discount` of their price."""
        for r in self.rows:
            if r.stage == stage and not is_local(r.model):
                r.discount = discount

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

    def write(self, path: str | Path) -> Path:
        """--plan-out: the rows as JSON, for a script or a budget check to read."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [r.as_json() | ({} if r.discount is None else {"batch_cost": round(self.batch_cost([r]), 6)})
                for r in self.rows]
        path.write_text(json.dumps(rows, indent=2) + "\n")
        return path

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


# --- what the stages share to declare their calls -------------------------------------------------
# Each stage declares its own calls (collect.plan, sdf.plan, evaluate.plan, check.plan) from the same
# functions its run uses to build its prompts and items (the judge's: judge.core.planned_aggregator);
# these helpers turn them into rows.

def bound(max_tokens: int) -> str:
    """A stand-in for a reply not written yet, at its cap: tokens(bound(m)) == m, so a prompt built
    around it by the stage's own code counts the reply at its upper bound."""
    return "x" * (CHARS_PER_TOKEN * max(0, max_tokens))


def add_prompts(row: Row, prompts, completion: int) -> None:
    """One call per prompt (a list of chat messages), each at most `completion` tokens out."""
    for msgs in prompts:
        row.add(1, chat_tokens(msgs), completion)


def judge_completion(cfg, aggregator) -> int:
    """A judge that writes spends up to --judge-max-tokens a call; one read from log-probs nothing."""
    return cfg.judge_max_tokens if aggregator.writes else 0


# --- printing -----------------------------------------------------------------------------------

def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def _most(rows: list[Row]) -> int | None:
    return sum(r.calls if r.calls_max is None else r.calls_max for r in rows) if any(
        r.calls_max is not None for r in rows) else None


def _calls(calls: int, most: int | None) -> str:
    return f"{calls:,}" if most is None or most == calls else f"{calls:,} to {most:,}"


def dry_run(plan: Plan, cfg, console=None, *, spent: dict | None = None) -> int:
    """What every `--dry-run` does: print the plan and, with --plan-out FILE, write its rows as JSON."""
    print_plan(plan, console, max_cost=cfg.max_cost, max_tokens_total=cfg.max_tokens_total, spent=spent)
    if cfg.plan_out:
        print(f"plan written to {plan.write(cfg.plan_out)} (one row per stage and role)", flush=True)
    return 0


def check_plan_out(cfg) -> None:
    """--plan-out writes what a dry run plans: without --dry-run there is no plan to write."""
    from .config import BaizeError
    if cfg.plan_out and not cfg.dry_run:
        raise BaizeError(f"--plan-out {cfg.plan_out}: it writes the plan of a dry run; add --dry-run (the run "
                         f"itself writes what it spent to its .summary.json)")


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
    batch = bool(plan.discounts)  # both prices side by side
    shares = "/".join(f"x{d:g}" for d in plan.discounts)
    for col, just in cols + [("cost", "right")] + ([(f"--batch-api cost ({shares})", "right")] if batch else []):
        t.add_column(col, justify=just)

    def cells(rows: list[Row]) -> list[str]:
        out = [_calls(sum(r.calls for r in rows), _most(rows)), f"{sum(r.prompt_tokens for r in rows):,}",
               f"{sum(r.completion_tokens for r in rows):,}"]
        guess = sum(r.reasoning_tokens for r in rows)
        return out + ([f"~{guess:,}" if guess else ""] if reasoning else [])

    def prices(rows: list[Row], local: bool) -> list[str]:
        if local:
            return ["local"] * (1 + batch)
        return [_money(sum(r.cost for r in rows))] + ([_money(plan.batch_cost(rows))] if batch else [])
    for r in plan.rows:
        local = is_local(r.model) and not r.price_in and not r.price_out
        t.add_row(r.stage, r.role, r.model, *cells([r]), *prices([r], local))
    roles: dict[str, list[Row]] = {}
    for r in plan.rows:
        roles.setdefault(r.role, []).append(r)
    t.add_section()
    for role, rows in roles.items():
        local = all(is_local(r.model) and not r.price_in and not r.price_out for r in rows)
        t.add_row("all", role, "", *cells(rows), *prices(rows, local))
    t.add_row("all", "total", "", *cells(plan.rows), *prices(plan.rows, False))
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
    cost = plan.batch_cost()  # what the run will be billed: with --batch-api, at the discount
    if batch:
        console.print(f"--batch-api: endpoint calls at {shares.replace('x', '')} of the price, within 24 hours: "
                      f"{_money(cost)} instead of {_money(plan.cost)}", soft_wrap=True)
    for flag, cap, need, shown in (("--max-cost", max_cost, cost, _money(cost)),
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
