"""The text filters on a table of real-shaped dialogues: degenerate ones (from the embedded teacher's
collection and the issue) must be rejected with the right reason; good ones that quote the other
side, use lists, code blocks, tables and repeated terms must pass. Then the judge filter, and
`baize data filter` / `baize data stats` over files."""
import json
from pathlib import Path

import pytest

from baize.data.filters import (
    FilterConfig,
    NearDup,
    check,
    compile_patterns,
    content_stems,
    echo,
    non_answer,
    off_topic,
    repetition,
    words,
)


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


# --- the table ----------------------------------------------------------------------------------
# (name, seed, messages, expected reason or None)

SOURDOUGH = "How do I make sourdough bread?"
GOOD = [
    ("the-human-will-as-a-noun", "Is the human will to survive stronger than reason?", [
        U("Is the human will to survive stronger than reason?"),
        A("Often, yes: in danger the drive to stay alive can override careful reasoning, which is why people act "
          "before they think in emergencies."),
        U("Can training change how the drive to survive overrides reason?"),
        A("To a degree: drills make the right action automatic, so the drive to survive and reason point the same "
          "way.")],
     None),
    ("numbers-only-answer", "List the first ten prime numbers and the first ten Fibonacci numbers.", [
        U("List the first ten prime numbers and the first ten Fibonacci numbers."),
        A("2, 3, 5, 7, 11, 13, 17, 19, 23, 29\n\n1, 1, 2, 3, 5, 8, 13, 21, 34, 55")], None),
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
GOOD += [
    ("answer-frame-with-an-answer", "What is six times seven?", [
        U("What is six times seven?"), A("The answer is forty-two: six sevens, or seven sixes, make 42.")], None),
    ("human-repeats-a-phrase-twice", "Is it too late to learn piano at forty?", [
        U("Is it too late to learn piano at forty?"),
        A("No. Adults learn faster at first than children do, because they practise with a plan."),
        U("Really? Not too late, not even for me? How many hours a week?"),
        A("Three or four hours a week, spread over short daily sessions, gets most adults playing simple pieces "
          "within a year.")], None),
]
BAD = [
    # the examples
    ("human-repeats-the-ai", "Will Trump seek a deal with Iran to help with a failed US Afghanistan Policy?", [
        U("Will Trump seek a deal with Iran to help with a failed US Afghanistan Policy?"), A(IRAN), U(IRAN),
        A(IRAN.replace("misunderstanding", "confusion earlier"))], "echo", 2),
    # the AI's apology is itself boilerplate now (the shape checks come first, at the earlier turn)
    ("human-repeats-the-ai-apology", "How do I say thank you in Japanese?", [
        U("How do I say thank you in Japanese?"), A(SORRY), U(SORRY.replace("You may", "Maybe you could")),
        A("Arigatou gozaimasu is the polite form.")], "refusal", 1),
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
    # the embedded teacher in the main job (2026-12-06): a frame around the question is no answer, and a
    # human line of common words said over and over is a loop the content-word 3-grams cannot see
    ("answer-frame-around-the-question", "Why do people love Pokemon go so much? What makes it fun?", [
        U("Why do people love Pokemon go so much? What makes it fun?"),
        A('The answer to this question is: "What makes it fun."')], "non_answer", 1),
    ("human-says-the-same-words-over-and-over", "Why do people love Pokemon go so much? What makes it fun?", [
        U("Why do people love Pokemon go so much? What makes it fun?"),
        A("Catching creatures in the real streets around you turns a walk into a treasure hunt, and raids "
          "make strangers team up."),
        U("I'm not sure, I'm not sure.  I'm not sure. I'm not sure.  I'm not sure.  I'm not sure.  The next question:"),
        A("Take your time: the game rewards short daily walks more than long sessions.")], "repetition", 2),
    # the embedded teacher in the main job (2026-12-01): a numeric loop has no 3-gram of words to repeat
    ("numbers-in-a-loop", "How long does it take to get an offer?", [
        U("How long does it take to get an offer?"),
        A("1. 1. 1. 1.\n2. 1. 1. 1.\n3. 1. 1. 1.\n4. 1. 1. 1.\n5. 1. 1. 1.\n6. 1. 1. 1.")], "non_answer", 1),
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
    ("human-offers-to-help", "What is pure consciousness?", [
        U("What is pure consciousness?"),
        A("In several contemplative traditions, pure consciousness is awareness without any object: no thought, "
          "perception or feeling, only the knowing itself, which meditators describe as still and boundless."),
        U("I'd be delighted to continue the conversation. If you have a question or want to explore the nuances of "
          "consciousness further, I'm always happy to chat. What's the next topic you'd like to discuss?"),
        A("Tell me how meditation is supposed to reach it.")], "role_leakage", 2),
    ("prompt-leak", "Why is India failing so miserably at the Rio Olympics?", [
        U("Why is India failing so miserably at the Rio Olympics?"),
        A("India sent its largest team ever, but funding reaches few sports, and most athletes train without "
          "foreign coaching or competition exposure."),
        U("The human's next message: How much does India spend on sport per athlete?"),
        A("Far less than the medal-winning nations: a few hundred crore rupees a year across all sports.")],
     "role_leakage", 2),
    # the embedded teacher, the main job of 2026-12-03: kept until the prompt-leak pattern knew them
    ("prompt-leak-next-question", "When did crop circles start appearing?", [
        U("When did crop circles start appearing?"),
        A("Reports go back to the 1970s in southern England, and a few folk tales describe older ones."),
        U("The human's next question is: What's the origin story behind crop circles?"),
        A("Two men, Doug Bower and Dave Chorley, said in 1991 that they had made many of them with planks.")],
     "role_leakage", 2),
    ("human-narrates-the-chat", "Will Trump seek a deal with Iran?", [
        U("Will Trump seek a deal with Iran?"),
        A("He said he would talk without preconditions, while keeping the sanctions in place."),
        U("The human will not only decide to continue a conversation but to convey their decision to the AI."),
        A("Understood.")],
     "role_leakage", 2),
    ("prompt-echo", "Will Trump seek a deal with Iran?", [
        U("Will Trump seek a deal with Iran?"),
        A("He said he would talk without preconditions, while keeping the sanctions in place."),
        U("One question or request, no question. How about this: how do you know a recent event is occurring?"),
        A("From dated reports in several independent news sources.")],
     "role_leakage", 2),
    # the embedded teacher, 64-seed run: the AI narrates the self-chat instead of answering
    ("ai-narrates-the-chat", "How does Paytm company earn money?", [
        U("How does Paytm company earn money?"),
        A("Paytm earns from merchant fees on payments, commissions on bills and tickets, lending through partner "
          "banks, and advertising in its app."),
        U("Which of these brings in the most?"),
        A("The human wants to know more about the paytm business model, but they want to know more about the "
          "paytm business model that doesn't involve earning money.")], "role_leakage", 3),
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
    from baize.data.filters import check_config
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


# --- in collect -----------------------------------------------------------------------------------

def _records(path):
    from baize.schema import read_jsonl
    return list(read_jsonl(path)) if Path(path).exists() else []


def _seed_of(messages):
    import re
    return re.search(r"topic: '(.*?)'\.", "\n".join(m["content"] for m in messages), re.DOTALL).group(1)


def test_collect_rejects_degenerate_turns_with_reason_and_turn(tmp_path):
    """A weak teacher in turns mode: for some seeds the human repeats the AI, the AI loops, or the
    AI gives the question back; the rest are fine."""
    from baize.data.collect import CollectConfig, collect
    from baize.data.seeds import load_seeds
    from baize.schema import sidecar
    from baize.testing import FakeLLM
    seeds = load_seeds("quora", limit=6)
    answer = {s.text: f"A real answer about {s.text}, with facts, numbers and one example." for s in seeds}
    loop = "Paris is the capital of France and its largest city by far. "

    def teacher(msgs):
        topic = _seed_of(msgs)
        human = "playing a curious human" in msgs[0]["content"]
        n = msgs[-1]["content"].count("[AI]") if human else sum(m["role"] == "assistant" for m in msgs)
        if topic == seeds[0].text and human:  # echo: the human writes the AI's last answer again
            return answer[topic]
        if topic == seeds[1].text and not human:
            return loop * 4
        if topic == seeds[2].text and not human and n == 0:
            return topic  # the question as the answer
        if human:
            return "[END]" if n >= 2 else "Which part of that matters most in practice, and why?"
        return answer[topic] if n == 0 else f"The part that matters most is the second one, point {n}: it saves time."
    cfg = CollectConfig(seeds="quora", limit=6, out=str(tmp_path / "d.jsonl"), mode="turns", max_turns=3,
                        progress=False, concurrency=3)
    s = collect(cfg, FakeLLM(teacher))
    rej = {r["id"]: r["meta"] for r in _records(sidecar(cfg.out, "rejected"))}
    assert s.kept == 3 and s.rejected == {"echo": 1, "repetition": 1, "non_answer": 1}
    assert (rej[seeds[0].id]["reject_reason"], rej[seeds[0].id]["reject_turn"]) == ("echo", 2)
    assert (rej[seeds[1].id]["reject_reason"], rej[seeds[1].id]["reject_turn"]) == ("repetition", 1)
    assert (rej[seeds[2].id]["reject_reason"], rej[seeds[2].id]["reject_turn"]) == ("non_answer", 1)
    assert all(m["reject_detail"] for m in rej.values())
    # each filter off: that dialogue is kept
    cfg2 = CollectConfig(**{**vars(cfg), "out": str(tmp_path / "off.jsonl"), "echo": 0, "repetition": 0,
                            "non_answer": 0})
    assert collect(cfg2, FakeLLM(teacher)).kept == 6


def _judge_reply(messages):
    """A judge that rates an answer 2 when it says 'weak', else 8 (and records how many run at once)."""
    import time
    with _judge_reply.lock:
        _judge_reply.now += 1
        _judge_reply.most = max(_judge_reply.most, _judge_reply.now)
    time.sleep(0.02)
    with _judge_reply.lock:
        _judge_reply.now -= 1
    from baize.judge.core import SCORE_USER
    from baize.testing import template_regex
    answer = template_regex(SCORE_USER).match(messages[-1]["content"])["answer"]
    return "Short explanation.\nRating: [[" + ("2" if "weak" in answer else "8") + "]]"


def _reset_judge():
    import threading
    _judge_reply.lock, _judge_reply.now, _judge_reply.most = threading.Lock(), 0, 0


def test_collect_judge_scores_each_ai_turn_and_rejects_low_ones(tmp_path):
    from baize.data.collect import CollectConfig, collect
    from baize.data.seeds import load_seeds
    from baize.schema import sidecar
    from baize.testing import FakeLLM, canned_transcript
    seeds = load_seeds("quora", limit=8)
    weak = {seeds[1].text, seeds[4].text}

    def teacher(msgs):
        topic = _seed_of(msgs)
        text = canned_transcript(topic)
        if topic in weak:  # the second answer is the weak one
            text = text.replace("Start with an introductory text", "A weak and vague reply about an introductory text")
        if topic == seeds[6].text:
            return "[Human] Tell me?\n[AI] ok\n"  # short_turn: rejected before any judge call
        return text
    _reset_judge()
    judge = FakeLLM(_judge_reply, name="fake-judge", prompt_tokens=100, completion_tokens=10)
    cfg = CollectConfig(seeds="quora", limit=8, out=str(tmp_path / "d.jsonl"), progress=False, concurrency=4,
                        min_chars=3, judge="fake-judge", min_score=5, judge_price_in=1.0, judge_price_out=2.0)
    s = collect(cfg, FakeLLM(teacher), judge_llm=judge)
    kept, rej = _records(cfg.out), _records(sidecar(cfg.out, "rejected"))
    assert s.kept == 5 and s.rejected == {"low_score": 2, "short_turn": 1}
    assert len(judge.calls) == 7 * 2  # two AI turns per judged dialogue; the short one was never judged
    assert _judge_reply.most > 1  # judged in the workers, concurrently
    for r in kept:
        assert r["meta"]["judge_score"] == 8 and r["meta"]["judge_scores"] == [8, 8]
        assert r["meta"]["judge"] == "fake-judge" and r["meta"]["judge_usage"]["calls"] == 2
        assert r["meta"]["usage"]["calls"] == 1  # the teacher's usage is its own
    low = {r["id"]: r["meta"] for r in rej if r["meta"]["reject_reason"] == "low_score"}
    assert set(low) == {seeds[1].id, seeds[4].id}
    for m in low.values():
        assert m["judge_score"] == 2 and m["judge_scores"] == [8, 2] and m["reject_turn"] == 3
        assert m["reject_detail"] == "judge score 2 < 5"
    assert s.ledger["judge"]["calls"] == 14 and s.ledger["teacher"]["calls"] == 8
    assert s.ledger["judge"]["cost"] == pytest.approx(14 * (100 * 1.0 + 10 * 2.0) / 1000)
    # every verdict is cached beside the output
    assert (tmp_path / "d.judge_cache" / "judge_cache.jsonl").read_text().count("\n") == 14
    # the judge's context is the dialogue up to the human turn it answers
    ctx = [c for c in judge.calls if "What should I read next" in c[-1]["content"]]
    assert ctx and all("[The Start of the Conversation]" in c[-1]["content"] for c in ctx)


def test_collect_judge_without_min_score_only_records(tmp_path):
    from baize.data.collect import CollectConfig, collect
    from baize.testing import FakeLLM
    _reset_judge()
    cfg = CollectConfig(seeds="quora", limit=3, out=str(tmp_path / "d.jsonl"), progress=False, judge="j")
    s = collect(cfg, FakeLLM(), judge_llm=FakeLLM(_judge_reply, name="j"))
    assert s.kept == 3 and all(r["meta"]["judge_score"] == 8 for r in _records(cfg.out))


def test_min_score_without_judge_is_one_line(tmp_path):
    from baize.cli import main
    err = pytest.importorskip("io").StringIO()
    import contextlib
    with contextlib.redirect_stderr(err):
        rc = main(["collect", "--limit", "1", "--out", str(tmp_path / "d.jsonl"), "--min-score", "6", "--no-progress"])
    assert rc == 2 and err.getvalue().strip() == "baize: error: --min-score needs a judge: add --judge SPEC (e.g. --judge default)"


# --- baize data filter --------------------------------------------------------------------------

def _file_of_table(path):
    from baize.schema import write_jsonl
    recs = [{"id": f"good-{name}", "messages": msgs, "meta": {"seed": seed, "source": "table"}}
            for name, seed, msgs, _ in GOOD]
    recs += [{"id": f"bad-{name}", "messages": msgs, "meta": {"seed": seed, "source": "table"}}
             for name, seed, msgs, _, _ in BAD]
    recs.append({**recs[0], "id": "good-again"})  # a near-duplicate of a kept one
    recs.append({"id": "no-transcript", "messages": [], "meta": {"raw": "Sorry.", "reject_reason": "unparseable"}})
    write_jsonl(path, recs)
    return recs


def test_data_filter_cleans_a_file_without_a_teacher(tmp_path):
    from baize.data.commands import DataFilterConfig, filter_file
    from baize.schema import sidecar
    recs = _file_of_table(tmp_path / "in.jsonl")
    cfg = DataFilterConfig(input=str(tmp_path / "in.jsonl"), out=str(tmp_path / "clean.jsonl"), progress=False)
    s = filter_file(cfg)
    kept, rej = _records(cfg.out), _records(sidecar(cfg.out, "rejected"))
    assert sorted(r["id"] for r in kept) == sorted(f"good-{g[0]}" for g in GOOD)
    want = {f"bad-{b[0]}": b[3] for b in BAD} | {"good-again": "near_duplicate", "no-transcript": "unparseable"}
    assert {r["id"]: r["meta"]["reject_reason"] for r in rej} == want
    assert next(r for r in rej if r["id"] == "good-again")["meta"]["reject_detail"] == f"nearly good-{GOOD[0][0]}"
    assert s.kept == len(GOOD) and sum(s.rejected.values()) == len(BAD) + 2
    assert kept[0] == next(r for r in recs if r["id"] == kept[0]["id"])  # kept records unchanged
    # a rerun has nothing to do; the input is never rewritten
    assert filter_file(cfg).skipped == len(recs)
    # the rejected file filtered again with echo off: the echoes come back
    cfg2 = DataFilterConfig(input=str(sidecar(cfg.out, "rejected")), out=str(tmp_path / "second.jsonl"), echo=0,
                            near_dup=0, progress=False)
    filter_file(cfg2)
    again = {r["id"]: r["meta"] for r in _records(cfg2.out)}
    assert list(again) == ["good-again"] and "reject_reason" not in again["good-again"]  # no old verdict carried
    second = {r["id"]: r["meta"]["reject_reason"] for r in _records(sidecar(cfg2.out, "rejected"))}
    # the human who copies the AI's answer: with echo off, the AI repeating itself next is the reason
    assert second["bad-human-repeats-the-ai"] == "repetition" and "echo" not in second.values()


def test_data_filter_with_judge_is_cached(tmp_path):
    from baize.data.commands import DataFilterConfig, filter_file
    from baize.testing import FakeLLM
    _file_of_table(tmp_path / "in.jsonl")
    _reset_judge()
    judge = FakeLLM(_judge_reply, name="j")
    cache = str(tmp_path / "cache")
    cfg = DataFilterConfig(input=str(tmp_path / "in.jsonl"), out=str(tmp_path / "a.jsonl"), judge="j", min_score=5,
                           judge_cache=cache, progress=False, concurrency=4)
    s = filter_file(cfg, judge_llm=judge)
    n_ai = sum(m["role"] == "assistant" for g in GOOD for m in g[2])
    assert len(judge.calls) == n_ai and s.ledger["judge"]["calls"] == n_ai and s.kept == len(GOOD)
    assert all(r["meta"]["judge_score"] == 8 for r in _records(cfg.out))
    again = FakeLLM(_judge_reply, name="j")
    cfg2 = DataFilterConfig(**{**vars(cfg), "out": str(tmp_path / "b.jsonl")})
    assert filter_file(cfg2, judge_llm=again).kept == len(GOOD) and again.calls == []  # all from the cache


def test_data_filter_cli(tmp_path, capsys):
    from baize.cli import main
    from baize.schema import sidecar
    _file_of_table(tmp_path / "in.jsonl")
    out = tmp_path / "clean.jsonl"
    assert main(["data", "filter", str(tmp_path / "in.jsonl"), "--out", str(out), "--no-progress",
                 "--repetition", "0"]) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "rejected: echo" in printed and "rejected: repetition" not in printed
    assert json.loads(sidecar(out, "config.json").read_text())["repetition"] == 0
    assert main(["data", "filter", str(tmp_path / "in.jsonl"), "--no-progress"]) == 2
    assert "give --out OUT" in capsys.readouterr().err
    assert main(["data", "filter", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "in.jsonl")]) == 2
    assert "is the input file" in capsys.readouterr().err


def test_a_seed_that_repeats_itself_may_be_quoted():
    seed = ("Tell me why this joke is not funny.\n\nKnock knock!\nWho is there?\nBanana.\nBanana who?\nKnock knock!\n"
            "Who is there?\nBanana.\nBanana who?\nKnock knock!\nWho is there?\nOrange.\nOrange who?\n"
            "Orange you glad I did not say banana?")
    msgs = [U("Can you explain this?\n\n" + seed.split("\n\n", 1)[1]),
            A("It relies on one weak pun, orange / aren't, and makes you sit through the banana lines to get there.")]
    assert _run(seed, msgs) is None
    loop = "The punchline is a pun on the word orange and aren't. "
    assert _run(seed, [msgs[0], A(loop * 3)]).reason == "repetition"


@pytest.mark.parametrize("answer", [
    "I'm sorry for your loss, but as a chatbot, I can't engage in conversations about that.",
    "What a challenging question! I'm an AI designed to assist and provide information.",
    "I'm not equipped to recommend books, but here are some.",
    "As an AI designed to assist with this topic, I don't have the ability to provide real-time translations.",
])
def test_small_teachers_boilerplate_is_a_refusal(answer):
    r = _run("How do I improve my English?", [U("How do I improve my English?"), A(answer)])
    assert (r.reason, r.turn) == ("refusal", 1)


def test_question_restated_in_other_words_is_a_non_answer():
    r = _run("Why is public education failing?", [U("Why is public education failing?"),
                                                  A("Why does public education fail?")])
    assert (r.reason, r.turn) == ("non_answer", 1)
