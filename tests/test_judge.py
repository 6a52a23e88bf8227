"""The judge: parsers on real-world reply shapes, position bias cancelled (pair and Borda ranking),
retry-once and the unparseable limit, the on-disk cache, dialogue contexts and thread safety.
All offline: FakeLLM judges that read the prompt they are shown."""
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pytest

from baize.config import BaizeError
from baize.judge.core import (
    PAIR_REMINDER,
    SCORE_REMINDER,
    Judge,
    JudgeError,
    Ranking,
    Score,
    Verdict,
    parse_pair,
    parse_ranking,
    parse_score,
)
from baize.llm.base import LLM, TransientLLMError
from baize.testing import FakeLLM

# --- parsers ---------------------------------------------------------------------------------------

PAIRS = [
    ("[[A]]", "A"),
    ("[[B]]", "B"),
    ("[[C]]", "tie"),
    ("[[tie]]", "tie"),
    ("Assistant A is more detailed, but B is accurate.\n\nFinal verdict: [[B]]", "B"),
    ('Output "[[A]]" if A is better... Both are fine, but B is more precise. [[B]]', "B"),
    ("Verdict: A", "A"),
    ("**Final Verdict:** **Assistant B**", "B"),
    ("**Assistant B** is better.", "B"),
    ("Both answers cover the basics.\nOverall, Assistant A is clearly better.", "A"),
    ('{"winner": "B", "reason": "more accurate"}', "B"),
    ('{"verdict": "tie"}', "tie"),
    ("B", "B"),
    ("tie", "tie"),
    ("It's a tie.", "tie"),
    ("My final verdict is Assistant A.", "A"),
    ("Final verdict: a tie", "tie"),
    ("<think>[[A]] looks tempting</think>\nAfter reflection: [[B]]", "B"),
    ("Both responses are equally good.", "tie"),
    ("[[a]]", "A"),
    ("Answer: B", "B"),
    ("The winner is Assistant A.", "A"),
    ("Answer B is worse than Answer A.", None),
    ("", None),
    ("I think both answers have merits and drawbacks.", None),
    ("Assistant A is better in style.\nLet me know if you need more help!", None),
    ("Verdict: it depends on what the user wants", None),
    ("[[D]]", None),
]


@pytest.mark.parametrize("text,want", PAIRS)
def test_parse_pair(text, want):
    assert parse_pair(text) == want


SCORES = [
    ("Rating: [[7]]", 7.0),
    ("The answer is good.\n\nRating: [[8.5]]", 8.5),
    ("Rating: [[11]]", None),
    ("Rating: [[0]]", None),
    ("Score: 7/10", 7.0),
    ("I would rate it 8 out of 10.", 8.0),
    ("7.5", 7.5),
    ("  [[9]]  ", 9.0),
    ('{"score": 8}', 8.0),
    ('{"rating": "6", "explanation": "ok"}', 6.0),
    ("**Rating:** 4", 4.0),
    ("Rating: [[3]] ... on reflection the mistakes are minor. Rating: [[6]]", 6.0),
    ("Score: 85/100", None),
    ("-3", None),
    ("The response has 3 mistakes in 10 lines.", None),
    ("A solid answer overall.", None),
    ("", None),
]


@pytest.mark.parametrize("text,want", SCORES)
def test_parse_score(text, want):
    assert parse_score(text) == want


