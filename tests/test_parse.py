"""parse_transcript on the shapes teachers really write, the quality filters, and NearDup."""
import re

import pytest

from baize.data.collect import CollectConfig, parse_transcript
from baize.data.filters import DEFAULT_REJECT_PATTERNS, NearDup, reject_reason


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


# --- parse_transcript ---------------------------------------------------------------------------

PAPER = (  # what gpt-3.5 writes after the paper's template (greeting echoed, an unfinished Human turn)
    "[Human] Hello!\n[AI] Hi! How can I help you?\n"
    "[Human] What is the best way to learn Python?\n"
    "[AI] Start with the official tutorial, then build small projects.\n"
    "[Human] How long does it take?\n"
    "[AI] A few weeks for the basics, with daily practice.\n"
    "[Human] "
)
EXPECTED = [U("What is the best way to learn Python?"), A("Start with the official tutorial, then build small projects."),
            U("How long does it take?"), A("A few weeks for the basics, with daily practice.")]


def test_paper_shape_drops_greeting_and_unfinished_turn_keeps_last_exchange():
    assert parse_transcript(PAPER) == EXPECTED


def test_last_complete_exchange_is_kept():
    # the original parser lost the final [AI] answer; it must be there
    msgs = parse_transcript("[Human] Q1?\n[AI] Answer one.\n[Human] Q2?\n[AI] Answer two, the last one.")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[-1] == A("Answer two, the last one.")


@pytest.mark.parametrize("text", [
    # extra spaces and blank lines
    "  [Human]    What is the best way to learn Python?   \n\n\n[AI]   Start with the official tutorial, then build small projects.  \n"
    "[ Human ] How long does it take?\n   [ AI ]A few weeks for the basics, with daily practice.",
    # colons after the brackets
    "[Human]: What is the best way to learn Python?\n[AI]: Start with the official tutorial, then build small projects.\n"
    "[Human] : How long does it take?\n[AI] :A few weeks for the basics, with daily practice.",
    # bold markers, with and without colons, inside and outside the bold
    "**[Human]** What is the best way to learn Python?\n**[AI]** Start with the official tutorial, then build small projects.\n"
    "**[Human]:** How long does it take?\n**[AI]**: A few weeks for the basics, with daily practice.",
    "**Human:** What is the best way to learn Python?\n\n**AI:** Start with the official tutorial, then build small projects.\n\n"
    "**Human**: How long does it take?\n\n**AI**: A few weeks for the basics, with daily practice.",
    # the paper's training format
    "[|Human|] What is the best way to learn Python?\n[|AI|] Start with the official tutorial, then build small projects.\n"
    "[|Human|]How long does it take?[|AI|]A few weeks for the basics, with daily practice.\n[|Human|]",
    # line-start names
    "Human: What is the best way to learn Python?\nAI: Start with the official tutorial, then build small projects.\n"
    "Human: How long does it take?\nAI: A few weeks for the basics, with daily practice.\nHuman:",
    # User:/Assistant: and lower case
    "user: What is the best way to learn Python?\nassistant: Start with the official tutorial, then build small projects.\n"
    "USER: How long does it take?\nAssistant: A few weeks for the basics, with daily practice.",
    # chatter before the first marker
    "Sure! Here is the transcript you asked for:\n\n[Human] What is the best way to learn Python?\n"
    "[AI] Start with the official tutorial, then build small projects.\n[Human] How long does it take?\n"
    "[AI] A few weeks for the basics, with daily practice.",
    # the greeting echoed again, in another style, and a dangling human turn with text
    "[Human] Hello!\n[AI] Hi! How can I help you?\n[Human] What is the best way to learn Python?\n"
    "[AI] Start with the official tutorial, then build small projects.\n[Human] How long does it take?\n"
    "[AI] A few weeks for the basics, with daily practice.\n[Human] Thanks, that's all I wanted to know",
], ids=["spaces", "colons", "bold-brackets", "bold-names", "pipes", "name-lines", "user-assistant", "preamble",
        "greeting-and-dangling"])
