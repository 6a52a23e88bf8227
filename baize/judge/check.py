"""`baize judge-check`: how often does a judge agree with humans, before it is trusted with an eval?

    baize judge-check --judge openai:gpt-4o-mini --pairs ../shared/data/prefs/hh_helpful_online.jsonl \
        --limit 200 --out judge_check/
    baize judge-check --judge openai:gpt-4o-mini     # the 300 human pairs shipped in baize/samples/

The judge sees each human preference pair in both orders (Judge.pair, cached like every verdict);
OUT/verdicts.jsonl keeps each verdict (a rerun resumes), OUT/judge_check.json the measures that
alpaca_eval's analyze_evaluators reports (agreement with humans, price, time, the probability of
preferring the longer answer) plus what ties and position bias hide. Pairs in the `context` /
`chosen` / `rejected` shape (../shared/data/prefs) or TRL's `prompt` / `chosen` / `rejected`
(`baize sdf`'s prefs).
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import (
    BaizeError,
    BatchFields,
    EndpointFields,
    JudgeFields,
    PlanFields,
    RunFields,
    add_dataclass_args,
    dataclass_from_args,
    opt,
    public_dict,
    save_config,
)
from ..runner import Ledger, run_items, run_rounds
from ..schema import read_jsonl, read_jsonl_where
from .verdicts import judge_flags

BUILTIN_PAIRS = Path(__file__).parent.parent / "samples" / "hh_helpful_online.jsonl"
PAIRS_EXAMPLE = ('{"context": [{"role": "user", "content": "..."}], "chosen": "...", "rejected": "..."} '
                 'or TRL\'s {"prompt": ..., "chosen": ..., "rejected": ...}')


@dataclass
class _CheckFields:
    judge: str = opt("default", "the judge to check (openai:MODEL, a run, default, hf:PATH)")
    pairs: str = opt("builtin", "human preference pairs JSONL (context/chosen/rejected, or TRL prompt/chosen/"
                                "rejected); builtin: 300 HH-RLHF pairs shipped with baize (samples/README.md)")
    limit: int | None = opt(None, "use the first N pairs")
    out: str = opt("judge_check", "output directory: judge_check.json, judge_check.html, verdicts.jsonl")
    bootstrap: int = opt(1000, "bootstrap resamples for the agreement's 95-percent interval")


@dataclass
class JudgeCheckConfig(PlanFields, BatchFields, RunFields, JudgeFields, EndpointFields, _CheckFields):
    """judge-check's own fields, then the endpoint's, the judge's and the run's (config.py)."""


# --- pairs ----------------------------------------------------------------------------------------

@dataclass
class Pair:
    id: str
    context: list[dict]
    chosen: str
    rejected: str


def _turn(x, where: str, name: str) -> str:
    """An answer: a string, or TRL's list holding one assistant message."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and len(x) == 1 and isinstance(x[0], dict) and isinstance(x[0].get("content"), str):
        return x[0]["content"]
    raise BaizeError(f"{where}: field {name!r} must be a string or one assistant message [{{role, content}}]")


def _context(obj: dict, where: str) -> list[dict]:
    ctx = obj.get("context", obj.get("prompt"))
    if isinstance(ctx, str):
        ctx = [{"role": "user", "content": ctx}]
    name = "context" if "context" in obj else "prompt"
    if not isinstance(ctx, list) or not ctx or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user", "assistant")
            for m in ctx):
        raise BaizeError(f"{where}: field {name!r} must be a question or a list of {{role, content}} messages")
    if ctx[-1]["role"] != "user":
        raise BaizeError(f"{where}: field {name!r} must end with a user turn (the one the two answers answer)")
    return ctx


def load_pairs(path: str, limit: int | None = None) -> list[Pair]:
    """Preference pairs in either shape; a bad line fails with its file, line and field."""
    if not path:
        raise BaizeError("judge-check: --pairs FILE is required, e.g. ../shared/data/prefs/hh_helpful_online.jsonl")
    path = str(BUILTIN_PAIRS) if path == "builtin" else path
    out, seen = [], set()
    for where, obj in read_jsonl_where(path):
        if not isinstance(obj, dict) or not {"chosen", "rejected"} <= set(obj) or not ({"context", "prompt"} & set(obj)):
            raise BaizeError(f"{where}: expected a preference pair: {PAIRS_EXAMPLE}")
        pid = str(obj.get("id", len(out)))
        if pid in seen:
            raise BaizeError(f"{where}: field 'id' {pid!r} appears twice: ids must be unique")
        seen.add(pid)
        out.append(Pair(pid, _context(obj, where), _turn(obj["chosen"], where, "chosen"),
                        _turn(obj["rejected"], where, "rejected")))
        if limit and len(out) >= limit:
            break
    if not out:
        raise BaizeError(f"{path}: no preference pairs")
    return out


