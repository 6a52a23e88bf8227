"""`baize judge-check`: a judge against human preference pairs; ties and position bias cannot pass
for trust; local judges read both orders together; the length-controlled win rate."""
import json
from pathlib import Path

import pytest

from baize.config import BaizeError
from baize.judge.check import JudgeCheckConfig, check, load_pairs, measures
from baize.judge.core import Judge, pair_margin, rank_scores
from baize.judge.winrate import length_controlled
from baize.llm.base import LLM
from baize.testing import FakeLLM


def write_pairs(path, n=12, trl=False):
    """Humans prefer the answer that says 'right'; it is the shorter one in two pairs of three."""
    rows = []
    for i in range(n):
        good = f"right {i}" + (" with detail" * 6 if i % 3 == 0 else "")
        bad = f"wrong answer {i} that rambles on" + (" and on" * 3)
        q = f"Question {i}?"
        if trl:
            rows.append({"id": f"p{i}", "prompt": [{"role": "user", "content": q}],
                         "chosen": [{"role": "assistant", "content": good}],
                         "rejected": [{"role": "assistant", "content": bad}]})
        else:
            rows.append({"id": str(i), "context": [{"role": "user", "content": q}], "chosen": good, "rejected": bad})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg_for(tmp_path, pairs, **kw):
    kw = {"judge": "openai:judge", **kw}
    return JudgeCheckConfig(pairs=str(pairs), out=str(tmp_path / "jc"), concurrency=3, progress=False, bootstrap=200,
                            **kw)


def test_a_length_biased_judge_is_measured_against_humans(tmp_path):
    pairs = write_pairs(tmp_path / "prefs.jsonl")
    judge = FakeLLM(name="judge")  # prefers the longer answer in any position
    res = check(cfg_for(tmp_path, pairs), judge_llm=judge)
    saved = json.loads((tmp_path / "jc" / "judge_check.json").read_text())
    for key in ("n", "agreement", "consistency", "tie_rate", "prefers_longer", "human_prefers_longer", "seconds",
                "usage", "cost"):
        assert key in saved
    assert saved["n"] == 12 and saved["consistency"] == 1.0 and saved["tie_rate"] == 0.0
    assert saved["prefers_longer"] == 1.0 and saved["human_prefers_longer"] == pytest.approx(4 / 12, abs=1e-4)
    assert saved["agreement"] == pytest.approx(4 / 12, abs=1e-4) and saved["flags"] == [
        f for f in saved["flags"] if f.startswith("near chance")]
    assert saved["usage"]["calls"] == 24 and res["mode"] == "text"
    html = (tmp_path / "jc" / "judge_check.html").read_text()
    assert "agreement with humans" in html and "<script" not in html
    # resumable and cached: a rerun makes no call; with the verdicts gone, the judge cache answers
    again = FakeLLM(name="judge")
    check(cfg_for(tmp_path, pairs), judge_llm=again)
    (tmp_path / "jc" / "verdicts.jsonl").unlink()
    res2 = check(cfg_for(tmp_path, pairs), judge_llm=again)
    assert again.calls == [] and res2["agreement"] == res["agreement"]


@pytest.mark.parametrize("reply,flag", [("Both equal. [[C]]", "undecided"), ("A is better. [[A]]", "position-biased")])
def test_always_tie_and_always_first_judges_are_flagged(tmp_path, reply, flag):
    pairs = write_pairs(tmp_path / "prefs.jsonl")
    res = check(cfg_for(tmp_path, pairs), judge_llm=FakeLLM([reply], name="judge"))
    assert res["decisive_rate"] == 0.0 and res["tie_rate"] == 1.0 and res["agreement"] is None
    assert any(f.startswith(flag) for f in res["flags"])
    assert res["consistency"] == (None if flag == "undecided" else 0.0)  # ties are not agreement
    assert flag in (tmp_path / "jc" / "judge_check.html").read_text()


