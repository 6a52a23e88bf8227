"""The text filters on a table of real-shaped dialogues: degenerate ones (from the embedded teacher's
collection and the issue) must be rejected with the right reason; good ones that quote the other
side, use lists, code blocks, tables and repeated terms must pass. Then the judge filter, and
`baize data filter` / `baize data stats` over files."""
import json
from pathlib import Path

import pytest

from baize.filters import (FilterConfig, NearDup, check, compile_patterns, content_stems, echo, non_answer, off_topic,
                           repetition, words)


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


# --- the table ----------------------------------------------------------------------------------
# (name, seed, messages, expected reason or None)

SOURDOUGH = "How do I make sourdough bread?"
GOOD = [
    ("quotes-a-phrase", SOURDOUGH, [
        U(SOURDOUGH),
        A("Sourdough needs three things: an active starter, flour and water, and time. Mix 100 g of bubbly starter "
          "with 375 g of water and 500 g of bread flour, rest it for 30 minutes, then add 10 g of salt. Over the next "
          "four hours do four sets of stretch and folds, let the dough rise until it has grown by about half, shape "
          "it, and proof it overnight in the fridge. Bake it in a preheated Dutch oven at 250 °C, 20 minutes with the "
          "lid on and 25 minutes with it off."),
        U("You said to do four sets of stretch and folds. What exactly is a stretch and fold, and why does it matter?"),
        A("A stretch and fold is a gentle way to build gluten without kneading: with a wet hand, grab one side of the "
          "dough, stretch it up until it resists, and fold it over the rest; turn the bowl a quarter and repeat on all "
          "four sides. Each set aligns the gluten strands, so the dough holds the gas the starter makes and bakes into "
          "an open, chewy crumb instead of a dense loaf."),
        U("What do you mean by \"proof it overnight in the fridge\"?"),
        A("Proofing is the last rise after shaping. Doing it cold, at about 4 °C for 10 to 14 hours, slows the yeast "
          "while the bacteria keep making acids, so the loaf gets a tangier flavour, and a cold, firm dough is easier "
          "to score and holds its shape in the oven."),
    ], None),
    ("numbered-list", "What are the benefits of advertising on social media?", [
        U("What are the benefits of advertising on social media?"),
        A("Advertising on social media has several benefits:\n\n"
          "1. **Precise targeting**: you can reach people by age, location, interests and behaviour.\n"
          "2. **Low cost**: you can start with a few dollars a day and pay only for clicks or impressions.\n"
          "3. **Measurable results**: every campaign reports reach, clicks, conversions and cost per result.\n"
          "4. **Fast feedback**: you can test two versions of an ad and keep the one that performs better.\n"
          "5. **Engagement**: people can like, share and comment, which spreads the ad further."),
        U("Which platform is best for a small bakery?"),
        A("For a local bakery, Instagram and Facebook usually work best: food photographs well, both platforms let "
          "you target people within a few kilometres of your shop, and they share one ad manager. Post photos of "
          "fresh bread in the morning, run a small ad for a weekly special, and target the area around the bakery."),
    ], None),
    ("parallel-bullets", "Should I learn React or Vue first?", [
        U("Should I learn React or Vue first?"),
        A("Both are good first frameworks. A quick comparison:\n\n"
          "- **React**\n  - Pros: the largest job market, a huge ecosystem, plain JavaScript in JSX.\n"
          "  - Cons: you choose the router, state and build tools yourself.\n"
          "- **Vue**\n  - Pros: gentle learning curve, single-file components, official router and store.\n"
          "  - Cons: fewer jobs in most countries, a smaller ecosystem.\n\n"
          "If you want a job soon, start with React; if you want to build something this weekend, start with Vue."),
        U("I want a job. How long until I'm employable with React?"),
        A("With solid JavaScript already, three to six months of steady practice: build three or four real projects "
          "(a todo app with routing, one that calls a public API, one with authentication), learn React Router, "
          "a data-fetching library and testing, and put the projects on GitHub with a short write-up each."),
    ], None),
    ("code-blocks", "How do I read a file line by line in Python?", [
        U("How do I read a file line by line in Python?"),
        A("Open the file in a `with` block and loop over it; the file object yields one line at a time, so even a "
          "large file is not loaded into memory:\n\n```python\nwith open(\"data.txt\", encoding=\"utf-8\") as f:\n"
          "    for line in f:\n        line = line.rstrip(\"\\n\")\n        print(line)\n```\n\n"
          "The `with` block closes the file for you, even if an exception is raised."),
        U("How do I skip empty lines and count the rest?"),
        A("Strip each line and count only the non-empty ones:\n\n```python\ncount = 0\n"
          "with open(\"data.txt\", encoding=\"utf-8\") as f:\n    for line in f:\n        line = line.strip()\n"
          "        if not line:\n            continue\n        count += 1\nprint(count)\n```\n\n"
          "`line.strip()` removes spaces and the newline, so a line of only whitespace counts as empty too."),
        U("And if I paste this back:\n```python\nwith open(\"data.txt\", encoding=\"utf-8\") as f:\n    for line in f:\n"
          "        line = line.strip()\n```\nwhy does it not print anything?"),
        A("Because nothing in that loop prints: it strips each line and throws the result away. Add a "
          "`print(line)` inside the loop, indented under the `for`."),
    ], None),
    ("repeated-terms", "What is the difference between the iPhone 6s and iPhone 6s Plus?", [
        U("What is the difference between the iPhone 6s and iPhone 6s Plus?"),
        A("The iPhone 6s Plus is the larger of the two. The iPhone 6s has a 4.7-inch screen at 1334x750, while the "
          "iPhone 6s Plus has a 5.5-inch 1080p screen. The iPhone 6s Plus also has optical image stabilisation in its "
          "camera and a bigger battery (2750 mAh against 1715 mAh), so it lasts longer. Otherwise the iPhone 6s and "
          "the iPhone 6s Plus share the A9 chip, 2 GB of RAM, the 12-megapixel camera and 3D Touch."),
        U("Which one is better for one-handed use?"),
        A("The iPhone 6s: at 138 mm tall and 143 g it fits in one hand, while the iPhone 6s Plus is 158 mm and "
          "192 g, so most people need two hands or Reachability to touch the top of its screen."),
    ], None),
    ("pronoun-follow-ups", "What is a red giant?", [
        U("What is a red giant?"),
        A("A red giant is a dying star in a late stage of its life: it has used up the hydrogen in its core, its "
          "outer layers have swollen to tens or hundreds of times the Sun's radius, and its cooler surface glows red."),
        U("Will the Sun become one?"),
        A("Yes, in about five billion years."),
        U("What happens to Earth then?"),
        A("It may be swallowed, or scorched to bare rock if the Sun's mass loss pushes its orbit outward."),
    ], None),
    ("terse-but-real", "Is Java or Python faster?", [
        U("Is Java or Python faster?"),
        A("Java, usually: the JVM compiles hot code to machine code, while CPython interprets bytecode."),
        U("Even for number crunching?"),
        A("No: with NumPy the heavy loops run in C, so Python matches it."),
    ], None),
    ("table", "Compare SQL and NoSQL databases", [
        U("Compare SQL and NoSQL databases"),
        A("| | SQL | NoSQL |\n|---|---|---|\n| Schema | fixed tables and columns | flexible documents or keys |\n"
          "| Scaling | mostly vertical | mostly horizontal |\n| Transactions | ACID across tables | often per "
          "document |\n| Queries | joins in SQL | by key or index, few joins |\n| Examples | PostgreSQL, MySQL | "
          "MongoDB, Cassandra, Redis |\n\nPick SQL when your data is relational and consistency matters; NoSQL "
          "when the shape changes often or the write volume outgrows one machine."),
        U("Can PostgreSQL do documents too?"),
        A("Yes: its jsonb column type stores JSON documents with indexes (GIN) on their fields, so many apps that "
          "reach for MongoDB can keep one PostgreSQL database for both."),
    ], None),
    ("one-turn", "How does Paytm company earn money?", [
        U("How does Paytm company earn money?"),
        A("Paytm earns mostly from payment processing fees charged to merchants, commissions on loans and insurance "
          "it distributes for partner banks, and fees on bill payments, tickets and its payment devices."),
    ], None),
    ("ends-on-a-question-once", "How do plants make food?", [
        U("How do plants make food?"), A("By photosynthesis: light, water and CO2 become sugar."),
        U("Where does it happen?"), A("In the chloroplasts of leaf cells. Want more detail?"),
        U("Yes, what is chlorophyll?"), A("The green pigment in chloroplasts that absorbs red and blue light."),
    ], None),
]