RANKS = [
    ("Ranking: [[2]] > [[1]] > [[4]] > [[3]]", 4, None, [1, 0, 3, 2]),
    ("Response 2 is the most complete.\n\nRanking: [[2]] > [[1]] > [[3]]", 3, None, [1, 0, 2]),
    ("[[2]] > [[1]] > [[3]]", 3, None, [1, 0, 2]),
    ("Ranking: C > A > D > B", 4, list("ABCD"), [2, 0, 3, 1]),
    ("Final ranking: C > A > D > B", 4, None, [2, 0, 3, 1]),  # letters for numbered responses
    ("2, 1, 4, 3", 4, None, [1, 0, 3, 2]),
    ('{"ranking": [2, 1, 4, 3]}', 4, None, [1, 0, 3, 2]),
    ('{"ranking": ["B", "A", "C"]}', 3, list("ABC"), [1, 0, 2]),
    ("Here is my ranking:\n1. Answer 3\n2. Answer 1\n3. Answer 2\n\nAnswer 3 is the most accurate.", 3, None,
     [2, 0, 1]),
    ("1. Answer 3\n2. Answer 1\n3. Answer 2", 3, None, [2, 0, 1]),
    ("**Ranking:** **[[3]]** > **[[1]]** > **[[2]]**", 3, None, [2, 0, 1]),
    ("Ranking (best to worst): Response 2, Response 3, Response 1", 3, None, [1, 2, 0]),
    ("Ranking: [[1]] > [[2]] > [[3]]\nOn second thought, [[3]] is wrong.\nRanking: [[2]] > [[1]] > [[3]]", 3, None,
     [1, 0, 2]),
    ("Ranking: [[3]] < [[1]] < [[2]]", 3, None, [1, 0, 2]),
    ("Ranking:\n[[2]] > [[3]] > [[1]]", 3, None, [1, 2, 0]),
    ("Ranking: [[2]] = [[1]] > [[3]]", 3, None, [1, 0, 2]),
    ("Ranking: [[2]] > [[1]]", 3, None, None),                     # missing one
    ("Ranking: [[2]] > [[1]] > [[2]]", 3, None, None),             # duplicated
    ("Ranking: [[2]] > [[5]] > [[1]]", 3, None, None),             # out of range
    ("1. Answer 1 is detailed and Answer 2 is short\n2. Answer 2 is fine\n3. Answer 3 is wrong", 3, None, None),
    ("In terms of ranking, I weighed accuracy first:\n1. Response 1 is short\n2. Response 2 is wrong\n"
     "3. Response 3 is verbose\n\nMore thoughts follow.", 3, None, None),
    ("Final Ranking:\n- [[3]]\n- [[1]]\n- [[2]]", 3, None, [2, 0, 1]),
    ("All three responses are reasonable; I cannot rank them.", 3, None, None),
    ("", 3, None, None),
]


@pytest.mark.parametrize("text,k,labels,want", RANKS)
def test_parse_ranking(text, k, labels, want):
    assert parse_ranking(text, k, labels) == want


# --- fake judges that read what they are shown --------------------------------------------------------

def shown_pair(messages):
    u = messages[1]["content"]  # the original prompt, also on a retry
    grab = lambda x: re.search(rf"\[The Start of Assistant {x}'s Answer\]\n(.*?)\n\[The End", u, re.S).group(1)
    return grab("A"), grab("B")


def shown_rank(messages):
    return re.findall(r"\[The Start of Response \[\[\d+\]\]\]\n(.*?)\n\[The End", messages[1]["content"], re.S)


def biased(messages):
    """Prefers the first position whatever it shows."""
    if "Assistant A's Answer" in messages[1]["content"]:
        return "Both are fine.\n[[A]]"
    k = len(shown_rank(messages))
    return "Ranking: " + " > ".join(f"[[{i + 1}]]" for i in range(k))


def quality(text):
    m = re.search(r"q(\d+)", text)
    return int(m.group(1)) if m else (100 if "GOOD" in text else 0)


def fair(messages):
    """Prefers the better content wherever it is shown."""
    if "[The Start of Assistant's Answer]" in messages[1]["content"]:
        answer = re.search(r"Assistant's Answer\]\n(.*?)\n\[The End", messages[1]["content"], re.S).group(1)
        return f"Rating: [[{min(max(quality(answer), 1), 10)}]]"
    if "Assistant A's Answer" in messages[1]["content"]:
        a, b = shown_pair(messages)
        return "[[C]]" if quality(a) == quality(b) else "[[A]]" if quality(a) > quality(b) else "[[B]]"
    shown = shown_rank(messages)
    best = sorted(range(len(shown)), key=lambda p: -quality(shown[p]))
    return "Explanation...\nRanking: " + " > ".join(f"[[{p + 1}]]" for p in best)


def test_position_bias_pair_is_a_tie():
    llm = FakeLLM(biased, name="biased")
    v = Judge(llm).pair("Q?", "first answer", "second answer")
    assert (v.winner, v.consistent, v.verdicts) == ("tie", False, ["A", "B"])
    assert len(v.raw) == 2 and v.usage["calls"] == 2 and not v.cached


