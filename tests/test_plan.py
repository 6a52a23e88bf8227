"""Cost before and budget during (issue 21.3): `--dry-run` plans that load and write nothing and
count what the stages really call, limits that ask for more than there is, and caps (--max-cost,
--max-tokens-total) that stop a run cleanly and carry across the pipeline's stages and reruns."""
import json

import pytest

from baize.cli import main
from baize.plan import MESSAGE_TOKENS, REPLY_TOKENS, spent, tokens
from baize.runner import Ledger
from baize.schema import read_jsonl
from baize.testing import ServerThread, make_app


@pytest.fixture
def no_models(monkeypatch, tmp_path):
    """Any model load fails the test, and the model cache must stay untouched."""
    import baize.llm.models

    def refuse(*a, **kw):
        raise AssertionError("a dry run loaded a model")
    monkeypatch.setattr(baize.llm.models, "load_llm", refuse)
    monkeypatch.setattr(baize.llm.models, "load_endpoint", refuse)
    monkeypatch.setenv("BAIZE_CACHE", str(tmp_path / "cache"))
    yield
    assert not (tmp_path / "cache").exists()


def _rows(out: str) -> dict:
    """The plan's table rows, {(stage, role): [calls, prompt tokens, completion tokens, cost]}."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 7 and cells[3].replace(",", "").isdigit():
            rows[(cells[0], cells[1])] = [int(c.replace(",", "")) for c in cells[3:6]] + [cells[6]]
    return rows


def test_dry_runs_write_nothing_and_load_nothing(tmp_path, capsys, no_models):
    out = tmp_path / "out"
    for argv in (["collect", "--seeds", "quora", "--limit", "5", "--out", str(out / "d.jsonl"), "--judge", "default"],
                 ["sdf", "--policy", "default", "--prompts", "quora", "--limit", "4", "--out", str(out / "s.jsonl")],
                 ["eval", "--models", "base=default", "v1=runs/nowhere", "--out", str(out / "eval")],
                 ["pipeline", "--out", str(out / "demo")]):
        assert main([*argv, "--dry-run"]) == 0, argv
        assert "nothing was called or written" in capsys.readouterr().out
    assert not out.exists()


def test_the_plan_counts_what_the_stages_call(tmp_path, capsys, monkeypatch, no_models):
    """Counted by hand from the stages' code: turns mode with the seed as the first human line makes
    max_turns assistant calls and max_turns - 1 human calls per seed; SDF's judge one call per order;
    eval's judge 2 per model pair and question (both orders, all turns in one prompt) and 1 score per
    model and question."""
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
    assert main(["pipeline", "--dry-run", "--out", str(tmp_path / "p"), "--teacher", "openai:t", "--judge",
                 "openai:j", "--limit", "5", "--max-turns", "3", "--max-tokens", "100", "--sdf-prompts", "7",
                 "--n", "3", "--sdf-max-tokens", "50", "--eval-limit", "4", "--eval-max-tokens", "20",
                 "--teacher-price-in", "0.5", "--teacher-price-out", "2", "--judge-price-in", "0.25",
                 "--judge-price-out", "1"]) == 0
    rows = _rows(capsys.readouterr().out)
    calls, pin, pout, cost = rows[("collect", "teacher")]
    assert calls == 5 * (3 + 2) and pout == 5 * (3 * 100 + 2 * 100)  # human lines capped at min(100, 256)
    assert cost == f"${(pin * 0.5 + pout * 2) / 1000:,.2f}"
    calls, _, pout, cost = rows[("sdf", "policy")]
    assert (calls, pout, cost) == (7, 7 * 3 * 50, "local")  # v1 in-process: no API cost
    calls, _, pout, _ = rows[("sdf", "judge")]
    assert (calls, pout) == (7 * 2, 7 * 2 * 512)
    calls, pin, pout, _ = rows[("eval", "judge")]
    assert calls == 4 * (3 * 2 + 3) and pout == calls * 512
    # one eval answer by hand: the builtin questions have two turns; the second sees the first answer
    from baize.eval.evaluate import load_questions
    qs = load_questions("builtin", limit=4)
    want = sum(2 * REPLY_TOKENS + 2 * (tokens(q.turns[0]) + MESSAGE_TOKENS) + tokens(q.turns[1]) + MESSAGE_TOKENS
               + 20 + MESSAGE_TOKENS for q in qs)
    assert rows[("eval", "base")][:3] == [8, want, 8 * 20]  # each model is its own ledger role


def test_a_local_judge_is_planned_in_the_mode_it_will_run(tmp_path, capsys, monkeypatch, no_models):
    """The embedded judge runs debiased by default: SDF ranks each prompt's n candidates in all n
    rotations and writes nothing (log-probabilities); --judge-mode choice goes back to 2 orders."""
    monkeypatch.setenv("COLUMNS", "200")
    args = ["pipeline", "--dry-run", "--out", str(tmp_path / "p"), "--limit", "2", "--sdf-prompts", "3", "--n", "4",
            "--eval-limit", "1"]
    assert main(args) == 0
    assert _rows(capsys.readouterr().out)[("sdf", "judge")][0:3:2] == [3 * 4, 0]
    from baize.sdf import Prompt, SDFConfig
    from baize.sdf import plan as sdf_plan
    ctx = [Prompt("p", [{"role": "user", "content": "Why is the sky blue?"}], "x")]
    for mode, calls in (("choice", 2), ("debiased", 4), ("auto", 4)):
        (row,) = [r for r in sdf_plan(SDFConfig(judge="default", n=4, judge_mode=mode), ctx).rows if r.role == "judge"]
        assert row.calls == calls and row.completion_tokens == 0, mode


def test_limits_larger_than_the_set_are_never_silent(tmp_path, capsys, no_models):
    assert main(["eval", "--models", "a=default", "--limit", "80", "--dry-run", "--out", str(tmp_path / "e")]) == 0
    assert "--limit 80: builtin has 12; using 12" in capsys.readouterr().err
    assert main(["collect", "--seeds", "alpaca", "--limit", "999", "--dry-run", "--out", str(tmp_path / "c")]) == 0
    assert "--limit 999: alpaca has 175; using 175" in capsys.readouterr().err
    assert main(["sdf", "--prompts", "alpaca", "--limit", "500", "--dry-run", "--out", str(tmp_path / "s")]) == 0
    assert "--limit 500: alpaca has 175; using 175" in capsys.readouterr().err
    assert main(["pipeline", "--dry-run", "--seeds", "alpaca", "--limit", "170", "--eval-limit", "80"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--sdf-prompts 8: alpaca has 175 seeds, 170 for collection, so SDF prompts: 5; using 5" in out
    assert "--eval-limit 80: builtin has 12; using 12" in out
    # a real run whose collection takes every seed has nothing left for SDF: an error before any work
    assert main(["pipeline", "--seeds", "alpaca", "--limit", "175", "--out", str(tmp_path / "p")]) == 2
    assert "SDF has no prompt left; lower --limit" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def _rows8(out: str) -> dict:
    """The rows of a plan that has the reasoning column: {(stage, role): [calls, prompt, completion, reasoning, cost]}
    (calls 'A to B', an endpoint that may ignore n: A)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 8:
            cells[3] = cells[3].split(" to ")[0]
        if len(cells) == 8 and cells[3].replace(",", "").isdigit():
            rows[(cells[0], cells[1])] = [int(c.replace(",", "").lstrip("~") or 0) for c in cells[3:7]] + [cells[7]]
    return rows


