"""An LLM as judge: listwise ranking, pairwise verdicts and 1-10 scores, position bias controlled.

    judge = Judge(llm, cache_dir="runs/judge")
    judge.rank(context, answers)            -> Ranking   # Borda over >= 2 presentation orders
    judge.pair(context, a, b)               -> Verdict   # asked both ways round
    judge.score(context, answer, reference) -> Score

`context` is one question (str) or an OpenAI-style dialogue ending in a user turn. A reply that
does not parse gets one retry with a format reminder, then is recorded as None with its raw text:
never a default verdict. Every raw reply is cached on disk per call, so a rerun is free and gives
the identical result. A local judge (mode debiased, its default) reads the option log-probs of
both orders together so a position prior cancels; `reliability()` measures consistency over
decisive verdicts only. How far to trust a judge: judge_check.py and docs/judge-check.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from ..config import BaizeError
from ..llm.base import Completion
from ..schema import repair_torn_tail
from .verdicts import _numbers, parse_pair, parse_ranking, parse_score  # noqa: F401  (re-exported)

__all__ = ["Judge", "Ranking", "Verdict", "Score", "JudgeError", "parse_ranking", "parse_pair", "parse_score",
           "render_context", "borda", "agreement", "reliability", "pair_margin", "rank_scores", "logprobs_of"]


# How local judges read their option log-probs by default: "debiased" (both orders together) beat
# "choice" (each order's argmax) on human pairs; docs/judge-check.md has the figures.
MODES = ("auto", "text", "choice", "debiased")
LOCAL_MODE = "debiased"
# Summed log-odds (nats, both orders) within which a debiased verdict is a tie
TIE_BAND = 0.1


class JudgeError(BaizeError):
    """The judge keeps answering in a shape we cannot read: a weak model or a broken endpoint."""


# --- prompts (after FastChat's MT-bench judge prompts) -------------------------------------------
# Every prompt names the biases we know judges have (order, length, names) and asks for a short
# explanation *before* the verdict, then the verdict alone on the last line in one strict shape:
# explaining first gives better verdicts, and a fixed last-line shape is what makes parsing reliable.

_CRITERIA = ("Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, "
             "creativity, and level of detail of the responses.")
_UNBIASED = ("Avoid any position biases and ensure that the order in which the responses were presented does "
             "not influence your decision. Do not allow the length of the responses to influence your "
             "evaluation. Do not favor certain names of the assistants. Be as objective as possible.")

PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user's last message in the conversation displayed below. You should choose the assistant that "
    "follows the user's instructions and answers the user's question better. " + _CRITERIA + " Begin your "
    "evaluation by comparing the two responses and provide a short explanation. " + _UNBIASED + " After "
    "providing your explanation, output your final verdict on the last line by strictly following this format: "
    "\"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")

PAIR_USER = ("{context}\n\n"
             "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
             "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]")

SCORE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user's last message in the conversation displayed below. " + _CRITERIA.replace("responses", "response")
    + " Begin your evaluation by providing a short explanation. Do not allow the length of the response to "
    "influence your evaluation. Be as objective as possible. After providing your explanation, you must rate "
    "the response on a scale of 1 to 10 on the last line by strictly following this format: \"Rating: [[5]]\".")

SCORE_REF_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user's last message in the conversation displayed below. Your evaluation should consider correctness "
    "and helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation "
    "by comparing the assistant's answer with the reference answer. Identify and correct any mistakes, and "
    "provide a short explanation. Do not allow the length of the response to influence your evaluation. Be as "
    "objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 "
    "on the last line by strictly following this format: \"Rating: [[5]]\".")

SCORE_USER = "{context}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"

SCORE_REF_USER = ("{context}\n\n[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
                  "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")

RANK_SYSTEM = (
    "Please act as an impartial judge and rank the responses provided by several AI assistants to the user's "
    "last message in the conversation displayed below, from best to worst. The responses are labelled [[1]], "
    "[[2]], and so on. " + _CRITERIA + " Begin your evaluation by comparing the responses and provide a short "
    "explanation. " + _UNBIASED + " After providing your explanation, output your final ranking on the last "
    "line by strictly following this format, best first, listing every response exactly once: "
    "\"Ranking: [[2]] > [[3]] > [[1]]\" (that example is for three responses).")

RANK_USER = "{context}\n\n{answers}\n\nRank all {k} responses, [[1]] to [[{k}]]."

RANK_ANSWER = "[The Start of Response [[{label}]]]\n{answer}\n[The End of Response [[{label}]]]"

PAIR_REMINDER = ("Your reply did not end with the verdict in the required format. "
                 "Reply with only: [[A]], [[B]] or [[C]]")
SCORE_REMINDER = ("Your reply did not end with the rating in the required format. "
                  "Reply with only the rating of the response from 1 to 10, like: Rating: [[5]]")
RANK_REMINDER = ("Your reply did not end with the ranking in the required format. Reply with only the ranking "
                 "of all {k} responses, best first, each exactly once, like: Ranking: {example}")


_SPEAKER = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_context(context) -> str:
    """A question, or a whole dialogue as 'User: ... / Assistant: ...' so the judge sees every turn."""
    if isinstance(context, str):
        return f"[User Question]\n{context}"
    if not isinstance(context, (list, tuple)) or not context:
        raise ValueError("judge: context must be a question (str) or a non-empty list of {role, content} messages")
    for m in context:
        if not isinstance(m, dict) or m.get("role") not in _SPEAKER or not isinstance(m.get("content"), str):
            raise ValueError(f"judge: bad message in context: {str(m)[:80]!r} (want {{role, content}})")
    if context[-1]["role"] != "user":
        raise ValueError("judge: a dialogue context must end with a user turn (the one being answered)")
    if len(context) == 1:  # the same prompt, and so the same cache entry, as the plain question
        return render_context(context[0]["content"])
    turns = "\n\n".join(f"{_SPEAKER[m['role']]}: {m['content']}" for m in context)
    return f"[The Start of the Conversation]\n{turns}\n[The End of the Conversation]"


# --- results ----------------------------------------------------------------------------------------

@dataclass
class Ranking:
    order: list[int] | None          # indices into answers, best first (Borda; ties by answer hash)
    points: list[float] | None       # Borda points of answers[i] summed over parsed presentations
    agreement: float | None          # fraction of answer pairs every parsed presentation orders alike
    orders: list[list[int] | None]   # each presentation's ranking in original indices (None: unparsed)
    raw: list[str]
    usage: dict
    cached: bool


@dataclass
class Verdict:
    winner: str | None               # "A" = the first argument, "B" = the second, "tie", None: unparsed
    # both presentations named the same winner; None when one did not parse or neither decided
    # (two ties agree on nothing, and counting them would let an always-tie judge look perfect)
    consistent: bool | None
    verdicts: list[str | None]       # per presentation, mapped back to the arguments
    raw: list[str]
    usage: dict
    cached: bool
    margin: float | None = None      # debiased mode: log-odds for A over both orders (> tie band: A)


@dataclass
class Score:
    value: float | None
    raw: list[str]
    usage: dict
    cached: bool


def _presentations(k: int, n: int) -> list[list[int]]:
    """n orders of range(k), as given and reversed first, then rotations each with its reverse:
    every (order, reverse) pair puts each answer at mirrored positions, so position bias cancels."""
    out = []
    for r in range(k):
        rot = list(range(r, k)) + list(range(r))
        for p in (rot, rot[::-1]):
            if p not in out:
                out.append(p)
            if len(out) == n:
                return out
    return out


def _text_hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def borda(orders: list[list[int]], answers: list[str]) -> tuple[list[int], list[float]]:
    """Aggregate rankings (indices, best first): position p of k earns k-1-p points; equal points
    are ordered by a hash of the answer text, so neither index nor position can win a tie."""
    k = len(answers)
    points = [0.0] * k
    for o in orders:
        for p, i in enumerate(o):
            points[i] += k - 1 - p
    order = sorted(range(k), key=lambda i: (-points[i], _text_hash(answers[i]), i))
    return order, points


def agreement(orders: list[list[int]], k: int) -> float | None:
    if len(orders) < 2 or k < 2:
        return None
    ranks = [{i: p for p, i in enumerate(o)} for o in orders]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    same = sum(1 for i, j in pairs if len({r[i] < r[j] for r in ranks}) == 1)
    return same / len(pairs)


def _choose(llm, kind: str, messages: list[dict]) -> str:
    """A verdict in the strict format, chosen by the model's log-probs of each option after the
    format's opening (no text is generated), with those log-probs on a first line for the record."""
    if kind == "pair":
        opts = ["A", "B", "C"]
        lp = llm.option_logprobs(messages, "[[", opts)
        verdict = f"[[{opts[max(range(3), key=lp.__getitem__)]}]]"
    elif kind == "score":
        opts = [str(i) for i in range(1, 11)]
        lp = llm.option_logprobs(messages, "Rating: [[", opts)
        m = max(lp)
        w = [math.exp(x - m) for x in lp]
        # the expected rating: a continuous value separates answers the argmax would tie
        verdict = f"Rating: [[{sum((i + 1) * x for i, x in enumerate(w)) / sum(w):.2f}]]"
    else:
        k = messages[-1]["content"].count("[The Start of Response [[")
        opts = _numbers(k)
        lp = llm.option_logprobs(messages, "Ranking: [[", opts)
        # listwise from one distribution: the labels by how likely each is to be named best
        verdict = "Ranking: " + " > ".join(f"[[{opts[i]}]]" for i in sorted(range(k), key=lambda i: -lp[i]))
    probs = ", ".join(f"{o} {x:.4f}" for o, x in zip(opts, lp))
    return f"(chosen by log-probability: {probs})\n{verdict}"


