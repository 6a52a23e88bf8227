"""The plan is the run's own (issue 28.2): each stage runs on fakes after its --dry-run, and the
plan's calls per role equal the run's ledger calls per role exactly; where a server ignores n and
SDF tops up, the plan's stated bound holds. The fakes answer every prompt in a shape that parses
and each model differently, so no call is retried and no two prompts coincide in the judge's cache.

The endpoints are baize.testing's fake OpenAI servers: a well-behaved one, and `llama-cpp-python`,
which ignores n and returns one choice per request (abetlen/llama-cpp-python#1906)."""
import json
from pathlib import Path

import pytest
from test_eval import fastchat_prompts, models_for, mt_judge
from test_judge_check import write_pairs

from baize.cli import main
from baize.testing import FakeLLM, ServerThread, make_endpoint_app

# mt_judge reads "||" as a pair's two sides, which a single-math multi-turn prompt with no second
# reference also shows: that verdict would not parse and be asked again (a retry the plan does not
# count), so the single prompts, named in their system prompt, get a rating here.

def planned(rows) -> dict:
    """{role: calls} and {role: most calls} from --plan-out's rows."""
    calls, most = {}, {}
    for r in rows:
        calls[r["role"]] = calls.get(r["role"], 0) + r["calls"]
        most[r["role"]] = most.get(r["role"], 0) + r.get("calls_max", r["calls"])
    return calls, most


def spent(ledger: dict) -> dict:
    return {role: r["calls"] for role, r in ledger.items()}