def test_pairs_in_trl_shape_and_bad_lines(tmp_path):
    pairs = load_pairs(str(write_pairs(tmp_path / "trl.jsonl", n=3, trl=True)))
    assert [p.id for p in pairs] == ["p0", "p1", "p2"] and pairs[0].chosen.startswith("right")
    assert load_pairs(str(write_pairs(tmp_path / "p.jsonl", n=5)), limit=2)[-1].id == "1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "Q?", "chosen": "a", "rejected": "b"}\n{"context": "Q?", "chosen": 3, "rejected": "b"}\n')
    with pytest.raises(BaizeError, match=r"bad.jsonl:2: field 'chosen'"):
        load_pairs(str(bad))
    bad.write_text('{"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(BaizeError, match=r"bad.jsonl:1: field 'prompt' must end with a user turn"):
        load_pairs(str(bad))
    bad.write_text('{"question": "Q?", "answer": "a"}\n')
    with pytest.raises(BaizeError, match=r"bad.jsonl:1: expected a preference pair"):
        load_pairs(str(bad))


# --- local judges: both orders read together ------------------------------------------------------

class PositionBiasedLLM(LLM):
    """A local judge with a strong prior for whatever is shown first and a weak eye for 'right'."""
    name = "biased-local"
    can_score_options = True

    def option_logprobs(self, messages, prefix, options):
        text = messages[-1]["content"]
        if prefix == "[[":
            a = text.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
            b = text.split("[The Start of Assistant B's Answer]")[1].split("[The End")[0]
            content = 0.3 * (("right" in a) - ("right" in b))
            return [-0.2 + content, -2.2 - content, -3.0]  # A by 2 nats of position, +-0.3 of content
        blocks = text.split("[The Start of Response [[")[1:]
        return [-1.0 * pos + (0.5 if "right" in b else 0.0) for pos, b in enumerate(blocks)]


def test_debiased_mode_recovers_what_argmax_per_order_loses(tmp_path):
    pairs = write_pairs(tmp_path / "prefs.jsonl")
    old = check(cfg_for(tmp_path, pairs, judge_mode="choice", judge="default"), judge_llm=PositionBiasedLLM())
    assert old["decisive_rate"] == 0.0 and old["prefers_first_shown"] == 1.0 and old["flags"]
    new = check(cfg_for(tmp_path, pairs, judge_mode="debiased", judge="default"), judge_llm=PositionBiasedLLM())
    assert new["mode"] == "debiased" and new["agreement"] == 1.0 and new["decisive_rate"] == 1.0
    assert new["consistency"] == 0.0 and not new["flags"]  # each order alone still follows position
    assert Judge(PositionBiasedLLM()).mode == "debiased"  # the default for local judges


def test_debiased_margin_and_ranking_cancel_a_position_prior():
    prior = {"A": 1.5, "B": 0.0, "C": -1.0}
    ab = {k: v + (0.2 if k == "A" else 0) for k, v in prior.items()}   # first argument shown as A, slightly better
    ba = {k: v + (0.2 if k == "B" else 0) for k, v in prior.items()}
    assert pair_margin(ab, ba) == pytest.approx(0.4)
    # four answers, answer 2 best; every presentation favours position 0 heavily
    perms = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 2, 3, 0], [0, 3, 2, 1]]
    pres = [(p, [-3.0 * pos + (0.4 if p[pos] == 2 else 0.0) for pos in range(4)]) for p in perms]
    scores = rank_scores(pres, 4)
    assert max(range(4), key=scores.__getitem__) == 2
    j = Judge(PositionBiasedLLM(), mode="debiased")
    r = j.rank("Q?", ["wrong one", "also wrong", "the right one", "wrong again"])
    assert r.order[0] == 2 and [o[0] for o in r.orders] == [0, 1, 2, 3]  # each rotation alone: its first shown
    flat = Judge(PositionBiasedLLM(), mode="debiased", tie_band=10.0).rank("Q?", ["x", "y", "right"])
    assert len(set(flat.points)) == 1  # inside the tie band: no preference, SDF rejects the prompt


def test_measures_count_only_decisive_verdicts():
    rows = [{"winner": "a", "human": "a", "verdicts": ["A", "A"], "len_a": 5, "len_b": 3},
            {"winner": "tie", "human": "b", "verdicts": ["tie", "tie"], "len_a": 5, "len_b": 3},
            {"winner": "tie", "human": "a", "verdicts": ["A", "B"], "len_a": 2, "len_b": 3},
            {"winner": "b", "human": "a", "verdicts": ["B", "B"], "len_a": 4, "len_b": 4}]
    m = measures(rows, n_boot=50)
    assert (m["agreement"], m["consistency"], m["decisive_rate"], m["tie_rate"]) == (0.5, round(2 / 3, 4), 0.5, 0.5)
    assert m["prefers_longer"] == 1.0 and m["human_prefers_longer"] == round(1 / 3, 4)


