"""One aggregator per judging mode: each builds the prompts, asks through the cached transport and
turns the replies into a Verdict, a Score or a Ranking.

    text      the judge writes its verdict; each presentation is parsed from text, a pair's two
              orders must agree, a ranking is the Borda count over `orders` presentations
    choice    the same verdicts, but each order's is the most probable of the fixed options (a local
              model's next-token log-probs after the format's opening): no text is generated
    debiased  the choice log-probs of every presentation read together: a pair's verdict is the
              summed log-odds of both orders, a ranking uses all k rotations so every answer is
              shown at every position once, and a position prior cancels (docs/judge-check.md)
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from functools import partial

from .prompts import (
    PAIR_REMINDER,
    PAIR_SYSTEM,
    PAIR_USER,
    RANK_ANSWER,
    RANK_REMINDER,
    RANK_SYSTEM,
    RANK_USER,
    SCORE_REF_SYSTEM,
    SCORE_REF_USER,
    SCORE_REMINDER,
    SCORE_SYSTEM,
    SCORE_USER,
    render_context,
)
from .transport import JudgeTransport, Reader, new_usage
from .verdicts import _numbers, parse_pair, parse_ranking, parse_score

# Summed log-odds (nats, both orders) within which a debiased verdict is a tie
TIE_BAND = 0.1


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


# --- arithmetic over presentations --------------------------------------------------------------------

class Waits:
    """--batch-api: every presentation is asked before one that waits for a batch stops the verdict,
    so both orders (all of a ranking's) go into the same batch instead of one round each."""

    def __init__(self):
        self.pending = None

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb) -> bool:
        from ..llm.batch import BatchPending
        if kind is not None and issubclass(kind, BatchPending):
            self.pending = e
            return True
        return False

    def check(self) -> None:
        if self.pending is not None:
            raise self.pending


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


def choose(llm, kind: str, messages: list[dict], k: int = 0) -> str:
    """A verdict in the strict format, chosen by the model's log-probs of each option after the
    format's opening (no text is generated), with those log-probs on a first line for the record.
    k: how many answers a ranking prompt shows."""
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


# --- the aggregators ------------------------------------------------------------------------------------

