"""Eval's results made safe to read, for the report (report.py) and its parts: every optional piece
defaulted and every number checked to be finite, so that the renderers never meet a None or a
string they must guess at; results from older versions and hand-edited files read the same way."""
from __future__ import annotations

import math

from ..pages import Cell as _T

NEAR_CHANCE = 0.6  # evaluate.NEAR_CHANCE; repeated so that the report reads old results without evaluate


def _d(x) -> dict:
    return x if isinstance(x, dict) else {}


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _f(x, nd: int = 2) -> _T:
    n = _num(x)
    return _T("–" if n is None else f"{n:.{nd}f}")


def _int(x) -> _T:
    n = _num(x)
    return _T("–" if n is None else str(int(n)) if n == int(n) else f"{n:g}")  # :g alone makes 1e+06 of counts


def _ci(ci) -> tuple[float, float] | None:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) is not None for c in ci):
        return float(ci[0]), float(ci[1])
    return None


def _fci(ci, nd: int = 2) -> _T:
    c = _ci(ci)
    return _T("–" if c is None else f"[{c[0]:.{nd}f}, {c[1]:.{nd}f}]")


def _turns(x) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):  # a one-turn answer given as a plain string
        return [x]
    return ["" if t is None else str(t) for t in x] if isinstance(x, (list, tuple)) else [str(x)]


def _view(res: dict) -> dict:
    """The results with every optional piece defaulted, so the renderers never meet a None they must guess at."""
    models = {str(k): _d(m) for k, m in _d(res.get("models")).items()}
    judge = _d(res.get("judge"))
    cons = _num(judge.get("consistency"))
    flags = [str(f) for f in judge.get("flags") or [] if f]
    # a debiased judge reads both orders together: its per-order consistency is shown, never a warning
    debiased = judge.get("mode") == "debiased"
    near = bool(flags) or judge.get("near_chance") is True or (cons is not None and cons < NEAR_CHANCE and not debiased)
    pairs = [p for p in (res.get("pairwise") or []) if isinstance(p, dict)]
    qs = [q for q in (res.get("questions") or []) if isinstance(q, dict)]
    return {"title": str(res.get("title") or "baize eval"), "created": res.get("created"),
            "n_questions": res.get("n_questions"), "questions_file": res.get("questions_file"),
            "models": models, "judge": judge or None, "consistency": cons, "near_chance": near, "flags": flags,
            "length": _d(res.get("length_control")),
            "pairwise": pairs, "questions": qs, "judge_free_pairs": [p for p in res.get("judge_free_pairs") or []
                                                                  if isinstance(p, dict)], "config": _d(res.get("config")),
            "ledger": _d(res.get("ledger")), "seconds": _num(res.get("seconds")),
            "trend": _d(res.get("trend"))}
