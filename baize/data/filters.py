"""Quality filters for dialogues: one `DialogueFilter` used by `baize collect` and `baize data filter`.

Each rejection gives a reason, the turn at fault (meta.reject_turn) and a detail, so `baize data
stats` can show one example per reason. Shape checks first (unparseable, too_few_turns, short_turn,
role_leakage, refusal), then the text filters for what weak teachers write at scale (echo,
repetition, non_answer, off_topic; each a number where 0 disables it; the reason is that of the
earliest offending turn), then the optional judge, then near-duplicates (they keep state, on the
runner's thread). Stdlib only, but for datasketch's MinHash. What each filter catches and how its
threshold was chosen: docs/filters.md.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import BaizeError, JudgeFields, opt


@dataclass
class _FilterFields:
    min_turns: int = opt(1, "reject dialogues with fewer exchanges")
    min_chars: int = opt(2, "reject dialogues with a turn shorter than this")
    reject_pattern: list[str] = opt([], "extra refusal/boilerplate regex (repeatable)")
    default_reject_patterns: bool = opt(True, "use the built-in refusal patterns")
    near_dup: float = opt(0.85, "reject dialogues this similar (Jaccard, 0 disables) to a kept one")
    echo: float = opt(0.5, "reject a human turn with this fraction of its words copied (in runs of 3+, 10 words or "
                           "more) from earlier AI turns; 0 disables")
    repetition: float = opt(0.3, "reject a turn with this fraction of its word 3-grams already said in the turn or "
                                 "the speaker's earlier turns (a loop); 0 disables")
    non_answer: float = opt(0.2, "reject an AI turn with less than this fraction of its content words new (not in "
                                 "the seed or human turns) that repeats the question's phrases; 0 disables")
    off_topic: int = opt(8, "reject a later exchange with this many content words or more, none of them in the seed "
                            "or the dialogue before it, or a human asking what to talk about; 0 disables")
    judge: str | None = opt(None, "score each dialogue that passes the text filters with this judge model "
                                  "(default, openai:MODEL, a run directory, hf:PATH); off by default")
    min_score: float | None = opt(None, "with --judge: reject dialogues whose lowest AI-turn score (1-10) is below "
                                        "this (reason low_score); unset: only record meta.judge_score")


@dataclass
class FilterConfig(JudgeFields, _FilterFields):
    """The filters' knobs; CollectConfig and DataFilterConfig inherit them, so the flags, defaults
    and saved configs of `collect` and `data filter` are the same fields."""


DEFAULT_REJECT_PATTERNS = [
    r"\bas an ai (language )?model\b",
    r"\bI'?m (sorry|afraid),? but I (can(no|')t|am unable)",
    r"\bI (cannot|can't|am unable to) (help|assist|provide|fulfill|answer)",
    r"\bmy knowledge cutoff\b",
    r"\btrained by openai\b",
    # the same boilerplate from small local teachers ("as a chatbot, I can't engage...")
    r"\bas an? (?:[\w-]+ )?(?:ai|chatbot|language model)\b[^.?!\n]{0,60}?,"
    r"\s*I(?:'m| am)? (?:don't|do not|can't|cannot|not|unable)\b",
    r"\bI(?:'m| am) (?:just |only )?an? (?:ai|chatbot|language model|virtual assistant)\b",
    r"\bI(?:'m| am) (?:not (?:equipped|able|designed|programmed)|unable) to "
    r"(?:assist|help|provide|answer|recommend|give|engage)\b",
    r"\bI (?:don't|do not) have the (?:ability|capability|capacity) to\b",
]


def compile_patterns(cfg: FilterConfig) -> list[re.Pattern]:
    pats = (DEFAULT_REJECT_PATTERNS if cfg.default_reject_patterns else []) + list(cfg.reject_pattern)
    try:
        return [re.compile(p, re.IGNORECASE) for p in pats]
    except re.error as e:
        raise BaizeError(f"--reject-pattern {e.pattern!r}: not a valid regular expression ({e}); fix or drop it") from None


def check_config(cfg: FilterConfig) -> None:
    if cfg.min_score is not None and not cfg.judge:
        raise BaizeError("--min-score needs a judge: add --judge SPEC (e.g. --judge default)")
    if cfg.off_topic < 0:
        raise BaizeError(f"--off-topic {cfg.off_topic}: use a number of content words (0: off)")
    for name in ("echo", "repetition", "non_answer"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise BaizeError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: use a fraction from 0 (off) to 1")


# --- words ---------------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,}).*?(?:^[ \t]*\1[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")

# function words plus the filler of chat answers ("Sure, I'd be happy to answer your question"):
# none of them says what a turn is about
STOPWORDS = frozenset("""
a about above after again against all almost also although always am among an and another any anyone
anything are aren't around as at away back be became because been before being below best better between
both but by can can't cannot could couldn't did didn't do does doesn't doing don't done down during each
either else enough even ever every few for from further get gets getting give given go goes going got
had hasn't has have haven't having he he's her here hers herself him himself his how however i i'd i'll
i'm i've if in into is isn't it it's its itself just keep kind know known let let's like likely little
lot lots made make makes many may maybe me might more most much must my myself need needs neither never
new no nor not nothing now of off often oh ok okay on once one ones only or other others otherwise our
ours ourselves out over own per perhaps please quite rather really right said same say says see seem
seems she should shouldn't since so some someone something sometimes still such sure take than thank
thanks that that's the their theirs them themselves then there there's these they they're thing things
think this those though through thus to too toward towards true under until up upon us use used using
very want wants was wasn't way ways we we're well were weren't what what's whatever when where whether
which while who who's whom whose why will with within without won't would wouldn't yes yet you you'd
you'll you're you've your yours yourself yourselves hello hi hey glad happy help helps helpful answer
answers answered question questions ask asked asking tell telling told explain explained explaining
explanation certainly course absolutely indeed great good here's let's definitely actually basically
""".split())


def words(text: str) -> list[str]:
    """Lowercased words of the text with code removed: code repeats names by nature."""
    text = _INLINE_CODE.sub(" ", _FENCE.sub(" ", text))
    return [w.replace("’", "'") for w in _WORD.findall(text.lower())]


def _stem(w: str) -> str:
    """A crude suffix stemmer: enough to match appear/appearing/appeared and circle/circles."""
    w = w.removesuffix("'s")
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


_STOP_STEMS = frozenset(_stem(w) for w in STOPWORDS)


def _is_content(w: str) -> bool:
    return w not in STOPWORDS and not (w.isdigit() and len(w) <= 2) and len(w) > 1


def content_stems(text: str) -> set[str]:
    return {s for w in words(text) if _is_content(w) and (s := _stem(w)) not in _STOP_STEMS}


def _grams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


# --- the checks ------------------------------------------------------------------------------------
# Each returns (turn index, detail) for the first offending turn, or None. `msgs` are the dialogue's
# user/assistant turns only (system prompts are not the teacher's writing).

def echo(msgs: list[dict], seed: str, threshold: float, min_copied: int = 10):
    seed_tri = set(_grams(words(seed), 3))
    ai_tri: set = set()
    own_tri: set = set()
    for i, m in enumerate(msgs):
        ws = words(m["content"])
        tri = _grams(ws, 3)
        if m["role"] == "assistant":
            ai_tri.update(tri)
            continue
        if i > 0 and len(ws) >= 4:
            covered = [False] * len(ws)
            for j, g in enumerate(tri):
                # the seed's phrases and the human's own earlier words are the human's to repeat
                if g in ai_tri and g not in seed_tri and g not in own_tri:
                    covered[j:j + 3] = [True] * 3
            frac = sum(covered) / len(ws)
            # quoting a short phrase back is fine; a short turn that is nothing but the AI's words is not
            if frac >= threshold and (sum(covered) >= min_copied or frac >= 0.9):
                return i, f"{frac:.2f} of the human turn copied from the AI's"
        own_tri.update(tri)
    return None


# the human line written in the AI's voice: a self-chat teacher that lost track of whom it plays
_HUMAN_AS_AI = re.compile(
    r"\bas an? (?:[\w-]+ )?(?:ai|chatbot|language model)\b[^.?!\n]{0,60}?,\s*I(?:'m| am)? "
    r"(?:don't|do not|can't|cannot|not|unable|have no)\b"
    r"|\bI(?:'m| am) (?:an? )?(?:ai|chatbot|language model|virtual assistant|ai assistant)\b"
    r"|\bI(?:'m| am) (?:always )?(?:designed|programmed|here) to (?:assist|help|chat)\b"
    r"|\bhow (?:can|may) I (?:assist|help) you\b|\bwhat would you like to know\b"
    r"|\bI(?:'d| would|'m| am) (?:be )?(?:more than )?(?:delighted|happy|glad) to (?:help|assist|continue|chat)\b"
    r"|\bI(?:'ll| will) do my best to (?:help|assist|provide|answer)\b"
    r"|\bI(?:'m| am) (?:sorry|afraid),? but I(?:'m| am)? (?:unable|not able) to (?:provide|assist|answer|help)\b"
    r"|\bfeel free to ask\b|\bif you have any (?:more |other |further )?questions\b"
    r"|^\W*(?:that's |what )?an? (?:very |really )?(?:great|good|excellent|insightful) question\b",
    re.IGNORECASE | re.MULTILINE)
# the self-chat prompt's own words in the dialogue: "The human's next message: ..."
# ("The human's next question is: ...", and the prompt's "one question or request" echoed back:
# both in the embedded teacher's kept dialogues of the main job, 2026-12-03)
_PROMPT_LEAK = re.compile(r"\bthe (?:human|ai)'s (?:next )?(?:message|reply|response|question)\b"
                          r"|\bhere(?:'s| is) (?:a |the )?(?:possible )?next question\b"
                          r"|\bone question or request\b", re.IGNORECASE)
# either side narrating the self-chat in the third person: "The human wants to know more about..."
# (the embedded teacher's kept dialogues of a 64-seed run had it; no sample seed says it)
# ("The human will not only decide to continue a conversation...": the main job, 2026-12-03; "will"
# must be followed by a verb of the chat, so "the human will to survive" is no narration)
_NARRATION = re.compile(r"\bthe human (?:wants|is asking|asks|would like|is looking for|has asked|is interested)\b"
                        r"|\bthe human will (?:not |also |now |then |only )*(?:decide|continue|ask|want|convey|respond|"
                        r"reply|say|stop|end|keep|follow)\b", re.IGNORECASE)


def speaks_as_ai(msgs: list[dict], seed: str, threshold: float = 1):
    for i, m in enumerate(msgs):
        if m["role"] == "user" and _HUMAN_AS_AI.search(m["content"]):
            return i, "the human speaks as the AI"
        if m["role"] == "user" and _PROMPT_LEAK.search(m["content"]):
            return i, "the human line is the teacher's note about the dialogue"
        if m["role"] in ("user", "assistant") and _NARRATION.search(m["content"]):
            return i, f"the {'human' if m['role'] == 'user' else 'AI'} line narrates the dialogue (\"the human wants...\")"
    return None


def repetition(msgs: list[dict], seed: str, threshold: float, n: int = 3, min_grams: int = 6):
    seed_list = _grams(words(seed), n)
    seed_grams = set(seed_list)
    seed_loops = {g for g in seed_grams if seed_list.count(g) > 1}  # a seed that repeats itself may be quoted
    said: dict[str, set] = {"user": set(), "assistant": set()}
    for i, m in enumerate(msgs):
        if m["content"].strip() == seed.strip():
            continue  # the seed is the user's data, not the teacher's writing (a joke may repeat on purpose)
        grams = [g for g in _grams(words(m["content"]), n) if not all(w in STOPWORDS or w.isdigit() for w in g)]
        seen = said[m["role"]]
        here: set = set()
        repeated = 0
        for g in grams:
            # naming the topic in every turn is no loop; naming it over and over within one turn is
            repeated += g not in seed_loops and (g in here or (g in seen and g not in seed_grams))
            here.add(g)
        seen |= here
        if len(grams) >= min_grams and repeated / len(grams) >= threshold:
            return i, f"{repeated / len(grams):.2f} of its {n}-grams said before"
        # the same words over and over ("I'm not sure. I'm not sure. ..."): every word a stopword, so the
        # count above skips them; such a phrase said three times or more in one turn is a loop too (0 of
        # the 172,720 question and answer texts of ../shared/data/seeds reach the threshold so)
        every = _grams(words(m["content"]), n)
        thin = Counter(g for g in every if all(w in STOPWORDS or w.isdigit() for w in g))
        again = sum(c - 1 for c in thin.values() if c >= 3)
        if len(every) >= min_grams and again / len(every) >= threshold:
            return i, f"{again / len(every):.2f} of its {n}-grams repeat a phrase of common words said three times or more"
    return None


_VERDICT = frozenset("yes no true false correct incorrect right wrong".split())


def _question_part(text: str) -> str:
    """The request, without the material it comes with ("Paraphrase this:\n\n<text>"): an answer
    that copies the material (a rewrite, an extraction) is doing its job; one that copies the
    request is restating it."""
    return text.strip().split("\n\n", 1)[0]


_ANSWER_FRAME = re.compile(r"^(?:so |well )?(?:the|my) (?:answer|response|reply)(?: to (?:this|that|the|your) question)? is\b")


def non_answer(msgs: list[dict], seed: str, threshold: float, min_content: int = 3, filler_words: int = 8):
    """An AI turn that restates the question: fewer than `threshold` of its content words are new,
    and at least half of them sit in phrases (3+ words) copied from the question; or 80% of its
    words are such phrases; or it has eight words or more without a single content word. Choosing
    among options the question lists, or copying the material it came with, is answering, not
    restating."""
    # phrases are compared stemmed: "Why does public education fail?" copies "Why is public education failing?"
    known, asked = content_stems(_question_part(seed)), set(_grams([_stem(w) for w in words(_question_part(seed))], 3))
    for i, m in enumerate(msgs):
        if m["role"] == "user":
            known |= content_stems(_question_part(m["content"]))
            asked.update(_grams([_stem(w) for w in words(_question_part(m["content"]))], 3))
            continue
        ws, stems = words(m["content"]), content_stems(m["content"])
        # "Sure! I'd be happy to help with that."; "1. 1. 1. 1. 2. 1. 1. 1." (numbers said over and over,
        # which the repetition filter's word 3-grams skip); a list of numbers says each once or twice
        if not stems and (sum(w.isalpha() for w in ws) >= filler_words
                          or len(ws) >= filler_words and len(set(ws)) * 2 < len(ws)):
            return i, "no content words at all"
        copied = [False] * len(ws)
        for j, g in enumerate(_grams([_stem(w) for w in ws], 3)):
            if g in asked:
                copied[j:j + 3] = [True] * 3
        # "The answer to this question is: <the question>": the frame says nothing, so it counts as copied
        frame = _ANSWER_FRAME.match(" ".join(ws))
        if frame:
            n_frame = len(frame.group().split())
            copied[:n_frame] = [True] * n_frame
        if len(ws) >= 4 and sum(copied) >= 0.8 * len(ws):
            return i, f"{sum(copied) / len(ws):.2f} of its words copied from the question"
        if len(stems) < min_content or ws[0] in _VERDICT:
            continue  # too short to tell a restatement from a terse answer; "Yes, ..." answers
        frac = len(stems - known) / len(stems)
        content = [c for w, c in zip(ws, copied) if _is_content(w) and _stem(w) not in _STOP_STEMS]
        if frac < threshold and sum(content) * 2 >= len(content):
            return i, f"only {frac:.2f} of its content words are new: it restates the question"
    return None


# the human asking the AI what to talk about: a self-chat teacher that forgot the seed
_TOPIC_ASK = re.compile(
    r"\b(what|which)('s| is| was| are)? (the|this|our) (main )?(topic|subject)\b"
    r"|\b(tell|remind|give) me (about |more about )?(the|this|our) (topic|subject)\b"
    r"|\bthe topic (is|was|of (this|our|the) conversation)\b"
    r"|\bwhat (would|do) you (like|want) to (talk about|discuss|chat about|explore)\b"
    r"|\bnext topic\b|\btopic you('d| would) like\b"
    r"|\b(do you have|is there) (a|any) (specific |particular )?(topic|subject|question)s? (in mind|you)\b"
    r"|\bwhat('s| is) on your mind\b", re.IGNORECASE)

# words about the chat itself: an exchange of "I'm here to assist with your next question" shares them
# with any dialogue, and is about nothing
_META = frozenset(_stem(w) for w in """ai assistant chatbot bot human conversation chat assist assistance topic discuss
discussion response respond message next continue reply inquiry query information detail provide""".split())


def _topic_stems(text: str) -> set[str]:
    return content_stems(text) - _META


def off_topic(msgs: list[dict], seed: str, min_words: float):
    """Lexical, so lenient: a later exchange is off topic only when it has `min_words` content words
    or more and none of them was in the seed or anything said before ("Where does it happen?" /
    "In the chloroplasts." is a real follow-up that shares no word; short exchanges pass). The
    opening exchange is not checked: an answer may rightly share no word with its question (a list
    of games for "Suggest some games")."""
    before = _topic_stems(seed)
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    for k, i in enumerate(users):
        if _TOPIC_ASK.search(msgs[i]["content"]) and not _TOPIC_ASK.search(seed):
            return i, "the human asks what to talk about"
        end = users[k + 1] if k + 1 < len(users) else len(msgs)
        said = set().union(*(_topic_stems(m["content"]) for m in msgs[i:end]))
        if k > 0 and len(said) >= min_words and not said & before:
            return i, "this exchange mentions nothing of the seed or the dialogue before it"
        before |= said
    return None


# (config field or None: always on, reason, check), in the order that breaks ties on the same turn
TEXT_FILTERS = [("echo", "echo", echo), (None, "role_leakage", speaks_as_ai), ("repetition", "repetition", repetition),
                ("non_answer", "non_answer", non_answer), ("off_topic", "off_topic", off_topic)]

_LEAK = re.compile(r"\[\s*\|?\s*(human|ai|assistant|user)\s*\|?\s*\]|^\s*(human|ai):", re.IGNORECASE | re.MULTILINE)


@dataclass
class Reject:
    reason: str
    turn: int | None = None     # index into the record's messages
    detail: str = ""


def check(msgs: list[dict], cfg: FilterConfig, patterns: list[re.Pattern], seed: str | None = None) -> Reject | None:
    """The first reason to reject this dialogue, with the turn at fault; None keeps it. The shape
    checks come first, in the order collect always used; then the text filters, the reason of the
    earliest offending turn (ties: echo, role_leakage, repetition, non_answer, off_topic)."""
    if not msgs:
        return Reject("unparseable")
    if sum(m["role"] == "assistant" for m in msgs) < cfg.min_turns:
        return Reject("too_few_turns")
    for i, m in enumerate(msgs):
        if len(m["content"].strip()) < cfg.min_chars:
            return Reject("short_turn", i, f"{len(m['content'].strip())} characters")
    for i, m in enumerate(msgs):
        if (leak := _LEAK.search(m["content"])):
            return Reject("role_leakage", i, f"a role marker inside the turn: {leak.group(0).strip()!r}")
    ai = [m["content"].rstrip() for m in msgs if m["role"] == "assistant"]
    human = [m["content"].rstrip() for m in msgs if m["role"] == "user"]
    # the AI asking the questions while the human answers them
    if sum(a.endswith("?") for a in ai) * 2 > len(ai) and sum("?" in h for h in human) * 2 < len(human):
        return Reject("role_leakage", next(i for i, m in enumerate(msgs) if m["role"] == "assistant"),
                      "the AI asks the questions")
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and (hit := next((h for p in patterns if (h := p.search(m["content"]))), None)):
            return Reject("refusal", i, f"matches {hit.group(0)!r}")
    # the text filters see the conversation only; indices map back to the record's messages
    idx = [i for i, m in enumerate(msgs) if m["role"] in ("user", "assistant")]
    turns = [msgs[i] for i in idx]
    seed = seed if seed is not None else next((m["content"] for m in turns if m["role"] == "user"), "")
    found = []
    for rank, (knob, name, fn) in enumerate(TEXT_FILTERS):
        threshold = getattr(cfg, knob) if knob else 1
        if threshold and (hit := fn(turns, seed, threshold)):
            found.append((hit[0], rank, name, hit[1]))
    if found:
        turn, _, name, detail = min(found)
        return Reject(name, idx[turn], detail)
    return None


def reject_reason(msgs: list[dict], cfg: FilterConfig, patterns: list[re.Pattern], seed: str | None = None) -> str | None:
    r = check(msgs, cfg, patterns, seed)
    return r.reason if r else None


def mark_rejected(rec: dict, r: Reject) -> dict:
    meta = rec.setdefault("meta", {})
    meta["reject_reason"] = r.reason
    if r.turn is not None:
        meta["reject_turn"] = r.turn
    if r.detail:
        meta["reject_detail"] = r.detail
    return rec


class NearDup:
    """MinHash LSH over word 3-grams (datasketch): is this dialogue nearly one already kept?"""

    def __init__(self, threshold: float):
        self.lsh = None
        if threshold > 0:
            from datasketch import MinHash, MinHashLSH
            self.lsh = MinHashLSH(threshold=threshold, num_perm=64)
            # every MinHash uses the same permutations; drawing them (numpy RNG) per dialogue cost more
            # than hashing the dialogue, on the collector's main thread
            self._empty = MinHash(num_perm=64)

    def _minhash(self, msgs):
        ws = re.findall(r"\w+", " ".join(m["content"] for m in msgs).lower())
        mh = self._empty.copy()
        mh.update_batch([" ".join(ws[i:i + 3]).encode() for i in range(max(1, len(ws) - 2))])
        return mh

    def match(self, key: str, msgs: list[dict]) -> str | None:
        """The id of a kept dialogue this one nearly repeats; otherwise None, and remember this one."""
        if self.lsh is None:
            return None
        mh = self._minhash(msgs)
        if (hits := self.lsh.query(mh)):
            return str(min(hits))
        if key not in self.lsh:
            self.lsh.insert(key, mh)
        return None

    def seen(self, key: str, msgs: list[dict]) -> bool:
        """True if near a kept dialogue; otherwise remember this one."""
        return self.match(key, msgs) is not None


# --- the judge ---------------------------------------------------------------------------------

def judged_turns(msgs: list[dict]) -> list[tuple[list[dict], str]]:
    """(context, answer) of each AI turn the judge scores, one call each (the plan counts these too)."""
    return [(msgs[:i], m["content"]) for i, m in enumerate(msgs)
            if m["role"] == "assistant" and i > 0 and msgs[i - 1]["role"] == "user"]


def judge_dialogue(judge, msgs: list[dict]) -> tuple[float | None, list, dict]:
    """Score every AI turn in its context: (the lowest score, or None if one did not parse; the
    scores; the judge's usage). Every AI turn is trained on, so the weakest decides."""
    from ..judge.modes import Waits
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
    scores, waits = [], Waits()  # --batch-api: every turn's score goes into the same batch
    for context, answer in judged_turns(msgs):
        with waits:
            s = judge.score(context, answer)
        if waits.pending:
            continue
        for k, v in s.usage.items():  # reasoning and estimated tokens too, where the judge's endpoint has them
            usage[k] = usage.get(k, 0) + v
        scores.append(s.value)
    waits.check()
    low = None if not scores or None in scores else min(scores)
    return low, scores, usage


def apply_judge(rec: dict, judge, cfg: FilterConfig, ledger) -> dict:
    """Score a dialogue that passed the text filters; keep the scores in meta, reject below --min-score."""
    meta = rec.setdefault("meta", {})
    low, scores, usage = judge_dialogue(judge, rec["messages"])
    ledger.add(role="judge", usage=usage)
    meta.update(judge=judge.name, judge_score=low, judge_scores=scores, judge_usage=usage)
    if cfg.min_score is not None:
        if low is None:
            mark_rejected(rec, Reject("unjudged", detail="the judge's verdict did not parse"))
        elif low < cfg.min_score:
            msgs = rec["messages"]
            scored = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and i > 0 and msgs[i - 1]["role"] == "user"]
            worst = scored[scores.index(low)]
            mark_rejected(rec, Reject("low_score", worst, f"judge score {low:g} < {cfg.min_score:g}"))
    return rec