# --- the length-controlled win rate ---------------------------------------------------------------

def lc_rows(seed=3, n=40, bias=True):
    import random
    rng = random.Random(seed)
    rows = []
    for pair in (("v2", "v1"), ("v1", "base")):
        for _ in range(n):
            la, lb = rng.randint(20, 900), rng.randint(20, 900)
            p = 0.85 if (la > lb) == bias else 0.4
            rows.append({"a": pair[0], "b": pair[1], "len_a": la, "len_b": lb,
                         "y": rng.choices([1.0, 0.5, 0.0], [p, 0.1, 1 - p])[0]})
    return rows


def test_length_controlled_is_symmetric_and_corrects_a_length_bias():
    rows = lc_rows()
    pairs = [("v2", "v1"), ("v1", "base")]
    got = length_controlled(rows, pairs, n_boot=100)
    flipped = [{"a": r["b"], "b": r["a"], "len_a": r["len_b"], "len_b": r["len_a"], "y": 1 - r["y"]} for r in rows]
    back = length_controlled(flipped, [(b, a) for a, b in pairs], n_boot=100)
    for a, b in pairs:
        x, y = got["pairs"][(a, b)], back["pairs"][(b, a)]
        assert x["lc_win_rate"] + y["lc_win_rate"] == pytest.approx(1.0, abs=1e-6)
        assert x["lc_ci"][0] + y["lc_ci"][1] == pytest.approx(1.0, abs=1e-6)
        assert x["lc_ci"][0] <= x["lc_win_rate"] <= x["lc_ci"][1]
    assert got["slope"] > 0.5  # the judge's taste for length is found, not attributed to the models
    same = length_controlled(rows, [("v1", "v1")])
    assert same["pairs"][("v1", "v1")]["lc_win_rate"] == 0.5


def test_length_controlled_says_why_when_there_is_no_number():
    few = lc_rows(n=2)
    out = length_controlled(few, [("v2", "v1"), ("v1", "base")], n_boot=20)
    assert all(p["lc_win_rate"] is None and "too few" in p["lc_note"] for p in out["pairs"].values())
    assert length_controlled([], [("a", "b")])["pairs"][("a", "b")]["lc_note"].startswith("too few")


def test_sdf_summary_reports_the_decisive_rate(tmp_path):
    from baize.sdf import write_prefs
    out = tmp_path / "sdf.jsonl"
    kept = {"id": "p1", "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "long"}],
            "meta": {"agreement": 1.0, "candidates": [{"text": "long", "rank": 1, "points": 2.0},
                                                      {"text": "short", "rank": 2, "points": 0.0}]}}
    tied = {"id": "p2", "messages": [{"role": "user", "content": "Q2?"}], "meta": {"reject_reason": "no_preference"}}
    out.write_text(json.dumps(kept) + "\n")
    (tmp_path / "sdf.rejected.jsonl").write_text(json.dumps(tied) + "\n")
    got = write_prefs(out)
    assert got["pairs"] == 1 and got["mean_agreement"] == 1.0 and got["decisive_rate"] == 0.5


# --- issue 28, section 4: verdicts that say what they know ----------------------------------------

def test_near_chance_against_humans_reads_the_interval_not_the_point():
    from baize.judge.verdicts import judge_flags
    # docs/judge-check.md's debiased figure: 0.561 [0.47, 0.66] on 114 decisive verdicts
    flags = judge_flags(None, 0.57, "debiased", 0.561, 114, [0.47, 0.66])
    assert len(flags) == 1 and flags[0].startswith("near chance against humans") and "[47%, 66%]" in flags[0]
    assert "interval includes 50%" in flags[0]
    assert judge_flags(None, 0.57, "debiased", 0.561, 400, [0.52, 0.60]) == []  # shown better, however narrowly
    # without an interval (an old judge_check.json) the point rule still holds
    assert judge_flags(None, 0.9, "text", 0.52, 100)[0].startswith("near chance against humans")


