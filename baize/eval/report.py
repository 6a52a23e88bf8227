"""The report of `baize eval`: OUT/report.md and ONE self-contained OUT/report.html, both from the
results dict that evaluate.py also saves as OUT/results.json.

Everything inside the results (answers, questions, references, model names, categories, the judge's
spec) is untrusted text: a model may well answer with HTML. In the HTML it is always html.escape'd and
shown with `white-space: pre-wrap`; the page holds no script at all and a CSP that forbids every fetch
(plots are PNG data URIs drawn on matplotlib's Agg canvas). In the Markdown, table cells are escaped
and long text goes in fenced blocks whose fence is longer than any backtick run inside.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from ..pages import CSP, CSS
from ..pages import Cell as _T
from ..pages import escape as _e
from ..pages import html_table as _html_table
from .report_view import NEAR_CHANCE, _ci, _d, _f, _fci, _int, _num, _turns, _view

log = logging.getLogger(__name__)


def write_report(results: dict, out_dir: str | Path) -> dict:
    """report.md and report.html in out_dir; returns {"md": path, "html": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    v = _view(results or {})
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["md"].write_text(render_md(v), encoding="utf-8")
    paths["html"].write_text(render_html(v, _plots(v)), encoding="utf-8")
    return paths


def _warning(v) -> str | None:
    if not v["near_chance"]:
        return None
    if v["flags"]:
        return "Warning: do not trust these win rates: the judge is " + "; and ".join(v["flags"]) + "."
    if _d(v["judge"]).get("mode") == "debiased":  # its own consistency is no reason: see judge_lines
        return "Warning: do not trust these win rates: the eval marked its debiased judge near chance."
    c = v["consistency"]
    how = f"only {c:.0%} of the time" if c is not None else "too rarely"
    return (f"Warning: the judge agrees with itself under swapped order {how}, so its verdicts are near chance "
            f"and the win rates should not be trusted.")


def _judge_line(v) -> str | None:
    lines = judge_lines(v["judge"])
    return " ".join(lines) if lines else None


def judge_lines(j) -> list[str]:
    """The judge's reliability in sentences (eval's report and its printed summary): consistency over
    decisive verdicts with the decisive rate beside it, agreement with humans, and every flag's reason."""
    j = _d(j)
    if not j:
        return []
    c, d = _num(j.get("consistency")), _num(j.get("decisive_rate"))
    mode = f" ({j['mode']} mode)" if j.get("mode") else ""
    debiased = j.get("mode") == "debiased"
    if debiased and d is not None:
        # both orders read together: what it decides is the measure; each order alone follows position
        first = f"it prefers one answer on {d:.0%} of pairs, reading both orders together so a position prior cancels"
    elif c is not None:
        first = f"the two orders name the same winner on {c:.0%} of the pairs either order decided"
    elif d is not None:
        first = "no decisive verdict in either order, so no consistency"
    elif _num(j.get("pairs_judged")):
        first = "not one of its pairwise verdicts could be read"
    else:
        first = "no consistency measured (no pairwise verdicts)"
    parts = [f"Judge {j.get('spec') or '?'}{mode}: " + first]
    if d is not None and not debiased:
        parts.append(f"it prefers one answer on {d:.0%} of pairs")
    if _num(j.get("pairs_judged")) is not None:
        parts.append(f"{_int(j['pairs_judged'])} pairwise verdicts")
    if _num(j.get("unparseable")) is not None:
        parts.append(f"{_int(j['unparseable'])} unparseable")
    if debiased and c is not None:
        parts.append(f"each order alone names the same winner on {c:.0%} of the pairs either decided, which is no "
                     f"failure here and no reliability measure")
    tail = (" (below 50% decisive counts as undecided)." if debiased else
            f" (below {NEAR_CHANCE:.0%} consistency counts as position-biased"
            + (", below 50% decisive as undecided)." if d is not None else ")."))
    out = ["; ".join(parts) + tail]
    h = _d(j.get("human"))
    if _num(h.get("agreement")) is not None:
        ci = _fci(h.get("agreement_ci"))
        out.append(f"Against humans (judge-check{', ' + str(h['mode']) + ' mode' if h.get('mode') else ''}): agrees "
                   f"with the human choice on {h['agreement']:.0%} {ci} of {_int(h.get('decisive'))} decisive "
                   f"verdicts over {_int(h.get('n'))} pairs; 50% is chance, 65% about the best judges reach.")
    elif j.get("human") is None and (j.get("flags") is not None):
        out.append("Not checked against humans: run baize judge-check --judge SPEC --out OUT/judge_check (300 human "
                   "pairs built in; --pairs FILE for others).")
    out += [f"Flag: {f}." for f in j.get("flags") or []]
    return out


# --- tables, shared by both formats: (headers, rows) with cells as plain strings --------------------

def _drop_empty(headers, rows, keep: int = 1):
    """Columns with nothing in any row go: old results have no mean_tokens, a run without references no NLL."""
    cols = [i for i in range(len(headers)) if i < keep or any(r[i] not in ("", "–") for r in rows)]
    return [headers[i] for i in cols], [[r[i] for i in cols] for r in rows]


def _models_table(v):
    rows = []
    for name, m in v["models"].items():
        s, nll = _d(m.get("score")), _d(m.get("nll"))
        score = "–" if _num(s.get("mean")) is None else f"{s['mean']:.2f} {_fci(s.get('ci'))}".replace(" –", "")
        rows.append([name, _T(score), _int(s.get("n")), _int(m.get("answers")), _f(m.get("mean_words"), 1),
                     _f(m.get("mean_tokens"), 1), _f(nll.get("data"), 3), _f(nll.get("reference"), 3),
                     str(m.get("spec") or ""), str(m.get("lineage") or "")])
    return _drop_empty(["model", "score (95% CI)", "scored", "answers", "mean words", "mean tokens",
                        "NLL data", "NLL reference", "spec", "lineage"], rows)


def _models_note(v) -> str:
    headers = _models_table(v)[0]
    return " ".join(t for cond, t in (
        ("scored" in headers, "Score: mean 1-10 judge score with a bootstrap 95% interval."),
        (any(h.startswith("NLL") for h in headers),
         "NLL: mean negative log-likelihood per assistant token (lower is better).")) if cond)


def _pair_cells(p):
    return [_int(p.get("win")), _int(p.get("tie")), _int(p.get("loss")), _f(p.get("win_rate"), 3), _fci(p.get("ci"))]


def _pairs_table(v):
    rows = [[f"{p.get('a')} vs {p.get('b')}", *_pair_cells(p), _lc_cell(p), _fci(p.get("lc_ci")),
             _int(p.get("unjudged")), _int(p.get("n"))] for p in v["pairwise"]]
    return _drop_empty(["a vs b", "win", "tie", "loss", "win rate", "95% CI", "length-controlled", "LC 95% CI",
                        "unjudged", "n"], rows)


def _lc_cell(p):
    """The length-controlled win rate, or why there is none (a fit that failed is not a number)."""
    if _num(p.get("lc_win_rate")) is not None:
        return _f(p["lc_win_rate"], 3)
    return str(p["lc_note"]) if p.get("lc_note") else _T("–")


def _length_note(v) -> str:
    ln = v["length"]
    if not ln:
        return ""
    slope = _num(ln.get("slope"))
    what = (f" The judge's length slope is {slope:+.2f} (logit per unit of tanh of the standardized length "
            "difference; positive: it favours the longer answer)." if slope is not None else
            f" {ln['note']}." if ln.get("note") else "")
    return ("Length-controlled: alpaca_eval's GLM, the verdict predicted at zero length difference (one length "
            "slope for all pairs, one term per pair); symmetric, wr(a, b) = 1 - wr(b, a)." + what)


def _pair_cats_table(v):
    rows = [[f"{p.get('a')} vs {p.get('b')}", str(c), *_pair_cells(_d(t))]
            for p in v["pairwise"] for c, t in _d(p.get("by_category")).items()]
    return ["a vs b", "category", "win", "tie", "loss", "win rate", "95% CI"], rows


def _score_cats(v):
    """Categories in first-seen order, and the models that have scores at all."""
    scored = [n for n, m in v["models"].items() if _num(_d(m.get("score")).get("mean")) is not None]
    cats = list(dict.fromkeys(str(c) for n in scored for c in _d(v["models"][n]["score"].get("by_category"))))
    return scored, cats


def _score_cats_table(v):
    scored, cats = _score_cats(v)
    rows = [[c] + [_f({str(k): x for k, x in _d(v["models"][n]["score"].get("by_category")).items()}.get(c))
                   for n in scored] for c in cats]
    return ["category", *scored], rows


# --- Markdown ------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#~!])")


def _md(s) -> str:
    """One line of untrusted text, inert in Markdown: a newline or `|` would end the cell, `<` start HTML."""
    if isinstance(s, _T):
        return str(s)
    s = " ".join(str(s).split()).replace("&", "&amp;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def _fence(text) -> str:
    """A fenced block no content can close: the fence is longer than any backtick run inside."""
    text = str(text)
    n = max([3] + [len(r) + 1 for r in re.findall(r"`+", text)])
    return f"{'`' * n}text\n{text}\n{'`' * n}"


def _md_table(headers, rows) -> str:
    if not rows:
        return ""
    align = ["---" if i == 0 or not all(isinstance(r[i], _T) for r in rows) else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md(c) or " " for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _verdict_text(vd: dict) -> str:
    a, b, w = str(vd.get("a")), str(vd.get("b")), vd.get("winner")
    what = {"a": f"{a} better", "b": f"{b} better", "tie": "tie"}.get(w, "unjudged")
    cons = {True: "; both orders agree", False: "; the two orders disagree"}.get(vd.get("consistent"), "")
    return f"{a} vs {b}: {what}{cons}"


def render_md(v: dict) -> str:
    from . import judge_free_report as jf
    from . import trend as tr
    out = [f"# {_md(v['title'])}", ""]
    meta = [f"created {_md(v['created'])}" if v["created"] else "",
            f"{_int(v['n_questions'])} questions" if _num(v["n_questions"]) is not None else "",
            f"judge {_md(v['judge'].get('spec') or '?')}" if v["judge"] else "no judge"]
    out += [" · ".join(m for m in meta if m), ""]
    if (w := _warning(v)):
        out += [f"> **{w}**", ""]
    out += ["## Models", "", _md_table(*_models_table(v)) or "No models.", ""]
    if (note := _models_note(v)):
        out += [note, ""]
    if (t := tr.table(v["trend"]))[1]:
        out += ["## Trend across rounds", "", _md(tr.NOTE), "", _md_table(*t)]
    if (t := jf.models_table(v))[1]:
        out += ["## Judge-free evidence", "", _md(jf.NOTE), "", _md_table(*t), _md_table(*jf.pairs_table(v)),
                *(f"- {_md(s)}" for s in jf.summaries(v)), "", _md(jf.PAIR_NOTE), ""]
    if v["pairwise"]:
        out += ["## Pairwise win rates", "", "Win rate of a over b, ties count half; 95% bootstrap interval.", "",
                _md_table(*_pairs_table(v))]
        if (note := _length_note(v)):
            out += [_md(note), ""]
        if (t := _pair_cats_table(v))[1]:
            out += ["### By category", "", _md_table(*t)]
    if (j := _judge_line(v)):
        out += ["## Judge reliability", "", _md(j), ""]
    if (t := _score_cats_table(v))[1]:
        out += ["## Scores by category", "", _md_table(*t)]
    if v["questions"]:
        out += ["## Side by side", ""]
        for q in v["questions"]:
            out += _md_question(q, list(v["models"]))
    return "\n".join(out).rstrip() + "\n"


def _md_question(q: dict, names: list[str]) -> list[str]:
    answers, scores, refs = _d(q.get("answers")), _d(q.get("scores")), _turns(q.get("reference"))
    names = names + [str(n) for n in answers if str(n) not in names]
    out = [f"### {_md(q.get('question_id', '?'))} · {_md(q.get('category') or 'uncategorised')}", ""]
    for i, turn in enumerate(_turns(q.get("turns"))):
        out += [f"**Turn {i + 1}: question**", "", _fence(turn), ""]
        if i < len(refs) and refs[i]:
            out += ["*reference*", "", _fence(refs[i]), ""]
        for n in names:
            a = _turns(answers.get(n))
            score = f" (score {_f(scores.get(n), 1)})" if i == 0 and _num(scores.get(n)) is not None else ""
            out += [f"**{_md(n)}**{score}", "", _fence(a[i]) if i < len(a) else "*(no answer)*", ""]
    verdicts = [vd for vd in (q.get("verdicts") or []) if isinstance(vd, dict)]
    if verdicts:
        out += ["Verdicts:", ""] + [f"- {_md(_verdict_text(vd))}" for vd in verdicts] + [""]
    return out


# --- plots: PNG data URIs from the Agg canvas (no pyplot, so no global backend state) -------------

def _label(s, n: int = 28) -> str:
    """Untrusted text as a matplotlib label: `$` pairs would otherwise be parsed as mathtext."""
    s = " ".join(str(s).split())
    s = s if len(s) <= n else s[:n - 1] + "…"
    return s.replace("$", r"\$")


def _png(draw, size=(6.4, 3.0)) -> tuple[str, int, int]:
    import base64
    import io
    import struct

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig, fig.add_subplot())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight", pad_inches=0.08, metadata={"Software": None})
    png = buf.getvalue()
    w, h = struct.unpack(">II", png[16:24])  # IHDR: shown at 2/3 size, so it stays sharp on a dense screen
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii"), w * 2 // 3, h * 2 // 3


def _draw_winrates(v):
    pairs = [p for p in v["pairwise"] if _num(p.get("win_rate")) is not None]
    if not pairs:
        return None

    def draw(fig, ax):
        y = list(range(len(pairs)))
        wr = [float(p["win_rate"]) for p in pairs]
        cis = [_ci(p.get("ci")) or (w, w) for p, w in zip(pairs, wr)]
        err = [[max(0.0, w - c[0]) for w, c in zip(wr, cis)], [max(0.0, c[1] - w) for w, c in zip(wr, cis)]]
        colors = ["#2da44e" if c[0] > 0.5 else "#cf222e" if c[1] < 0.5 else "#6e7781" for c in cis]
        ax.barh(y, wr, xerr=err, color=colors, alpha=0.85, capsize=4, height=0.55)
        ax.axvline(0.5, color="#24292f", ls="--", lw=1)
        for yi, w, c in zip(y, wr, cis):  # beside the axes, where no error bar can run over it
            ax.text(1.02, yi, f"{w:.3f} [{c[0]:.2f}, {c[1]:.2f}]", va="center", fontsize=9,
                    transform=ax.get_yaxis_transform())
        ax.set_yticks(y, [_label(f"{p.get('a')} vs {p.get('b')}", 34) for p in pairs])
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel("win rate of a over b (ties count half), 95% interval")
        ax.grid(axis="x", alpha=0.3)
    return "Win rates", draw, (6.4, 1.2 + 0.5 * len(pairs))


def _draw_scores(v):
    scored, cats = _score_cats(v)
    if not scored:
        return None

    def draw(fig, ax):
        groups = cats + ["overall"]
        width = 0.8 / len(scored)
        for i, n in enumerate(scored):
            s = v["models"][n]["score"]
            bc = {str(k): x for k, x in _d(s.get("by_category")).items()}
            vals = [_num(bc.get(c)) if _num(bc.get(c)) is not None else math.nan for c in cats] + [float(s["mean"])]
            xs = [g + (i - (len(scored) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, vals, width * 0.92, label=_label(n), color=f"C{i}")
            if (ci := _ci(s.get("ci"))):  # only the overall mean has an interval
                ax.errorbar([xs[-1]], [vals[-1]], yerr=[[max(0.0, vals[-1] - ci[0])], [max(0.0, ci[1] - vals[-1])]],
                            fmt="none", ecolor="#24292f", capsize=3)
        ax.set_xticks(range(len(groups)), [_label(g, 16) for g in groups], rotation=20 if len(groups) > 5 else 0)
        ax.set_ylim(0, 10.5)
        ax.set_ylabel("judge score (1-10)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return "Scores by category", draw, (min(12.0, max(6.4, 1.1 * (len(cats) + 1) * max(1, len(scored) / 2))), 3.4)


def _draw_lengths(v):
    names = [n for n, m in v["models"].items() if _num(m.get("mean_words")) is not None]
    if not names:
        return None

    def draw(fig, ax):
        vals = [float(v["models"][n]["mean_words"]) for n in names]
        bars = ax.bar(range(len(names)), vals, 0.6, color=[f"C{list(v['models']).index(n)}" for n in names])
        ax.bar_label(bars, fmt="%.0f", fontsize=9, padding=2)
        ax.set_xticks(range(len(names)), [_label(n, 16) for n in names])
        ax.set_ylabel("mean words per answer")
        ax.set_ylim(0, max(vals + [1.0]) * 1.18)
        ax.grid(axis="y", alpha=0.3)
    return "Answer lengths", draw, (max(3.4, 1.0 * len(names) + 1.4), 2.5)


def _draw_words(v):
    from .judge_free_report import draw_word_counts
    return draw_word_counts(v, _label)


def _draw_trend(v):
    from .trend import draw
    return draw(v["trend"], _label)


def _draw_loss(v):
    curves = {}
    for i, (n, m) in enumerate(v["models"].items()):
        recs = [r for r in (m.get("loss_curve") or []) if isinstance(r, dict) and _num(r.get("step")) is not None]
        pts = {k: [(r["step"], r[k]) for r in recs if _num(r.get(k)) is not None] for k in ("loss", "eval_loss")}
        if pts["loss"] or pts["eval_loss"]:
            curves[n] = (i, pts)
    if not curves:
        return None

    def draw(fig, ax):
        for n, (i, pts) in curves.items():
            if pts["loss"]:
                ax.plot(*zip(*pts["loss"]), "-", color=f"C{i}", lw=1.4, label=f"{_label(n)} train")
            if pts["eval_loss"]:
                ax.plot(*zip(*pts["eval_loss"]), "o--", color=f"C{i}", lw=1.4, ms=4, label=f"{_label(n)} eval")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return "Training loss", draw, (6.4, 3.2)


def _draw_decisive(v):
    """A debiased judge's chart: what it decides and, when a judge-check says, how often it agrees with
    humans (its 95% interval beside 50%, chance); its per-order consistency measures nothing there."""
    j = _d(v["judge"])
    d, h = _num(j.get("decisive_rate")), _d(j.get("human"))
    a, ci = _num(h.get("agreement")), _ci(h.get("agreement_ci"))
    bars = [(label, x, line) for label, x, line in (("decisive rate", d, 0.5), ("agrees with humans", a, 0.5))
            if x is not None]
    if not bars:
        return None

    def draw(fig, ax):
        for y, (label, x, line) in enumerate(bars):
            err = [[x - ci[0]], [ci[1] - x]] if label.startswith("agrees") and ci else None
            ax.barh([y], [x], xerr=err, color="#cf222e" if v["near_chance"] else "#2da44e", height=0.5, capsize=4)
            ax.plot([line, line], [y - 0.35, y + 0.35], color="#24292f", ls="--", lw=1.2)
            ax.text(min(x, 0.88) + 0.01, y + 0.3, f"{x:.0%}", va="center", fontsize=10, fontweight="bold")
        ax.set_xlim(0, 1)
        ax.set_yticks(range(len(bars)), [b[0] for b in bars])
        ax.set_xlabel("both orders read together; dashed: 50% (undecided below it; chance against humans)")
    return "Judge: decisive rate and agreement with humans", draw, (6.4, 1.2 + 0.5 * len(bars))


def _draw_consistency(v):
    if _d(v["judge"]).get("mode") == "debiased":
        return _draw_decisive(v)
    c = v["consistency"]
    if c is None:
        return None

    def draw(fig, ax):
        ax.barh([0], [c], color="#cf222e" if v["near_chance"] else "#2da44e", height=0.5)
        ax.axvline(NEAR_CHANCE, color="#24292f", ls="--", lw=1.2)
        ax.text(NEAR_CHANCE, 0.42, f" near chance below {NEAR_CHANCE:.1f}", fontsize=8, va="bottom")
        ax.text(min(c, 0.88) + 0.01, 0, f"{c:.0%}", va="center", fontsize=10, fontweight="bold")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.5, 0.8)
        ax.set_yticks([])
        ax.set_xlabel("judge agrees with itself when the order is swapped")
    return "Judge consistency", draw, (6.4, 1.5)


def _plots(v: dict) -> dict:
    """name -> (title, data URI, width, height) or (title, None, why): a plot that fails loses only itself."""
    out = {}
    for key, make in (("winrates", _draw_winrates), ("consistency", _draw_consistency), ("scores", _draw_scores),
                      ("lengths", _draw_lengths), ("words", _draw_words), ("loss", _draw_loss),
                      ("trend", _draw_trend)):
        try:
            spec = make(v)
            if spec:
                out[key] = (spec[0], *_png(spec[1], spec[2]))
        except Exception as e:  # noqa: BLE001 - the tables and answers are worth more than one figure
            log.warning("report: the %s plot failed: %s", key, e)
            out[key] = (key, None, f"plot not drawn: {type(e).__name__}: {e}")
    return out


# --- HTML ----------------------------------------------------------------------------------------

def _fig(plots, key) -> str:
    if key not in plots:
        return ""
    title, uri, *rest = plots[key]
    if uri is None:
        return f'<p class="failed">{_e(title)}: {_e(rest[0])}</p>'
    w, h = rest
    return f'<figure><img src="{uri}" width="{w}" height="{h}" alt="{_e(title)}"></figure>'


def render_html(v: dict, plots: dict | None = None) -> str:
    from . import judge_free_report as jf
    from . import trend as tr
    plots = plots if plots is not None else _plots(v)
    meta = [f"created {v['created']}" if v["created"] else "",
            f"{_int(v['n_questions'])} questions" if _num(v["n_questions"]) is not None else "",
            f"from {v['questions_file']}" if v["questions_file"] else "",
            f"judge {v['judge'].get('spec') or '?'}" if v["judge"] else "no judge",
            f"{v['seconds']:.0f} s" if v["seconds"] is not None else ""]
    body = [f"<h1>{_e(v['title'])}</h1>", f'<div class="meta">{_e(" · ".join(m for m in meta if m))}</div>']
    if (w := _warning(v)):
        body.append(f'<div class="warn" role="alert">{_e(w)}</div>')
    note = _models_note(v)
    body.append(f"<section><h2>Models</h2>{_html_table(*_models_table(v)) or '<p>No models.</p>'}"
                + (f'<p class="note">{_e(note)}</p>' if note else "") + f"{_fig(plots, 'lengths')}</section>")
    if (t := tr.table(v["trend"]))[1]:
        body.append(f'<section><h2>Trend across rounds</h2><p class="note">{_e(tr.NOTE)}</p>'
                    f'<div class="row">{_html_table(*t)}{_fig(plots, "trend")}</div></section>')
    if (t := jf.models_table(v))[1]:
        body.append(f'<section><h2>Judge-free evidence</h2><p class="note">{_e(jf.NOTE)}</p>{_html_table(*t)}'
                    f'{_html_table(*jf.pairs_table(v))}' + "".join(f"<p>{_e(s)}</p>" for s in jf.summaries(v))
                    + f'<p class="note">{_e(jf.PAIR_NOTE)}</p>{_fig(plots, "words")}</section>')
    if v["pairwise"]:
        cats = _html_table(*_pair_cats_table(v))
        body.append('<section><h2>Pairwise win rates</h2><p class="note">Win rate of a over b, ties count half; '
                    "95% bootstrap interval; green: a is better beyond the interval, red: worse.</p>"
                    f'<div class="row">{_html_table(*_pairs_table(v))}{_fig(plots, "winrates")}</div>'
                    + (f'<p class="note">{_e(_length_note(v))}</p>' if _length_note(v) else "")
                    + (f"<h3>By category</h3>{cats}" if cats else "") + "</section>")
    if (lines := judge_lines(v["judge"])):
        body.append("<section><h2>Judge reliability</h2>" + "".join(f"<p>{_e(j)}</p>" for j in lines)
                    + f'{_fig(plots, "consistency")}</section>')
    if (t := _score_cats_table(v))[1] or "scores" in plots:
        body.append(f'<section><h2>Scores by category</h2><div class="row">{_html_table(*t)}'
                    f'{_fig(plots, "scores")}</div></section>')
    if "loss" in plots:
        body.append('<section><h2>Training loss</h2><p class="note">The loss curves of the runs compared '
                    f'(dashed: eval loss).</p>{_fig(plots, "loss")}</section>')
    if v["questions"]:
        body.append("<section><h2>Side by side</h2>"
                    + "".join(_html_question(q, list(v["models"])) for q in v["questions"]) + "</section>")
    if (cfg := _config_rows(v)):
        body.append(f"<section><details><summary>Eval config</summary>{_html_table(['setting', 'value'], cfg)}"
                    "</details></section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(v['title'])}</title>\n<style>{CSS}</style></head>\n"
            "<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


def _html_question(q: dict, names: list[str]) -> str:
    answers, scores, refs = _d(q.get("answers")), _d(q.get("scores")), _turns(q.get("reference"))
    names = names + [str(n) for n in answers if str(n) not in names]
    cells = []
    for i, turn in enumerate(_turns(q.get("turns"))):
        cells.append(f'<div class="cell turn"><div class="label">turn {i + 1}</div>'
                     f'<div class="text">{_e(turn)}</div></div>')
        if i < len(refs) and refs[i]:
            cells.append(f'<div class="cell ref"><div class="label">reference</div>'
                         f'<div class="text">{_e(refs[i])}</div></div>')
        for n in names:
            a = _turns(answers.get(n))
            inner = f'<div class="text">{_e(a[i])}</div>' if i < len(a) else '<div class="none">no answer</div>'
            s = _num(scores.get(n)) if i == 0 else None  # one score per question: shown once
            score = f'<span class="score">score {s:.1f}</span>' if s is not None else ""
            cells.append(f'<div class="cell"><div class="label model">{_e(n)}{score}</div>{inner}</div>')
    verdicts = [vd for vd in (q.get("verdicts") or []) if isinstance(vd, dict)]
    vl = ('<ul class="verdicts">' + "".join(f"<li>{_e(_verdict_text(vd))}</li>" for vd in verdicts) + "</ul>"
          if verdicts else "")
    cols = max(1, len(names))
    cat = _e(q.get("category") or "uncategorised")
    return (f'<div class="q"><h3>{_e(q.get("question_id", "?"))}<span class="cat">{cat}</span></h3>'
            f'<div class="grid" style="grid-template-columns:repeat({cols},minmax(0,1fr))">{"".join(cells)}</div>'
            f"{vl}</div>")


def _config_rows(v) -> list:
    import json

    def show(x):
        return x if isinstance(x, str) else json.dumps(x, default=str, ensure_ascii=False)
    rows = [[str(k), show(x)] for k, x in v["config"].items()]
    rows += [[f"cost: {k}", show(x)] for k, x in v["ledger"].items()]
    return rows