# --- judging --------------------------------------------------------------------------------------

def _h(*parts) -> str:
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:10]


@dataclass
class _Item:
    id: str
    pair: Pair
    human: str


def check_items(judge_name: str, mode: str, pairs: list[Pair]) -> list[_Item]:
    """What judge-check asks, declared once (its plan counts the same): one verdict, both orders, per
    pair. Half the pairs put the chosen answer first, so an argument-order quirk cannot pass for agreement."""
    return [_Item(f"{p.id}:{_h(judge_name, mode, p.chosen, p.rejected)}", p, "a" if i % 2 == 0 else "b")
            for i, p in enumerate(pairs)]


def shown(item: _Item) -> tuple[list[dict], str, str]:
    """(context, a, b) as the judge is asked them."""
    p = item.pair
    return (p.context, p.chosen, p.rejected) if item.human == "a" else (p.context, p.rejected, p.chosen)


def judge_pairs(judge, pairs: list[Pair], cfg: JudgeCheckConfig, ledger: Ledger, out: Path, console=None,
                batches=None) -> list[dict]:
    """One record per pair: the judge's verdict on (a, b) and which of them the human chose."""
    items = check_items(judge.name, judge.mode, pairs)

    def work(item):
        p = item.pair
        _, a, b = shown(item)
        t0 = time.monotonic()
        v = judge.pair(*shown(item))
        ledger.add(role="judge", usage=v.usage)
        return {"id": item.id, "pair_id": p.id, "human": item.human,
                "winner": {"A": "a", "B": "b", "tie": "tie"}.get(v.winner), "verdicts": v.verdicts,
                "consistent": v.consistent, "margin": v.margin, "len_a": len(a), "len_b": len(b), "raw": v.raw,
                "meta": {"usage": v.usage, "seconds": round(time.monotonic() - t0, 3), "cached": v.cached}}

    path = out / "verdicts.jsonl"

    def one_round():
        return run_items(items, work, out=path, ledger=ledger, concurrency=cfg.concurrency, label="judge-check",
                         noun="pairs", retry_failed=cfg.retry_failed, progress=cfg.progress, console=console)
    run_rounds(one_round, batches, ledger, out=path) if batches else one_round()
    by_id = {r["id"]: r for r in read_jsonl(path)} if path.exists() else {}
    return [by_id[it.id] for it in items if it.id in by_id]


# --- measures -------------------------------------------------------------------------------------

def _rate(hits: int, n: int) -> float | None:
    return round(hits / n, 4) if n else None


def _ci(hits: list[int], n_boot: int) -> list[float] | None:
    if not hits:
        return None
    rng, k = random.Random(0), len(hits)
    means = sorted(sum(rng.choices(hits, k=k)) / k for _ in range(n_boot))
    return [round(means[int(0.025 * (n_boot - 1))], 4), round(means[int(0.975 * (n_boot - 1))], 4)]


def measures(rows: list[dict], n_boot: int = 1000) -> dict:
    """The issue's definitions: agreement and prefers_longer over decisive verdicts only, consistency
    over pairs some order decided, tie_rate = ties and inconsistent pairs over parsed verdicts."""
    from .core import reliability
    rel = reliability([{"winner": r["winner"], "verdicts": r["verdicts"]} for r in rows])
    decisive = [r for r in rows if r["winner"] in ("a", "b")]
    hits = [int(r["winner"] == r["human"]) for r in decisive]
    differ = [r for r in decisive if r["len_a"] != r["len_b"]]
    longer = lambda r, w: (r["len_a"] > r["len_b"]) == (w == "a")  # noqa: E731
    human_differ = [r for r in rows if r["len_a"] != r["len_b"]]
    margins = sorted(r["margin"] for r in rows if r.get("margin") is not None)
    first = [r for r in rows if r["verdicts"] and r["verdicts"][0] not in (None, "tie")]
    return {"n": len(rows), "decisive": len(decisive), "agreement": _rate(sum(hits), len(hits)),
            "agreement_ci": _ci(hits, n_boot), "consistency": rel["consistency"], "decisive_rate": rel["decisive_rate"],
            "tie_rate": rel["tie_rate"], "unparseable": rel["pairs"] - rel["parsed"],
            "prefers_longer": _rate(sum(longer(r, r["winner"]) for r in differ), len(differ)),
            "human_prefers_longer": _rate(sum(longer(r, r["human"]) for r in human_differ), len(human_differ)),
            # the first order's verdict alone: how often it names the answer shown first (position A)
            "prefers_first_shown": _rate(sum((r["verdicts"][0] == "A") for r in first), len(first)),
            "margin_quartiles": [margins[int(q * (len(margins) - 1))] for q in (0.25, 0.5, 0.75)] if margins else None,
            # what a judge must beat: two rules that read no content, scored like the judge
            "baseline_longer": _baseline([int(longer(r, r["human"])) for r in human_differ], n_boot),
            "baseline_first_shown": _baseline([int(r["human"] == "a") for r in rows], n_boot)}