def test_the_plan_estimates_a_reasoning_models_hidden_tokens(tmp_path, capsys, monkeypatch, no_models):
    """A reasoning model (known by name, or declared by --reasoning-effort) bills hundreds of hidden
    tokens a reply as completion tokens: the plan shows an estimate per effort, labelled as one, and
    prices it; a model that is neither gets no such column."""
    from baize.llm.endpoints import REASONING_GUESS
    monkeypatch.setenv("COLUMNS", "250")
    collect = ["collect", "--dry-run", "--seeds", "quora", "--limit", "5", "--out", str(tmp_path / "d.jsonl"),
               "--price-in", "0.5", "--price-out", "2"]
    assert main([*collect, "--teacher", "openai:gpt-5-mini"]) == 0
    out = capsys.readouterr().out
    calls, pin, pout, reasoning, cost = _rows8(out)[("collect", "teacher")]
    assert reasoning == calls * REASONING_GUESS["medium"] and REASONING_GUESS["medium"] >= 256
    assert cost == f"${(pin * 0.5 + (pout + reasoning) * 2) / 1000:,.2f}"
    assert "reasoning tokens are an estimate, not a bound" in " ".join(out.split())
    assert main([*collect, "--teacher", "openai:gpt-5-mini", "--reasoning-effort", "low"]) == 0
    assert _rows8(capsys.readouterr().out)[("collect", "teacher")][3] == calls * REASONING_GUESS["low"]
    assert main([*collect, "--teacher", "openai:gpt-4o-mini"]) == 0  # no reasoning model: the table as before
    out = capsys.readouterr().out
    assert not _rows8(out) and "reasoning" not in out
    assert main([*collect, "--teacher", "openai:my-r1", "--reasoning-effort", "high"]) == 0  # declared one
    assert _rows8(capsys.readouterr().out)[("collect", "teacher")][3] == calls * REASONING_GUESS["high"]
    # SDF's policy writes n replies a call, each thinking; its judge has an effort of its own
    assert main(["sdf", "--dry-run", "--prompts", "quora", "--limit", "3", "--n", "4", "--out", str(tmp_path / "s"),
                 "--policy", "openai:o4-mini", "--judge", "openai:gpt-5-mini", "--judge-reasoning-effort",
                 "minimal"]) == 0
    rows = _rows8(capsys.readouterr().out)
    assert rows[("sdf", "policy")][3] == 3 * 4 * REASONING_GUESS["medium"]
    assert rows[("sdf", "judge")][3] == rows[("sdf", "judge")][0] * REASONING_GUESS["minimal"]


