"""`baize pipeline --rounds N`'s trend: each version (v1, v2, ... v{N+1}; the -dpo ones beside) by the
judge's win rate against the base and by every judge-free measure, each with its 95 % interval, so
a user sees at a glance whether more rounds kept helping, and whether the judge and the measures
that need no judge agree on it. Read from eval's results; nothing is recomputed."""
from __future__ import annotations

import json
from pathlib import Path

from .judge_free import MEASURES


def trend(res: dict, base: str = "base") -> dict:
    """{"versions": [...], "rows": [{"model", "judge_vs_base", measure: {"value", "ci"}...}]}, the models
    in eval's order, the base left out (it is what the win rate is against)."""
    wins = {p["a"]: p for p in res.get("pairwise") or [] if p.get("b") == base}
    rows = []
    for name, m in res.get("models", {}).items():
        if name == base:
            continue
        w = wins.get(name)
        jf = m.get("judge_free") or {}
        rows.append({"model": name,
                     "judge_vs_base": None if w is None else {"value": w.get("win_rate"), "ci": w.get("ci"),
                                                              "n": w.get("n")},
                     **{k: {"value": jf[k].get("value"), "ci": jf[k].get("ci")} if isinstance(jf.get(k), dict)
                        else None for k in MEASURES}})
    return {"versions": [r["model"] for r in rows], "rows": rows}


def _fmt(m: dict | None, nd: int) -> str:
    if not m or m.get("value") is None:
        return "–"
    ci = m.get("ci")
    return f"{m['value']:.{nd}f}" + (f" [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci and None not in ci else "")


def trend_lines(t: dict) -> list[str]:
    """One line per figure, the versions in order: `judge win rate vs base: v1 0.33 [0.00, 0.67] -> v2 ...`."""
    figures = [("judge_vs_base", "judge win rate vs base", 2)]
    figures += [(k, label, 1 if k == "mean_words" else 3 if k == "nll" else 2) for k, (label, _) in MEASURES.items()]
    return [f"{label}: " + " -> ".join(f"{r['model']} {_fmt(r[key], nd)}" for r in t["rows"])
            for key, label, nd in figures if any(r[key] for r in t["rows"])]


def add_trend(res: dict, path: str | Path) -> dict:
    """The trend into `res` and into results.json at `path` (written as eval writes it, less the paths
    eval adds after writing)."""
    res["trend"] = trend(res)
    saved = {k: v for k, v in res.items() if k not in ("paths", "fastchat")}
    Path(path).write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    return res["trend"]