def test_position_bias_rank_cancels_and_position_never_wins_ties():
    judge = Judge(FakeLLM(biased, name="biased"))
    firsts = set()
    for n in range(12):
        answers = [f"set {n} answer {i}" for i in range(4)]
        r = judge.rank("Q?", answers)
        assert r.agreement == 0.0 and r.points == [3.0] * 4
        assert r.orders == [[0, 1, 2, 3], [3, 2, 1, 0]]
        # ties fall to the answer's hash, so the same texts win in any input order
        assert r.order == sorted(range(4), key=lambda i: hashlib.sha256(answers[i].encode()).hexdigest())
        flipped = answers[::-1]
        assert [flipped[i] for i in judge.rank("Q?", flipped).order] == [answers[i] for i in r.order]
        firsts.add(r.order[0])
    assert len(firsts) > 1


def test_fair_judge_pair_consistent_both_ways():
    judge = Judge(FakeLLM(fair))
    v = judge.pair("Q?", "a GOOD answer", "a poor answer")
    assert (v.winner, v.consistent, v.verdicts) == ("A", True, ["A", "A"])
    v = judge.pair("Q?", "a poor answer", "a GOOD answer")
    assert (v.winner, v.consistent) == ("B", True)
    v = judge.pair("Q?", "q5 one", "q5 two")
    assert (v.winner, v.consistent) == ("tie", None)  # two ties decide nothing, so agree on nothing


def test_fair_judge_rank_borda():
    r = Judge(FakeLLM(fair)).rank("Q {x}?", ["q2 text", "q4 {0} text", "q1 {}", "q3 text"])  # braces are text
    assert r.order == [1, 3, 0, 2]
    assert r.points == [2.0, 6.0, 0.0, 4.0]
    assert r.agreement == 1.0 and r.orders == [[1, 3, 0, 2]] * 2
    json.dumps(asdict(r))  # what SDF writes to disk


def test_borda_partial_disagreement():
    answers = ["alpha", "bravo", "charlie", "delta"]

    def scripted(messages):  # as given: 1>2>3>4; reversed (delta charlie bravo alpha): alpha, charlie, bravo, delta
        return ("Ranking: [[1]] > [[2]] > [[3]] > [[4]]" if shown_rank(messages)[0] == "alpha"
                else "Ranking: [[4]] > [[2]] > [[3]] > [[1]]")

    r = Judge(FakeLLM(scripted)).rank("Q?", answers)
    assert r.orders == [[0, 1, 2, 3], [0, 2, 1, 3]]
    assert r.points == [6.0, 3.0, 3.0, 0.0]
    assert r.order[0] == 0 and r.order[3] == 3
    assert r.order[1:3] == sorted([1, 2], key=lambda i: hashlib.sha256(answers[i].encode()).hexdigest())
    assert r.agreement == pytest.approx(5 / 6)


def test_more_orders_are_distinct_presentations():
    llm = FakeLLM(fair)
    r = Judge(llm, orders=4).rank("Q?", ["q1", "q3", "q2"])
    assert len(llm.calls) == 4 and len({tuple(shown_rank(m)) for m in llm.calls}) == 4
    assert r.order == [1, 2, 0] and r.agreement == 1.0 and len(r.orders) == 4
    with pytest.raises(ValueError):
        Judge(llm, orders=1)


def test_one_unparsed_presentation_still_aggregates():
    def half(messages):
        return "Ranking: [[2]] > [[1]]" if shown_rank(messages)[0] == "x" else "no idea"
    r = Judge(FakeLLM(half)).rank("Q?", ["x", "y"])
    assert r.orders == [[1, 0], None] and r.order == [1, 0] and r.points == [0.0, 1.0] and r.agreement is None
    assert len(r.raw) == 3  # one reply, then a reply and its retry


# --- retry and the unparseable limit ------------------------------------------------------------------

