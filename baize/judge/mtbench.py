"""MT-bench interop: judge with FastChat's judge_prompts.jsonl, and write a run in FastChat's files.

    baize eval --models v1=runs/v1 v2=runs/v2 --questions mt_bench/question.jsonl \
        --judge-prompts mt_bench/judge_prompts.jsonl --fastchat-out data/mt_bench --judge openai:gpt-4
    python3 fastchat/llm_judge/show_result.py --bench-name mt_bench --judge-model openai_gpt-4   # reads it

With --judge-prompts, each turn is judged as FastChat's gen_judgment.py does: turn 1 with single-v1 /
pair-v2, turn 2 with their -multi-turn variants (both turns shown, the second judged), and questions
of the math, reasoning and coding categories with the -math- variants and their reference answers.
The verdicts go through baize's Judge (both orders, cache, retries, choice or debiased for local
judges), so they count in the same win rates, consistency and report. --fastchat-out writes
model_answer/NAME.jsonl and model_judgment/JUDGE_single.jsonl and JUDGE_pair.jsonl in FastChat's
shapes (JUDGE: the judge spec with ':' and '/' as '_').
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import BaizeError
from ..runner import run_items, stop_if_interrupted
from ..schema import read_jsonl, read_jsonl_where

NEED_REF_CATS = ("math", "reasoning", "coding")  # FastChat's common.NEED_REF_CATS
TIE_DELTA = 0.1  # FastChat's: two ratings this close are a tie
_FIELDS = ("name", "type", "system_prompt", "prompt_template", "output_format")
_TWO_SCORES = re.compile(r"\[\[(\d+\.?\d*),\s?(\d+\.?\d*)\]\]")


def load_judge_prompts(path: str) -> dict[str, dict]:
    """FastChat's judge_prompts.jsonl: one prompt per line, by name; a bad line fails with its place."""
    out = {}
    for where, obj in read_jsonl_where(path):
        if not isinstance(obj, dict):
            raise BaizeError(f"{where}: expected a judge prompt object with {', '.join(_FIELDS)}")
        for f in _FIELDS:
            if not isinstance(obj.get(f), str):
                raise BaizeError(f"{where}: field {f!r} is missing or not a string (FastChat's judge_prompts.jsonl)")
        if obj["type"] not in ("single", "pairwise"):
            raise BaizeError(f"{where}: field 'type' is {obj['type']!r}: use single or pairwise")
        if obj["output_format"] not in ("[[rating]]", "[[A]]", "[[rating_a,rating_b]]"):
            raise BaizeError(f"{where}: field 'output_format' {obj['output_format']!r}: baize reads [[rating]], [[A]] "
                             f"and [[rating_a,rating_b]]")
        out[obj["name"]] = obj
    if not any(p["type"] == "single" for p in out.values()) and not any(p["type"] == "pairwise" for p in out.values()):
        raise BaizeError(f"{path}: no judge prompts")
    return out


def pick(prompts: dict, kind: str, category: str, turn: int, has_ref: bool, where: str) -> dict:
    """gen_judgment.py's choice: the math variant (with references) for NEED_REF_CATS, the
    multi-turn variant for turn 2; a plain prompt where the math one or its reference is missing."""
    base = {"single": "single-v1", "pairwise": "pair-v2"}[kind]
    math = {"single": "single-math-v1", "pairwise": "pair-math-v1"}[kind]
    suffix = "-multi-turn" if turn > 1 else ""
    names = ([math + suffix] if category in NEED_REF_CATS and has_ref else []) + [base + suffix]
    for n in names:
        if n in prompts:
            return prompts[n]
    raise BaizeError(f"{where}: no judge prompt named {names[-1]!r} (FastChat's judge_prompts.jsonl has it)")


def fill(prompt: dict, q, answers: list[list[str]]) -> list[dict]:
    """The judge's messages from a FastChat prompt (run_judge_single / run_judge_pair's fields):
    single grades answers[0], pairwise answers[0] (A) against answers[1] (B)."""
    refs = [r or "" for r in (q.reference or [])] + ["", ""]
    qs = list(q.turns) + [""]
    kw = {"question": qs[0], "question_1": qs[0], "question_2": qs[1], "ref_answer_1": refs[0], "ref_answer_2": refs[1]}
    for label, ans in zip([""] if len(answers) == 1 else ["_a", "_b"], answers):
        ans = list(ans) + ["", ""]
        kw[f"answer{label}"], kw[f"answer{label}_1"], kw[f"answer{label}_2"] = ans[0], ans[0], ans[1]
    try:
        user = prompt["prompt_template"].format(**kw)
    except (KeyError, IndexError, ValueError) as e:
        raise BaizeError(f"judge prompt {prompt['name']!r}: its prompt_template has a field baize does not fill: "
                         f"{e}") from None
    return [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def _two_scores(text: str):
    m = _TWO_SCORES.search(text or "")
    if not m:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    return "tie" if abs(a - b) <= TIE_DELTA else "A" if a > b else "B"


# --- judging through baize's Judge ----------------------------------------------------------------

def mt_pair_prompts(prompt: dict, q, ans_a: list[str], ans_b: list[str]) -> list[list[dict]]:
    """FastChat's two games of a pair: a as model 1, then b."""
    return [fill(prompt, q, [ans_a, ans_b]), fill(prompt, q, [ans_b, ans_a])]


def mt_pair(judge, prompt: dict, q, ans_a: list[str], ans_b: list[str]) -> dict:
    """Both orders, as FastChat's g1/g2 games; a debiased local judge reads their log-probs together."""
    from .verdicts import parse_pair
    parse = _two_scores if prompt["output_format"] == "[[rating_a,rating_b]]" else parse_pair
    v = judge.pair_messages(*mt_pair_prompts(prompt, q, ans_a, ans_b), parse)
    return {"winner": {"A": "a", "B": "b", "tie": "tie"}.get(v.winner), "consistent": v.consistent,
            "verdicts": v.verdicts, "margin": v.margin, "raw": v.raw, "usage": v.usage}


@dataclass
class _Item:
    id: str
    q: object
    extra: dict = field(default_factory=dict)


def _h(*parts) -> str:
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:10]