IRAN = ("I'm sorry for the misunderstanding. You are referring to a situation in the context of international "
        "relations and diplomacy. Yes, in the context of the United States and Iran, a deal with Iran to help with a "
        "failed US Afghan policy may have significant implications for Iran's situation in the Middle East.")
SORRY = ("I'm sorry for any misunderstanding, but as an AI designed to assist with this topic, I don't have the "
         "ability to provide real-time translations. You may want to use a dedicated translation service for that.")
IPHONE_LOOP = ("The iPhone 6s and iPhone 6S, both are the iPhone 6, but there are some differences:\n\n"
               "The iPhone 6S is the latest version of the iPhone 6 model, released in May 2020, while the iPhone 6s "
               "was released in May 2021.\n\nThe iPhone 6s is the latest version of the iPhone 6 model, while the "
               "iPhone 6s Plus is the latest version of the iPhone 6 model.")
IPHONE_66S = ("The iPhone 6S and iPhone 6S Plus are both high-end iOS 14 models with the same A9 chip and cameras.")
BAD = [
    # the examples
    ("human-repeats-the-ai", "Will Trump seek a deal with Iran to help with a failed US Afghanistan Policy?", [
        U("Will Trump seek a deal with Iran to help with a failed US Afghanistan Policy?"), A(IRAN), U(IRAN),
        A(IRAN.replace("misunderstanding", "confusion earlier"))], "echo", 2),
    ("human-repeats-the-ai-apology", "How do I say thank you in Japanese?", [
        U("How do I say thank you in Japanese?"), A(SORRY), U(SORRY.replace("You may", "Maybe you could")),
        A("Arigatou gozaimasu is the polite form.")], "echo", 2),
    ("sentence-looped-three-times", "What is the difference between the iPhone 6s and iPhone 6s Plus?", [
        U("What is the difference between the iPhone 6s and iPhone 6s Plus?"),
        A(IPHONE_66S + " " + IPHONE_66S + " The Plus has a bigger screen."),
        U("Which has the better battery?"), A(IPHONE_66S + " The Plus lasts longer.")], "repetition", 1),
    ("loop-within-a-turn", "What is the difference between the iPhone 6s and iPhone 6s Plus?", [
        U("What is the difference between the iPhone 6s and iPhone 6s Plus?"), A(IPHONE_LOOP)], "repetition", 1),
    ("answer-repeated-next-turn", "I woulf like to know wat right does the IRS have to hold my refund?", [
        U("I woulf like to know wat right does the IRS have to hold my refund?"),
        A("The IRS can hold a refund while it verifies your identity or your income, reviews a credit you claimed, "
          "or collects a debt you owe, and it must send you a letter saying which."),
        U("How long can they hold it?"),
        A("The IRS can hold a refund while it verifies your identity or your income, reviews a credit you claimed, "
          "or collects a debt you owe, and it must send you a letter saying which.")], "repetition", 3),
    ("the-question-as-the-answer", "When did crop circles start appearing?", [
        U("When did crop circles start appearing?"), A("When did crop circles appear?")], "non_answer", 1),
    ("answer-is-the-question", "Who is Donald Trump's base? Why is he popular?", [
        U("Who is Donald Trump's base? Why is he popular?"),
        A("The answer to your question is: 'who is Donald Trump's base?'")], "non_answer", 1),
    ("answers-with-nothing", "How safe is it to use your real name on the internet?", [
        U("How safe is it to use your real name on the internet?"),
        A("Sure! I'd be happy to help you with that question. Here is the answer you asked for.")], "non_answer", 1),
    ("human-asks-for-the-topic", "Why do rockets look white?", [
        U("Why do rockets look white?"),
        A("Most rockets are painted white, or covered in white insulation, to reflect sunlight and keep the "
          "cryogenic propellants from boiling off."),
        U("Can you tell me what the topic of this conversation is?"),
        A("We are talking about why rockets look white.")], "off_topic", 2),
    ("drifts-away", "England v. Wales - who will win?", [
        U("England v. Wales - who will win?"),
        A("England are favourites: they have won eight of the last ten matches against Wales at Twickenham."),
        U("The human is now ready to continue the conversation. What would you like to discuss next?"),
        A("What a delightful question! I'd love to explore a few more ideas in the realm of cooking, gardening "
          "or travel. What do you have in mind for today?")], "off_topic", 2),
    ("human-speaks-as-the-ai", "I had 5 lakhs in my savings account, can I deposit 2.5 now?", [
        U("I had 5 lakhs in my savings account, can I deposit 2.5 now?"),
        A("Yes. A savings account has no upper limit on deposits, but a cash deposit of 2.5 lakh or more needs your "
          "PAN, and the bank reports cash deposits above 10 lakh a year to the tax department."),
        U("I'm really sorry for any confusion, but as a chatbot, I don't have the capability to perform advanced "
          "calculations."),
        A("No problem: there is nothing to calculate; deposit it with your PAN.")], "role_leakage", 2),
]