_LOGPROBS = re.compile(r"\(chosen by log-probability: ([^)]*)\)")


def logprobs_of(raw: str) -> dict[str, float] | None:
    """The option log-probs a choice-mode reply recorded on its first line (None: a written reply)."""
    m = _LOGPROBS.search(raw or "")
    if not m:
        return None
    out = {}
    for part in m.group(1).split(", "):
        label, _, x = part.rpartition(" ")
        try:
            out[label] = float(x)
        except ValueError:
            return None
    return out


def pair_margin(ab: dict[str, float], ba: dict[str, float]) -> float:
    """Log-odds that the first argument is better, from both orders together: in order AB it is
    option A, in BA option B. A prior for a position adds the same amount to one order's log-odds
    as it takes from the other's, so the sum keeps only what the content moved."""
    return (ab["A"] - ab["B"]) + (ba["B"] - ba["A"])


def rank_scores(presented: list[tuple[list[int], list[float]]], k: int) -> list[float]:
    """Per answer, its log-prob of being named best, centred within each presentation and summed
    over presentations: an answer shown at every position equally often (as given and reversed,
    rotations) carries each position's prior equally, so the prior drops out of the comparison."""
    scores = [0.0] * k
    for perm, lp in presented:
        top = max(lp)
        norm = [x - top - math.log(sum(math.exp(y - top) for y in lp)) for x in lp]
        mean = sum(norm) / k
        for pos, i in enumerate(perm):
            scores[i] += norm[pos] - mean
    return scores