def test_retry_once_with_reminder():
    def slow_to_format(messages):
        if messages[-1]["content"] == PAIR_REMINDER:
            return fair(messages)
        return "Assistant A gives more detail while Assistant B is shorter."

    llm = FakeLLM(slow_to_format)
    v = Judge(llm).pair("Q?", "a poor answer", "a GOOD answer")
    assert (v.winner, v.consistent, v.verdicts) == ("B", True, ["B", "B"])
    assert len(v.raw) == 4 and v.raw[1] == "[[B]]" and v.usage["calls"] == 4
    retry = llm.calls[1]
    assert retry[-2] == {"role": "assistant", "content": v.raw[0]} and retry[-1]["role"] == "user"


def test_garbage_is_none_then_judge_error():
    llm = FakeLLM(lambda m: "I cannot decide, they are both\ninteresting.", name="openai:tiny")
    judge = Judge(llm, max_unparseable=4)
    v = judge.pair("Q?", "a", "b")
    assert v.winner is None and v.consistent is None and v.verdicts == [None, None] and len(v.raw) == 4
    s = judge.score("Q?", "a")
    assert s.value is None and len(s.raw) == 2
    with pytest.raises(JudgeError) as e:
        judge.rank("Q?", ["a", "b"])
    msg = str(e.value)
    assert isinstance(e.value, BaizeError) and "\n" not in msg
    assert "openai:tiny" in msg and "I cannot decide" in msg and "4 unparseable" in msg


def test_a_parsed_verdict_resets_the_count():
    state = {"good": False}
    judge = Judge(FakeLLM(lambda m: "Rating: [[5]]" if state["good"] else "hmm"), max_unparseable=2)
    assert judge.score("Q1", "a").value is None
    state["good"] = True
    assert judge.score("Q2", "a").value == 5.0
    state["good"] = False
    assert judge.score("Q3", "a").value is None  # one in a row again, under the limit
    with pytest.raises(JudgeError):
        judge.score("Q4", "a")


def test_llm_errors_propagate():
    judge = Judge(FakeLLM(lambda m: TransientLLMError("openai:x: HTTP 500 after retries")))
    with pytest.raises(TransientLLMError):
        judge.pair("Q?", "a", "b")


# --- score, contexts, call parameters -----------------------------------------------------------------

def test_score_with_reference_and_out_of_range():
    llm = FakeLLM(lambda m: "Rating: [[11]]")
    s = Judge(llm).score("What is 2+2?", "5", reference="REFERENCE-FOUR")
    assert s.value is None and s.raw == ["Rating: [[11]]"] * 2
    assert "REFERENCE-FOUR" in llm.calls[0][1]["content"] and "reference" in llm.calls[0][0]["content"]
    assert llm.calls[1][-1]["content"] == SCORE_REMINDER
    llm = FakeLLM(lambda m: "Good.\nRating: [[8]]")
    s = Judge(llm).score("What is 2+2?", "4")
    assert s.value == 8.0 and "Reference" not in llm.calls[0][1]["content"]


def test_dialogue_context_shows_every_turn():
    llm = FakeLLM(fair)
    ctx = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": "EARLIER-QUESTION"},
           {"role": "assistant", "content": "EARLIER-REPLY"},
           {"role": "user", "content": "And the follow-up?"}]
    Judge(llm).pair(ctx, "a GOOD answer", "poor")
    prompt = llm.calls[0][1]["content"]
    assert "User: EARLIER-QUESTION" in prompt and "Assistant: EARLIER-REPLY" in prompt
    assert prompt.index("EARLIER-REPLY") < prompt.index("User: And the follow-up?")
    with pytest.raises(ValueError):
        Judge(llm).pair(ctx[:3], "a", "b")  # must end with the user turn being answered


def test_greedy_seeded_calls():
    seen = []

    class Recorder(FakeLLM):
        def chat(self, messages, **kw):
            seen.append(kw)
            return super().chat(messages, **kw)

    judge = Judge(Recorder(fair), max_tokens=300)
    judge.score("Q?", "a")
    assert seen[0]["temperature"] == 0.0 and seen[0]["seed"] == 0 and seen[0]["max_tokens"] == 300
    assert judge.usage == {"prompt_tokens": 10, "completion_tokens": 20, "calls": 1, "cache_hits": 0}


# --- cache --------------------------------------------------------------------------------------------

