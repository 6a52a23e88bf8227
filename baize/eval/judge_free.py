"""eval's evidence that needs no judge: what the collection's own filters say of each model's answers
(degenerate-answer rate, by reason), repetition within an answer (distinct-2/3, n-gram loops),
length, and the NLL of held-out human dialogues; each with a bootstrap 95 % interval, and for each
compared pair a paired bootstrap of every difference, called better or worse only when its interval
excludes 0. A judge that agrees with people less often than a coin cannot tell a user whether the
loop helped; these can say, at least, whether it made the answers break less often."""
from __future__ import annotations

import random
from pathlib import Path

from ..data.filters import FilterConfig, check, compile_patterns, repetition, words

# where the default --nll-data comes from: baize/samples/README.md
HELDOUT = Path(__file__).parent.parent / "samples" / "nll_heldout.jsonl"

# measure -> (label, which way is better: -1 lower, +1 higher, 0 neither)
MEASURES = {"degenerate": ("degenerate rate", -1), "distinct_2": ("distinct-2", 1), "distinct_3": ("distinct-3", 1),
            "loop": ("loop rate", -1), "mean_words": ("mean words", 0), "nll": ("held-out NLL", -1)}


def nll_sets(nll_data: str | None) -> str | None:
    """The held-out dialogues NLL is measured on: --nll-data, the shipped set without it, none with `none`."""
    if nll_data and nll_data.lower() == "none":
        return None
    return nll_data or str(HELDOUT)


def _distinct(ws: list[str], n: int) -> float | None:
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def answer_rows(questions, answers: dict[str, list[str]], cfg: FilterConfig | None = None) -> dict:
    """{(question_id, turn): the per-answer measures} of one model's answers. Each answer is checked
    as collection checks a dialogue, at collection's defaults: the question's turns, each earlier one
    followed by the model's own answer, then this answer; the seed is the first turn."""
    cfg = cfg or FilterConfig()
    patterns = compile_patterns(cfg)
    rows = {}
    for q in questions:
        got = answers.get(q.id) or []
        for t, a in enumerate(got):
            msgs = [{"role": role, "content": text} for turn, ans in zip(q.turns, got[:t + 1])
                    for role, text in (("user", turn), ("assistant", ans))]
            r = check(msgs, cfg, patterns, q.turns[0])
            if r is not None and r.turn is not None and r.turn < len(msgs) - 1:
                # an earlier answer is at fault and hides this one's: this exchange alone, then
                r = check(msgs[-2:], cfg, patterns, q.turns[0])
            ws = words(a)
            loop = bool(cfg.repetition) and repetition([{"role": "assistant", "content": a}], "", cfg.repetition) is not None
            rows[(q.id, t)] = {"reason": r.reason if r else None, "degenerate": float(r is not None),
                               "distinct_2": _distinct(ws, 2), "distinct_3": _distinct(ws, 3),
                               "loop": float(loop), "mean_words": float(len(a.split()))}
    return rows


# --- intervals ----------------------------------------------------------------------------------

def _pct(xs: list[float]) -> list[float]:
    xs = sorted(xs)
    return [round(xs[int(0.025 * (len(xs) - 1))], 4), round(xs[int(0.975 * (len(xs) - 1))], 4)]


def _boot(stat, k: int, n: int, seed: int = 0) -> list[float] | None:
    """Percentile 95 % interval of stat(indices) over n resamples of k units (answers or dialogues)."""
    if not k:
        return None
    rng = random.Random(seed)
    vals = [v for _ in range(n) if (v := stat(rng.choices(range(k), k=k))) is not None]
    return _pct(vals) if vals else None


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _ratio(parts, idx):
    """Mean NLL per token of the dialogues at idx: long dialogues weigh by their tokens, as nll() does."""
    count = sum(parts[i][1] for i in idx)
    return sum(parts[i][0] for i in idx) / count if count else None


def measure(vals: list[float], n_boot: int) -> dict:
    m = _mean(vals)
    return {"value": None if m is None else round(m, 4), "ci": _boot(lambda idx: _mean([vals[i] for i in idx]),
                                                                      len(vals), n_boot), "n": len(vals)}


def nll_measure(parts: list | None, n_boot: int) -> dict | None:
    """parts: [total nats, tokens] per held-out dialogue (None: none scored); the interval resamples dialogues."""
    parts = [p for p in parts or [] if p]
    if not parts:
        return None
    v = _ratio(parts, range(len(parts)))
    return {"value": round(v, 4), "ci": _boot(lambda idx: _ratio(parts, idx), len(parts), n_boot), "n": len(parts)}