def test_messy_shapes_parse_to_the_same_dialogue(text):
    assert parse_transcript(text) == EXPECTED


def test_greeting_dropped_only_when_it_is_a_greeting():
    assert parse_transcript("[Human] Hi there!\n[AI] Hello! What can I do?\n[Human] Q?\n[AI] A.") == [U("Q?"), A("A.")]
    # a first question that merely starts with "Hello" is real content
    msgs = parse_transcript("[Human] Hello, what is a monad?\n[AI] A monoid in the category of endofunctors.")
    assert msgs == [U("Hello, what is a monad?"), A("A monoid in the category of endofunctors.")]
    # a transcript that is only the greeting has nothing left
    assert parse_transcript("[Human] Hello!\n[AI] Hi! How can I help you?\n") == []


def test_leading_ai_turn_dropped():
    assert parse_transcript("[AI] Hi! How can I help?\n[Human] Q?\n[AI] A.") == [U("Q?"), A("A.")]


def test_truncated_drops_cut_off_last_ai_turn():
    text = "[Human] Q1?\n[AI] Full answer one.\n[Human] Q2?\n[AI] The answer was cut off in the mid"
    assert parse_transcript(text, truncated=True) == [U("Q1?"), A("Full answer one.")]
    # without the flag the last AI turn is complete and kept
    assert parse_transcript(text)[-1] == A("The answer was cut off in the mid")
    # a transcript cut during a human turn loses only that turn
    assert parse_transcript("[Human] Q1?\n[AI] A1.\n[Human] and what ab", truncated=True) == [U("Q1?"), A("A1.")]


def test_consecutive_same_role_segments_merged():
    text = "[Human] First part.\n[Human] Second part?\n[AI] Answer A.\n[AI] Answer B.\n[Human] Next?\n[AI] Done."
    assert parse_transcript(text) == [U("First part.\nSecond part?"), A("Answer A.\nAnswer B."), U("Next?"), A("Done.")]


def test_empty_segments_ignored():
    assert parse_transcript("[Human]\n[Human] Q?\n[AI]   \n[AI] A.") == [U("Q?"), A("A.")]


def test_word_human_in_prose_is_not_a_marker():
    text = ("[Human] Is the human body mostly water?\n"
            "[AI] Yes. The human body is about 60% water, and a human: well, a person, needs it daily.\n"
            "Human beings lose water by breathing; AI models do not.\n"
            "[Human] Why do humans need so much?\n[AI] Every cell uses it.")
    msgs = parse_transcript(text)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert "Human beings lose water" in msgs[1]["content"]
    assert "a human: well" in msgs[1]["content"]


def test_markdown_at_turn_edges_is_kept():
    text = ("[Human] How do I write a constructor?\n"
            "[AI] **Short answer:** define a method named __init__\n"
            "[Human] And the steps?\n[AI] * subclass\n* call super().__init__\n"
            "**[Human]** Anything else?\n**[AI]** _Note_: read the docs")
    msgs = parse_transcript(text)
    assert msgs[1]["content"] == "**Short answer:** define a method named __init__"
    assert msgs[3]["content"] == "* subclass\n* call super().__init__"
    assert msgs[5]["content"] == "_Note_: read the docs"


def test_nothing_parseable():
    assert parse_transcript("") == []
    assert parse_transcript("I'm sorry, I can't write that transcript.") == []
    assert parse_transcript("[Human] only a question?") == []


# --- reject_reason ------------------------------------------------------------------------------

PATTERNS = [re.compile(p, re.IGNORECASE) for p in DEFAULT_REJECT_PATTERNS]
GOOD = [U("How do plants make food?"), A("By photosynthesis: light, water and CO2 become sugar."),
        U("Where does it happen?"), A("In the chloroplasts of leaf cells.")]


def test_good_dialogue_accepted():
    assert reject_reason(GOOD, CollectConfig(), PATTERNS) is None


def test_unparseable():
    assert reject_reason([], CollectConfig(), PATTERNS) == "unparseable"