class TextMode:
    """The judge writes its verdicts; they are parsed from text."""

    name = "text"

    def __init__(self, transport: JudgeTransport, orders: int = 2, tie_band: float = TIE_BAND):
        self.transport, self.orders, self.tie_band = transport, orders, tie_band

    writes = True  # the judge writes its verdict: each call may spend up to the judge's max tokens

    def reader(self, kind: str, k: int = 0) -> Reader | None:
        """How a reply is produced: None, the model writes it."""
        return None

    # what each verdict asks: the prompts pair/score/rank send, also counted by plan.py before a run
    def pair_prompts(self, context, a: str, b: str) -> list[list[dict]]:
        """The two orders of a pair: a shown as A, then b as A."""
        ctx = render_context(context)
        return [[{"role": "system", "content": PAIR_SYSTEM},
                 {"role": "user", "content": PAIR_USER.format(context=ctx, a=first, b=second)}]
                for first, second in ((a, b), (b, a))]

    def score_prompt(self, context, answer: str, reference: str | None = None) -> list[dict]:
        ctx = render_context(context)
        if reference is None:
            return [{"role": "system", "content": SCORE_SYSTEM},
                    {"role": "user", "content": SCORE_USER.format(context=ctx, answer=answer)}]
        return [{"role": "system", "content": SCORE_REF_SYSTEM},
                {"role": "user", "content": SCORE_REF_USER.format(context=ctx, answer=answer, reference=reference)}]

    def rank_prompts(self, context, answers: list[str]) -> list[tuple[list[int], list[dict]]]:
        """(order shown, prompt) per presentation of the answers."""
        ctx, labels, k = render_context(context), _numbers(len(answers)), len(answers)
        out = []
        for perm in self.presentations(k):
            shown = "\n\n".join(RANK_ANSWER.format(label=labels[p], answer=answers[i]) for p, i in enumerate(perm))
            out.append((perm, [{"role": "system", "content": RANK_SYSTEM},
                               {"role": "user", "content": RANK_USER.format(context=ctx, answers=shown, k=k)}]))
        return out

    def _ask(self, kind, messages, parse, reminder, usage, raw, k: int = 0):
        return self.transport.ask(kind, messages, parse, reminder, usage, raw, self.reader(kind, k))

    # pairs -----------------------------------------------------------------------------------------
    def pair(self, context, a: str, b: str) -> Verdict:
        return self.pair_messages(*self.pair_prompts(context, a, b))

    def pair_messages(self, ab: list[dict], ba: list[dict], parse=parse_pair) -> Verdict:
        """A pair from the caller's prompts in both orders (ab shows the first argument as A)."""
        usage, raw, verdicts, lps = new_usage(), [], [], []
        waits = Waits()
        for msgs, swap in ((ab, False), (ba, True)):
            with waits:
                v = self._ask("pair", msgs, parse, PAIR_REMINDER, usage, raw)
            if waits.pending:
                continue
            lps.append(logprobs_of(raw[-1]))
            verdicts.append({"A": "B", "B": "A"}.get(v, v) if swap else v)
        waits.check()
        winner, consistent, margin = self.combine(verdicts, lps)
        return Verdict(winner, consistent, verdicts, raw, usage, usage["calls"] == 0, margin)

    def combine(self, verdicts: list, lps: list) -> tuple[str | None, bool | None, float | None]:
        """(winner, consistent, margin) of a pair asked in both orders, the verdicts already mapped back."""
        if None in verdicts:
            return None, None, None
        if verdicts[0] == verdicts[1]:
            return verdicts[0], (True if verdicts[0] != "tie" else None), None
        return "tie", False, None  # the verdict followed the position, not the content

    # scores ----------------------------------------------------------------------------------------
    def score(self, context, answer: str, reference: str | None = None) -> Score:
        return self.score_messages(self.score_prompt(context, answer, reference))

    def score_messages(self, messages: list[dict], parse=parse_score) -> Score:
        """A score from the caller's own prompt."""
        usage, raw = new_usage(), []
        value = self._ask("score", messages, parse, SCORE_REMINDER, usage, raw)
        return Score(value, raw, usage, usage["calls"] == 0)

    # rankings --------------------------------------------------------------------------------------
    def presentations(self, k: int) -> list[list[int]]:
        """The orders the k answers are shown in: as given and reversed, then rotations."""
        return _presentations(k, self.orders)

    def rank(self, context, answers: list[str]) -> Ranking:
        answers = list(answers)
        k = len(answers)
        if k < 2:
            raise ValueError(f"judge.rank: needs at least 2 answers, got {k}")
        labels = _numbers(k)
        example = " > ".join(f"[[{x}]]" for x in labels[1:] + labels[:1])
        reminder = RANK_REMINDER.format(k=k, example=example)
        usage, raw, orders, presented = new_usage(), [], [], []
        waits = Waits()
        for perm, msgs in self.rank_prompts(context, answers):
            with waits:
                pos = self._ask("rank", msgs, lambda t: parse_ranking(t, k, labels), reminder, usage, raw, k)
            if waits.pending:
                continue
            orders.append(None if pos is None else [perm[p] for p in pos])
            lp = logprobs_of(raw[-1])
            presented.append((perm, [lp[x] for x in labels]) if lp and all(x in lp for x in labels) else None)
        waits.check()
        parsed = [o for o in orders if o is not None]
        order, points = self.order(parsed, presented, answers)
        return Ranking(order, points, agreement(parsed, k), orders, raw, usage, usage["calls"] == 0)

    def order(self, parsed, presented, answers) -> tuple[list[int] | None, list[float] | None]:
        """Best first and the points behind it: the Borda count of the parsed presentations."""
        return borda(parsed, answers) if parsed else (None, None)


class ChoiceMode(TextMode):
    """Each presentation's verdict is the most probable option by a local model's log-probs."""

    name = "choice"
    writes = False  # the verdict is read from the prompt's option log-probs: no token is generated

    def reader(self, kind: str, k: int = 0) -> Reader:
        return partial(choose, self.transport.llm, kind, k=k)


class DebiasedMode(ChoiceMode):
    """The option log-probs of every presentation read together, so a position prior cancels."""

    name = "debiased"

    def combine(self, verdicts, lps):
        winner, consistent, margin = super().combine(verdicts, lps)
        if None not in lps:  # the summed log-odds decide, with the tie band
            margin = round(pair_margin(*lps), 4)
            winner = "A" if margin > self.tie_band else "B" if margin < -self.tie_band else "tie"
        return winner, consistent, margin

    def presentations(self, k: int) -> list[list[int]]:
        # the k rotations put every answer at every position once, so any position prior cancels
        # exactly (as given and reversed only does that for two answers); `orders` does not apply
        return [list(range(r, k)) + list(range(r)) for r in range(k)]

    def order(self, parsed, presented, answers):
        if not (presented and None not in presented):
            return super().order(parsed, presented, answers)
        k = len(answers)
        # in a pair's units: two answers' points differ by their log-odds summed over two orders (the
        # k rotations' sum times 2/k), so one tie band means the same for pairs and rankings
        scores = [x * 2 / k for x in rank_scores(presented, k)]
        top = max(scores)
        # an answer within the tie band of the best ties with it: SDF trains on no near-tie and
        # makes no preference pair of one; every answer inside the band is no preference at all
        points = [round(top if top - x <= self.tie_band else x, 4) for x in scores]
        if len(set(points)) == 1:
            points = [0.0] * k
        return sorted(range(k), key=lambda i: (-points[i], _text_hash(answers[i]), i)), points


MODE_CLASSES = {m.name: m for m in (TextMode, ChoiceMode, DebiasedMode)}