def _run(seed, msgs, **kw):
    cfg = FilterConfig(**kw)
    return check(msgs, cfg, compile_patterns(cfg), seed)


@pytest.mark.parametrize("name,seed,msgs,expected", GOOD, ids=[g[0] for g in GOOD])
def test_good_dialogues_pass(name, seed, msgs, expected):
    assert _run(seed, msgs) is None


@pytest.mark.parametrize("name,seed,msgs,reason,turn", BAD, ids=[b[0] for b in BAD])
def test_degenerate_dialogues_rejected_with_reason(name, seed, msgs, reason, turn):
    r = _run(seed, msgs)
    assert r is not None and (r.reason, r.turn) == (reason, turn), r
    assert r.detail


@pytest.mark.parametrize("knob", ["echo", "repetition", "non_answer", "off_topic"])
def test_each_filter_can_be_turned_off(knob):
    hits = [b for b in BAD if b[3] == knob]
    assert hits
    for name, seed, msgs, reason, _ in hits:
        r = _run(seed, msgs, **{knob: 0})
        assert r is None or r.reason != reason, name


def test_thresholds_are_strict_enough_and_loose_enough():
    """Every good dialogue scores clearly on the good side of each default (margins, not luck)."""
    cfg = FilterConfig()
    for name, seed, msgs, _ in GOOD:
        turns = [m for m in msgs if m["role"] != "system"]
        assert echo(turns, seed, cfg.echo - 0.15) is None, name
        assert repetition(turns, seed, cfg.repetition - 0.1) is None, name
        assert non_answer(turns, seed, cfg.non_answer + 0.05) is None, name
        assert off_topic(turns, seed, cfg.off_topic) is None, name


