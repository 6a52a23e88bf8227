"""The judge-free part of eval's report: the measures beside the judge's score, each pair's
differences beside the judge's win rate, and the length distribution. Rows and a draw function
only; report.py renders them with its own tables and canvas, so the escaping stays in one place."""
from __future__ import annotations

import math

from ..pages import Cell as _T

NOTE = ("Judge-free: the share of answers the collection's filters reject (degenerate, any reason), distinct "
        "2- and 3-grams within an answer, the share with a repeated n-gram loop, mean words, and the NLL per "
        "token of held-out human dialogues (lower is better); 95% bootstrap intervals (NLL: resampling dialogues).")
PAIR_NOTE = ("a minus b over the answers both gave (NLL: the held-out dialogues), paired bootstrap 95% interval; "
             "better or worse only when the interval excludes 0, else no change shown. Length is neither.")
COLS = (("degenerate", 2), ("distinct_2", 2), ("distinct_3", 2), ("loop", 2), ("mean_words", 1), ("nll", 3))
LABELS = {"degenerate": "degenerate rate", "distinct_2": "distinct-2", "distinct_3": "distinct-3",
          "loop": "loop rate", "mean_words": "mean words", "nll": "held-out NLL"}


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _cell(m, nd: int) -> _T:
    m = m if isinstance(m, dict) else {}
    v, ci = _num(m.get("value", m.get("diff"))), m.get("ci")
    if v is None:
        return _T("–")
    sign = "+" if "diff" in m else ""
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) is not None for c in ci)
    return _T(f"{v:{sign}.{nd}f}" + (f" [{ci[0]:{sign}.{nd}f}, {ci[1]:{sign}.{nd}f}]" if ok else ""))


def models_table(v) -> tuple[list, list]:
    """One row per model: the judge's mean score, then every judge-free figure with its interval."""
    rows = []
    for name, m in v["models"].items():
        jf = m.get("judge_free")
        if not isinstance(jf, dict):
            continue
        s = m.get("score") if isinstance(m.get("score"), dict) else {}
        rows.append([name, _cell({"value": s.get("mean"), "ci": s.get("ci")}, 2),
                     *(_cell(jf.get(k), nd) for k, nd in COLS), _reasons(jf.get("by_reason"))])
    return ["model", "judge score", *(LABELS[k] for k, _ in COLS), "rejected for"], rows


def _reasons(by) -> str:
    by = by if isinstance(by, dict) else {}
    got = [(str(k), _num(m.get("value"))) for k, m in by.items() if isinstance(m, dict)]
    return ", ".join(f"{k} {x:.0%}" for k, x in sorted(got, key=lambda t: -(t[1] or 0)) if x)


def pairs_table(v) -> tuple[list, list]:
    """One row per compared pair: the judge's win rate, each measure's difference and verdict, the summary."""
    judge = {(p.get("a"), p.get("b")): p for p in v["pairwise"]}
    rows = []
    for p in v.get("judge_free_pairs") or []:
        ms = p.get("measures") if isinstance(p.get("measures"), dict) else {}
        j = judge.get((p.get("a"), p.get("b")), {})
        rows.append([f"{p.get('a')} vs {p.get('b')}", _cell({"value": j.get("win_rate"), "ci": j.get("ci")}, 2),
                     *(_verdict(ms.get(k), nd) for k, nd in COLS)])
    return ["a vs b", "judge win rate", *(LABELS[k] for k, _ in COLS)], rows


def _verdict(m, nd: int) -> str:
    if not isinstance(m, dict):
        return "–"
    return f"{m.get('verdict')}: {_cell(m, nd)}"


def summaries(v) -> list[str]:
    return [str(p["summary"]) for p in v.get("judge_free_pairs") or [] if isinstance(p, dict) and p.get("summary")]


def draw_word_counts(v, label):
    """Each model's answer lengths in words, as a box plot: the bar chart above shows only the means."""
    data = {n: [x for x in (m.get("judge_free") or {}).get("words") or [] if _num(x) is not None]
            for n, m in v["models"].items()}
    names = [n for n, xs in data.items() if xs]
    if not names:
        return None

    def draw(fig, ax):
        # each model in its colour of the bar chart above; the triangle is the mean that chart shows
        box = ax.boxplot([data[n] for n in names], showmeans=True, patch_artist=True,
                         medianprops={"color": "black"}, meanprops={"markerfacecolor": "white", "markeredgecolor": "black"})
        for patch, n in zip(box["boxes"], names):
            patch.set(facecolor=f"C{list(v['models']).index(n)}", alpha=0.6)
        ax.set_xticks(range(1, len(names) + 1), [label(n, 16) for n in names])
        ax.set_ylabel("words per answer (△: mean)")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    return "Answer length distribution", draw, (max(3.4, 1.0 * len(names) + 1.4), 2.5)
