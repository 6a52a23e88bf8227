"""`baize eval`: is v2 better than v1 and the base, by how much, and can the judge be trusted?

    baize eval --models base=default v1=runs/v1 v2=runs/v2 --judge openai:gpt-4o-mini --out eval/

Questions in FastChat's MT-bench shape (`question_id`, `category`, `turns`, optional `reference`),
the legacy Vicuna shape (`text`), any seed source, or the built-in set. Each model answers every
turn seeing its own earlier answers; answers are cached per model and generation setting in
OUT/answers/NAME.jsonl; pairwise verdicts (both orders; a disagreement is a tie) and 1-10 scores
are cached in OUT/verdicts.jsonl and OUT/scores.jsonl, so a rerun makes no model or judge call.
Win rates (ties count half) carry a bootstrap 95 % interval. The results go to OUT/results.json,
OUT/report.md and OUT/report.html (report.py).
"""
from __future__ import annotations

import hashlib
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from itertools import combinations
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
    effort_opt,
    opt,
    public_dict,
    save_config,
)
from ..runner import Ledger, run_items, run_rounds, stop_if_interrupted
from ..schema import read_jsonl
from .judge_free import judge_free, nll_sets, print_judge_free
from .nll import _NllCache, mean_nll, nll, reference_dialogues  # noqa: F401  (reference_dialogues: part of eval's API)
from .questions import BUILTIN, Question, load_questions  # noqa: F401  (part of eval's API)

NEAR_CHANCE = 0.6


@dataclass
class _EvalFields:
    models: list = opt(None, "NAME=SPEC ...", cli=False)
    questions: str = opt("builtin", "MT-bench/Vicuna question JSONL, any seed source (see collect), or builtin "
                                    "(12 two-turn questions the main job never trains on)")
    judge: str = opt("default", "judge model spec (openai:MODEL, a run, default, hf:PATH); none: no judged measures")
    out: str = opt("eval", "output directory")
    baseline: str | None = opt(None, "compare each model with this one only (default: every pair)")
    pairwise: bool = opt(True, "pairwise verdicts (both orders) and win rates")
    single: bool = opt(True, "single-answer 1-10 scores (with the reference when a question has one)")
    nll_data: str | None = opt(None, "dialogue JSONL: mean NLL of its assistant tokens under each local model "
                                     "(default: 24 held-out human dialogues, baize/samples/nll_heldout.jsonl; none: off)")
    limit: int | None = opt(None, "use the first N questions")
    seed_field: str | None = opt(None, "field holding the question, for seed files")
    max_tokens: int = opt(512, "max new tokens per answer (a reasoning model gets room for its reasoning on top)")
    reasoning_effort: str | None = effort_opt("the openai: models")
    temperature: float = opt(0.7, "answer sampling temperature (0: greedy)")
    top_p: float = opt(0.95, "answer nucleus sampling")
    seed: int = opt(0, "answer sampling seed (same seed, same answers)")
    bootstrap: int = opt(1000, "bootstrap resamples for the 95-percent intervals")
    sample: int = opt(8, "questions shown side by side in the report")
    judge_check: str | None = opt(None, "a judge_check.json of this judge (baize judge-check), shown in the report "
                                        "(default: one found in OUT or beside it for the same judge)")
    judge_prompts: str | None = opt(None, "FastChat's judge_prompts.jsonl: judge each turn with its single-v1 / pair-v2, "
                                          "math and multi-turn prompts, as MT-bench does (mtbench.py)")
    fastchat_out: str | None = opt(None, "also write FastChat's model_answer/ and model_judgment/ files here, for "
                                         "its show_result.py (e.g. data/mt_bench)")
    price_in: float = opt(0.0, "price per 1K prompt tokens of the openai: models answering, for the cost ledger")
    price_out: float = opt(0.0, "price per 1K completion tokens of the openai: models answering")