def test_too_few_turns():
    cfg = CollectConfig(min_turns=3)
    assert reject_reason(GOOD, cfg, PATTERNS) == "too_few_turns"
    assert reject_reason(GOOD, CollectConfig(min_turns=2), PATTERNS) is None


def test_short_turn():
    msgs = [U("How do plants make food?"), A(".")]
    assert reject_reason(msgs, CollectConfig(), PATTERNS) == "short_turn"
    assert reject_reason(GOOD, CollectConfig(min_chars=25), PATTERNS) == "short_turn"


@pytest.mark.parametrize("leak", ["[Human] and another thing", "ok\n[|AI|] I said", "fine.\nHuman: next question",
                                  "[ AI ] me again"])
def test_role_leakage_markers_in_content(leak):
    msgs = [U("How do plants make food?"), A("By photosynthesis. " + leak)]
    assert reject_reason(msgs, CollectConfig(), PATTERNS) == "role_leakage"


def test_role_leakage_swapped_roles():
    # the AI asks the questions and the human answers them
    msgs = [U("I want to talk about plants."), A("Great! What would you like to know about photosynthesis?"),
            U("How light becomes sugar."), A("Do you know what chlorophyll is?")]
    assert reject_reason(msgs, CollectConfig(), PATTERNS) == "role_leakage"
    # one clarifying question from the AI among normal answers is fine
    ok = [U("How do plants make food?"), A("By photosynthesis."), U("Where?"), A("In leaves. Want more detail?"),
          U("What is chlorophyll?"), A("The green pigment that absorbs light.")]
    assert reject_reason(ok, CollectConfig(), PATTERNS) is None


@pytest.mark.parametrize("answer", [
    "As an AI language model, I do not have opinions on plants.",
    "I'm sorry, but I can't help with that.",
    "I cannot provide medical advice.",
    "My knowledge cutoff is 2021.",
])
def test_refusal(answer):
    msgs = [U("How do plants make food?"), A(answer)]
    assert reject_reason(msgs, CollectConfig(), PATTERNS) == "refusal"
    # without the built-in patterns the same dialogue passes
    assert reject_reason(msgs, CollectConfig(), []) is None


def test_refusal_only_counts_in_assistant_turns():
    msgs = [U("As an AI language model, what do you think?"), A("I think plants are fascinating.")]
    assert reject_reason(msgs, CollectConfig(), PATTERNS) is None


def test_custom_reject_pattern():
    cfg = CollectConfig(reject_pattern=[r"\bdelve\b"])
    pats = [re.compile(p, re.IGNORECASE) for p in DEFAULT_REJECT_PATTERNS + cfg.reject_pattern]
    msgs = [U("How do plants make food?"), A("Let us Delve into photosynthesis.")]
    assert reject_reason(msgs, cfg, pats) == "refusal"
    assert reject_reason(msgs, cfg, PATTERNS) is None


# --- NearDup ------------------------------------------------------------------------------------

def _dialogue(topic, extra=""):
    return [U(f"Can you explain {topic} in detail for a beginner who has never studied it?"),
            A(f"Sure. {topic} is a broad subject with a long history. The main ideas are simple once you see "
              f"a worked example, and practice makes them stick. Start with the basics and build up. {extra}")]


def test_near_duplicate_detected_and_distinct_kept():
    nd = NearDup(0.85)
    assert nd.seen("a", _dialogue("photosynthesis")) is False
    assert nd.seen("b", _dialogue("photosynthesis", "Good luck!")) is True  # one word added
    other = [U("What is the capital of Mongolia and how big is it?"),
             A("Ulaanbaatar; about 1.6 million people live there, nearly half the country.")]
    assert nd.seen("c", other) is False
    assert nd.seen("d", _dialogue("quantum mechanics of superconductors in thin films")) is False
    # a repeat of a kept one is a duplicate too
    assert nd.seen("e", other) is True


def test_near_dup_disabled():
    nd = NearDup(0)
    assert nd.seen("a", _dialogue("x")) is False
    assert nd.seen("b", _dialogue("x")) is False