def test_cache_on_disk_replays_without_calls(tmp_path):
    def flaky_format(messages):  # the retry path must be cached too
        if "Assistant A's Answer" in messages[1]["content"] and messages[-1]["content"] != PAIR_REMINDER:
            return "Thinking about it."
        return fair(messages)

    first = Judge(FakeLLM(flaky_format, name="j"), cache_dir=tmp_path)
    r1, v1, s1 = (first.rank("Q?", ["q1", "q3", "q2"]), first.pair("Q?", "GOOD", "bad"),
                  first.score("Q?", "q1", reference="r"))
    assert not (r1.cached or v1.cached or s1.cached) and v1.usage["calls"] == 4
    first.close()

    llm = FakeLLM(flaky_format, name="j")
    second = Judge(llm, cache_dir=tmp_path)
    r2, v2, s2 = (second.rank("Q?", ["q1", "q3", "q2"]), second.pair("Q?", "GOOD", "bad"),
                  second.score("Q?", "q1", reference="r"))
    assert llm.calls == []
    for a, b in ((r1, r2), (v1, v2), (s1, s2)):
        assert b.cached and b.usage["calls"] == 0
        assert {**asdict(a), "cached": True, "usage": None} == {**asdict(b), "usage": None}
    assert second.usage["calls"] == 0 and second.usage["cache_hits"] == 2 + 4 + 1

    second.rank("Q?", ["q1", "q3", "q4"])  # new answers: new calls
    assert len(llm.calls) == 2
    assert Judge(FakeLLM(fair, name="other"), cache_dir=tmp_path).pair("Q?", "GOOD", "bad").cached is False


def test_cache_survives_a_torn_line(tmp_path):
    judge = Judge(FakeLLM(fair), cache_dir=tmp_path)
    judge.pair("Q?", "GOOD", "bad")
    judge.close()
    with open(tmp_path / "judge_cache.jsonl", "a") as f:
        f.write('{"key": "abc", "te')  # a killed writer
    llm = FakeLLM(fair)
    assert Judge(llm, cache_dir=tmp_path).pair("Q?", "GOOD", "bad").cached and llm.calls == []


def test_memory_cache_without_dir():
    llm = FakeLLM(fair)
    judge = Judge(llm)
    assert not judge.score("Q?", "q3").cached
    assert judge.score("Q?", "q3").cached and len(llm.calls) == 1


def test_concurrent_pairs_share_the_cache(tmp_path):
    llm = FakeLLM(fair, delay=0.01)
    judge = Judge(llm, cache_dir=tmp_path)
    jobs = [(f"Q{i % 8}?", f"q{i % 8 + 1} left", f"q{8 - i % 8} right") for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda j: judge.pair(*j), jobs))
    for (_q, a, b), v in zip(jobs, got):
        want = "tie" if quality(a) == quality(b) else "A" if quality(a) > quality(b) else "B"
        assert (v.winner, v.consistent) == (want, None if want == "tie" else True)
    # the same prompt asked by several threads at once is paid once
    assert len(llm.calls) == 16 and judge.usage["calls"] == 16 and judge.usage["cache_hits"] == 48
    judge.close()
    lines = (tmp_path / "judge_cache.jsonl").read_text().splitlines()
    assert len(lines) == 16 and all(json.loads(x)["text"] for x in lines)
    assert isinstance(got[0], Verdict) and Ranking and Score


# --- choice mode: local judges pick the verdict among its options by log-probability -------------

class ChoiceLLM(LLM):
    """Scores options like a local model would: prefers whichever shown answer says GOOD."""
    name = "choice-judge"
    can_score_options = True

    def __init__(self):
        self.asked = []

    def option_logprobs(self, messages, prefix, options):
        self.asked.append((prefix, list(options)))
        text = messages[-1]["content"]
        if prefix == "[[":  # pair: which label holds the GOOD answer
            a = text.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
            return [-0.1, -2.0, -3.0] if "GOOD" in a else [-2.0, -0.1, -3.0]
        if prefix.startswith("Rating"):
            good = "GOOD" in text
            return [-5.0 + (i if good else -i) * 0.1 for i in range(len(options))]
        blocks = text.split("[The Start of Response [[")[1:]
        return [-0.1 if "GOOD" in b else -1.0 - i * 0.01 for i, b in enumerate(blocks)]

    def chat(self, *a, **k):
        raise AssertionError("a choice-mode judge never generates text")