def test_pipeline_takes_the_judges_max_tokens_and_the_reasoning_flags(tmp_path, capsys, monkeypatch, no_models):
    """The judge's cap and both roles' reasoning effort reach every stage the pipeline runs."""
    from baize.llm.endpoints import REASONING_GUESS
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["pipeline", "--dry-run", "--out", str(tmp_path / "p"), "--teacher", "openai:gpt-5-mini", "--judge",
                 "openai:gpt-5-mini", "--limit", "3", "--sdf-prompts", "2", "--eval-limit", "2",
                 "--judge-max-tokens", "100", "--reasoning-effort", "low", "--judge-reasoning-effort", "high"]) == 0
    rows = _rows8(capsys.readouterr().out)
    teacher = rows[("collect", "teacher")]
    assert teacher[3] == teacher[0] * REASONING_GUESS["low"]
    for stage in ("sdf", "eval"):
        calls, _, completion, reasoning, _ = rows[(stage, "judge")]
        assert completion == calls * 100 and reasoning == calls * REASONING_GUESS["high"], stage
    assert not rows[("eval", "base")][3]  # the local models think nothing hidden (eval names each by its ledger role)


def test_the_ledger_stops_at_a_cost_cap():
    ledger = Ledger(prices={"teacher": (1.0, 2.0)}, max_cost=0.05)
    ledger.add(usage={"prompt_tokens": 10, "completion_tokens": 10, "calls": 1})
    assert not ledger.exhausted() and ledger.spent_cap() is None  # $0.03
    ledger.child().add(usage={"prompt_tokens": 20, "completion_tokens": 0, "calls": 1}, role="teacher")
    assert ledger.spent_cap() == "--max-cost" and ledger.child().exhausted()  # $0.03 + the child's $0.02
    assert Ledger(max_tokens_total=5, max_cost=1.0).spent_cap() is None
    tokens_only = Ledger(max_tokens_total=5)
    tokens_only.add(usage={"prompt_tokens": 5, "completion_tokens": 0, "calls": 1})
    assert tokens_only.spent_cap() == "--max-tokens-total"


def test_a_capped_pipeline_stops_cleanly_and_resumes_with_a_higher_cap(tmp_path, capsys):
    out = tmp_path / "demo"
    app = make_app()
    with ServerThread(app) as url:
        args = ["pipeline", "--out", str(out), "--teacher", "openai:fake-teacher", "--base-url", url, "--limit", "6",
                "--stop-after", "collect", "--concurrency", "1", "--teacher-price-in", "1", "--teacher-price-out",
                "1"]
        # a cap one dialogue fits in: $0.05 stops the first one mid-way, which is then held back, not kept
        assert main([*args, "--max-cost", "0.25"]) == 0
        said = " ".join(capsys.readouterr().out.split())
        kept = list(read_jsonl(out / "dialogues.jsonl"))
        assert 1 <= len(kept) < 6  # stopped early, what was written is kept
        used = spent([out / "dialogues.summary.json"])
        assert used["cost"] >= 0.25
        assert "rerun the same command with --max-cost 0.5 (or higher) to continue" in said
        # the same cap again: it is spent already (read from the summary on disk), so no call is made
        requests = app.state.requests
        assert main([*args, "--max-cost", "0.25"]) == 0
        assert app.state.requests == requests and "--max-cost 0.5" in " ".join(capsys.readouterr().out.split())
        assert main([*args, "--max-cost", "100"]) == 0
        total = json.loads((out / "dialogues.summary.json").read_text())["total"]
        assert total["kept"] + total["rejected"] == 6 and total["cost"] > used["cost"]
