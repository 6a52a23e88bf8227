"""An LLM as judge: listwise ranking, pairwise verdicts and 1-10 scores, position bias controlled.

    judge = Judge(llm, cache_dir="runs/judge")
    judge.rank(context, answers)            -> Ranking   # Borda over >= 2 presentation orders
    judge.pair(context, a, b)               -> Verdict   # asked both ways round
    judge.score(context, answer, reference) -> Score

`context` is one question (str) or an OpenAI-style dialogue ending in a user turn. A reply that
does not parse gets one retry with a format reminder, then is recorded as None with its raw text:
never a default verdict. Every raw reply is cached on disk per call, so a rerun is free and gives
the identical result.
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

from .config import BaizeError
from .engine import Completion
from .schema import repair_torn_tail

__all__ = ["Judge", "Ranking", "Verdict", "Score", "JudgeError", "parse_ranking", "parse_pair", "parse_score",
           "render_context", "borda", "agreement"]


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


# --- parsing ----------------------------------------------------------------------------------------
# Each parser collects every candidate verdict with a priority (how explicit its shape is) and its
# position, then takes the most explicit shape and, among those, the last: judges restate the format
# or change their mind mid-reply, and the final word is the verdict.

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def _clean(text) -> str:
    if not isinstance(text, str):
        return ""
    text = _THINK.sub("", text)  # reasoning models think aloud, often mentioning labels
    text = re.sub(r"(?m)^(\s*)\*\s+", r"\1- ", text)  # a "* item" bullet stays a bullet
    return re.sub(r"[*`]+|(?<!\w)__|__(?!\w)", "", text)  # markdown bold/code around labels


def _best(cands):
    return max(cands, key=lambda c: (c[0], c[1]))[2] if cands else None


def _last_line(text: str) -> tuple[int, str]:
    lines = [(m.start(), m.group()) for m in re.finditer(r"[^\n]*\S[^\n]*", text)]
    return lines[-1] if lines else (0, "")


_TIE = re.compile(r"(?i)^(?:(?:it'?s|it\s+is)\s+)?(?:a\s+)?(?:tie|draw|equal(?:ly\s+good)?)\b")
_LETTER = re.compile(r"^(?:(?i:assistant|answer|response|model|output)\s*)?\[{0,2}\s*([ABC])\s*\]{0,2}(?!\w)")


def _pair_value(s: str):
    """'Assistant B', '[[A]]', 'tie', 'C' -> verdict; anything else None. Letters are upper case only,
    so 'a tie' is a tie and not assistant A."""
    s = s.strip().strip("\"'().:- ")
    if _TIE.match(s):
        return "tie"
    m = _LETTER.match(s)
    return {"A": "A", "B": "B", "C": "tie"}[m.group(1)] if m else None


_PAIR_BRACKET = re.compile(r"\[\[\s*(A|B|C|tie|draw|equal|A\s*=\s*B)\s*\]\]", re.IGNORECASE)
_PAIR_WHOLE = re.compile(r"^[\s\"'(\[]*(?:(?i:assistant|answer|response)\s+)?([ABC])[\s\"').\]]*$"
                         r"|^[\s\"'(\[]*((?i:(?:it'?s\s+|it\s+is\s+)?(?:a\s+)?(?:tie|draw)))[\s\"').!\]]*$")
_PAIR_JSON = re.compile(r"\"(?:winner|verdict|better|choice|preferred|preference|result|final_verdict)\"\s*:"
                        r"\s*\"([^\"]*)\"", re.IGNORECASE)
# "verdict"/"winner" anywhere; the commoner words only with a colon or "is", opening a line or after "final"
_PAIR_KEY = re.compile(r"(?im)(?:\b(?:verdict|winner)\b\s*(?:is\b)?|(?:^[ \t>-]*|\b(?:final|my|overall)\s+)"
                       r"(?:decision|choice|judge?ment|answer|better\s+(?:response|answer|assistant))"
                       r"\s*(?:is\b|(?=[:：=])))\s*[:：=]?\s*([^\n]+)")
_PAIR_PROSE = re.compile(
    r"(?:(?:assistant|answer|response)\s+([AB])\b[^.\n]{0,40}?\b(?:is|was)\s+(?:(?:clearly|slightly|much|far|"
    r"significantly|overall|the|a)\s+)*(?:better|superior|stronger|preferred|preferable|winner|more\s+helpful))"
    r"|(?:\b(?:prefer|choose|pick|select)\s+(?:assistant|answer|response)\s+([AB])\b)"
    r"|(\b(?:it'?s|it\s+is|this\s+is|is)\s+a\s+tie\b|\bequally\s+(?:good|helpful|strong|bad)\b|"
    r"\bneither\s+(?:is|response\s+is|answer\s+is)\s+better\b)", re.IGNORECASE)


def parse_pair(text) -> str | None:
    """A pairwise judge reply -> "A", "B", "tie" ([[C]]) or None when no clear final verdict."""
    text = _clean(text)
    cands = [(3, m.start(), {"A": "A", "B": "B"}.get(m.group(1).upper(), "tie"))
             for m in _PAIR_BRACKET.finditer(text)]
    if m := _PAIR_WHOLE.match(text):  # the whole reply is the verdict, as after the reminder
        cands.append((3, len(text), {"A": "A", "B": "B"}.get(m.group(1), "tie")))
    for rx in (_PAIR_JSON, _PAIR_KEY):
        for m in rx.finditer(text):
            if (v := _pair_value(m.group(1))) is not None:
                cands.append((2, m.start(), v))
    pos, line = _last_line(text)  # free prose counts only as the reply's final line
    for m in _PAIR_PROSE.finditer(line):
        cands.append((1, pos + m.start(), "tie" if m.group(3) else (m.group(1) or m.group(2)).upper()))
    return _best(cands)


_NUM = r"(-?\d+(?:\.\d+)?)"
_SCORE_BRACKET = re.compile(r"\[\[\s*" + _NUM + r"\s*(?:/\s*10)?\s*\]\]")
_SCORE_JSON = re.compile(r"\"(?:score|rating|grade)\"\s*:\s*\"?" + _NUM, re.IGNORECASE)
_SCORE_KEY = re.compile(r"\b(?:rating|score|grade)\b[^:\n\d]{0,20}[:：=]\s*\[{0,2}\s*" + _NUM, re.IGNORECASE)
_SCORE_OUT_OF = re.compile(r"(?<![\d.-])" + _NUM + r"\s*(?:/|out\s+of)\s*10(?!\d|\.\d)", re.IGNORECASE)
_SCORE_ALONE = re.compile(r"^[\s\[(\"']*" + _NUM + r"\s*(?:/\s*10)?[\s\]).\"']*$")


def parse_score(text) -> float | None:
    """A scoring reply -> its 1..10 rating, or None (also when the stated rating is out of range)."""
    text = _clean(text)
    cands = [(3, m.start(), m.group(1)) for m in _SCORE_BRACKET.finditer(text)]
    cands += [(2, m.start(), m.group(1)) for m in _SCORE_JSON.finditer(text)]
    cands += [(2, m.start(), m.group(1)) for m in _SCORE_KEY.finditer(text)]
    cands += [(1, m.start(), m.group(1)) for m in _SCORE_OUT_OF.finditer(text)]
    pos, line = _last_line(text)
    if m := _SCORE_ALONE.match(line.strip()):
        cands.append((0, pos, m.group(1)))
    v = _best(cands)
    if v is None:
        return None
    v = float(v)
    return v if 1.0 <= v <= 10.0 else None  # an out-of-scale rating is a misread, not a 10


def _letters(k: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(k)]


def _numbers(k: int) -> list[str]:
    return [str(i + 1) for i in range(k)]


def _token_classes(labels: list[str]) -> list[re.Pattern]:
    alt = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    bare_letters = all(x.isalpha() for x in labels)
    return [re.compile(r"\[\[\s*(" + alt + r")\s*\]\]", re.IGNORECASE),
            re.compile(r"(?<!\[)\[\s*(" + alt + r")\s*\](?!\])", re.IGNORECASE),
            re.compile(r"\b(?:answer|assistant|response|model|candidate|option)\s*#?\s*(" + alt + r")(?!\w|\.\d)",
                       re.IGNORECASE),
            # bare labels: letters only as capitals standing alone, numbers not part of a decimal or list marker
            re.compile(r"(?<![\w'])(" + alt + r")(?![\w'])" if bare_letters else
                       r"(?<![\w.])(" + alt + r")(?![\w]|\.\d)")]


def _tokens(segment: str, labels: list[str], classes) -> tuple[list[int], re.Pattern | None]:
    """Label references in a segment, from the most explicit kind of reference present."""
    index = {x.upper(): i for i, x in enumerate(labels)}
    for cls in classes:
        found = [index[m.group(1).upper()] for m in cls.finditer(segment)]
        if found:
            return found, cls
    return [], None


def _perm(tokens: list[int], k: int) -> list[int] | None:
    return tokens if len(tokens) == k and sorted(tokens) == list(range(k)) else None


_RANK_KEY = re.compile(r"(?i)\b(?:ranking|ranked|ranks?|order(?:ing)?)\b[^:\n]{0,40}[:：]\s*([^\n]*)")
# only a line that opens with the word can head a list: "ranking, I weighed accuracy first:" must not
_RANK_HEADER = re.compile(r"(?i)^\W*(?:here\s+is\s+|here's\s+)?(?:my\s+|the\s+)?(?:final\s+|overall\s+)?"
                          r"(?:ranking|order(?:ing)?|ranked\s+order)\b[^:\n]{0,40}[:：]\s*$")
_RANK_JSON = re.compile(r"(?i)\"?(?:ranking|order|rank)\"?\s*[:=]\s*\[([^\]\[]*)\]")
_LIST_ITEM = re.compile(r"^\s*(?:(\d+)\s*[.):]|[-•]|(?:rank\s*)?#?(\d+)(?:st|nd|rd|th)?\s*[.):-])\s+(.+?)\s*$",
                        re.IGNORECASE)
_RESIDUE = re.compile(r"[\s,;>=<.\[\]()\"'/-]|\b(?:and|then)\b", re.IGNORECASE)


def _chain(segment: str, labels, classes, k):
    toks, _ = _tokens(segment, labels, classes)
    if "<" in segment and ">" not in segment:
        toks = toks[::-1]  # "worst < ... < best"
    return _perm(toks, k)


def _list_block(lines: list[str], start: int, labels, classes, k, strict: bool):
    """k list items from lines[start:], each naming one response; None unless a full permutation."""
    items = []
    for line in lines[start:]:
        if not line.strip():
            if items:
                break
            continue
        m = _LIST_ITEM.match(line)
        if not m:
            break
        toks, _ = _tokens(m.group(3), labels, classes)
        if not toks or (strict and len(set(toks)) != 1):
            return None  # an item naming several responses is an evaluation, not a rank
        items.append(toks[0])
        if len(items) == k:
            break
    return _perm(items, k)


def _parse_ranking(text: str, k: int, labels: list[str]) -> list[int] | None:
    classes = _token_classes(labels)
    cands = []
    for m in _RANK_JSON.finditer(text):
        if (p := _chain(m.group(1), labels, classes, k)) is not None:
            cands.append((3, m.start(), p))
    lines = text.split("\n")
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    final_block = None
    for i, line in enumerate(lines):
        m = _RANK_KEY.search(line)
        if m:
            rest = m.group(1)
            if rest.strip():
                if (p := _chain(rest, labels, classes, k)) is not None:
                    cands.append((3, offsets[i], p))
            elif _RANK_HEADER.match(line):  # a header: the ranking follows as a list or on the next line
                nxt = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
                if nxt is not None:
                    p = _list_block(lines, nxt, labels, classes, k, strict=False)
                    if p is None and not _LIST_ITEM.match(lines[nxt]):
                        p = _chain(lines[nxt], labels, classes, k)
                    if p is not None:
                        cands.append((3, offsets[i], p))
        if ">" in line or "<" in line:
            if (p := _chain(line, labels, classes, k)) is not None:
                cands.append((2, offsets[i], p))
        if _LIST_ITEM.match(line) and (i == 0 or not _LIST_ITEM.match(lines[i - 1])):
            final_block = i  # where the last list starts
    if final_block is not None:
        end = final_block
        while end + 1 < len(lines) and _LIST_ITEM.match(lines[end + 1]):
            end += 1
        # a list without a ranking header counts only when it closes the reply and each item names one
        # response: a list of per-response comments in order must not read as the identity ranking
        if not "".join(lines[end + 1:]).strip() and end - final_block + 1 == k:
            if (p := _list_block(lines, final_block, labels, classes, k, strict=True)) is not None:
                cands.append((1, offsets[final_block], p))
    pos, line = _last_line(text)
    toks, cls = _tokens(line, labels, classes)
    if _perm(toks, k) is not None and not _RESIDUE.sub("", cls.sub("", line)).strip():
        cands.append((0, pos, toks))  # a bare "2, 1, 4, 3" as the last line
    return _best(cands)


def parse_ranking(text, k: int, labels: list[str] | None = None) -> list[int] | None:
    """A ranking reply -> presentation positions (0-based), best first, as a full permutation of
    range(k); None if any response is missing, repeated or unknown. `labels` are how the prompt
    named the responses (default "1".."k"); a judge that answers in letters for numbered responses
    (or the reverse) is read too, since the i-th letter and the i-th number name the same slot."""
    text = _clean(text)
    labels = list(labels) if labels is not None else _numbers(k)
    if len(labels) != k:
        raise ValueError(f"parse_ranking: {len(labels)} labels for {k} responses")
    p = _parse_ranking(text, k, labels)
    if p is None and k <= 26:
        for other in (_numbers(k), _letters(k)):
            if [x.upper() for x in other] != [x.upper() for x in labels]:
                p = _parse_ranking(text, k, other)
                if p is not None:
                    break
    return p


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
    consistent: bool | None          # both presentations agreed (None when one did not parse)
    verdicts: list[str | None]       # per presentation, mapped back to the arguments
    raw: list[str]
    usage: dict
    cached: bool


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
    probs = ", ".join(f"{o} {x:.3f}" for o, x in zip(opts, lp))
    return f"(chosen by log-probability: {probs})\n{verdict}"


# --- the judge --------------------------------------------------------------------------------------

class Judge:
    """Thread-safe: call rank/pair/score from many threads; the LLM backends batch or pool them."""

    CACHE_FILE = "judge_cache.jsonl"

    def __init__(self, llm, cache_dir=None, max_tokens: int = 512, temperature: float = 0.0,
                 max_unparseable: int | None = 8, orders: int = 2, mode: str = "auto"):
        if orders < 2:
            raise ValueError("Judge: orders must be >= 2 (one order cannot separate position bias from quality)")
        if mode not in ("auto", "text", "choice"):
            raise ValueError(f"Judge: mode {mode!r}: use auto, text or choice")
        # choice: the verdict is the most probable of its fixed options (a local model's next-token
        # log-probs) instead of written text; auto picks it for local models, which can score options
        self.choice = mode == "choice" or (mode == "auto" and hasattr(llm, "option_logprobs"))
        if self.choice and not hasattr(llm, "option_logprobs"):
            raise ValueError(f"Judge: mode choice needs a local model; {getattr(llm, 'name', llm)} only writes text")
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
            if self.choice:
                c = Completion(_choose(self.llm, kind, messages), 0, 0)
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

    @staticmethod
    def _new_usage() -> dict:
        return {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}

    # the three kinds ------------------------------------------------------------------------------
    def pair(self, context, a: str, b: str) -> Verdict:
        ctx = render_context(context)
        usage, raw, verdicts = self._new_usage(), [], []
        for first, second, swap in ((a, b, False), (b, a, True)):
            msgs = [{"role": "system", "content": PAIR_SYSTEM},
                    {"role": "user", "content": PAIR_USER.format(context=ctx, a=first, b=second)}]
            v = self._ask("pair", msgs, parse_pair, PAIR_REMINDER, usage, raw)
            verdicts.append({"A": "B", "B": "A"}.get(v, v) if swap else v)
        if None in verdicts:
            winner, consistent = None, None
        elif verdicts[0] == verdicts[1]:
            winner, consistent = verdicts[0], True
        else:  # the verdict followed the position, not the content
            winner, consistent = "tie", False
        return Verdict(winner, consistent, verdicts, raw, usage, usage["calls"] == 0)

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
        usage, raw, orders = self._new_usage(), [], []
        for perm in _presentations(k, self.orders):
            shown = "\n\n".join(RANK_ANSWER.format(label=labels[p], answer=answers[i]) for p, i in enumerate(perm))
            msgs = [{"role": "system", "content": RANK_SYSTEM},
                    {"role": "user", "content": RANK_USER.format(context=ctx, answers=shown, k=k)}]
            pos = self._ask("rank", msgs, lambda t: parse_ranking(t, k, labels), reminder, usage, raw)
            orders.append(None if pos is None else [perm[p] for p in pos])
        parsed = [o for o in orders if o is not None]
        order, points = borda(parsed, answers) if parsed else (None, None)
        return Ranking(order, points, agreement(parsed, k), orders, raw, usage, usage["calls"] == 0)


def load_judge(cfg, default_cache: Path, llm=None, *, orders: int = 2) -> Judge:
    """The Judge of a stage's config (sdf, eval): its model loaded from `cfg.judge` unless given and
    checked (an unreachable endpoint fails now, in one line), its cache under `default_cache` unless
    --judge-cache says where ('none': off)."""
    if llm is None:
        from .llm import load_llm
        llm = load_llm(cfg.judge, base_url=cfg.judge_base_url or cfg.base_url, api_key=cfg.judge_api_key or cfg.api_key,
                       max_retries=cfg.request_retries, timeout=cfg.timeout,
                       max_batch=max(1, min(64, cfg.concurrency * orders)))
    if hasattr(llm, "check"):
        llm.check()
    cache = None if (cfg.judge_cache or "").lower() == "none" else Path(cfg.judge_cache or default_cache)
    return Judge(llm, cache_dir=cache, max_tokens=cfg.judge_max_tokens, orders=orders,
                 max_unparseable=cfg.max_unparseable, mode=cfg.judge_mode)
