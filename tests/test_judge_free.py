"""eval's judge-free evidence (issue 31, section 1): the collection's filters, repetition, length and
held-out NLL, each with an interval, and a paired verdict per compared pair that needs no judge."""
import json

from baize.eval.evaluate import EvalConfig, evaluate
from baize.eval.judge_free import HELDOUT, nll_measure, pair_measures
from baize.schema import read_jsonl
from baize.testing import FakeLLM

ANSWER = {"Question": "Paris has been the capital of France since the tenth century, under Hugh Capet.",
          "Follow-up": "The Seine crosses Paris from east to west, thirteen kilometres in all, under 37 bridges."}


def _answers(m):
    return ANSWER[m[-1]["content"].split()[0]]


def _fakes_and_cfg(tmp_path, **kw):
    fakes = {"echo": FakeLLM(lambda m: m[-1]["content"], name="echo"),  # says the question back
             "loop": FakeLLM(lambda m: "Well, the city is old. " * 6, name="loop"),
             "answers": FakeLLM(_answers, name="answers")}
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "turns": [f"Question {i}: what is the capital of "
                                                                           f"France, and since when?",
                                                                           f"Follow-up {i}: which river crosses it?"]})
                                 + "\n" for i in range(8)))
    cfg = EvalConfig(models=[f"{n}=openai:{n}" for n in fakes], questions=str(questions), judge="none",
                     out=str(tmp_path / "eval"), progress=False, bootstrap=300, **kw)
    return fakes, cfg


def test_an_echoing_model_scores_a_higher_degenerate_rate_than_one_that_answers(tmp_path):
    fakes, cfg = _fakes_and_cfg(tmp_path)
    res = evaluate(cfg, llms=fakes)
    echo, answers = res["models"]["echo"]["judge_free"], res["models"]["answers"]["judge_free"]
    assert echo["degenerate"]["value"] == 1.0 and answers["degenerate"]["value"] == 0.0
    assert set(echo["by_reason"]) == {"non_answer"} and echo["by_reason"]["non_answer"]["value"] == 1.0
    for m in (echo, answers):
        for k in ("degenerate", "distinct_2", "distinct_3", "loop", "mean_words"):
            lo, hi = m[k]["ci"]
            assert lo <= m[k]["value"] <= hi and m[k]["n"] == 16
    # the pair's paired bootstrap: answering beats echoing, beyond the interval
    pair = next(p for p in res["judge_free_pairs"] if (p["a"], p["b"]) == ("answers", "echo"))
    assert pair["measures"]["degenerate"]["verdict"] == "better" and pair["measures"]["degenerate"]["ci"][1] < 0
    assert pair["summary"].startswith("answers vs echo, judge-free: degenerate rate better (-1")
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["models"]["echo"]["judge_free"]["degenerate"]["value"] == 1.0
    assert [p["summary"] for p in saved["judge_free_pairs"]] == [p["summary"] for p in res["judge_free_pairs"]]


def test_a_looping_model_shows_in_repetition_and_the_report(tmp_path):
    fakes, cfg = _fakes_and_cfg(tmp_path)
    res = evaluate(cfg, llms=fakes)
    loop, answers = res["models"]["loop"]["judge_free"], res["models"]["answers"]["judge_free"]
    assert loop["loop"]["value"] == 1.0 and answers["loop"]["value"] == 0.0
    assert loop["distinct_3"]["value"] < 0.3 < 0.99 < answers["distinct_3"]["value"]
    assert loop["by_reason"]["repetition"]["value"] == 1.0
    pair = next(p for p in res["judge_free_pairs"] if (p["a"], p["b"]) == ("answers", "loop"))
    assert {k: pair["measures"][k]["verdict"] for k in ("loop", "distinct_2", "distinct_3")} == \
        {"loop": "better", "distinct_2": "better", "distinct_3": "better"}
    md = (tmp_path / "eval" / "report.md").read_text()
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "## Judge-free evidence" in md and "Judge-free evidence" in html
    assert pair["summary"].split(":")[0] in md and 'alt="Answer length distribution"' in html
    assert "repetition 100%" in md  # the filter's reason, beside the figures