@dataclass
class EvalConfig(PlanFields, BatchFields, RunFields, JudgeFields, EndpointFields, _EvalFields):
    """eval's own fields, then the endpoint's (openai: models), the judge's and the run's (config.py)."""


# --- models -------------------------------------------------------------------------------------

def parse_models(items: list[str] | None) -> dict[str, str]:
    if not items:
        raise BaizeError("no models: pass --models NAME=SPEC ..., e.g. --models base=default v1=runs/v1")
    out: dict[str, str] = {}
    for item in items:
        name, _, spec = item.partition("=") if "=" in item else (Path(item.rstrip("/")).name or item, "", item)
        if not name or not spec:
            raise BaizeError(f"--models {item!r}: use NAME=SPEC, e.g. v1=runs/v1")
        if name in out:
            raise BaizeError(f"--models: the name {name!r} is given twice; give each model its own name")
        out[name] = spec
    return out


def _check_spec(spec: str) -> None:
    """Local specs resolve before anything runs, so a typo costs nothing."""
    if not spec.startswith(("openai:", "gguf:")):
        from ..llm.models import resolve
        resolve(spec)


def model_key(spec: str, cfg: EvalConfig) -> str:
    """What the answers depend on: the model's files as they are now, and the generation settings."""
    parts: list = [spec, cfg.max_tokens, cfg.temperature, cfg.top_p, cfg.seed]
    if spec.startswith("openai:"):
        parts.append(cfg.base_url)
    elif not spec.startswith("gguf:"):
        from ..llm.models import resolve
        ref = resolve(spec)
        for d in [ref.base, *ref.adapters]:
            for name in ("adapter_model.safetensors", "baize_run.json", "config.json"):
                p = Path(d) / name
                if p.exists():
                    st = p.stat()
                    parts.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def lineage(spec: str) -> str | None:
    from ..llm.models import read_run
    chain, cur = [], spec
    while cur and (run := read_run(cur)) is not None and len(chain) < 16:
        chain.append(cur)
        cur = run.get("from_run") or run.get("base")
    return " <- ".join(chain + [cur]) if chain else None


def loss_curve(spec: str) -> list | None:
    p = Path(spec) / "loss.jsonl"
    if spec.startswith(("openai:", "gguf:", "hf:")) or not p.exists():
        return None
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# --- answers ------------------------------------------------------------------------------------

class _Lazy:
    """The model loads only when something is missing from the caches."""

    def __init__(self, spec: str, cfg: EvalConfig, batches=None, price=(0.0, 0.0)):
        import threading
        self.spec, self.cfg, self.llm, self.batches, self.price = spec, cfg, None, batches, price
        self.lock = threading.Lock()  # the runner's workers ask at once: one loads, the others wait

    def get(self):
        with self.lock:
            return self._load()

    def _load(self):
        if self.llm is None:
            from ..llm.models import load_endpoint
            self.llm = load_endpoint(self.spec, self.cfg, max_batch=self.cfg.concurrency)
            if self.batches is not None and self.spec.startswith("openai:"):  # local models answer in-process
                self.llm = self.batches.wrap(self.llm, self.price)
        return self.llm

    def close(self):
        if self.llm is not None:
            self.llm.close()
        self.llm = None


@dataclass
class _Item:
    id: str
    q: Question
    extra: dict = field(default_factory=dict)


def turn_messages(q: Question, answers: list[str], turn: int) -> list[dict]:
    """What a model is asked for turn `turn` (0-based): the question's turns so far, each earlier one
    followed by the model's own answer (answer_all sends it; plan counts it)."""
    msgs = []
    for t, a in zip(q.turns[:turn], answers):
        msgs += [{"role": "user", "content": t}, {"role": "assistant", "content": a}]
    return msgs + ([{"role": "user", "content": q.turns[turn]}] if turn < len(q.turns) else [])


