"""Length-controlled win rates: what would the judge have said had both answers been the same length?

As alpaca_eval's GLM (length_controlled_v1, Dubois et al. 2024): a logistic model of the verdict
(1 win, 0.5 tie, 0 loss, fitted as a probability) on tanh of the length difference divided by its
standard deviation, plus one term per model pair, no intercept; predicted at zero length
difference, each pair's length-controlled win rate is the logistic of its own term. Here one
length slope is shared by every pair of an eval, because it is the judge's bias, not a model's;
alpaca_eval's per-question difficulty term needs its 805-question calibration set and is left
out. An L2 penalty (the same on every weight) keeps a pair that always wins finite; since flipping
a pair negates its rows' features and outcomes, the fit stays exactly antisymmetric:
wr(a, b) = 1 - wr(b, a), and wr(a, a) = 0.5 by construction.
"""
from __future__ import annotations

import math

MIN_ROWS = 8        # verdicts over all pairs below this: too few to separate length from quality
MIN_PER_PAIR = 3    # a pair with fewer verdicts gets no number
L2 = 0.1            # penalty on every weight (logit units): keeps separated data finite
# a pair whose verdicts all agree: resampling them gives the same fit every time, an interval of width
# zero. Below this many, the rule of three (95% bound 3/n from unanimity) is wider than 0.1: no number
MIN_UNANIMOUS = 30


def _fit(x_len, pair_idx, y, n_pairs: int, l2: float = L2):
    """Newton's method for the penalized logistic model with fractional targets. Returns the
    weights (pair terms, then the length slope) or None when it does not converge."""
    import numpy as np
    n = len(y)
    X = np.zeros((n, n_pairs + 1))
    X[np.arange(n), pair_idx] = 1.0
    X[:, -1] = x_len
    w = np.zeros(n_pairs + 1)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        grad = X.T @ (p - y) + l2 * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(n_pairs + 1)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if not np.all(np.isfinite(w)):
            return None
        if np.max(np.abs(step)) < 1e-9:
            return w
    return None


def _features(rows):
    import numpy as np
    d = np.array([float(r["len_a"] - r["len_b"]) for r in rows])
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    # alpaca_eval divides by the standard deviation without centring: zero difference stays zero
    return np.tanh(d / sd) if sd > 0 else np.zeros(len(d))


def length_controlled(rows: list[dict], pairs: list[tuple[str, str]], n_boot: int = 1000, seed: int = 0) -> dict:
    """rows: {a, b, y (1/0.5/0), len_a, len_b}, one per judged question and pair. Returns
    {"pairs": {(a, b): {lc_win_rate, lc_ci, lc_note}}, "slope", "n", "note"}; a number only where
    the data allow one, a reason where they do not."""
    import numpy as np
    rows = [r for r in rows if r.get("y") is not None]
    out = {"pairs": {}, "slope": None, "n": len(rows), "note": None}
    counts = {p: sum(1 for r in rows if (r["a"], r["b"]) == p) for p in pairs}
    unanimous = {p for p in pairs if len({r["y"] for r in rows if (r["a"], r["b"]) == p}) == 1
                 and counts[p] < MIN_UNANIMOUS}
    fit_pairs = [p for p in pairs if p[0] != p[1] and counts[p] >= MIN_PER_PAIR and p not in unanimous]
    for p in pairs:
        if p[0] == p[1]:
            out["pairs"][p] = {"lc_win_rate": 0.5, "lc_ci": [0.5, 0.5], "lc_note": None}
        elif counts[p] < MIN_PER_PAIR:
            out["pairs"][p] = {"lc_win_rate": None, "lc_ci": None,
                               "lc_note": f"too few verdicts ({counts[p]}; needs {MIN_PER_PAIR})"}
        elif p in unanimous:
            out["pairs"][p] = {"lc_win_rate": None, "lc_ci": None,
                               "lc_note": f"too few pairs: all {counts[p]} verdicts agree, which resampling cannot "
                                          f"bound (needs {MIN_UNANIMOUS}, or verdicts that differ)"}
    used = [r for r in rows if (r["a"], r["b"]) in fit_pairs]
    if not fit_pairs:
        return out
    if len(used) < MIN_ROWS:
        out["note"] = f"too few verdicts to fit ({len(used)}; needs {MIN_ROWS})"
        for p in fit_pairs:
            out["pairs"][p] = {"lc_win_rate": None, "lc_ci": None, "lc_note": out["note"]}
        return out
    index = {p: i for i, p in enumerate(fit_pairs)}
    pair_idx = np.array([index[(r["a"], r["b"])] for r in used])
    y = np.array([float(r["y"]) for r in used])
    x = _features(used)
    w = _fit(x, pair_idx, y, len(fit_pairs))
    if w is None:
        out["note"] = "the length model did not converge: no length-controlled win rate"
        for p in fit_pairs:
            out["pairs"][p] = {"lc_win_rate": None, "lc_ci": None, "lc_note": out["note"]}
        return out
    out["slope"] = round(float(w[-1]), 4)
    boots = _bootstrap(used, pair_idx, y, len(fit_pairs), n_boot, seed)
    for p, i in index.items():
        ci = None
        if len(boots[i]) >= max(10, n_boot // 2):  # most resamples fitted: their spread is the interval
            b, lo = sorted(boots[i]), int(0.025 * (len(boots[i]) - 1))
            ci = [round(b[lo], 4), round(b[len(b) - 1 - lo], 4)]  # mirrored ranks: wr(b, a)'s interval mirrors it
        out["pairs"][p] = {"lc_win_rate": round(_logistic(w[i]), 4), "lc_ci": ci,
                           "lc_note": None if ci else "the bootstrap fits failed: no interval"}
    return out


def _bootstrap(used, pair_idx, y, n_pairs: int, n_boot: int, seed: int) -> list[list[float]]:
    """Resample verdicts within each pair (every pair keeps its count) and refit, lengths restandardized."""
    import numpy as np
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(pair_idx == i) for i in range(n_pairs)]
    out: list[list[float]] = [[] for _ in range(n_pairs)]
    for _ in range(n_boot):
        take = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        sub = [used[j] for j in take]
        w = _fit(_features(sub), pair_idx[take], y[take], n_pairs)
        if w is not None:
            for i in range(n_pairs):
                out[i].append(_logistic(w[i]))
    return out


def _logistic(z) -> float:
    return 1.0 / (1.0 + math.exp(-float(z)))


def add_length_control(pairwise: list[dict], verdicts: list[dict], answers: dict, n_boot: int) -> tuple[list, dict]:
    """eval's pairwise rows with lc_win_rate, lc_ci and lc_note beside the raw win rate; lengths are
    each model's answers in characters over all turns (alpaca_eval's str.len())."""
    size = {n: {q: sum(len(t) for t in a) for q, a in ans.items()} for n, ans in answers.items()}
    rows = [{"a": r["a"], "b": r["b"], "y": {"a": 1.0, "tie": 0.5, "b": 0.0}.get(r["winner"]),
             "len_a": size[r["a"]].get(r["question_id"], 0), "len_b": size[r["b"]].get(r["question_id"], 0)}
            for r in verdicts if r["a"] in size and r["b"] in size]
    lc = length_controlled(rows, [(p["a"], p["b"]) for p in pairwise], n_boot)
    out = [{**p, **lc["pairs"][(p["a"], p["b"])]} for p in pairwise]
    return out, {"slope": lc["slope"], "n": lc["n"], "note": lc["note"]}