def test_no_change_is_shown_when_the_interval_holds_zero():
    """Two models that differ on one answer in eight: a difference, but not one the interval can tell from 0."""
    rows = {m: {("q", i): {"degenerate": float(m == "a" and i == 0), "distinct_2": 1.0, "distinct_3": 1.0, "loop": 0.0,
                           "mean_words": 10.0} for i in range(8)} for m in ("a", "b")}
    p = pair_measures("a", "b", rows, {}, 500)
    assert p["measures"]["degenerate"]["diff"] == 0.125 and p["measures"]["degenerate"]["verdict"] == "no change shown"
    assert p["summary"] == "a vs b, judge-free: no measure moved beyond its interval"


def test_nll_interval_resamples_dialogues_and_pairs_them():
    # one long dialogue of 100 tokens and three short: the mean weighs tokens, the interval resamples dialogues
    a = [[100.0, 100], [30.0, 10], [30.0, 10], [30.0, 10]]
    m = nll_measure(a, 500)
    assert m["value"] == round(190 / 130, 4) and m["n"] == 4 and m["ci"][0] < m["value"] < m["ci"][1]
    b = [[t + 50.0, c] for t, c in a]  # worse on every dialogue
    rows = {"a": {}, "b": {}}
    p = pair_measures("a", "b", rows, {"a": a, "b": b}, 500)
    assert p["measures"]["nll"]["verdict"] == "better" and p["measures"]["nll"]["ci"][1] < 0


def test_the_shipped_held_out_set_is_the_default_and_real(tmp_path, tiny_model_dir):
    recs = list(read_jsonl(HELDOUT, validate=True))
    shipped = {json.loads(line)["id"] for line in (HELDOUT.parent / "hh_helpful_online.jsonl").open()}
    assert 20 <= len(recs) <= 40 and not {r["id"].removeprefix("hh-") for r in recs} & shipped
    assert all(r["messages"][-1]["role"] == "assistant" for r in recs)
    from baize.llm.models import HFLLM
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": "q", "turns": ["Say hi."]}) + "\n")
    llm = HFLLM(str(tiny_model_dir))
    cfg = EvalConfig(models=[f"tiny={tiny_model_dir}"], questions=str(questions), judge="none",
                     out=str(tmp_path / "eval"), progress=False, max_tokens=4, bootstrap=200)
    try:
        res = evaluate(cfg, llms={"tiny": llm})
    finally:
        llm.engine.close()
    nll = res["models"]["tiny"]["judge_free"]["nll"]
    # a random model over a 49K vocabulary: about ln(49152) = 10.8 nats per token, on every dialogue
    assert nll["n"] == len(recs) and 9 < nll["ci"][0] <= nll["value"] <= nll["ci"][1] < 13
    assert res["models"]["tiny"]["nll"]["data"] == nll["value"]


def test_the_pipelines_closing_lines_quote_the_summary(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    import baize.eval.evaluate as ev
    import baize.pipeline as pl
    line = "v2 vs base, judge-free: degenerate rate better (-0.5 [-0.7, -0.3]); no change shown in loop rate"
    res = {"judge_free_pairs": [{"a": "v2", "b": "base", "summary": line}], "stopped": None,
           "paths": {"html": str(tmp_path / "eval" / "report.html"), "md": str(tmp_path / "eval" / "report.md")}}
    monkeypatch.setattr(ev, "evaluate", lambda cfg: res)
    monkeypatch.setattr(ev, "print_results", lambda r, console, **kw: console.print("THE TABLES"))
    monkeypatch.setattr(pl, "_budget_or_stop", lambda ctx: ({}, None))
    console = Console(file=io.StringIO(), width=100)
    ctx = pl.Context(console, pl.PipelineConfig(out=str(tmp_path)), tmp_path, 6, [], [], [])
    assert pl._eval_step(ctx).status == "done"
    out = console.file.getvalue()
    # after the tables, among the last lines: what moved without a judge
    assert line in out and out.index(line) > out.index("THE TABLES") and "report.html" in out[out.index(line):]