def answer_all(name: str, lazy: _Lazy, questions: list[Question], cfg: EvalConfig, ledger: Ledger,
               out: Path, console=None, batches=None) -> dict[str, list[str]]:
    """{question_id: [answer per turn]}; generates what the cache lacks for this model's key."""
    key = model_key(lazy.spec, cfg)
    path = out / "answers" / f"{name}.jsonl"
    ledger = ledger.child()  # this file's summary counts this model's calls alone

    def work(item):
        llm = lazy.get()
        got, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
        for turn in range(len(item.q.turns)):
            c = llm.chat(turn_messages(item.q, got, turn), temperature=cfg.temperature, top_p=cfg.top_p,
                         max_tokens=cfg.max_tokens, seed=cfg.seed)[0]
            ledger.add(c, name)
            for k, v in (("prompt_tokens", c.prompt_tokens), ("completion_tokens", c.completion_tokens), ("calls", 1)):
                usage[k] += v
            got.append(c.text.strip())
        msgs = turn_messages(item.q, got, len(got))  # every turn with its answer
        return {"id": item.id, "messages": msgs, "meta": {"question_id": item.q.id, "category": item.q.category,
                                                          "model": name, "spec": lazy.spec, "key": key, "usage": usage}}

    items = [_Item(f"{q.id}@{key}", q) for q in questions]
    _run(items, work, path, cfg, ledger, batches, f"answers {name}", "questions", console)
    got = {}
    for r in read_jsonl(path):
        if r["meta"].get("key") == key:  # answers of an older model or setting stay, unused
            got[r["meta"]["question_id"]] = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
    return got


# --- judging ------------------------------------------------------------------------------------

def judge_inputs(q: Question, answers: list[str]) -> tuple[str, str]:
    """(context, answer) for the judge: one turn as it is; several as the user's turns in order and
    the model's answer to each (each model saw its own earlier answers, so no transcript is shared)."""
    if len(q.turns) == 1:
        return q.turns[0], answers[0] if answers else ""
    ctx = "The user asked these questions in turn, each after the assistant's previous answer:\n" + \
          "\n".join(f"[Turn {i}] {t}" for i, t in enumerate(q.turns, 1))
    return ctx, "\n\n".join(f"[Answer to turn {i}]\n{a}" for i, a in enumerate(answers, 1))


def _reference(q: Question) -> str | None:
    refs = [(i, r) for i, r in enumerate(q.reference or [], 1) if r]
    if not refs:
        return None
    return refs[0][1] if len(q.turns) == 1 else "\n\n".join(f"[Reference for turn {i}]\n{r}" for i, r in refs)


def _h(*texts) -> str:
    return hashlib.sha1(json.dumps(texts).encode()).hexdigest()[:10]


# What eval's judge is asked, declared once: the run judges these items and plan() counts them.

def pair_items(judge_id: str, pairs, questions, answers) -> list[_Item]:
    """One verdict (both orders: the judge's pair_prompts) per question and pair of models."""
    return [_Item(f"{q.id}:{a}:{b}:{_h(judge_id, answers[a][q.id], answers[b][q.id])}", q,
                  {"a": a, "b": b, "ans": (answers[a][q.id], answers[b][q.id])})
            for q in questions for a, b in pairs if q.id in answers[a] and q.id in answers[b]]


def pair_args(item: _Item) -> tuple[str, str, str]:
    """(context, a, b) of a pair item, as Judge.pair takes them."""
    (ctx, ta), (_, tb) = judge_inputs(item.q, item.extra["ans"][0]), judge_inputs(item.q, item.extra["ans"][1])
    return ctx, ta, tb


def score_items(judge_id: str, names, questions, answers) -> list[_Item]:
    """One 1-10 score per question and model."""
    return [_Item(f"{q.id}:{n}:{_h(judge_id, answers[n][q.id], q.reference)}", q, {"model": n, "ans": answers[n][q.id]})
            for q in questions for n in names if q.id in answers[n]]