def _turns(q) -> list[int]:
    return [1, 2] if len(q.turns) > 1 else [1]  # FastChat's templates show two turns at most


def mt_score_prompt(it: _Item, answers) -> list[dict]:
    return fill(it.extra["prompt"], it.q, [answers[it.extra["model"]][it.q.id]])


def mt_items(prompts: dict, judge_id: str, cfg, pairs, names, questions, answers) -> tuple[list, list]:
    """What judge_mt asks, declared once (eval's plan counts the same items): per question and turn,
    each pair of models (two games, mt_pair_prompts) and each model alone (one prompt)."""
    jid = f"{judge_id}/{_h(prompts)}"
    pitems, sitems = [], []
    for q in questions:
        for t in _turns(q):
            has_ref = bool(q.reference and q.reference[0])
            if cfg.pairwise:
                p = pick(prompts, "pairwise", q.category, t, has_ref, cfg.judge_prompts)
                for a, b in pairs:
                    if q.id in answers[a] and q.id in answers[b]:
                        pitems.append(_Item(f"mt:{q.id}:{a}:{b}:t{t}:{_h(jid, answers[a][q.id], answers[b][q.id])}",
                                            q, {"a": a, "b": b, "turn": t, "prompt": p}))
            if cfg.single:
                p = pick(prompts, "single", q.category, t, has_ref, cfg.judge_prompts)
                for n in names:
                    if q.id in answers[n]:
                        sitems.append(_Item(f"mt:{q.id}:{n}:t{t}:{_h(jid, answers[n][q.id])}", q,
                                            {"model": n, "turn": t, "prompt": p}))
    return pitems, sitems


def judge_mt(judge, cfg, pairs, names, questions, answers, ledger, out: Path, console=None) -> tuple[list, list]:
    """eval's verdicts and scores, one per turn as FastChat's, with the --judge-prompts prompts."""
    prompts = load_judge_prompts(cfg.judge_prompts)
    ledger = ledger.child()
    pitems, sitems = mt_items(prompts, f"{judge.name}/{judge.mode}", cfg, pairs, names, questions, answers)

    # a ledger each: the scores' summary counts the score calls only, not the pair calls before them
    pair_ledger, score_ledger = ledger.child(), ledger.child()

    def pair_work(it):
        x = it.extra
        v = mt_pair(judge, x["prompt"], it.q, answers[x["a"]][it.q.id], answers[x["b"]][it.q.id])
        pair_ledger.add(role="judge", usage=v["usage"])
        return {"id": it.id, "question_id": it.q.id, "category": it.q.category, "a": x["a"], "b": x["b"],
                "turn": x["turn"], "prompt": x["prompt"]["name"], "mode": judge.mode,
                **{k: v[k] for k in ("winner", "consistent", "verdicts", "margin", "raw")}, "meta": {"usage": v["usage"]}}

    def score_work(it):
        x = it.extra
        sc = judge.score_messages(mt_score_prompt(it, answers))
        score_ledger.add(role="judge", usage=sc.usage)
        return {"id": it.id, "question_id": it.q.id, "category": it.q.category, "model": x["model"], "turn": x["turn"],
                "prompt": x["prompt"]["name"], "value": sc.value, "raw": sc.raw, "meta": {"usage": sc.usage}}

    got = []
    for items, work, path, label, part in (
            (pitems, pair_work, out / "verdicts.jsonl", "judge pairs (MT-bench)", pair_ledger),
            (sitems, score_work, out / "scores.jsonl", "judge scores (MT-bench)", score_ledger)):
        stop_if_interrupted(run_items(items, work, out=path, ledger=part, concurrency=cfg.concurrency, label=label,
                                      noun="verdicts", retry_failed=cfg.retry_failed, progress=cfg.progress,
                                      console=console))
        wanted = {it.id for it in items}
        got.append([r for r in read_jsonl(path) if r["id"] in wanted] if items and path.exists() else [])
    return got[0], got[1]


