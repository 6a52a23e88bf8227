"""Parsing judge replies into verdicts: pairwise (A / B / tie), 1-10 scores, rankings.

Robust to the shapes real judges write (`[[A]]`, `Rating: [[7]]`, `Ranking: C > A > D > B`,
`2, 1, 4, 3`, JSON, Markdown and prose around them); anything else is None, never a default.
"""
from __future__ import annotations

import re

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


# --- trust ------------------------------------------------------------------------------------------
# One place decides when a judge's verdicts are not to be trusted, for eval's report, judge-check
# and SDF: each flag is a sentence with its reason, shown as it is.

NEAR_CHANCE = 0.6    # consistency below this: the verdicts follow the position, not the content
MIN_DECISIVE = 0.5   # deciding fewer pairs than this: ties tell nothing about which answer is better
HUMAN_CHANCE = 0.55  # judge-check agreement with humans below this is close to a coin flip
MIN_HUMAN_PAIRS = 20  # fewer decisive pairs than this cannot tell chance from skill


def judge_flags(consistency, decisive_rate, mode=None, agreement=None, decisive=None, agreement_ci=None,
                judged=None, unparseable=None) -> list[str]:
    """Why a judge should not be trusted (empty: no known reason). A debiased judge reads both orders
    together, so its per-order consistency is not a flag: its position prior is cancelled. `judged`
    and `unparseable`: how many verdicts it was asked for and how many of those could not be read."""
    out = []
    if judged and unparseable is not None and unparseable >= judged:
        out.append(f"unreadable: none of its {judged} verdicts could be parsed, so it has told us nothing (its raw "
                   f"replies are kept beside the verdicts): use a stronger judge or another --judge-mode")
    if consistency is not None and consistency < NEAR_CHANCE and mode != "debiased":
        out.append(f"position-biased: the two orders name the same winner on only {consistency:.0%} of the pairs "
                   f"either order decided (below {NEAR_CHANCE:.0%})")
    if decisive_rate is not None and decisive_rate < MIN_DECISIVE:
        out.append(f"undecided: it prefers one answer on only {decisive_rate:.0%} of pairs (below {MIN_DECISIVE:.0%}); "
                   f"ties say nothing about which answer is better")
    ci = agreement_ci if isinstance(agreement_ci, (list, tuple)) and len(agreement_ci) == 2 else None
    of = f" of its {decisive} decisive verdicts" if decisive is not None else " of its decisive verdicts"
    if agreement is not None and ci is not None and ci[0] <= 0.5 <= ci[1]:
        # whatever the point estimate: an interval that holds 50% has not shown the judge beats a coin
        out.append(f"near chance against humans: it agrees with human choices on {agreement:.0%} "
                   f"[{ci[0]:.0%}, {ci[1]:.0%}]{of}; that 95% interval includes 50%, so it is not shown "
                   f"better than chance (see judge-check)")
    elif agreement is not None and (decisive is None or decisive >= MIN_HUMAN_PAIRS) and agreement < HUMAN_CHANCE:
        out.append(f"near chance against humans: it agrees with human choices on {agreement:.0%}{of} "
                   f"(below {HUMAN_CHANCE:.0%}; see judge-check)")
    return out