def test_choice_mode_for_local_judges(tmp_path):
    llm = ChoiceLLM()
    j = Judge(llm, cache_dir=tmp_path)
    assert j.choice  # auto: the model can score options
    v = j.pair("Q?", "meh", "GOOD answer")
    assert (v.winner, v.consistent) == ("B", True) and "log-probability" in v.raw[0]
    r = j.rank("Q?", ["x", "y", "GOOD z", "w"])
    assert r.order[0] == 2 and r.orders[0][0] == r.orders[1][0] == 2
    good, bad = j.score("Q?", "GOOD"), j.score("Q?", "bad")
    assert 1 <= bad.value < good.value <= 10 and good.value != round(good.value)  # the expected rating
    n = len(llm.asked)
    again = Judge(llm, cache_dir=tmp_path)
    assert again.pair("Q?", "meh", "GOOD answer").cached and len(llm.asked) == n
    assert not Judge(llm, mode="text").choice
    with pytest.raises(ValueError, match="local model"):
        Judge(FakeLLM(["[[A]]"]), mode="choice")


def test_option_logprobs_equal_a_full_forward(tiny_model_dir):
    """The prompt's KV cache reused for multi-token options gives the log-probs of a plain forward."""
    import torch

    from baize.llm.models import HFLLM
    llm = HFLLM(str(tiny_model_dir))
    msgs = [{"role": "user", "content": "Rate this."}]
    opts = ["1", "10", "A", " maybe so"]
    got = llm.option_logprobs(msgs, "Rating: [[", opts)
    prompt = llm.format.render(msgs, add_generation_prompt=True) + "Rating: [["
    ctx = llm.format.encode(prompt)
    for opt, value in zip(opts, got):
        full = llm.format.encode(prompt + opt)
        with torch.no_grad():
            lp = torch.log_softmax(llm.model(input_ids=torch.tensor([full])).logits[0].float(), -1)
        want = sum(float(lp[t - 1, full[t]]) for t in range(len(ctx), len(full)))
        assert value == pytest.approx(want, abs=1e-4)
    assert len(llm.format.encode(prompt + "10")) - len(ctx) == 2  # a multi-token option was covered
    llm.engine.close()


def test_the_cache_keeps_each_mode_apart(tmp_path):
    """A rerun in another --judge-mode asks again instead of replaying the old mode's replies."""
    llm = ChoiceLLM()
    assert not Judge(llm, cache_dir=tmp_path, mode="choice").pair("Q?", "meh", "GOOD answer").cached
    n = len(llm.asked)
    assert Judge(llm, cache_dir=tmp_path, mode="choice").pair("Q?", "meh", "GOOD answer").cached
    v = Judge(llm, cache_dir=tmp_path, mode="debiased").pair("Q?", "meh", "GOOD answer")
    assert not v.cached and len(llm.asked) == n + 2 and v.margin is not None
    assert Judge(llm, cache_dir=tmp_path, mode="debiased").pair("Q?", "meh", "GOOD answer").cached


def test_the_cache_keeps_a_judges_bf16_verdicts_apart_from_its_float32_ones(tmp_path):
    """dtype auto loads a local judge in bf16 where the CPU has it: an eval resumed across that change
    asks again instead of mixing both dtypes' verdicts; float32 (weights None) keeps the old keys."""
    fp32 = FakeLLM(fair, name="j")
    assert not Judge(fp32, cache_dir=tmp_path).pair("Q?", "GOOD", "bad").cached
    old_keys = {json.loads(line)["key"] for line in (tmp_path / "judge_cache.jsonl").open()}
    blob = json.dumps(["j", "pair", fp32.calls[0], 0.0, 512], ensure_ascii=False, sort_keys=True)
    assert hashlib.sha256(blob.encode()).hexdigest() in old_keys  # the key every older cache used
    bf16 = FakeLLM(fair, name="j")
    bf16.weights = "bfloat16"
    assert not Judge(bf16, cache_dir=tmp_path).pair("Q?", "GOOD", "bad").cached and bf16.calls
    assert Judge(FakeLLM(fair, name="j"), cache_dir=tmp_path).pair("Q?", "GOOD", "bad").cached