def score_args(item: _Item) -> tuple[str, str, str | None]:
    """(context, answer, reference) of a score item, as Judge.score takes them."""
    return (*judge_inputs(item.q, item.extra["ans"]), _reference(item.q))


def judge_pairs(judge, pairs, questions, answers, cfg, ledger, out: Path, console=None, batches=None) -> list[dict]:
    ledger = ledger.child()
    items = pair_items(_jid(judge), pairs, questions, answers)

    def work(item):
        v = judge.pair(*pair_args(item))
        ledger.add(role="judge", usage=v.usage)
        return {"id": item.id, "question_id": item.q.id, "category": item.q.category, "a": item.extra["a"],
                "b": item.extra["b"], "winner": {"A": "a", "B": "b", "tie": "tie"}.get(v.winner),
                "consistent": v.consistent, "verdicts": v.verdicts, "margin": v.margin, "mode": judge.mode,
                "raw": v.raw, "meta": {"usage": v.usage}}

    return _judged(items, work, out / "verdicts.jsonl", cfg, ledger, "judge pairs", console, batches)


def _jid(judge) -> str:
    """What a verdict or score record depends on: the judge, and its mode (a rerun in another mode
    judges again rather than reuse the other mode's verdicts; text keeps the ids it always had)."""
    return judge.name if judge.mode == "text" else f"{judge.name}/{judge.mode}"


def judge_scores(judge, names, questions, answers, cfg, ledger, out: Path, console=None, batches=None) -> list[dict]:
    ledger = ledger.child()
    items = score_items(_jid(judge), names, questions, answers)

    def work(item):
        s = judge.score(*score_args(item))
        ledger.add(role="judge", usage=s.usage)
        return {"id": item.id, "question_id": item.q.id, "category": item.q.category, "model": item.extra["model"],
                "value": s.value, "raw": s.raw, "meta": {"usage": s.usage}}

    return _judged(items, work, out / "scores.jsonl", cfg, ledger, "judge scores", console, batches)


def _run(items, work, path: Path, cfg, ledger, batches, label: str, noun: str, console) -> None:
    """run_items; with --batch-api, round after round until no item waits for a batch."""
    def one_round():
        return run_items(items, work, out=path, ledger=ledger, concurrency=cfg.concurrency, label=label, noun=noun,
                         retry_failed=cfg.retry_failed, progress=cfg.progress, console=console)
    stop_if_interrupted(run_rounds(one_round, batches, ledger, out=path) if batches else one_round())


def _judged(items, work, path: Path, cfg, ledger, label, console, batches=None) -> list[dict]:
    _run(items, work, path, cfg, ledger, batches, label, "verdicts", console)
    wanted = {it.id for it in items}
    return [r for r in read_jsonl(path) if r["id"] in wanted] if path.exists() else []


# --- statistics ---------------------------------------------------------------------------------

def win_rate(outcomes: list[float]) -> float | None:
    """Outcomes 1 (win), 0.5 (tie), 0 (loss): ties count half."""
    return round(sum(outcomes) / len(outcomes), 4) if outcomes else None