def model_measures(rows: dict, nll_parts: list | None, n_boot: int) -> dict:
    """models[NAME]["judge_free"]: each measure as {"value", "ci", "n"}, the rate of each filter's
    reason, and the words of every answer (the report's length plot)."""
    out = {k: measure([r[k] for r in rows.values() if r[k] is not None], n_boot)
           for k in MEASURES if k != "nll"}
    reasons = sorted({r["reason"] for r in rows.values() if r["reason"]})
    out["by_reason"] = {why: measure([float(r["reason"] == why) for r in rows.values()], n_boot) for why in reasons}
    out["nll"] = nll_measure(nll_parts, n_boot)
    out["words"] = [int(r["mean_words"]) for r in rows.values()]
    return out


def _verdict(ci, sense: int) -> str:
    if not ci or ci[0] <= 0 <= ci[1]:
        return "no change shown"
    up = ci[0] > 0
    return ("longer" if up else "shorter") if sense == 0 else "better" if up == (sense > 0) else "worse"


def pair_measures(a: str, b: str, rows: dict, parts: dict, n_boot: int) -> dict:
    """a minus b for every measure, over the answers (or held-out dialogues) both have: a paired bootstrap."""
    out = {}
    for k, (_label, sense) in MEASURES.items():
        if k == "nll":
            pa, pb = parts.get(a) or [], parts.get(b) or []
            both = [(x, y) for x, y in zip(pa, pb) if x and y]
            if not both:
                continue
            xa, xb = [x for x, _ in both], [y for _, y in both]

            def diff(idx, xa=xa, xb=xb):
                ra, rb = _ratio(xa, idx), _ratio(xb, idx)
                return None if ra is None or rb is None else ra - rb
        else:
            keys = [key for key in rows[a] if key in rows[b] and rows[a][key][k] is not None
                    and rows[b][key][k] is not None]
            if not keys:
                continue
            d = [rows[a][key][k] - rows[b][key][k] for key in keys]

            def diff(idx, d=d):
                return _mean([d[i] for i in idx])
            both = keys
        value, ci = diff(range(len(both))), _boot(diff, len(both), n_boot)
        out[k] = {"diff": round(value, 4), "ci": ci, "n": len(both), "verdict": _verdict(ci, sense)}
    return {"a": a, "b": b, "measures": out, "summary": summary_line(a, b, out)}


def summary_line(a: str, b: str, measures: dict) -> str:
    moved = [f"{MEASURES[k][0]} {m['verdict']} ({m['diff']:+.3g} {_fmt(m['ci'])})"
             for k, m in measures.items() if m["verdict"] != "no change shown"]
    still = [MEASURES[k][0] for k, m in measures.items() if m["verdict"] == "no change shown"]
    head = f"{a} vs {b}, judge-free: " + ("; ".join(moved) if moved else "no measure moved beyond its interval")
    return head + (f"; no change shown in {', '.join(still)}" if moved and still else "")


def _fmt(ci) -> str:
    return f"[{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else "[–]"


def judge_free(questions, answers: dict, nll_parts: dict, pairs, n_boot: int) -> tuple[dict, list[dict]]:
    """({model: judge_free measures}, [per compared pair: the differences and the one-line summary])."""
    rows = {name: answer_rows(questions, ans) for name, ans in answers.items()}
    per_model = {name: model_measures(rows[name], nll_parts.get(name), n_boot) for name in answers}
    return per_model, [pair_measures(a, b, rows, nll_parts, n_boot) for a, b in pairs]


def print_judge_free(res: dict, console, pair_lines: bool = True) -> None:
    from rich.table import Table
    models = {n: m["judge_free"] for n, m in res["models"].items() if m.get("judge_free")}
    if not models:
        return
    t = Table(title="judge-free: share degenerate (the collection's filters), distinct n-grams, share looping, "
                    "words, held-out NLL (95% CI)")
    cols = [("degenerate", "degenerate", 2), ("distinct_2", "distinct-2", 2), ("distinct_3", "distinct-3", 2),
            ("loop", "loops", 2), ("mean_words", "words", 1), ("nll", "NLL", 3)]
    cols = [c for c in cols if any(jf.get(c[0]) for jf in models.values())]  # no local model: no NLL
    for col in ("model", *(c[1] for c in cols)):
        t.add_column(col)

    def cell(m, nd=2):
        return "-" if not m or m["value"] is None else f"{m['value']:.{nd}f} " + (
            f"[{m['ci'][0]:.{nd}f}, {m['ci'][1]:.{nd}f}]" if m["ci"] else "")
    for name, jf in models.items():
        t.add_row(name, *(cell(jf.get(k), nd) for k, _, nd in cols))
    console.print(t)
    for line in summaries(res) if pair_lines else []:
        console.print(line, soft_wrap=True)


def summaries(res: dict) -> list[str]:
    return [p["summary"] for p in res.get("judge_free_pairs") or []]