def _baseline(hits: list[int], n_boot: int) -> dict:
    return {"agreement": _rate(sum(hits), len(hits)), "agreement_ci": _ci(hits, n_boot), "decisive": len(hits)}


def check(cfg: JudgeCheckConfig, *, judge_llm=None, console=None) -> dict:
    """Judge the pairs (resuming), measure, write OUT/judge_check.json and OUT/judge_check.html."""
    from .core import load_judge
    if cfg.bootstrap < 1:  # refused now, not after all the judging, when the interval is computed
        raise BaizeError(f"--bootstrap {cfg.bootstrap}: the 95% interval needs resamples; "
                         f"use --bootstrap 1000 (the default)")
    pairs = load_pairs(cfg.pairs, cfg.limit)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "judge_check.config.json")
    share, batches = 1.0, None
    if cfg.batch_api:  # the judge's calls into batches, billed at the discount
        from ..llm.batch import Batches
        from ..llm.models import load_endpoint
        share, batches = cfg.batch_discount, Batches(out, poll=cfg.batch_poll, tries=cfg.batch_tries)
        if cfg.judge.startswith("openai:"):
            judge_llm = batches.wrap(judge_llm or load_endpoint(cfg.judge, cfg, judge=True),
                                     (cfg.judge_price_in * share, cfg.judge_price_out * share))
        batches.check()
    judge = load_judge(cfg, out / "judge_cache", judge_llm)
    ledger = Ledger(cfg.max_tokens_total, {"judge": (cfg.judge_price_in * share, cfg.judge_price_out * share)},
                    max_cost=cfg.max_cost)
    t0 = time.monotonic()
    try:
        rows = judge_pairs(judge, pairs, cfg, ledger, out, console, batches)
    finally:
        judge.close()
    m = measures(rows, cfg.bootstrap)
    usage = {k: sum(int(r["meta"]["usage"].get(k, 0)) for r in rows) for k in ("prompt_tokens", "completion_tokens",
                                                                                  "calls")}
    cost = (usage["prompt_tokens"] * cfg.judge_price_in + usage["completion_tokens"] * cfg.judge_price_out) / 1000 * share
    shown = "builtin (baize/samples/hh_helpful_online.jsonl)" if cfg.pairs == "builtin" else cfg.pairs
    res = {"judge": cfg.judge, "mode": judge.mode, "pairs_file": shown, **m,
           "flags": judge_flags(m["consistency"], m["decisive_rate"], judge.mode, m["agreement"], m["decisive"],
                                m["agreement_ci"], m["n"], m["unparseable"]),
           # what this invocation waited (a rerun from the cache takes none), and each pair's own time when
           # it was judged (calls in flight together overlap, so these do not add up to a wall clock)
           "seconds": round(time.monotonic() - t0, 1),
           "seconds_per_pair": round(sum(paid) / len(paid), 2) if (paid := [r["meta"].get("seconds", 0.0) for r in rows
                                                                              if not r["meta"].get("cached")]) else None,
           "usage": usage, "cost": round(cost, 6),
           "config": public_dict(cfg, drop_secrets=True)}
    (out / "judge_check.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    (out / "judge_check.html").write_text(render_html(res), encoding="utf-8")
    res["html"] = str(out / "judge_check.html")
    return res


_ROWS = (("agreement with humans", "agreement", "decisive verdicts that match the human's choice"),
         ("consistency", "consistency", "the same decisive winner in both orders, over pairs either order decided"),
         ("decisive rate", "decisive_rate", "verdicts that prefer one answer"),
         ("tie rate", "tie_rate", "ties and inconsistent pairs"),
         ("prefers longer", "prefers_longer", "decisive verdicts for the longer answer (pairs that differ in length)"),
         ("humans prefer longer", "human_prefers_longer", "the same, for the human's choice"),
         ("prefers first shown", "prefers_first_shown", "the first order's verdict names the answer shown first"))


def render_html(res: dict) -> str:
    """One self-contained page in the eval report's style (its CSS, no script, every text escaped)."""
    from ..pages import CSP, CSS
    from ..pages import Cell as _T
    from ..pages import escape as _e
    from ..pages import html_table as _html_table
    rows = [[label, _T("–" if res.get(k) is None else f"{res[k]:.3f}"), what] for label, k, what in _ROWS]
    if (ci := res.get("agreement_ci")):
        rows.insert(1, ["agreement 95% CI", _T(f"[{ci[0]:.2f}, {ci[1]:.2f}]"), "bootstrap over pairs"])
    for i, (label, value, what) in enumerate(_baselines(res)):
        rows.insert(2 + i, [label, _T(value), what])
    per = res.get("seconds_per_pair")
    cost = [["pairs", _T(str(res["n"])), ""], ["seconds", _T(f"{res['seconds']:.0f}"), "this run's wall clock"],
            ["seconds per pair", _T("–" if per is None else f"{per:.1f}"), "latency of a pair when it was judged"],
            ["tokens in / out", _T(f"{res['usage']['prompt_tokens']} / {res['usage']['completion_tokens']}"), ""],
            ["cost", _T(f"${res['cost']:.4f}"), "at --judge-price-in / --judge-price-out"]]
    flags = "".join(f'<div class="warn" role="alert">{_e(f)}</div>' for f in res.get("flags") or [])
    body = (f"<h1>judge-check: {_e(res['judge'])}</h1><div class=\"meta\">{_e(res['mode'])} mode · "
            f"{_e(res['n'])} pairs from {_e(res['pairs_file'])}</div>{flags}"
            f"<section><h2>Against humans</h2>{_html_table(['measure', 'value', 'meaning'], rows)}"
            '<p class="note">A judge at 50% agreement tells you nothing; on HH-RLHF pairs 65% or better is about '
            "as good as judges get (human labels are noisy).</p></section>"
            f"<section><h2>Cost</h2>{_html_table(['', 'value', ''], cost)}</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>judge-check {_e(res['judge'])}</title>\n<style>{CSS}</style></head>\n"
            f"<body><main>\n{body}\n</main></body></html>\n")


def _baselines(res: dict) -> list[tuple[str, str, str]]:
    """The two no-content rules beside the judge's agreement: (label, value with its interval, meaning)."""
    out = []
    for key, label, what in (("baseline_longer", "baseline: the longer answer wins",
                              "agreement with humans of always picking the longer answer (pairs that differ)"),
                             ("baseline_first_shown", "baseline: the first shown wins",
                              "the same for the answer shown first (half the pairs show the human's choice first)")):
        b = res.get(key) or {}
        x, ci = b.get("agreement"), b.get("agreement_ci")
        value = "-" if x is None else f"{x:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        out.append((label, value, what))
    return out


def print_check(res: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    t = Table(title=f"judge-check: {res['judge']} ({res['mode']}) on {res['n']} human pairs")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for label, key in (("agreement with humans", "agreement"), ("consistency (decisive)", "consistency"),
                       ("decisive rate", "decisive_rate"), ("tie rate", "tie_rate"),
                       ("prefers longer", "prefers_longer"), ("humans prefer longer", "human_prefers_longer")):
        x = res.get(key)
        t.add_row(label, "-" if x is None else f"{x:.3f}")
    ci = res.get("agreement_ci")
    if ci:
        t.add_row("agreement 95% CI", f"[{ci[0]:.2f}, {ci[1]:.2f}]")
    for label, value, _ in _baselines(res):
        t.add_row(label, value)
    t.add_row("seconds (this run)", f"{res['seconds']:.0f}")
    t.add_row("tokens in / out", f"{res['usage']['prompt_tokens']} / {res['usage']['completion_tokens']}")
    t.add_row("cost", f"${res['cost']:.4f}")
    console.print(t)
    for f in res["flags"]:
        console.print(f"[bold red]flag:[/] {f}")
    console.print(f"-> {res['html']}", soft_wrap=True)


def add_cli(sub) -> None:
    p = sub.add_parser("judge-check", help="agreement of a judge with human preference pairs, before trusting it")
    add_dataclass_args(p, JudgeCheckConfig)
    p.set_defaults(func=_main)


def plan(cfg: JudgeCheckConfig):
    """The --dry-run plan: the judge's prompts for check_items, nothing loaded or called."""
    from ..plan import Plan, add_prompts, judge_completion
    from .core import planned_aggregator
    pairs = load_pairs(cfg.pairs, cfg.limit)
    p = Plan(items={"judge-check": f"{len(pairs):,} human preference pairs"})
    row = p.row("judge-check", "judge", cfg.judge, (cfg.judge_price_in, cfg.judge_price_out))
    agg = planned_aggregator(cfg, cfg.judge)
    add_prompts(row, [m for it in check_items(cfg.judge, agg.name, pairs) for m in agg.pair_prompts(*shown(it))],
                judge_completion(cfg, agg))
    if cfg.batch_api:
        p.batch_api("judge-check", cfg.batch_discount)
    return p


def _main(args) -> int:
    from ..plan import check_plan_out, dry_run
    cfg = dataclass_from_args(JudgeCheckConfig, args)
    check_plan_out(cfg)
    if cfg.dry_run:
        return dry_run(plan(cfg), cfg)
    res = check(cfg)
    print_check(res)
    return 1 if unreadable(res["flags"]) else 0


def unreadable(flags) -> bool:
    """Whether no verdict of the judge could be read: a run that measured nothing must not exit 0."""
    return any(str(f).startswith("unreadable") for f in flags or [])


# --- what eval's report says about its judge --------------------------------------------------------

def find_check(given: str | None, out: Path, spec: str, mode: str | None) -> dict | None:
    """The judge-check result to show beside an eval: --judge-check FILE, else one found in the eval's
    directory or beside it that checked the same judge spec (in the same mode, when one says so)."""
    if given:
        p = Path(given)
        p = p / "judge_check.json" if p.is_dir() else p
        if not p.is_file():
            raise BaizeError(f"--judge-check {given}: no such file (run baize judge-check --judge {spec} --out DIR first)")
        return _read_check(p)
    found = []
    for p in (out / "judge_check.json", out / "judge_check" / "judge_check.json",
              out.parent / "judge_check" / "judge_check.json", *sorted(out.parent.glob("judge_check*/judge_check.json"))):
        if p.is_file() and (c := _read_check(p)) and c.get("judge") == spec:
            found.append(c)
    return next((c for c in found if c.get("mode") == mode), found[0] if found else None)


def _read_check(p: Path) -> dict | None:
    try:
        c = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(c, dict):
        return None
    keep = ("judge", "mode", "n", "agreement", "agreement_ci", "decisive", "consistency", "decisive_rate",
            "prefers_longer", "human_prefers_longer", "pairs_file")
    return {**{k: c.get(k) for k in keep}, "path": str(p)}


def eval_judge_summary(cfg, verdicts: list[dict], scores: list[dict], out: Path) -> dict:
    """results.json's judge block: reliability over decisive verdicts, the flags with their reasons,
    and the judge's agreement with humans where a judge-check of it is at hand."""
    from .core import reliability
    modes = [r.get("mode") for r in verdicts if r.get("mode")]
    mode = max(set(modes), key=modes.count) if modes else None
    rel = reliability([{"winner": r["winner"], "verdicts": r.get("verdicts") or []} for r in verdicts])
    human = find_check(getattr(cfg, "judge_check", None), out, cfg.judge, mode)
    agree = human.get("agreement") if human else None
    unparseable = sum(r["winner"] is None for r in verdicts) + sum(r["value"] is None for r in scores)
    flags = judge_flags(rel["consistency"], rel["decisive_rate"], mode, agree, human.get("decisive") if human else None,
                        human.get("agreement_ci") if human else None, len(verdicts) + len(scores), unparseable)
    return {"spec": cfg.judge, "mode": mode, "consistency": rel["consistency"], "decisive_rate": rel["decisive_rate"],
            "tie_rate": rel["tie_rate"], "pairs_judged": len(verdicts),
            "unparseable": unparseable, "human": human, "flags": flags, "near_chance": bool(flags)}