def test_words_ignore_code_and_stem_crudely():
    assert words("Run `pip install x` then:\n```bash\npip install x\npip install x\n```\nDone.") == ["run", "then", "done"]
    assert content_stems("Crop circles started appearing") == content_stems("crop circle start appear")
    assert content_stems("What is the answer to your question?") == set()


def test_seed_defaults_to_the_first_human_turn():
    name, seed, msgs, reason, turn = next(b for b in BAD if b[0] == "the-question-as-the-answer")
    cfg = FilterConfig()
    r = check(msgs, cfg, compile_patterns(cfg))
    assert (r.reason, r.turn) == (reason, turn)


def test_system_turns_are_not_judged():
    name, seed, msgs, _ = GOOD[0]
    sys_msgs = [{"role": "system", "content": "You are Baize."}] + msgs
    assert _run(seed, sys_msgs) is None
    name, seed, msgs, reason, turn = BAD[0]
    r = _run(seed, [{"role": "system", "content": "You are Baize."}] + msgs)
    assert (r.reason, r.turn) == (reason, turn + 1)  # the index is into the record's messages


def test_bad_config_is_one_line_naming_the_fix():
    from baize.config import BaizeError
    from baize.filters import check_config
    with pytest.raises(BaizeError, match="--min-score needs a judge: add --judge"):
        check_config(FilterConfig(min_score=6))
    with pytest.raises(BaizeError, match="--echo 1.5"):
        check_config(FilterConfig(echo=1.5))
    with pytest.raises(BaizeError, match="not a valid regular expression"):
        compile_patterns(FilterConfig(reject_pattern=["(unclosed"]))


def test_near_dup_match_names_the_kept_twin():
    msgs = GOOD[0][2]
    nd = NearDup(0.85)
    assert nd.match("a", msgs) is None
    assert nd.match("b", msgs) == "a"