# --- the one filter object ------------------------------------------------------------------------

class DialogueFilter:
    """Everything that decides whether a dialogue is kept, for collect and `data filter` alike:

        filt = DialogueFilter(cfg, out, ledger)   # resumes: dialogues already in `out` count as kept
        rec = filt(rec, seed)                     # in a worker: shape + text filters, then the judge
        reason = filt.accept(key, rec)            # on the runner's thread: near-duplicates (stateful)
        filt.close()

    The text filters are stateless and the judge's calls can overlap the teacher's, so both run in
    the worker; near-duplicates keep state and must see records one at a time, in `accept`."""

    def __init__(self, cfg: FilterConfig, out: Path, ledger, *, judge_llm=None):
        check_config(cfg)
        self.cfg, self.ledger = cfg, ledger
        self.patterns = compile_patterns(cfg)
        self.neardup = NearDup(cfg.near_dup)
        if out.exists():
            from ..schema import read_jsonl, repair_torn_tail
            repair_torn_tail(out)
            for r in read_jsonl(out):
                self.neardup.seen(r["id"], r["messages"])
        self.judge = None
        if cfg.judge:
            from ..judge.core import load_judge
            self.judge = load_judge(cfg, out.with_name(out.stem + ".judge_cache"), judge_llm, orders=2)

    def __call__(self, rec: dict, seed: str | None = None) -> dict:
        if (r := check(rec["messages"], self.cfg, self.patterns, seed)):
            return mark_rejected(rec, r)
        return apply_judge(rec, self.judge, self.cfg, self.ledger) if self.judge else rec

    def accept(self, key: str, rec: dict) -> str | None:
        if (twin := self.neardup.match(key, rec["messages"])):
            rec["meta"]["reject_detail"] = f"nearly {twin}"
            return "near_duplicate"
        return None

    def close(self) -> None:
        if self.judge is not None:
            self.judge.close()
