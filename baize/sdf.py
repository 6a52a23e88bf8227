"""Self-Distillation with Feedback (Baize v2): the tuned model samples n answers per prompt, a judge
ranks them, the best becomes the assistant turn of a training dialogue.

    baize sdf --policy runs/v1 --judge openai:gpt-4o-mini --prompts quora --n 4 --out data/sdf.jsonl
    baize train --from runs/v1 --data data/sdf.jsonl --out runs/v2                     # the paper (SFT)
    baize train --from runs/v1 --method dpo --data data/sdf.prefs.jsonl --out runs/v2-dpo  # beyond it

Prompts are seeds (any source `collect` reads) or, from a dialogue file, every prefix that ends in
a user turn (SDF on multi-turn contexts, which the paper did not do). Each output record keeps
every candidate with its rank and the judge's raw verdicts; OUT.prefs.jsonl holds the whole
ranking as preference pairs in TRL's conversational shape (best against each worse candidate),
rebuilt from OUT at the end of every run so it never disagrees with it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import (
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
)
from .runner import Ledger, print_summary, run_items, run_rounds
from .schema import atomic_write_text, read_jsonl, repair_torn_tail, sidecar


@dataclass
class _SDFFields:
    policy: str = opt("runs/v1", "the model that samples: a run directory, default, hf:PATH, or openai:MODEL "
                                 "(e.g. vLLM serving base + v1 LoRA with --enable-lora)")
    judge: str = opt("default", "the model that ranks the candidates: openai:MODEL, a run directory, default, hf:PATH")
    prompts: str = opt("quora", "seeds (JSONL/CSV/TXT, MedQuAD folder, hf:DATASET[:SPLIT]:FIELD, quora|stackoverflow|"
                                "medquad|alpaca) or a dialogue JSONL: every prefix ending in a user turn is a prompt")
    out: str = opt("data/sdf.jsonl", "output dialogues (best answer); OUT.prefs.jsonl, .rejected, .failed, "
                                     ".config.json, .summary.json beside it")
    seed_field: str | None = opt(None, "field/column holding the prompt text (seed files)")
    limit: int | None = opt(None, "use the first N prompts")
    shard: str | None = opt(None, "I/N: this machine's disjoint part of the prompts")
    n: int = opt(4, "candidates sampled per prompt (the paper: 4)")
    temperature: float = opt(1.0, "policy sampling temperature (the paper: 1)")
    top_p: float = opt(0.95, "policy nucleus sampling (the paper: 0.95)")
    max_tokens: int = opt(512, "max new tokens per candidate (a reasoning policy gets room for its reasoning on top)")
    reasoning_effort: str | None = effort_opt("an openai: policy")
    system: str | None = opt(None, "system prompt put before each prompt that has none (default: a local run adds "
                                   "the one it was trained with; give the run's own for an openai: policy)")
    judge_orders: int | None = opt(None, "text and choice modes: presentation orders per ranking (default 2: as "
                                         "given and reversed; more add rotations), Borda over them; debiased mode "
                                         "always shows all n rotations and refuses it")
    min_agreement: float = opt(0.0, "text and choice modes: reject prompts whose judge orders agree on fewer than "
                                    "this fraction of pairs (refused in debiased mode)")
    price_in: float = opt(0.0, "policy price per 1K prompt tokens, for the cost ledger")
    price_out: float = opt(0.0, "policy price per 1K completion tokens")


@dataclass
class SDFConfig(PlanFields, BatchFields, RunFields, JudgeFields, EndpointFields, _SDFFields):
    """SDF's own fields, then the endpoint's (the policy's), the judge's and the run's (config.py)."""


# --- prompts ------------------------------------------------------------------------------------

@dataclass
class Prompt:
    id: str
    context: list[dict]  # ends in a user turn
    source: str
    meta: dict = field(default_factory=dict)


def _is_dialogue_file(spec: str) -> bool:
    p = Path(spec)
    if not (p.is_file() and p.suffix.lower() in (".jsonl", ".json")):
        return False
    with p.open(encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(obj, dict) and isinstance(obj.get("messages"), list)
    return False


def load_prompts(spec: str, *, field: str | None = None, limit: int | None = None,
                 shard: str | None = None) -> list[Prompt]:
    """Seeds as one-turn prompts, or every user-ending prefix of the dialogues in a dialogue file."""
    from .data.seeds import in_shard, load_seeds, parse_shard
    if not _is_dialogue_file(spec):
        return [Prompt(s.id, [{"role": "user", "content": s.text}], s.source, {"seed": s.text, **s.meta})
                for s in load_seeds(spec, field=field, limit=limit, shard=shard)]
    part = parse_shard(shard)
    out: list[Prompt] = []
    for rec in read_jsonl(spec, validate=True):
        msgs = rec["messages"]
        if not in_shard(str(rec["id"]), part):
            continue
        for i, m in enumerate(msgs):
            if m["role"] == "user" and m["content"].strip():
                turn = sum(x["role"] == "user" for x in msgs[:i + 1])
                meta = {"dialogue_id": rec["id"], "turn": turn, "seed": rec.get("meta", {}).get("seed", "")}
                out.append(Prompt(f"{rec['id']}-t{turn}", [dict(x) for x in msgs[:i + 1]],
                                  rec.get("meta", {}).get("source", Path(spec).stem), meta))
                if limit and len(out) >= limit:
                    return out
    if not out:
        raise BaizeError(f"--prompts {spec}: no user turns in the dialogues")
    return out


# --- one prompt ---------------------------------------------------------------------------------

def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _row_seed(prompt_id: str) -> int:
    """A sampling seed per prompt: a rerun of a prompt draws the same candidates."""
    return int(hashlib.sha1(prompt_id.encode()).hexdigest()[:8], 16)


def dense_ranks(points: list[float]) -> list[int]:
    """1 = best; equal points share a rank (1, 2, 2, 3)."""
    levels = sorted(set(points), reverse=True)
    return [levels.index(p) + 1 for p in points]


def _count(usage: dict, u: dict) -> None:
    """Add one reply's tokens to the prompt's usage; its calls are counted where they are made."""
    for k, v in u.items():
        if v and k != "calls":
            usage[k] = usage.get(k, 0) + v


def sample(policy, context: list[dict], cfg: SDFConfig, seed: int) -> tuple[list, str, dict, int]:
    """cfg.n candidates however the policy gives them: (completions, how, the policy's usage, replies
    cut by max_tokens before any text). How: "n" (one call), "topped_up" (fewer choices came back
    than asked, the rest from single calls) or "single_calls" (the policy is known to ignore or
    refuse n). Each single call has its own seed, so a seeded server still draws n different answers."""
    from .llm.base import EmptyReplyError
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
    comps, cut, errors = [], 0, []

    def ask(n: int, s: int) -> list:
        nonlocal cut
        usage["calls"] += 1
        try:
            got = policy.chat(context, n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                              seed=s)
        except EmptyReplyError as e:  # one candidate lost to the token cap, not the whole prompt
            _count(usage, e.usage)
            cut, errors[:] = cut + (e.choices or n), [e]  # an n-ignoring server cut one reply, not n
            return []
        for c in got:
            _count(usage, c.usage())
        return got

    if policy.honours_n is False:
        how = "single_calls"
    else:
        comps = ask(cfg.n, seed)
        how = "n"
        if len(comps) + cut < cfg.n:
            if policy.honours_n is None:
                policy.honours_n = False  # a backend that does not learn it itself: the next prompts go single
            how = "topped_up"
    start = 0 if how == "single_calls" else len(comps) + cut
    for i in range(start, cfg.n):
        comps += ask(1, (seed + i) & 0xFFFFFFFF)[:1]
    if not comps and errors:
        raise errors[0]  # every call hit the cap: the prompt fails with the reason (raise --max-tokens)
    return comps, how, usage, cut


def policy_context(prompt: Prompt, cfg: SDFConfig) -> list[dict]:
    """What the policy is asked: the prompt, after --system where it has none (an endpoint does not
    know the run's system prompt)."""
    if cfg.system and prompt.context[0]["role"] != "system":
        return [{"role": "system", "content": cfg.system}] + prompt.context
    return prompt.context


def sdf_one(prompt: Prompt, policy, judge, cfg: SDFConfig, ledger: Ledger) -> dict | None:
    """Sample, clean, rank: one SDF record (meta.reject_reason set when it is not usable)."""
    if ledger.exhausted():
        return None
    comps, sampling, pol, cut = sample(policy, policy_context(prompt, cfg), cfg, _row_seed(prompt.id))
    ledger.add(role="policy", usage=pol)
    cands, seen, dropped = [], set(), {"empty": 0, "duplicate": 0}
    if cut:
        dropped["cut_by_max_tokens"] = cut
    for c in comps:
        text = c.text.strip()
        if not text:
            dropped["empty"] += 1
        elif _norm(text) in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(_norm(text))
            cands.append({"text": text, "finish_reason": c.finish_reason})
    meta = {**prompt.meta, "source": prompt.source, "policy": policy.name, "judge": judge.llm.name, "mode": "sdf",
            "n": cfg.n, "sampling": sampling, "dropped": dropped, "usage": {"policy": pol}}
    rec = {"id": prompt.id, "messages": list(prompt.context), "meta": meta}
    if len(cands) < 2:
        meta.update(candidates=cands, reject_reason="too_few_candidates")
        return rec
    r = judge.rank(prompt.context, [c["text"] for c in cands])
    ledger.add(role="judge", usage=r.usage)
    meta["usage"]["judge"] = r.usage
    meta.update(agreement=r.agreement, orders=r.orders, order=r.order, judge_raw=r.raw, judge_cached=r.cached)
    if r.order is None:
        meta.update(candidates=cands, reject_reason="unjudged")
        return rec
    ranks = dense_ranks(r.points)
    for c, rank, pts in zip(cands, ranks, r.points):
        c.update(rank=rank, points=pts)
    meta["candidates"] = cands
    best = cands[r.order[0]]
    rec["messages"] = list(prompt.context) + [{"role": "assistant", "content": best["text"]}]
    if len(set(r.points)) == 1:
        meta["reject_reason"] = "no_preference"  # every candidate tied: the judge told us nothing
    elif cfg.min_agreement > 0 and (r.agreement is None or r.agreement < cfg.min_agreement):
        meta["reject_reason"] = "low_agreement"
    elif ranks.count(1) > 1:
        meta["reject_reason"] = "tied_best"  # which of the best to train on would be a coin flip
    return rec


# --- preference pairs ---------------------------------------------------------------------------

def prefs_rows(rec: dict) -> list[dict]:
    """The best candidate against each candidate the judge ranked strictly lower."""
    meta = rec["meta"]
    cands = [c for c in meta.get("candidates", []) if "rank" in c]
    if not cands:
        return []
    best = min(cands, key=lambda c: c["rank"])
    chosen = rec["messages"][-1]["content"]
    prompt = rec["messages"][:-1]
    rows = []
    for i, c in enumerate(meta["candidates"]):
        if "rank" not in c or c["rank"] <= best["rank"] or c["text"] == chosen:
            continue
        rows.append({"id": f"{rec['id']}-p{i}", "prompt": prompt,
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": c["text"]}],
                     "meta": {"sdf_id": rec["id"], "chosen_rank": best["rank"], "rejected_rank": c["rank"],
                              "margin": c["rank"] - best["rank"],
                              "points_margin": round(best["points"] - c["points"], 4),
                              "agreement": meta.get("agreement"), "judge": meta.get("judge"),
                              "policy": meta.get("policy"), "source": meta.get("source")}})
    return rows


def write_prefs(out: str | Path) -> dict:
    """OUT.prefs.jsonl from every kept record of OUT (atomically); returns counts for the summary."""
    out = Path(out)
    n = pairs = 0
    agreements = []
    lines = []
    if out.exists():
        repair_torn_tail(out)
        for rec in read_jsonl(out):
            n += 1
            if rec["meta"].get("agreement") is not None:
                agreements.append(rec["meta"]["agreement"])
            for row in prefs_rows(rec):
                pairs += 1
                lines.append(json.dumps(row, ensure_ascii=False))
    path = sidecar(out, "prefs")
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    # the decisive rate beside the agreement: a judge that ties every candidate has no agreement to
    # show, and its prompts sit in .rejected as no_preference, not in OUT
    rej = sidecar(out, "rejected")
    reasons = [r["meta"].get("reject_reason") for r in read_jsonl(rej)] if rej.exists() else []
    undecided = reasons.count("no_preference") + reasons.count("tied_best")
    judged = n + undecided + reasons.count("low_agreement")
    return {"prompts": n, "pairs": pairs, "prefs": str(path),
            "mean_agreement": round(sum(agreements) / len(agreements), 4) if agreements else None,
            "decisive_rate": round(1 - undecided / judged, 4) if judged else None}


# --- the run ------------------------------------------------------------------------------------

def refuse_debiased_flags(cfg: SDFConfig, mode: str) -> None:
    """--judge-orders and --min-agreement mean nothing to a debiased judge: it reads every rotation
    together, and each order's own ranking there follows position, not quality."""
    if mode != "debiased":
        return
    if cfg.judge_orders is not None:
        raise BaizeError(f"--judge-orders {cfg.judge_orders}: a debiased judge (the default for a local one) shows "
                         f"every candidate at every position once (n rotations); drop the flag or use --judge-mode text")
    if cfg.min_agreement > 0:
        raise BaizeError(f"--min-agreement {cfg.min_agreement}: a debiased judge reads its orders together, and each "
                         f"order's own ranking follows position, so their agreement measures nothing; drop the flag "
                         f"or use --judge-mode text")


def load_policy_and_judge(cfg: SDFConfig, policy=None, judge_llm=None, batches=None, prices: dict | None = None):
    from .judge.core import load_judge
    from .llm.models import load_endpoint
    refuse_debiased_flags(cfg, cfg.judge_mode)  # before loading anything, when the mode is given
    if policy is None:
        policy = load_endpoint(cfg.policy, cfg, max_batch=min(64, cfg.concurrency * cfg.n))
    if judge_llm is None and cfg.judge == cfg.policy and not cfg.judge.startswith("openai:"):
        judge_llm = policy  # one copy of a local model in memory
    if batches is not None:  # --batch-api: the openai: models' calls go into batches, local ones run here
        if cfg.judge.startswith("openai:"):
            judge_llm = batches.wrap(judge_llm or load_endpoint(cfg.judge, cfg, judge=True), prices["judge"])
        policy = batches.wrap(policy, prices["policy"])  # a local policy's samples kept for the replays
        batches.check()
    out = Path(cfg.out)
    stem = out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    judge = load_judge(cfg, out.with_name(stem + ".judge_cache"), judge_llm, orders=cfg.judge_orders or 2)
    refuse_debiased_flags(cfg, judge.mode)  # --judge-mode auto chose debiased for a local judge
    return policy, judge


def sdf(cfg: SDFConfig, policy=None, judge_llm=None, *, console=None):
    """Run (or resume) SDF; returns (summary of this invocation, prefs counts over the whole file)."""
    if cfg.n < 2:
        raise BaizeError(f"--n {cfg.n}: SDF needs at least 2 candidates per prompt to rank")
    prompts = _prompts(cfg)
    prices = {"policy": (cfg.price_in, cfg.price_out), "judge": (cfg.judge_price_in, cfg.judge_price_out)}
    batches = None
    if cfg.batch_api:
        from .llm.batch import Batches
        batches = Batches(cfg.out, poll=cfg.batch_poll, tries=cfg.batch_tries)
        spec = {"policy": cfg.policy, "judge": cfg.judge}
        prices = {r: tuple(x * cfg.batch_discount for x in p) if spec[r].startswith("openai:") else p
                  for r, p in prices.items()}  # batch calls are billed at the discount
    policy, judge = load_policy_and_judge(cfg, policy, judge_llm, batches, prices)
    ledger = Ledger(cfg.max_tokens_total, prices, max_cost=cfg.max_cost)

    def one_round():
        return run_items(prompts, lambda p: sdf_one(p, policy, judge, cfg, ledger), out=cfg.out, ledger=ledger,
                         concurrency=cfg.concurrency, label="sdf", noun="prompts", config=cfg,
                         retry_failed=cfg.retry_failed, progress=cfg.progress, console=console,
                         meta_of=lambda p: {"source": p.source, "context": p.context},
                         throttle_on=[policy])  # the judge's 429s back off in its own calls
    try:
        summary = run_rounds(one_round, batches, ledger, out=cfg.out) if batches else one_round()
    finally:
        prefs = write_prefs(cfg.out)  # also after an error: what was written stays usable
    return summary, prefs


def prefs_line(prefs: dict) -> str:
    """What SDF's summary says of the judge: how decisive, and how alike its separate presentations
    ranked (a debiased local judge reads every order together, so that number is each order alone)."""
    agree, dec = prefs["mean_agreement"], prefs.get("decisive_rate")
    return (f"{prefs['prompts']} SDF dialogues, {prefs['pairs']} preference pairs -> {prefs['prefs']}; judge decisive "
            f"on {'n/a' if dec is None else f'{dec:.0%}'} of judged prompts, order agreement "
            f"{'n/a' if agree is None else f'{agree:.2f}'} (each presentation alone: 1 the same ranking, 0 reversed)")


def add_cli(sub) -> None:
    p = sub.add_parser("sdf", help="self-distillation with feedback: sample n answers, a judge ranks them (Baize v2 data)")
    add_dataclass_args(p, SDFConfig)
    p.set_defaults(func=_main)


def _prompts(cfg: SDFConfig) -> list[Prompt]:
    from .plan import limit_warning, warn
    prompts = load_prompts(cfg.prompts, field=cfg.seed_field, limit=cfg.limit, shard=cfg.shard)
    warn(limit_warning("--limit", cfg.limit, len(prompts), f"{cfg.prompts} has"))
    return prompts


def plan(cfg: SDFConfig, prompts: list[Prompt] | None = None):
    """The --dry-run plan, from sdf_one's own prompts with every candidate at its cap, nothing called:
    per prompt one policy call for n candidates (an endpoint that ignores n is asked n times, each
    paying the prompt: the row's most calls, and its tokens are counted at that bound), then the
    judge's rank prompts over the n candidates (fewer when some come back empty or the same)."""
    from .judge.core import planned_aggregator
    from .plan import Plan, add_prompts, add_reasoning, bound, chat_tokens, is_local, judge_completion
    prompts = _prompts(cfg) if prompts is None else prompts
    p = Plan(items={"sdf": f"{len(prompts):,} prompts, n {cfg.n}"})
    pol = p.row("sdf", "policy", cfg.policy, (cfg.price_in, cfg.price_out))
    judge = p.row("sdf", "judge", cfg.judge, (cfg.judge_price_in, cfg.judge_price_out))
    agg = planned_aggregator(cfg, cfg.judge, orders=cfg.judge_orders or 2)
    # a local model makes n choices in one call; an endpoint may ignore n (learned on the first reply)
    most = 1 if is_local(cfg.policy) else cfg.n
    for prompt in prompts:
        pol.add(1, most * chat_tokens(policy_context(prompt, cfg)), cfg.n * cfg.max_tokens,
                calls_max=None if most == 1 else most)
        add_prompts(judge, [msgs for _, msgs in agg.rank_prompts(prompt.context, [bound(cfg.max_tokens)] * cfg.n)],
                    judge_completion(cfg, agg))
    if cfg.batch_api:
        p.batch_api("sdf", cfg.batch_discount)
    return add_reasoning(p, {"policy": cfg.reasoning_effort, "judge": cfg.judge_reasoning_effort}, {"policy": cfg.n})


def _main(args) -> int:
    from rich.console import Console

    from .plan import check_plan_out, dry_run, stopped_line
    cfg = dataclass_from_args(SDFConfig, args)
    check_plan_out(cfg)
    if cfg.dry_run:
        return dry_run(plan(cfg), cfg)
    console = Console()
    s, prefs = sdf(cfg, console=console)
    print_summary(s, f"sdf -> {cfg.out}", console, unit="prompts")
    if s.stopped == "budget":
        console.print(stopped_line(cfg, s), soft_wrap=True)
    console.print(prefs_line(prefs), soft_wrap=True)
    console.print(f"next: baize train --from {cfg.policy} --data {cfg.out} --out runs/v2   "
                  f"(or --method dpo --data {prefs['prefs']})", soft_wrap=True)
    return 130 if s.stopped == "interrupted" else 0
