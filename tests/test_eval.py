"""`baize eval`: answers (multi-turn, cached per model and setting), judged win rates with bootstrap
intervals, scores, NLL, judge consistency, and the files a user reads."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from baize.config import BaizeError
from baize.eval.evaluate import (
    EvalConfig,
    Question,
    bootstrap_ci,
    evaluate,
    load_questions,
    pair_stats,
    parse_models,
    reference_dialogues,
    win_rate,
)
from baize.schema import read_jsonl
from baize.testing import FakeLLM

ROOT = Path(__file__).resolve().parent.parent


def test_win_rate_ties_and_bootstrap_interval():
    assert win_rate([1, 1, 0.5, 0]) == 0.625 and win_rate([]) is None
    assert bootstrap_ci([1.0] * 20) == [1.0, 1.0]
    lo, hi = bootstrap_ci([1.0] * 10 + [0.0] * 10, n=2000)
    assert 0.2 <= lo < 0.5 < hi <= 0.8
    lo2, hi2 = bootstrap_ci([1.0] * 100 + [0.0] * 100, n=2000)
    assert hi2 - lo2 < hi - lo  # more questions, a narrower interval
    rows = [{"a": "v2", "b": "v1", "category": c, "winner": w, "consistent": True}
            for c, w in [("x", "a"), ("x", "a"), ("x", "tie"), ("y", "b"), ("y", None)]]
    s = pair_stats(rows, "v2", "v1", 500)
    assert (s["win"], s["tie"], s["loss"], s["unjudged"], s["n"]) == (2, 1, 1, 1, 5)
    assert s["win_rate"] == 0.625 and s["ci"][0] <= 0.625 <= s["ci"][1]
    assert s["by_category"]["x"]["win_rate"] == pytest.approx(5 / 6, abs=1e-3) and s["by_category"]["y"]["win_rate"] == 0.0


def models_for(tmp_path):
    """Three fake models whose answers differ in length: c > b > a."""
    fakes = {n: FakeLLM(lambda m, n=n, k=k: f"{n} says " + "word " * k + f"about {m[-1]['content'][:20]}", name=n)
             for n, k in (("a", 2), ("b", 8), ("c", 20))}
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": cat, "turns": [f"Question {i}?", f"Follow-up {i}?"],
                                             **({"reference": [f"Reference {i}."]} if i % 2 else {})}) + "\n"
                                 for i, cat in enumerate(["math", "math", "writing", "writing", "coding", "coding"])))
    cfg = EvalConfig(models=[f"{n}=openai:{n}" for n in fakes], questions=str(questions), judge="openai:judge",
                     out=str(tmp_path / "eval"), progress=False, bootstrap=200, concurrency=3)
    return fakes, cfg


def test_eval_end_to_end_with_a_fair_judge_then_a_rerun_makes_no_calls(tmp_path):
    fakes, cfg = models_for(tmp_path)
    judge = FakeLLM(name="judge")  # prefers longer answers, in either position
    res = evaluate(cfg, llms=fakes, judge_llm=judge)
    # two turns, and turn 2 sees the model's own first answer
    first = [c for c in fakes["b"].calls if len(c) == 3]
    assert len(first) == 6 and all(c[1]["role"] == "assistant" and c[1]["content"].startswith("b says") for c in first)
    pw = {(p["a"], p["b"]): p for p in res["pairwise"]}
    assert set(pw) == {("b", "a"), ("c", "a"), ("c", "b")}  # newer vs older, every pair
    assert pw[("c", "a")]["win"] == 6 and pw[("c", "a")]["win_rate"] == 1.0 and pw[("b", "a")]["ci"] == [1.0, 1.0]
    assert set(pw[("c", "b")]["by_category"]) == {"math", "writing", "coding"}
    assert res["judge"]["consistency"] == 1.0 and not res["judge"]["near_chance"]
    m = res["models"]
    assert m["c"]["score"]["mean"] > m["b"]["score"]["mean"] > m["a"]["score"]["mean"]
    assert m["c"]["mean_words"] > m["a"]["mean_words"] and m["a"]["answers"] == 6
    # the reference reaches the judge when a question has one
    assert any("Reference 1." in c[-1]["content"] for c in judge.calls)
    out = Path(cfg.out)
    for f in ("results.json", "report.md", "report.html", "answers/a.jsonl", "verdicts.jsonl", "scores.jsonl"):
        assert (out / f).exists(), f
    assert json.loads((out / "results.json").read_text())["pairwise"][0]["n"] == 6
    # the answers files are dialogue records
    from baize.schema import read_jsonl
    assert len(list(read_jsonl(out / "answers" / "c.jsonl", validate=True))) == 6
    # a second run with the same models and questions: no model call, no judge call
    fakes2, _ = models_for(tmp_path)
    judge2 = FakeLLM(name="judge")
    res2 = evaluate(cfg, llms=fakes2, judge_llm=judge2)
    assert all(f.calls == [] for f in fakes2.values()) and judge2.calls == []
    assert res2["pairwise"] == res["pairwise"]
    # a changed generation setting gets new answers
    cfg.temperature = 0.2
    fakes3, _ = models_for(tmp_path)
    evaluate(cfg, llms=fakes3, judge_llm=FakeLLM(name="judge"))
    assert len(fakes3["a"].calls) == 12


def test_an_always_first_judge_gives_ties_and_the_report_says_near_chance(tmp_path):
    fakes, cfg = models_for(tmp_path)
    cfg.single = False
    res = evaluate(cfg, llms=fakes, judge_llm=FakeLLM(["Assistant A is better. [[A]]"], name="first"))
    for p in res["pairwise"]:
        assert (p["win"], p["tie"], p["loss"]) == (0, 6, 0) and p["win_rate"] == 0.5
    assert res["judge"]["consistency"] == 0.0 and res["judge"]["near_chance"]
    assert res["judge"]["decisive_rate"] == 0.0
    md = (Path(cfg.out) / "report.md").read_text()
    assert "do not trust these win rates" in md and "position-biased" in md and "undecided" in md


def test_an_always_tie_judge_is_flagged_not_called_consistent(tmp_path):
    """Ties in both orders agree on nothing: before, this judge scored consistency 1.0 unflagged."""
    fakes, cfg = models_for(tmp_path)
    cfg.single = False
    res = evaluate(cfg, llms=fakes, judge_llm=FakeLLM(["Both are fine. [[C]]"], name="tie"))
    j = res["judge"]
    assert j["consistency"] is None and j["decisive_rate"] == 0.0 and j["tie_rate"] == 1.0
    assert j["near_chance"] and any(f.startswith("undecided") for f in j["flags"])
    md = (Path(cfg.out) / "report.md").read_text()
    assert "do not trust these win rates" in md and "prefers one answer on only 0% of pairs" in md
    # the judge's agreement with humans, found beside the eval, is shown with its figure
    (tmp_path / "judge_check").mkdir()
    (tmp_path / "judge_check" / "judge_check.json").write_text(json.dumps(
        {"judge": cfg.judge, "mode": "text", "n": 200, "agreement": 0.51, "agreement_ci": [0.44, 0.58],
         "decisive": 150}))
    res = evaluate(cfg, llms=fakes, judge_llm=FakeLLM(["Both are fine. [[C]]"], name="tie"))
    assert res["judge"]["human"]["agreement"] == 0.51
    assert any(f.startswith("near chance against humans") for f in res["judge"]["flags"])
    assert "agrees with the human choice on 51%" in (Path(cfg.out) / "report.md").read_text()


def test_baseline_and_bad_input(tmp_path):
    fakes, cfg = models_for(tmp_path)
    cfg.baseline, cfg.single = "a", False
    res = evaluate(cfg, llms=fakes, judge_llm=FakeLLM(name="judge"))
    assert [(p["a"], p["b"]) for p in res["pairwise"]] == [("b", "a"), ("c", "a")]
    cfg.baseline = "zz"
    with pytest.raises(BaizeError, match=r"--baseline zz: not one of the models \(a, b, c\)"):
        evaluate(cfg, llms=fakes, judge_llm=FakeLLM(name="judge"))
    with pytest.raises(BaizeError, match="given twice"):
        parse_models(["v1=runs/a", "v1=runs/b"])
    assert parse_models(["runs/v1/"]) == {"v1": "runs/v1/"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["ok?"]}\n{"question_id": 2, "turns": []}\n')
    with pytest.raises(BaizeError, match=rf"{bad}:2: field 'turns'"):
        load_questions(str(bad))
    bad.write_text('{"question_id": 1, "turns": ["ok?"]}\n{oops\n')
    with pytest.raises(BaizeError, match=rf"{bad}:2: not valid JSON"):
        load_questions(str(bad))


def test_question_shapes(tmp_path):
    builtin = load_questions("builtin")
    assert len(builtin) == 12 and all(len(q.turns) == 2 for q in builtin)
    assert {q.category for q in builtin} == {"coding", "medical", "instruction"}
    assert sum(bool(q.reference) for q in builtin) >= 4
    # never drawn from the seeds the main job collects and trains on
    from baize.data.seeds import load_seeds
    quora = {s.text for s in load_seeds("quora")}
    assert not quora & {q.turns[0] for q in builtin}
    vicuna = tmp_path / "vicuna.jsonl"
    vicuna.write_text('{"question_id": 1, "text": "What is a star?", "category": "generic"}\n')
    (q,) = load_questions(str(vicuna))
    assert (q.id, q.turns, q.category) == ("1", ["What is a star?"], "generic")
    med = load_questions("medquad", limit=3)
    assert len(med) == 3 and all(q.reference and q.reference[0] for q in med) and med[0].category == "medquad"


def test_nll_of_local_models_on_dialogues_and_references(tmp_path, tiny_model_dir):
    from baize.llm.models import HFLLM
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "x", "messages": [{"role": "user", "content": "Hi?"},
                                                         {"role": "assistant", "content": "Hello there."}]}) + "\n")
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": "q", "turns": ["Say hi."], "reference": ["Hi!"]}) + "\n")
    spec = str(tiny_model_dir)
    llm = HFLLM(spec)
    cfg = EvalConfig(models=[f"tiny={spec}"], questions=str(questions), judge="none", nll_data=str(data),
                     out=str(tmp_path / "eval"), progress=False, max_tokens=8)
    res = evaluate(cfg, llms={"tiny": llm})
    nll = res["models"]["tiny"]["nll"]
    # a random model over a 49K vocabulary: about ln(49152) = 10.8 nats per token
    assert 9 < nll["data"] < 13 and 9 < nll["reference"] < 13
    assert res["pairwise"] == [] and res["judge"] is None
    llm.engine.close()


def test_reference_nll_scores_every_turn_in_the_references_context():
    two = Question("m", "math", ["2+2?", "Times 3?"], ["4", "12"])
    gap = Question("g", "math", ["a?", "b?"], [None, "b"])  # turn 2's reference follows no written answer
    first = Question("f", "math", ["x?", "y?"], ["x"])
    assert reference_dialogues([two, gap, first]) == [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "Times 3?"}, {"role": "assistant", "content": "12"}]},
        {"messages": [{"role": "user", "content": "x?"}, {"role": "assistant", "content": "x"}]}]


def test_cli_one_line_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "baize", "eval", *args], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
    p = run("--models", f"v1={tmp_path / 'nope'}", "--out", str(tmp_path / "e"), "--no-progress")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "unknown model spec" in p.stderr
    p = run("--models", "a=openai:a", "--judge", "openai:j", "--base-url", "http://127.0.0.1:9/v1",
            "--out", str(tmp_path / "e"), "--no-progress")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "cannot connect" in p.stderr


def test_each_part_keeps_its_own_ledger_and_the_results_the_whole(tmp_path):
    fakes, cfg = models_for(tmp_path)
    cfg.judge_price_in = 1.0
    res = evaluate(cfg, llms=fakes, judge_llm=FakeLLM(name="judge"))
    out = Path(cfg.out)
    a = json.loads((out / "answers" / "a.summary.json").read_text())["ledger"]
    assert set(a) == {"a"} and a["a"]["calls"] == 12  # 6 questions, 2 turns
    pairs = json.loads((out / "verdicts.summary.json").read_text())["ledger"]
    assert set(pairs) == {"judge"} and pairs["judge"]["calls"] == 3 * 6 * 2
    assert res["ledger"]["judge"]["calls"] == 3 * 6 * 2 + 3 * 6 and res["ledger"]["c"]["calls"] == 12
    assert res["ledger"]["judge"]["cost"] > 0


# --- MT-bench interop: FastChat's judge prompts in, FastChat's files out --------------------------

def fastchat_prompts(path):
    """Judge prompts in FastChat's judge_prompts.jsonl shape (written here, not copied): the fields
    and placeholders its common.py fills, one prompt per name gen_judgment.py picks."""
    def p(name, typ, template, fmt):
        return {"name": name, "type": typ, "system_prompt": f"You judge ({name}).", "prompt_template": template,
                "description": name, "category": "general", "output_format": fmt}
    rows = [p("single-v1", "single", "[Question]\n{question}\n[Answer]\n{answer}\nRate it: Rating: [[5]]", "[[rating]]"),
            p("single-math-v1", "single", "[Question]\n{question}\n[Reference]\n{ref_answer_1}\n[Answer]\n{answer}",
              "[[rating]]"),
            p("single-v1-multi-turn", "single", "{question_1}|{answer_1}|{question_2}|{answer_2}", "[[rating]]"),
            p("single-math-v1-multi-turn", "single", "{question_1}|{ref_answer_1}|{answer_1}|{question_2}|"
              "{ref_answer_2}|{answer_2}", "[[rating]]"),
            p("pair-v2", "pairwise", "[Question]\n{question}\n[A]\n{answer_a}\n[B]\n{answer_b}", "[[A]]"),
            p("pair-math-v1", "pairwise", "[Question]\n{question}\n[Reference]\n{ref_answer_1}\n[A]\n{answer_a}\n[B]\n"
              "{answer_b}", "[[A]]"),
            p("pair-v2-multi-turn", "pairwise", "{question_1}|{answer_a_1}|{answer_a_2}||{question_2}|{answer_b_1}|"
              "{answer_b_2}", "[[A]]")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mt_judge(messages):
    """Rates by length; in pairs prefers the longer answer A or B, read from the filled template."""
    user = messages[-1]["content"]
    if "[A]\n" in user:
        a, b = user.split("[A]\n")[1].split("\n[B]\n")
        return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"
    if "||" in user:
        left, right = user.split("||")
        return "[[A]]" if len(left) > len(right) else "[[B]]" if len(right) > len(left) else "[[C]]"
    return f"Rating: [[{min(10, 1 + len(user) // 40)}]]"


def test_mt_bench_prompts_and_fastchat_files(tmp_path):
    pd = pytest.importorskip("pandas")
    fakes, cfg = models_for(tmp_path)
    cfg.judge_prompts = str(fastchat_prompts(tmp_path / "judge_prompts.jsonl"))
    cfg.fastchat_out = str(tmp_path / "data" / "mt_bench")
    judge = FakeLLM(mt_judge, name="judge")
    res = evaluate(cfg, llms=fakes, judge_llm=judge)
    systems = [c[0]["content"] for c in judge.calls]
    # math/coding with a reference: the math prompts; turn 2: the multi-turn ones; the reference is shown
    for name in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn", "pair-v2",
                 "pair-math-v1", "pair-v2-multi-turn"):
        assert f"You judge ({name})." in systems
    assert any("[Reference]\nReference 1." in c[-1]["content"] for c in judge.calls)
    assert res["pairwise"][0]["n"] == 12 and res["judge"]["consistency"] == 1.0  # 6 questions x 2 turns
    # FastChat's files, read the way show_result.py reads them
    jm = res["fastchat"]["judge_model"]
    answers = [json.loads(x) for x in (tmp_path / "data/mt_bench/model_answer/b.jsonl").read_text().splitlines()]
    assert answers[0]["model_id"] == "b" and len(answers[0]["choices"][0]["turns"]) == 2
    single = pd.read_json(tmp_path / f"data/mt_bench/model_judgment/{jm}_single.jsonl", lines=True)
    df = single[["model", "score", "turn"]]
    df = df[df["score"] != -1]
    means = df[["model", "score"]].groupby(["model"]).mean()["score"]
    assert set(df["turn"]) == {1, 2} and means["c"] > means["a"]
    pair = pd.read_json(tmp_path / f"data/mt_bench/model_judgment/{jm}_pair.jsonl", lines=True)
    pair = pair[(pair["g1_winner"] != "error") & (pair["g2_winner"] != "error")]
    wins = {}
    for _, row in pair.iterrows():
        if row["g1_winner"] != "tie" and row["g1_winner"] == row["g2_winner"]:
            w = row["model_1"] if row["g1_winner"] == "model_1" else row["model_2"]
            wins[w] = wins.get(w, 0) + 1
    assert wins == {"c": 24, "b": 12}  # longer wins: c beats b and a, b beats a, on both turns of 6 questions
    assert all(pair["g1_user_prompt"]) and all(pair["g2_user_prompt"]) and all(single["user_prompt"])
    assert all("You judge" not in u for u in single["user_prompt"])  # the user prompt, not the system one


def test_bad_judge_prompts_file_names_the_line(tmp_path):
    from baize.judge.mtbench import load_judge_prompts
    bad = tmp_path / "jp.jsonl"
    bad.write_text(json.dumps({"name": "single-v1", "type": "single", "system_prompt": "s", "prompt_template": "t"}) + "\n")
    with pytest.raises(BaizeError, match=r"jp.jsonl:1: field 'output_format'"):
        load_judge_prompts(str(bad))


def test_a_judge_that_never_parses_is_flagged_and_eval_exits_non_zero(tmp_path, monkeypatch):
    import baize.eval.evaluate as ev
    from baize.cli import main
    fakes, cfg = models_for(tmp_path)
    cfg.limit, cfg.max_unparseable = 1, 0  # 0: never stop, so every verdict is read and none parses
    mute = FakeLLM(["I would rather not say."], name="judge")
    res = evaluate(cfg, llms=fakes, judge_llm=mute)
    j = res["judge"]
    assert j["unparseable"] == j["pairs_judged"] + 3 and j["flags"][0].startswith("unreadable") and j["near_chance"]
    md = (Path(cfg.out) / "report.md").read_text()
    assert "no consistency measured" not in md and "none of its" in md and "do not trust" in md
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda c: real(c, llms=models_for(tmp_path)[0], judge_llm=mute))
    argv = ["eval", "--models", *cfg.models, "--judge", "openai:judge", "--questions", cfg.questions, "--limit", "1",
            "--max-unparseable", "0", "--no-progress", "--out", str(tmp_path / "e2")]
    assert main(argv) == 1
    monkeypatch.setattr(ev, "evaluate", lambda c: real(c, llms=models_for(tmp_path)[0], judge_llm=FakeLLM(name="j")))
    assert main(argv[:-1] + [str(tmp_path / "e3")]) == 0


def test_a_rerun_in_another_judge_mode_judges_again(tmp_path):
    from baize.llm.base import LLM

    class Local(LLM):
        """A local judge: writes a verdict (text mode) or scores the options (choice, debiased)."""
        name, can_score_options = "local-judge", True

        def __init__(self):
            self.written, self.read = FakeLLM(name="w"), []

        def chat(self, messages, **kw):
            return self.written.chat(messages, **kw)

        def option_logprobs(self, messages, prefix, options):
            self.read.append(prefix)
            return [-float(i) for i in range(len(options))]

    fakes, cfg = models_for(tmp_path)
    cfg.limit, cfg.judge_cache = 2, "none"  # no raw-reply cache: only the verdict records could be reused
    cfg.judge_mode, judge = "text", Local()
    evaluate(cfg, llms=fakes, judge_llm=judge)
    assert judge.written.calls and not judge.read
    for mode in ("choice", "debiased"):
        cfg.judge_mode = mode
        judge = Local()
        res = evaluate(cfg, llms=models_for(tmp_path)[0], judge_llm=judge)
        # 2 questions x 3 model pairs x 2 orders; 2 questions x 3 models scored
        assert judge.read.count("[[") == 2 * 3 * 2 and judge.read.count("Rating: [[") == 2 * 3, mode
        assert res["judge"]["mode"] == mode


def test_fastchat_pair_files_keep_each_orders_own_verdict(tmp_path):
    """A debiased judge: each order alone names the answer shown first, both read together name the
    longer. FastChat's gen_judgment.py writes each game's verdict (g2 mapped back with g2_map) and the
    user prompt each game read; show_result.py counts a g1/g2 disagreement as a tie."""
    from baize.llm.base import LLM

    class Local(LLM):
        name, can_score_options = "local-judge", True

        def option_logprobs(self, messages, prefix, options):
            text = messages[-1]["content"]
            if prefix != "[[":  # scores
                return [-float(i) for i in range(len(options))]
            a = text.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
            b = text.split("[The Start of Assistant B's Answer]")[1].split("[The End")[0]
            content = 0.5 if len(a) > len(b) else -0.5
            return [content, -3.0 - content, -6.0]  # 3 nats for position A, 1 for the longer answer

    fakes, cfg = models_for(tmp_path)
    cfg.limit, cfg.judge_mode, cfg.fastchat_out = 2, "debiased", str(tmp_path / "mt")
    res = evaluate(cfg, llms=fakes, judge_llm=Local())
    rows = [json.loads(x) for x in (Path(res["fastchat"]["pair"])).read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert (r["g1_winner"], r["g2_winner"]) == ("model_1", "model_2")  # each order: its first shown
        assert r["baize_winner"] == "model_1" and r["baize_mode"] == "debiased" and r["baize_margin"] > 0.1
        a1 = r["g1_user_prompt"].index(f"{r['model_1']} says")
        assert a1 < r["g1_user_prompt"].index(f"{r['model_2']} says")  # g1 shows model_1 as A
        assert r["g2_user_prompt"].index(f"{r['model_2']} says") < r["g2_user_prompt"].index(f"{r['model_1']} says")
    # show_result.py's pairwise count: a tie unless both games name the same winner
    ties = sum(r["g1_winner"] == "tie" or r["g1_winner"] != r["g2_winner"] for r in rows)
    assert ties == 6 and all(p["win"] == p["n"] == 2 for p in res["pairwise"])  # baize's: the longer wins
    single = [json.loads(x) for x in (Path(res["fastchat"]["single"])).read_text().splitlines()]
    assert single and all("[The Start of Assistant's Answer]" in s["user_prompt"] for s in single)


def test_ctrl_c_in_one_models_answers_stops_eval_before_the_next_model(tmp_path, monkeypatch):
    """Ctrl-C during model a's answers (run_items finishes those in flight and says "interrupted"):
    eval stops there; b is never asked and no results are written from half the answers."""
    import baize.eval.evaluate as ev
    real = ev.run_items

    def interrupted(*a, **kw):
        s = real(*a, **kw)
        s.stopped = "interrupted"
        return s

    monkeypatch.setattr(ev, "run_items", interrupted)
    fakes, cfg = models_for(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, llms=fakes, judge_llm=FakeLLM(name="judge"))
    assert fakes["a"].calls and not fakes["b"].calls and not (tmp_path / "eval" / "results.json").exists()


@pytest.mark.parametrize("stage", ["eval", "judge-check"])
def test_bootstrap_zero_is_refused_before_any_call(tmp_path, stage):
    # today it crashed computing the intervals, after every answer and verdict had been paid for
    judge = FakeLLM(name="judge")
    if stage == "eval":
        fakes, cfg = models_for(tmp_path)
        cfg.bootstrap = 0
        with pytest.raises(BaizeError, match=r"^--bootstrap 0: .*use --bootstrap 1000"):
            evaluate(cfg, llms=fakes, judge_llm=judge)
        assert not any(f.calls for f in fakes.values())
    else:
        from baize.judge.check import JudgeCheckConfig, check
        pairs = tmp_path / "p.jsonl"
        pairs.write_text("".join(json.dumps({"id": str(i), "context": [{"role": "user", "content": f"Q{i}?"}],
                                             "chosen": "right", "rejected": "wrong answer"}) + "\n" for i in range(4)))
        with pytest.raises(BaizeError, match=r"^--bootstrap 0: .*use --bootstrap 1000"):
            check(JudgeCheckConfig(pairs=str(pairs), judge="openai:judge", out=str(tmp_path / "jc"), progress=False,
                                   bootstrap=0), judge_llm=judge)
    assert not judge.calls


def test_mt_bench_scores_ledger_counts_only_the_score_calls(tmp_path):
    fakes, cfg = models_for(tmp_path)
    cfg.judge_prompts = str(fastchat_prompts(tmp_path / "judge_prompts.jsonl"))
    judge = FakeLLM(mt_judge, name="judge")
    res = evaluate(cfg, llms=fakes, judge_llm=judge)
    out = Path(cfg.out)
    part = {}
    for name in ("verdicts", "scores"):
        ledger = json.loads((out / f"{name}.summary.json").read_text())["ledger"]["judge"]
        made = sum(r["meta"]["usage"]["calls"] for r in read_jsonl(out / f"{name}.jsonl"))
        assert ledger["calls"] == made, name  # each part's summary counts its own calls, not the other's
        part[name] = made
    assert part["verdicts"] == 3 * 6 * 2 * 2  # pairs x questions x turns x orders
    assert part["scores"] >= 3 * 6 * 2  # models x questions x turns, and a retry where a rating did not parse
    assert res["ledger"]["judge"]["calls"] == part["scores"] + part["verdicts"] == len(judge.calls)