def plan_out(argv, path: Path) -> tuple[dict, dict]:
    assert main([*argv, "--dry-run", "--plan-out", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert all(set(r) >= {"stage", "role", "calls", "prompt_tokens", "completion_tokens", "cost"} for r in rows)
    return planned(rows)


@pytest.fixture(scope="module")
def endpoint():
    with ServerThread(make_endpoint_app(latency=0.0)) as url:
        yield url


@pytest.mark.parametrize("mode,extra", [("oneshot", ["--max-turns", "2"]), ("turns", ["--max-turns", "2"])])
def test_collect_plans_what_it_calls(tmp_path, monkeypatch, endpoint, mode, extra):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    argv = ["collect", "--seeds", "quora", "--limit", "3", "--mode", mode, *extra, "--teacher", "openai:teacher",
            "--judge", "openai:judge", "--base-url", endpoint, "--out", str(tmp_path / "d.jsonl"), "--no-progress"]
    calls, most = plan_out(argv, tmp_path / "plan.json")
    assert calls == most
    assert main(argv) == 0
    summary = json.loads((tmp_path / "d.summary.json").read_text())
    assert summary["kept"] == 3 and spent(summary["ledger"]) == calls


def test_sdf_plans_what_it_calls_and_bounds_a_server_that_ignores_n(tmp_path, monkeypatch, endpoint):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    for policy in ("policy", "llama-cpp-python"):
        out = tmp_path / policy / "sdf.jsonl"
        argv = ["sdf", "--policy", f"openai:{policy}", "--judge", "openai:judge", "--base-url", endpoint, "--prompts",
                "quora", "--limit", "3", "--n", "3", "--out", str(out), "--no-progress"]
        calls, most = plan_out(argv, tmp_path / f"{policy}.json")
        assert calls == {"policy": 3, "judge": 3 * 2} and most["policy"] == 3 * 3  # n calls each, at most
        assert main(argv) == 0
        got = spent(json.loads(out.with_name("sdf.summary.json").read_text())["ledger"])
        assert got["judge"] == calls["judge"]
        if policy == "policy":  # honours n: one call per prompt, as planned
            assert got["policy"] == calls["policy"]
        else:  # one choice per request: topped up, then n single calls; within the stated bound
            assert calls["policy"] < got["policy"] <= most["policy"]


@pytest.mark.parametrize("judge_prompts", [False, True])
def test_eval_plans_what_it_calls(tmp_path, judge_prompts):
    from baize.eval.evaluate import evaluate, plan
    fakes, cfg = models_for(tmp_path)
    judge = FakeLLM(name="judge")
    if judge_prompts:  # FastChat's prompts judge each turn apart: about twice the judge's calls
        cfg.judge_prompts = str(fastchat_prompts(tmp_path / "judge_prompts.jsonl"))
        judge = FakeLLM(lambda m: "Rating: [[7]]" if "(single" in m[0]["content"] else mt_judge(m), name="judge")
    calls, most = planned([r.as_json() for r in plan(cfg).rows])
    assert calls == most and set(calls) == {"a", "b", "c", "judge"}  # each model is its ledger role
    res = evaluate(cfg, llms=fakes, judge_llm=judge)
    assert spent(res["ledger"]) == calls
    # 6 two-turn questions, 3 pairs (2 orders) and 3 scores: per question, or per turn with the prompts
    assert calls["judge"] == (2 if judge_prompts else 1) * 6 * (3 * 2 + 3)


def test_a_missing_judge_prompts_file_is_one_line_before_any_work(tmp_path, capsys):
    argv = ["eval", "--models", "a=openai:a", "--judge", "openai:j", "--judge-prompts", str(tmp_path / "nope.jsonl"),
            "--out", str(tmp_path / "e")]
    for extra in (["--dry-run"], []):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--judge-prompts" in err and "no such file" in err, err
    assert not (tmp_path / "e").exists()


def test_judge_check_plans_what_it_calls(tmp_path, capsys):
    from baize.judge.check import JudgeCheckConfig, check, plan
    pairs = write_pairs(tmp_path / "prefs.jsonl")
    cfg = JudgeCheckConfig(judge="openai:judge", pairs=str(pairs), out=str(tmp_path / "jc"), progress=False)
    calls, _ = planned([r.as_json() for r in plan(cfg).rows])
    check(cfg, judge_llm=FakeLLM(name="judge"))
    assert spent(json.loads((tmp_path / "jc" / "verdicts.summary.json").read_text())["ledger"]) == calls == {
        "judge": 12 * 2}
    # the command line has the dry run too, and refuses --plan-out without it
    assert main(["judge-check", "--pairs", str(pairs), "--judge", "openai:j", "--dry-run"]) == 0
    assert "nothing was called or written" in capsys.readouterr().out
    assert main(["judge-check", "--pairs", str(pairs), "--plan-out", str(tmp_path / "p.json")]) == 2
    assert "add --dry-run" in capsys.readouterr().err


def test_the_pipeline_plans_what_every_stage_calls(tmp_path, monkeypatch, endpoint):
    """Every stage of `baize pipeline` on fakes: the teacher, SDF's policy and the judge on the fake
    server; training is skipped and v1 and v2 answer eval as FakeLLMs (a real run trains and loads
    them locally: no call to count). Each stage's plan rows equal its own ledger."""
    import hashlib

    import baize.eval.evaluate as ev
    import baize.llm.models as models
    import baize.pipeline as pipeline
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    monkeypatch.setenv("OPENAI_BASE_URL", endpoint)  # the pipeline gives eval's openai: base no --base-url
    real_load = models.load_endpoint

    def load(spec, *a, **kw):  # v1 and v2 as local models that answer each in its own words
        if spec.startswith("openai:"):
            return real_load(spec, *a, **kw)
        name = Path(spec).name
        return FakeLLM(lambda m: f"{name} answers " + "in detail " * len(name) + m[-1]["content"][:40], name=name)
    monkeypatch.setattr(models, "load_endpoint", load)
    monkeypatch.setattr(pipeline, "_train_once", lambda console, run, cfg: None)
    monkeypatch.setattr(ev, "_check_spec", lambda spec: None)
    monkeypatch.setattr(ev, "model_key", lambda spec, cfg: hashlib.sha1(spec.encode()).hexdigest()[:12])
    monkeypatch.setattr(ev, "nll", lambda lazy, records: None)
    out = tmp_path / "p"
    argv = ["pipeline", "--out", str(out), "--teacher", "openai:teacher", "--judge", "openai:judge", "--base",
            "openai:base", "--base-url", endpoint, "--sdf-policy", "openai:policy", "--sdf-base-url", endpoint,
            "--limit", "3", "--sdf-prompts", "3", "--eval-limit", "2"]
    assert main([*argv, "--dry-run", "--plan-out", str(tmp_path / "plan.json")]) == 0
    rows = json.loads((tmp_path / "plan.json").read_text())
    assert main(argv) == 0
    ledgers = {"collect": json.loads((out / "dialogues.summary.json").read_text())["ledger"],
               "sdf": json.loads((out / "sdf.summary.json").read_text())["ledger"],
               "eval": json.loads((out / "eval" / "results.json").read_text())["ledger"]}
    for stage, ledger in ledgers.items():
        calls, _ = planned([r for r in rows if r["stage"] == stage])
        assert spent(ledger) == calls, stage
    assert set(ledgers["eval"]) == {"base", "v1", "v2", "judge"}