# --- FastChat's files -----------------------------------------------------------------------------

def judge_file_name(spec: str) -> str:
    return re.sub(r"[:/\\]", "_", spec)


def _user_prompts(cfg, ids: dict, answers: dict, judge_inputs, reference):
    """(pair, single): a verdict or score record -> the user prompt(s) its judge read, as FastChat's
    g1_user_prompt / g2_user_prompt / user_prompt keep them ("" where the question or answer is gone)."""
    from .prompts import PAIR_USER, SCORE_REF_USER, SCORE_USER, render_context
    prompts = load_judge_prompts(cfg.judge_prompts) if cfg.judge_prompts else None

    def turns(name, qid):
        return (answers.get(name) or {}).get(qid)

    def user(r, shown: list) -> str:
        q = ids.get(r["question_id"])
        if q is None or any(a is None for a in shown):
            return ""
        if prompts is not None:
            return fill(prompts[r["prompt"]], q, shown)[1]["content"] if r.get("prompt") in prompts else ""
        if judge_inputs is None:
            return ""
        ctx, texts = judge_inputs(q, shown[0])
        if len(shown) == 2:
            return PAIR_USER.format(context=render_context(ctx), a=texts, b=judge_inputs(q, shown[1])[1])
        ref = reference(q) if reference else None
        return (SCORE_USER.format(context=render_context(ctx), answer=texts) if ref is None else
                SCORE_REF_USER.format(context=render_context(ctx), answer=texts, reference=ref))

    def pair(r):
        a, b = turns(r["a"], r["question_id"]), turns(r["b"], r["question_id"])
        return user(r, [a, b]), user(r, [b, a])  # g2 shows model_2's answer as A

    return pair, lambda r: user(r, [turns(r["model"], r["question_id"])])


def write_fastchat(out_dir: str, cfg, questions, answers: dict, verdicts: list[dict], scores: list[dict],
                   judge_inputs=None, reference=None) -> dict:
    """model_answer/NAME.jsonl and model_judgment/JUDGE_{single,pair}.jsonl, as FastChat's
    gen_model_answer.py and gen_judgment.py write them (show_result.py reads these fields).
    `judge_inputs` and `reference` (eval's) rebuild the user prompts of baize's own judge prompts."""
    root = Path(out_dir)
    (root / "model_answer").mkdir(parents=True, exist_ok=True)
    (root / "model_judgment").mkdir(parents=True, exist_ok=True)
    ids = {q.id: q for q in questions}
    qid = (lambda i: int(i) if str(i).isdigit() else i)  # noqa: E731  FastChat's ids are ints
    now = time.time()
    for name, ans in answers.items():
        lines = [{"question_id": qid(i), "answer_id": _h(name, i, a), "model_id": name,
                  "choices": [{"index": 0, "turns": a}], "tstamp": now} for i, a in ans.items() if i in ids]
        (root / "model_answer" / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    jname = judge_file_name(cfg.judge)
    pair_user, single_user = _user_prompts(cfg, ids, answers, judge_inputs, reference)
    single = [{"question_id": qid(r["question_id"]), "model": r["model"],
               "judge": [cfg.judge, r.get("prompt", "baize-single")], "user_prompt": single_user(r),
               "judgment": (r.get("raw") or [""])[-1], "score": -1 if r["value"] is None else r["value"],
               "turn": r.get("turn", 1), "tstamp": now} for r in scores]
    names = {None: "error", "A": "model_1", "B": "model_2", "tie": "tie"}
    pair = []
    for r in verdicts:
        # each game's own verdict, as FastChat's g1/g2 (r["verdicts"] are already mapped back to a and
        # b, as gen_judgment's g2_map does); baize's verdict from both games (a debiased judge reads
        # their log-probs together) stays in a field of its own, so show_result.py counts what each
        # order said and a g1 == g2 agreement count sees the orders' own agreement
        g = [names.get(v, "error") for v in (r.get("verdicts") or [None, None])]
        u1, u2 = pair_user(r)
        pair.append({"question_id": qid(r["question_id"]), "model_1": r["a"], "model_2": r["b"],
                     "g1_winner": g[0], "g2_winner": g[1], "judge": [cfg.judge, r.get("prompt", "baize-pair")],
                     "g1_user_prompt": u1, "g1_judgment": (r.get("raw") or [""])[0], "g2_user_prompt": u2,
                     "g2_judgment": (r.get("raw") or ["", ""])[-1], "turn": r.get("turn", 1), "tstamp": now,
                     "baize_winner": {"a": "model_1", "b": "model_2", "tie": "tie"}.get(r.get("winner"), "error"),
                     "baize_mode": r.get("mode"), "baize_margin": r.get("margin")})
    paths = {"single": root / "model_judgment" / f"{jname}_single.jsonl",
             "pair": root / "model_judgment" / f"{jname}_pair.jsonl"}
    for key, rows in (("single", single), ("pair", pair)):
        paths[key].write_text("".join(json.dumps(x) + "\n" for x in rows))
    return {"dir": str(root), "judge_model": jname, **{k: str(v) for k, v in paths.items()}}
