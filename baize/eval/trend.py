"""`baize pipeline --rounds N`'s trend: each version (v1, v2, ... v{N+1}; the -dpo ones beside) by the
judge's win rate against the base and by every judge-free measure, each with its 95 % interval, so
a user sees at a glance whether more rounds kept helping, and whether the judge and the measures
that need no judge agree on it. Read from eval's results; nothing is recomputed."""
from __future__ import annotations

import json
from pathlib import Path

from ..pages import Cell as _T
from .judge_free import MEASURES
from .report_view import _ci, _d, _num


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


NOTE = ("Each version against the base, in the order the rounds made them (vN-dpo: DPO beside vN): the judge's "
        "win rate (ties count half) and each judge-free measure, with 95% bootstrap intervals. Whether one version "
        "beats another beyond the interval: the pairs below.")

# each figure: its key in a trend row, its label, its decimals, and which way is better (judge_free.MEASURES)
FIGURES = [("judge_vs_base", "judge win rate vs base", 2, 1),
           *((k, label, 1 if k == "mean_words" else 3 if k == "nll" else 2, sign)
             for k, (label, sign) in MEASURES.items())]


def _fmt(m, nd: int) -> str:
    m = m if isinstance(m, dict) else {}
    v, ci = _num(m.get("value")), _ci(m.get("ci"))
    if v is None:
        return "–"
    return f"{v:.{nd}f}" + (f" [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci else "")


def _rows(t) -> list[dict]:
    """The trend's rows as the results hold them (a hand-edited results.json may hold anything)."""
    rows = t.get("rows") if isinstance(t, dict) else None
    return [r for r in rows or [] if isinstance(r, dict)]


def trend_lines(t: dict) -> list[str]:
    """One line per figure, the versions in order: `judge win rate vs base: v1 0.33 [0.00, 0.67] -> v2 ...`."""
    return [f"{label}: " + " -> ".join(f"{r['model']} {_fmt(r[key], nd)}" for r in t["rows"])
            for key, label, nd, _ in FIGURES if any(r[key] for r in t["rows"])]


def table(t) -> tuple[list, list]:
    """The report's table: one row per figure that any version has, the versions left to right."""
    rows = _rows(t)
    better = {1: "higher", -1: "lower", 0: "–"}
    return (["figure", "better", *(str(r.get("model")) for r in rows)],
            [[label, better[sign], *(_T(_fmt(r.get(key), nd)) for r in rows)]
             for key, label, nd, sign in FIGURES if any(_num(_d(r.get(key)).get("value")) is not None for r in rows)])


def draw(t, label):
    """The figures that are shares (0 to 1) by version, each with its interval: one line through the SFT
    versions, the -dpo ones as hollow markers beside them. Mean words and NLL have scales of their own:
    the table has them."""
    rows = _rows(t)
    shares = [(key, name) for key, name, _, _ in FIGURES if key in ("judge_vs_base", "degenerate", "distinct_2",
                                                                       "distinct_3", "loop")
              and any(_num(_d(r.get(key)).get("value")) is not None for r in rows)]
    if not shares:
        return None

    def plot(fig, ax):
        for i, (key, name) in enumerate(shares):
            pts = [(x, _num(_d(r.get(key)).get("value")), _ci(_d(r.get(key)).get("ci")), str(r.get("model"))
                    .endswith("-dpo")) for x, r in enumerate(rows)]
            pts = [(x + (i - (len(shares) - 1) / 2) * 0.06, y, ci or (y, y), dpo) for x, y, ci, dpo in pts
                   if y is not None]
            for dpo in (False, True):
                sel = [p for p in pts if p[3] == dpo]
                if sel:
                    ax.errorbar([p[0] for p in sel], [p[1] for p in sel],
                                yerr=[[max(0.0, p[1] - p[2][0]) for p in sel], [max(0.0, p[2][1] - p[1]) for p in sel]],
                                fmt="o" if dpo else "o-", mfc="white" if dpo else f"C{i}", color=f"C{i}", capsize=3,
                                ms=5, lw=1.4, label=None if dpo else name)
        ax.axhline(0.5, color="#24292f", ls=":", lw=1)  # the judge's win rate: even with the base
        ax.set_xticks(range(len(rows)), [label(r.get("model"), 16) for r in rows])
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("share, 95% interval")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return "Trend across rounds", plot, (max(4.8, 1.0 * len(rows) + 3.4), 2.8)


def add_trend(res: dict, path: str | Path) -> dict:
    """The trend into `res` and into results.json at `path` (written as eval writes it, less the paths
    eval adds after writing)."""
    res["trend"] = trend(res)
    saved = {k: v for k, v in res.items() if k not in ("paths", "fastchat")}
    Path(path).write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    return res["trend"]