def bootstrap_ci(values: list[float], n: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile 95 % interval of the mean over `n` resamples of the questions."""
    if not values:
        return None
    rng = random.Random(seed)
    k = len(values)
    means = sorted(sum(rng.choices(values, k=k)) / k for _ in range(n))
    return [round(means[int(0.025 * (n - 1))], 4), round(means[int(0.975 * (n - 1))], 4)]


def pair_stats(verdicts: list[dict], a: str, b: str, n_boot: int) -> dict:
    def tally(rows):
        oc = [1.0 if r["winner"] == "a" else 0.5 if r["winner"] == "tie" else 0.0 for r in rows if r["winner"]]
        return {"win": oc.count(1.0), "tie": oc.count(0.5), "loss": oc.count(0.0),
                "unjudged": sum(r["winner"] is None for r in rows), "n": len(rows),
                "win_rate": win_rate(oc), "ci": bootstrap_ci(oc, n_boot)}
    rows = [r for r in verdicts if r["a"] == a and r["b"] == b]
    cats = sorted({r["category"] for r in rows})
    return {"a": a, "b": b, **tally(rows), "by_category": {c: tally([r for r in rows if r["category"] == c]) for c in cats}}


def score_stats(scores: list[dict], name: str, n_boot: int) -> dict | None:
    rows = [r for r in scores if r["model"] == name and r["value"] is not None]
    if not rows:
        return None
    vals = [r["value"] for r in rows]
    cats = sorted({r["category"] for r in rows})
    return {"mean": round(statistics.mean(vals), 3), "ci": bootstrap_ci(vals, n_boot), "n": len(vals),
            "unjudged": sum(1 for r in scores if r["model"] == name and r["value"] is None),
            "by_category": {c: round(statistics.mean(r["value"] for r in rows if r["category"] == c), 3) for c in cats}}


# --- the run ------------------------------------------------------------------------------------

def evaluate(cfg: EvalConfig, *, llms: dict | None = None, judge_llm=None, console=None) -> dict:
    """Answers, verdicts, scores, NLL -> OUT/results.json + report; `llms` maps names to LLM objects (tests)."""
    from ..judge.core import load_judge
    models = parse_models(cfg.models)
    if cfg.bootstrap < 1:  # refused now, not after all the judging, when the intervals are computed
        raise BaizeError(f"--bootstrap {cfg.bootstrap}: the 95% intervals need resamples; "
                         f"use --bootstrap 1000 (the default)")
    if cfg.baseline and cfg.baseline not in models:
        raise BaizeError(f"--baseline {cfg.baseline}: not one of the models ({', '.join(models)}); use one of those names")
    for spec in models.values():
        _check_spec(spec)
    _judge_prompts(cfg)  # a bad --judge-prompts fails now, before minutes of answers
    questions = _questions(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "eval.config.json")
    judged = cfg.judge and cfg.judge.lower() != "none" and (cfg.pairwise or cfg.single)
    # an unreachable judge fails now, before minutes of answers
    batches = _batches(cfg, out, models) if cfg.batch_api else None
    prices = _prices(cfg, models, cfg.batch_discount if cfg.batch_api else 1.0)
    if batches and judged and cfg.judge.startswith("openai:"):
        from ..llm.models import load_endpoint
        judge_llm = batches.wrap(judge_llm or load_endpoint(cfg.judge, cfg, judge=True), prices["judge"])
    judge = load_judge(cfg, out / "judge_cache", judge_llm) if judged else None
    ledger = Ledger(cfg.max_tokens_total, prices, max_cost=cfg.max_cost)
    t0 = time.monotonic()
    answers, nlls, parts = {}, {}, {}
    nll_cache = _NllCache(out / "nll.jsonl")
    sets = {"data": list(read_jsonl(path, validate=True))} if (path := nll_sets(cfg.nll_data)) else {}
    if (refs := reference_dialogues(questions)):
        sets["reference"] = refs
    for name, spec in models.items():
        lazy = _Lazy(spec, cfg, batches, prices.get(name, (0.0, 0.0)))
        if llms and name in llms:
            lazy.llm = llms[name]
        answers[name] = answer_all(name, lazy, questions, cfg, ledger, out, console, batches)
        nlls[name] = {}
        local = not spec.startswith(("openai:", "gguf:"))
        for what, recs in sets.items():  # per dialogue, so that judge_free's interval can resample them
            key = (model_key(spec, cfg), what, "parts", _h(recs))
            if local and (p := nll_cache.get(key, lambda lazy=lazy, recs=recs: nll(lazy, recs))) is not None:
                nlls[name][what] = mean_nll(p)
                parts.update({name: p} if what == "data" else {})
        if not (llms and name in llms):
            lazy.close()
    names = list(models)
    pairs = _pairs(cfg, names)
    if judged and cfg.judge_prompts:  # FastChat's prompts, each turn judged apart
        from ..judge.mtbench import judge_mt
        verdicts, scores = judge_mt(judge, cfg, pairs, names, questions, answers, ledger, out, console)
    else:
        verdicts = judge_pairs(judge, pairs, questions, answers, cfg, ledger, out, console, batches) \
            if judged and cfg.pairwise else []
        scores = judge_scores(judge, names, questions, answers, cfg, ledger, out, console, batches) \
            if judged and cfg.single else []
    results = build_results(cfg, models, questions, answers, verdicts, scores, nlls, pairs)
    free, results["judge_free_pairs"] = judge_free(questions, answers, parts, pairs, cfg.bootstrap)
    for name, jf in free.items():
        results["models"][name]["judge_free"] = jf
    results["ledger"], results["seconds"] = ledger.as_dict(), round(time.monotonic() - t0, 1)
    results["stopped"] = ledger.spent_cap()  # the cap that stopped it: a rerun with more finishes the rest
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    from .report import write_report
    results["paths"] = {k: str(v) for k, v in write_report(results, out).items()}
    if cfg.fastchat_out:
        from ..judge.mtbench import write_fastchat
        results["fastchat"] = write_fastchat(cfg.fastchat_out, cfg, questions, answers, verdicts, scores,
                                             judge_inputs, _reference)
    return results


def build_results(cfg, models, questions, answers, verdicts, scores, nlls, pairs) -> dict:
    from datetime import datetime, timezone

    from ..judge.check import eval_judge_summary
    from ..judge.winrate import add_length_control
    pairwise, length = add_length_control([pair_stats(verdicts, a, b, cfg.bootstrap) for a, b in pairs], verdicts,
                                          answers, cfg.bootstrap) if verdicts else ([], None)
    res = {"title": "baize eval", "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "questions_file": cfg.questions, "n_questions": len(questions),
           "judge": None if not (verdicts or scores) else eval_judge_summary(cfg, verdicts, scores, Path(cfg.out)),
           "models": {}, "pairwise": pairwise, "length_control": length}
    for name, spec in models.items():
        turns = [a for ans in answers[name].values() for a in ans]
        res["models"][name] = {
            "spec": spec, "answers": len(answers[name]),
            "mean_words": round(statistics.mean(len(a.split()) for a in turns), 1) if turns else None,
            "empty_answers": sum(not a.strip() for a in turns),
            "score": score_stats(scores, name, cfg.bootstrap), "nll": nlls.get(name) or None,
            "loss_curve": loss_curve(spec), "lineage": lineage(spec)}
    by_q = {}
    for r in verdicts:
        by_q.setdefault(r["question_id"], []).append({k: r[k] for k in ("a", "b", "winner", "consistent")})
    sc = {(r["question_id"], r["model"]): r["value"] for r in scores}
    res["questions"] = [{"question_id": q.id, "category": q.category, "turns": q.turns, "reference": q.reference,
                         "answers": {n: answers[n].get(q.id, []) for n in models},
                         "scores": {n: sc.get((q.id, n)) for n in models}, "verdicts": by_q.get(q.id, [])}
                        for q in questions[:cfg.sample]]
    res["config"] = public_dict(cfg, drop_secrets=True)
    return res


def print_results(res: dict, console=None, *, pair_lines: bool = True) -> None:
    """pair_lines: the judge-free line per pair under its table (the pipeline says them last instead)."""
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    t = Table(title=f"eval: {res['n_questions']} questions")
    for col in ("model", "score (95% CI)", "words/answer", "NLL"):
        t.add_column(col)
    for name, m in res["models"].items():
        s = m["score"]
        t.add_row(name, "-" if not s else f"{s['mean']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]",
                  str(m["mean_words"]), ", ".join(f"{k} {v:.3f}" for k, v in (m["nll"] or {}).items()) or "-")
    console.print(t)
    if res["pairwise"]:
        p = Table(title="pairwise (ties count half)")
        for col in ("a vs b", "win / tie / loss", "win rate (95% CI)", "length-controlled (95% CI)"):
            p.add_column(col)
        for r in res["pairwise"]:
            wr = "-" if r["win_rate"] is None else f"{r['win_rate']:.3f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
            lc = r.get("lc_note") or "-" if r.get("lc_win_rate") is None else f"{r['lc_win_rate']:.3f}" + (
                f" [{r['lc_ci'][0]:.2f}, {r['lc_ci'][1]:.2f}]" if r.get("lc_ci") else "")
            p.add_row(f"{r['a']} vs {r['b']}", f"{r['win']} / {r['tie']} / {r['loss']}", wr, lc)
        console.print(p)
    print_judge_free(res, console, pair_lines)
    from .report import judge_lines
    for line in judge_lines(res.get("judge")):
        console.print(line, soft_wrap=True)
    console.print(f"report: {res['paths']['html']} (and {res['paths']['md']})", soft_wrap=True)


def add_cli(sub) -> None:
    p = sub.add_parser("eval", help="judged evaluation of several models: win rates, scores, NLL, a report")
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=SPEC",
                   help="models to compare, e.g. base=default v1=runs/v1 v2=runs/v2 (specs as everywhere)")
    add_dataclass_args(p, EvalConfig)
    p.set_defaults(func=_main)


def _questions(cfg: EvalConfig) -> list[Question]:
    from ..plan import limit_warning, warn
    questions = load_questions(cfg.questions, field=cfg.seed_field)
    warn(limit_warning("--limit", cfg.limit, len(questions), f"{cfg.questions} has"))
    return questions[:cfg.limit] if cfg.limit else questions


def _pairs(cfg: EvalConfig, names: list[str]) -> list[tuple[str, str]]:
    """The pairs the judge compares: each model with --baseline, or every pair, newer against older."""
    return ([(n, cfg.baseline) for n in names if n != cfg.baseline] if cfg.baseline
            else [(names[j], names[i]) for i, j in combinations(range(len(names)), 2)])


def _judge_prompts(cfg: EvalConfig) -> dict | None:
    """FastChat's prompts of --judge-prompts, read and checked (the dry run and the run alike)."""
    if not cfg.judge_prompts:
        return None
    if not Path(cfg.judge_prompts).is_file():
        raise BaizeError(f"--judge-prompts {cfg.judge_prompts}: no such file (FastChat's "
                         f"fastchat/llm_judge/data/judge_prompts.jsonl); fix the path or leave the flag out")
    from ..judge.mtbench import load_judge_prompts
    return load_judge_prompts(cfg.judge_prompts)


def _prices(cfg: EvalConfig, models: dict[str, str], d: float = 1.0) -> dict:
    """The ledger's prices: the judge's, and --price-in/--price-out for each openai: model answering
    (its role in the ledger is its name); endpoint calls at `d` of that (--batch-api's discount)."""
    j = d if (cfg.judge or "").startswith("openai:") else 1.0
    return {"judge": (cfg.judge_price_in * j, cfg.judge_price_out * j),
            **{n: (cfg.price_in * d, cfg.price_out * d) for n, spec in models.items() if spec.startswith("openai:")}}


def _batches(cfg: EvalConfig, out: Path, models: dict[str, str]):
    from ..llm.batch import Batches
    if not any(spec.startswith("openai:") for spec in [*models.values(), cfg.judge or ""]):
        raise BaizeError("--batch-api: none of eval's models nor its judge is an openai: model: drop --batch-api")
    if cfg.judge_prompts:
        raise BaizeError("--batch-api with --judge-prompts (MT-bench's per-turn judging) is not supported yet: "
                         "drop one of them")
    return Batches(out, poll=cfg.batch_poll, tries=cfg.batch_tries)


def plan(cfg: EvalConfig, questions: list[Question] | None = None):
    """The --dry-run plan (_calls), with an estimate of a reasoning model's hidden tokens per role."""
    from ..plan import add_reasoning
    efforts = {name: cfg.reasoning_effort for name in parse_models(cfg.models)}
    p = add_reasoning(_calls(cfg, questions), {**efforts, "judge": cfg.judge_reasoning_effort})
    if cfg.batch_api:
        p.batch_api("eval", cfg.batch_discount)
    return p


def _calls(cfg: EvalConfig, questions: list[Question] | None = None):
    """Each call the run makes, nothing called: each model's turn_messages with every answer at its cap, and
    the judge's prompts for the same items the run judges (pair_items and score_items, or MT-bench's
    per-turn mt_items with --judge-prompts). Each model's role is its name, as in the ledger."""
    from ..judge.core import planned_aggregator
    from ..plan import Plan, add_prompts, bound, judge_completion
    models = parse_models(cfg.models)
    mt_prompts = _judge_prompts(cfg)
    questions = _questions(cfg) if questions is None else questions
    prices = _prices(cfg, models)
    turns = sum(len(q.turns) for q in questions)
    p = Plan(items={"eval": f"{len(questions)} questions ({turns} turns), {len(models)} models"})
    at_cap = {q.id: [bound(cfg.max_tokens)] * len(q.turns) for q in questions}
    for name, spec in models.items():
        row = p.row("eval", name, spec, prices.get(name, (0.0, 0.0)))
        add_prompts(row, [turn_messages(q, at_cap[q.id], t) for q in questions for t in range(len(q.turns))],
                    cfg.max_tokens)
    if not (cfg.judge and cfg.judge.lower() != "none" and (cfg.pairwise or cfg.single)):
        return p
    judge = p.row("eval", "judge", cfg.judge, (cfg.judge_price_in, cfg.judge_price_out))
    agg, names = planned_aggregator(cfg, cfg.judge), list(models)
    answers, out = {n: at_cap for n in names}, judge_completion(cfg, agg)
    pairs = _pairs(cfg, names) if cfg.pairwise else []
    if mt_prompts is not None:
        from ..judge.mtbench import mt_items, mt_pair_prompts, mt_score_prompt
        pitems, sitems = mt_items(mt_prompts, cfg.judge, cfg, pairs, names, questions, answers)
        add_prompts(judge, [m for it in pitems for m in mt_pair_prompts(it.extra["prompt"], it.q, at_cap[it.q.id],
                                                                        at_cap[it.q.id])], out)
        add_prompts(judge, [mt_score_prompt(it, answers) for it in sitems], out)
        return p
    add_prompts(judge, [m for it in pair_items(cfg.judge, pairs, questions, answers)
                        for m in agg.pair_prompts(*pair_args(it))], out)
    if cfg.single:
        add_prompts(judge, [agg.score_prompt(*score_args(it)) for it in score_items(cfg.judge, names, questions,
                                                                                     answers)], out)
    return p


def _main(args) -> int:
    from ..plan import budget_hint, check_plan_out, dry_run
    cfg = dataclass_from_args(EvalConfig, args, models=args.models)
    check_plan_out(cfg)
    if cfg.dry_run:
        return dry_run(plan(cfg), cfg)
    res = evaluate(cfg)
    print_results(res)
    if res["stopped"]:
        cap = cfg.max_cost if res["stopped"] == "--max-cost" else cfg.max_tokens_total
        used = sum(r["cost"] for r in res["ledger"].values()) if res["stopped"] == "--max-cost" else \
            sum(r["prompt_tokens"] + r["completion_tokens"] for r in res["ledger"].values())
        print(budget_hint(res["stopped"], cap, used))
    from ..judge.check import unreadable
    return 1 if unreadable((res.get("judge") or {}).get("flags")) else 0