def test_a_judge_whose_every_verdict_is_unparseable_is_flagged_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    import baize.judge.check as jc
    from baize.cli import main
    pairs = write_pairs(tmp_path / "prefs.jsonl", n=3)  # 6 unparseable replies: under --max-unparseable's 8
    res = check(cfg_for(tmp_path, pairs), judge_llm=FakeLLM(["I would rather not say."], name="judge"))
    assert res["unparseable"] == 3 and res["flags"] and res["flags"][0].startswith("unreadable")
    assert "unreadable" in (tmp_path / "jc" / "judge_check.html").read_text()
    real = jc.check
    monkeypatch.setattr(jc, "check", lambda cfg: real(cfg, judge_llm=FakeLLM(["I would rather not say."],
                                                                              name="judge")))
    argv = ["judge-check", "--judge", "openai:judge", "--pairs", str(pairs), "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "jc2")]) == 1
    assert "flag: unreadable" in capsys.readouterr().out
    monkeypatch.setattr(jc, "check", lambda cfg: real(cfg, judge_llm=FakeLLM(name="judge")))
    assert main(argv + ["--out", str(tmp_path / "jc3")]) == 0  # a judge that answers: exit 0, whatever its flags


def test_judge_check_prints_two_baselines_beside_the_judge(tmp_path, capsys):
    from baize.judge.check import print_check
    pairs = write_pairs(tmp_path / "prefs.jsonl", n=12)  # humans chose the longer answer in 4 of 12
    res = check(cfg_for(tmp_path, pairs), judge_llm=FakeLLM(name="judge"))  # a judge that always picks the longer
    assert res["baseline_longer"]["agreement"] == pytest.approx(4 / 12, abs=1e-4)
    assert res["baseline_longer"]["decisive"] == 12 and len(res["baseline_longer"]["agreement_ci"]) == 2
    assert res["baseline_first_shown"]["agreement"] == 0.5  # half the pairs show the human's choice first
    assert res["agreement"] == res["baseline_longer"]["agreement"]  # this judge is the length heuristic
    print_check(res)
    out = capsys.readouterr().out
    assert "baseline: the longer answer wins" in out and "0.333 [" in out
    assert "baseline: the first shown wins" in out and "0.500 [" in out
    saved = json.loads((tmp_path / "jc" / "judge_check.json").read_text())
    assert saved["baseline_first_shown"]["agreement"] == 0.5
    assert "the longer answer wins" in (tmp_path / "jc" / "judge_check.html").read_text()


def test_judge_check_runs_on_the_shipped_human_pairs_by_default(tmp_path):
    from baize.cli import build_parser
    from baize.config import dataclass_from_args
    args = build_parser().parse_args(["judge-check", "--judge", "openai:judge"])  # no --pairs
    assert dataclass_from_args(JudgeCheckConfig, args).pairs == "builtin"
    pairs = load_pairs("builtin")
    assert len(pairs) == 300 and len({p.id for p in pairs}) == 300
    assert all(p.context[-1]["role"] == "user" and p.chosen != p.rejected for p in pairs)
    readme = (Path(__file__).resolve().parent.parent / "baize" / "samples" / "README.md").read_text()
    assert "hh_helpful_online.jsonl" in readme and "MIT" in readme and "HH-RLHF" in readme
    res = check(JudgeCheckConfig(judge="openai:judge", out=str(tmp_path / "jc"), limit=6, progress=False,
                                 bootstrap=100), judge_llm=FakeLLM(name="judge"))
    assert res["n"] == 6 and res["pairs_file"].startswith("builtin")


def test_a_handful_of_unanimous_verdicts_gets_too_few_pairs_not_a_tight_interval():
    # 8 wins out of 8: resampling them refits the same data every time, an interval of width zero that
    # claims a certainty 8 questions cannot give (the rule of three puts the bound near 0.63)
    won = [{"a": "v2", "b": "v1", "y": 1.0, "len_a": 100 + 7 * i, "len_b": 50 + 11 * i} for i in range(8)]
    mixed = [r for r in lc_rows(n=40) if r["a"] == "v1"]
    out = length_controlled(won + mixed, [("v2", "v1"), ("v1", "base")], n_boot=100)
    p = out["pairs"][("v2", "v1")]
    assert p["lc_win_rate"] is None and p["lc_ci"] is None and p["lc_note"].startswith("too few pairs: all 8 ")
    lo, hi = out["pairs"][("v1", "base")]["lc_ci"]  # a pair with verdicts that differ still gets its number
    assert hi - lo > 0.05
    many = [{**won[0], "len_a": 100 + i} for i in range(30)]
    assert length_controlled(many, [("v2", "v1")], n_boot=50)["pairs"][("v2", "v1")]["lc_win_rate"] is not None