# --- the judge --------------------------------------------------------------------------------------

class Judge:
    """Thread-safe: call rank/pair/score from many threads; the LLM backends batch or pool them."""

    CACHE_FILE = "judge_cache.jsonl"

    def __init__(self, llm, cache_dir=None, max_tokens: int = 512, temperature: float = 0.0,
                 max_unparseable: int | None = 8, orders: int = 2, mode: str = "auto", tie_band: float = TIE_BAND):
        if orders < 2:
            raise ValueError("Judge: orders must be >= 2 (one order cannot separate position bias from quality)")
        if mode not in MODES:
            raise ValueError(f"Judge: mode {mode!r}: use {', '.join(MODES)}")
        # choice: each order's verdict is the most probable of its fixed options (a local model's
        # next-token log-probs) instead of written text; debiased: the same log-probs, but both orders
        # read together so a position prior cancels; auto: LOCAL_MODE for local models (docs/judge-check.md)
        if mode == "auto":
            mode = LOCAL_MODE if llm.can_score_options else "text"
        self.mode = mode
        self.choice = mode in ("choice", "debiased")
        self.debiased = mode == "debiased"
        self.tie_band = tie_band
        if self.choice and not llm.can_score_options:
            raise ValueError(f"Judge: mode {mode} needs a local model; {getattr(llm, 'name', llm)} only writes text")
        self.llm = llm
        self.name = getattr(llm, "name", type(llm).__name__)
        self.max_tokens, self.temperature = max_tokens, temperature
        self.max_unparseable, self.orders = max_unparseable, orders
        self._lock = threading.Lock()
        self._cache: dict[str, dict] = {}
        self._inflight: dict[str, Future] = {}
        self._usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0, "cache_hits": 0}
        self._bad_in_row = 0
        self._file = None
        self.cache_path = None
        if cache_dir is not None:
            self.cache_path = Path(cache_dir) / self.CACHE_FILE
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            repair_torn_tail(self.cache_path)
            if self.cache_path.exists():
                with self.cache_path.open(encoding="utf-8") as f:
                    for line in f:
                        try:
                            e = json.loads(line)
                            self._cache[e["key"]] = e
                        except (ValueError, KeyError, TypeError):
                            continue  # a cache line we cannot read only costs one call again

    @property
    def usage(self) -> dict:
        with self._lock:
            return dict(self._usage)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # one LLM call, through the cache ------------------------------------------------------------
    def _key(self, kind: str, messages: list[dict]) -> str:
        blob = json.dumps([self.name, kind + ("/choice" if self.choice else ""), messages, self.temperature,
                           self.max_tokens],
                          ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _complete(self, kind: str, messages: list[dict], usage: dict) -> str:
        key = self._key(kind, messages)
        with self._lock:
            entry = self._cache.get(key)
            fut = None if entry else self._inflight.get(key)
            owner = entry is None and fut is None
            if owner:
                fut = self._inflight[key] = Future()
            elif entry is not None:
                self._usage["cache_hits"] += 1
        if entry is not None:
            return entry["text"]
        if not owner:
            # the same prompt is being asked by another thread: share its reply rather than pay twice
            # (and, at temperature > 0 or on a nondeterministic API, possibly disagree with it)
            entry = fut.result()
            with self._lock:
                self._usage["cache_hits"] += 1
            return entry["text"]
        try:
            if self.choice:  # no text written, but the prompt was read: its tokens are the cost
                read = len(self.llm.prompt_ids(messages)) if self.llm.can_count_tokens else 0
                c = Completion(_choose(self.llm, kind, messages), read, 0)
            else:
                c = self.llm.chat(messages, n=1, temperature=self.temperature, top_p=1.0,
                                  max_tokens=self.max_tokens, stop=None, seed=0)[0]
        except BaseException as e:
            with self._lock:
                self._inflight.pop(key, None)
            fut.set_exception(e)
            raise
        entry = {"key": key, "text": c.text or "", "prompt_tokens": int(c.prompt_tokens or 0),
                 "completion_tokens": int(c.completion_tokens or 0)}
        with self._lock:
            self._cache[key] = entry
            self._inflight.pop(key, None)
            for u in (self._usage, usage):
                u["prompt_tokens"] += entry["prompt_tokens"]
                u["completion_tokens"] += entry["completion_tokens"]
                u["calls"] += 1
                for k, v in c.usage().items():  # an endpoint's reasoning or estimated tokens, where any
                    if k not in ("prompt_tokens", "completion_tokens", "calls"):
                        u[k] = u.get(k, 0) + v
            if self.cache_path is not None:
                if self._file is None:
                    self._file = self.cache_path.open("a", encoding="utf-8")
                self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._file.flush()  # a killed run keeps every reply it paid for
        fut.set_result(entry)
        return entry["text"]

    def _ask(self, kind: str, messages: list[dict], parse, reminder: str, usage: dict, raw: list[str]):
        """One presentation: ask, and if the reply does not parse, ask once more with a reminder."""
        text = self._complete(kind, messages, usage)
        raw.append(text)
        value = parse(text)
        if value is None:
            retry = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": reminder}]
            text = self._complete(kind, retry, usage)
            raw.append(text)
            value = parse(text)
        with self._lock:
            self._bad_in_row = self._bad_in_row + 1 if value is None else 0
            bad = self._bad_in_row
        if value is None and self.max_unparseable and bad >= self.max_unparseable:
            short = " ".join(text.split())
            short = short[:200] + "..." if len(short) > 200 else short
            raise JudgeError(f"judge {self.name}: {bad} unparseable verdicts in a row; last reply: {short!r}: "
                             f"use a stronger judge or check its endpoint")
        return value

    def ask(self, kind: str, messages: list[dict], parse, reminder: str, usage: dict, raw: list[str]):
        """One presentation of a caller's own prompt (FastChat's MT-bench prompts, mtbench.py): the same
        cache, retry and choice of verdict by log-probability as the built-in prompts. kind: pair or score."""
        return self._ask(kind, messages, parse, reminder, usage, raw)

    @staticmethod
    def _new_usage() -> dict:
        return {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}

    # the three kinds ------------------------------------------------------------------------------
    def pair(self, context, a: str, b: str) -> Verdict:
        ctx = render_context(context)
        usage, raw, verdicts = self._new_usage(), [], []
        lps = []
        for first, second, swap in ((a, b, False), (b, a, True)):
            msgs = [{"role": "system", "content": PAIR_SYSTEM},
                    {"role": "user", "content": PAIR_USER.format(context=ctx, a=first, b=second)}]
            v = self._ask("pair", msgs, parse_pair, PAIR_REMINDER, usage, raw)
            lps.append(logprobs_of(raw[-1]))
            verdicts.append({"A": "B", "B": "A"}.get(v, v) if swap else v)
        winner, consistent, margin = self.combine(verdicts, lps)
        return Verdict(winner, consistent, verdicts, raw, usage, usage["calls"] == 0, margin)

    def combine(self, verdicts: list, lps: list) -> tuple[str | None, bool | None, float | None]:
        """(winner, consistent, margin) of a pair asked in both orders, the verdicts already mapped back
        to the arguments: in debiased mode the summed log-odds decide, with the tie band."""
        if None in verdicts:
            winner, consistent = None, None
        elif verdicts[0] == verdicts[1]:
            winner, consistent = verdicts[0], (True if verdicts[0] != "tie" else None)
        else:  # the verdict followed the position, not the content
            winner, consistent = "tie", False
        margin = None
        if self.debiased and None not in lps:
            margin = round(pair_margin(*lps), 4)
            winner = "A" if margin > self.tie_band else "B" if margin < -self.tie_band else "tie"
        return winner, consistent, margin

    def score(self, context, answer: str, reference: str | None = None) -> Score:
        ctx = render_context(context)
        if reference is None:
            msgs = [{"role": "system", "content": SCORE_SYSTEM},
                    {"role": "user", "content": SCORE_USER.format(context=ctx, answer=answer)}]
        else:
            msgs = [{"role": "system", "content": SCORE_REF_SYSTEM},
                    {"role": "user", "content": SCORE_REF_USER.format(context=ctx, answer=answer,
                                                                      reference=reference)}]
        usage, raw = self._new_usage(), []
        value = self._ask("score", msgs, parse_score, SCORE_REMINDER, usage, raw)
        return Score(value, raw, usage, usage["calls"] == 0)

    def rank(self, context, answers: list[str]) -> Ranking:
        answers = list(answers)
        k = len(answers)
        if k < 2:
            raise ValueError(f"judge.rank: needs at least 2 answers, got {k}")
        ctx = render_context(context)
        labels = _numbers(k)
        example = " > ".join(f"[[{x}]]" for x in labels[1:] + labels[:1])
        reminder = RANK_REMINDER.format(k=k, example=example)
        usage, raw, orders, presented = self._new_usage(), [], [], []
        # debiased: the k rotations put every answer at every position once, so any position prior
        # cancels exactly (as given and reversed only does that for two answers)
        perms = [list(range(r, k)) + list(range(r)) for r in range(k)] if self.debiased else None
        for perm in perms or _presentations(k, self.orders):
            shown = "\n\n".join(RANK_ANSWER.format(label=labels[p], answer=answers[i]) for p, i in enumerate(perm))
            msgs = [{"role": "system", "content": RANK_SYSTEM},
                    {"role": "user", "content": RANK_USER.format(context=ctx, answers=shown, k=k)}]
            pos = self._ask("rank", msgs, lambda t: parse_ranking(t, k, labels), reminder, usage, raw)
            orders.append(None if pos is None else [perm[p] for p in pos])
            lp = logprobs_of(raw[-1])
            presented.append((perm, [lp[x] for x in labels]) if lp and all(x in lp for x in labels) else None)
        parsed = [o for o in orders if o is not None]
        order, points = borda(parsed, answers) if parsed else (None, None)
        if self.debiased and presented and None not in presented:
            order, points = self._debiased_order(rank_scores(presented, k), answers)
        return Ranking(order, points, agreement(parsed, k), orders, raw, usage, usage["calls"] == 0)

    def _debiased_order(self, scores: list[float], answers: list[str]) -> tuple[list[int], list[float]]:
        """Best first by debiased score; a spread inside the tie band is no preference at all (every
        point equal), so SDF rejects the prompt instead of training on a coin flip."""
        if max(scores) - min(scores) <= self.tie_band:
            scores = [0.0] * len(scores)
        points = [round(x, 4) for x in scores]
        return sorted(range(len(answers)), key=lambda i: (-points[i], _text_hash(answers[i]), i)), points


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
