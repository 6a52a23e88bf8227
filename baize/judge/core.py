"""An LLM as judge: listwise ranking, pairwise verdicts and 1-10 scores, position bias controlled.

    judge = Judge(llm, cache_dir="runs/judge")
    judge.rank(context, answers)            -> Ranking   # over >= 2 presentation orders
    judge.pair(context, a, b)               -> Verdict   # asked both ways round
    judge.score(context, answer, reference) -> Score
    judge.pair_messages(ab, ba) / judge.score_messages(msgs)   # the same, on a caller's own prompts

`context` is one question (str) or an OpenAI-style dialogue ending in a user turn. A Judge is two
parts: a cached transport (transport.py: ask, share in-flight prompts, retry once with a reminder,
cache every raw reply on disk) and one aggregator per mode (modes.py: text, choice, debiased) that
builds the prompts (prompts.py) and turns replies into verdicts. A reply that does not parse is
None with its raw text, never a default verdict. A local judge (mode debiased, its default) reads
the option log-probs of both orders together so a position prior cancels; `reliability()`
measures consistency over decisive verdicts only. How far to trust a judge: check.py and
docs/judge-check.md.
"""
from __future__ import annotations

from pathlib import Path

from .modes import (  # noqa: F401  (re-exported: the judge's public names live here)
    MODE_CLASSES,
    TIE_BAND,
    Ranking,
    Score,
    Verdict,
    _presentations,
    agreement,
    borda,
    logprobs_of,
    pair_margin,
    rank_scores,
)
from .prompts import *  # noqa: F401,F403  (re-exported)
from .prompts import render_context  # noqa: F401
from .transport import JudgeError, JudgeTransport
from .verdicts import _numbers, parse_pair, parse_ranking, parse_score  # noqa: F401  (re-exported)

__all__ = ["Judge", "Ranking", "Verdict", "Score", "JudgeError", "parse_ranking", "parse_pair", "parse_score",
           "render_context", "borda", "agreement", "reliability", "pair_margin", "rank_scores", "logprobs_of"]


# How local judges read their option log-probs by default: "debiased" (both orders together) beat
# "choice" (each order's argmax) on human pairs; docs/judge-check.md has the figures.
MODES = ("auto", "text", "choice", "debiased")
LOCAL_MODE = "debiased"


class Judge:
    """Thread-safe: call rank/pair/score from many threads; the LLM backends batch or pool them."""

    CACHE_FILE = JudgeTransport.CACHE_FILE

    def __init__(self, llm, cache_dir=None, max_tokens: int = 512, temperature: float = 0.0,
                 max_unparseable: int | None = 8, orders: int = 2, mode: str = "auto", tie_band: float = TIE_BAND):
        if orders < 2:
            raise ValueError("Judge: orders must be >= 2 (one order cannot separate position bias from quality)")
        if mode not in MODES:
            raise ValueError(f"Judge: mode {mode!r}: use {', '.join(MODES)}")
        # auto: LOCAL_MODE for local models, which can score options; text for endpoints (docs/judge-check.md)
        if mode == "auto":
            mode = LOCAL_MODE if llm.can_score_options else "text"
        if mode != "text" and not llm.can_score_options:
            raise ValueError(f"Judge: mode {mode} needs a local model; {getattr(llm, 'name', llm)} only writes text")
        self.mode, self.llm, self.orders, self.tie_band = mode, llm, orders, tie_band
        self.name = getattr(llm, "name", type(llm).__name__)
        self.max_tokens, self.temperature, self.max_unparseable = max_tokens, temperature, max_unparseable
        self.transport = JudgeTransport(llm, self.name, cache_dir, max_tokens, temperature, max_unparseable,
                                       mode)
        self.aggregator = MODE_CLASSES[mode](self.transport, orders=orders, tie_band=tie_band)
        self.cache_path = self.transport.cache_path

    @property
    def choice(self) -> bool:
        """Whether verdicts are read from option log-probs (modes choice and debiased) instead of written."""
        return self.mode != "text"

    @property
    def usage(self) -> dict:
        return self.transport.usage

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def pair(self, context, a: str, b: str) -> Verdict:
        return self.aggregator.pair(context, a, b)

    def pair_messages(self, ab: list[dict], ba: list[dict], parse=parse_pair) -> Verdict:
        """A pair judged on the caller's own prompts in both orders (FastChat's MT-bench prompts, mtbench.py)."""
        return self.aggregator.pair_messages(ab, ba, parse)

    def score(self, context, answer: str, reference: str | None = None) -> Score:
        return self.aggregator.score(context, answer, reference)

    def score_messages(self, messages: list[dict], parse=parse_score) -> Score:
        """A score on the caller's own prompt."""
        return self.aggregator.score_messages(messages, parse)

    def rank(self, context, answers: list[str]) -> Ranking:
        return self.aggregator.rank(context, answers)


def load_judge(cfg, default_cache: Path, llm=None, *, orders: int = 2) -> Judge:
    """The Judge of a stage's config (sdf, eval): its model loaded from `cfg.judge` unless given and
    checked (an unreachable endpoint fails now, in one line), its cache under `default_cache` unless
    --judge-cache says where ('none': off)."""
    if llm is None:
        from ..llm.models import load_endpoint
        llm = load_endpoint(cfg.judge, cfg, judge=True, max_batch=min(64, cfg.concurrency * orders))
    else:
        llm.check()
    cache = None if (cfg.judge_cache or "").lower() == "none" else Path(cfg.judge_cache or default_cache)
    return Judge(llm, cache_dir=cache, max_tokens=cfg.judge_max_tokens, orders=orders,
                 max_unparseable=cfg.max_unparseable, mode=cfg.judge_mode)


def planned_aggregator(cfg, spec: str, orders: int = 2):
    """The aggregator a stage's Judge of `spec` will ask through, before any model loads (the dry run's):
    its mode as Judge resolves it (auto: LOCAL_MODE for a local model, text for an endpoint), its
    prompt builders and presentations the very ones the run sends."""
    mode = cfg.judge_mode
    if mode == "auto":
        mode = "text" if (spec or "").startswith("openai:") else LOCAL_MODE
    return MODE_CLASSES[mode](None, orders=orders)


def reliability(rows: list[dict]) -> dict:
    """How far a judge's pairwise verdicts can be trusted, from records with `winner` (final: a, b or
    A, B, tie, None) and `verdicts` (per order). consistency counts only pairs where some order
    decided: an always-tie judge has no consistency to show, and its decisive rate says why."""
    parsed = [r for r in rows if r.get("winner") is not None]
    decisive = [r for r in parsed if r["winner"] not in ("tie",)]
    decided = [r for r in parsed if any(v not in (None, "tie") for v in r.get("verdicts") or [])]
    same = [r for r in decided if len(set(r["verdicts"])) == 1]
    return {"pairs": len(rows), "parsed": len(parsed),
            "decisive_rate": round(len(decisive) / len(parsed), 4) if parsed else None,
            "consistency": round(len(same) / len(decided), 4) if decided else None,
            "tie_rate": round(1 - len(decisive) / len(parsed), 4) if parsed else None}
