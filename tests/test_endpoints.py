"""Every stage against fakes of the runtimes users really run (baize.testing.make_endpoint_app): an
OpenAI reasoning model, llama-cpp-python's server (ignores n), llama.cpp's server (refuses n), a
server without usage, and a key that is rate limited. Each adaptation happens once and says so
once; SDF still gets n candidates; 429 streaks narrow the width instead of failing items."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from baize.data.collect import CollectConfig, collect
from baize.llm.base import EmptyReplyError, OpenAILLM
from baize.llm.endpoints import refusal
from baize.schema import read_jsonl, sidecar, write_jsonl
from baize.sdf import SDFConfig, sdf
from baize.testing import REASONING_TOKENS, ServerThread, make_endpoint_app

ROOT = Path(__file__).resolve().parent.parent
TIDES = ["The moon's gravity pulls the oceans toward it, raising a bulge on the near side of the Earth.",
         "Tides rise and fall twice a day because the Earth turns under two bulges of water, one facing the "
         "moon and one opposite it; the sun adds a smaller pull of its own.",
         "Spring tides come when the sun and moon line up and their pulls add; neap tides come at the quarter "
         "moons, when the pulls partly cancel and the range between high and low water is smallest."]
RUNTIMES = ["gpt-5-mini", "llama-cpp-python", "llama-server", "no-usage", "rate-limited"]


@pytest.fixture
def endpoint():
    """A fresh fake server per test: a new base URL, so nothing learned by another test carries over."""
    app = make_endpoint_app()
    with ServerThread(app) as url:
        yield app, url


def lines(caplog, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "baize.llm.endpoints" and r.getMessage().startswith(start)]


def check_learned(caplog, model: str) -> None:
    """The adaptations each runtime needs, each logged exactly once."""
    want = {"gpt-5-mini": ["gpt-5-mini refuses max_tokens", "gpt-5-mini ignores temperature"],
            "no-usage": ["no-usage sends no token usage"]}.get(model, [])
    for start in want:
        assert len(lines(caplog, start)) == 1, (start, [r.getMessage() for r in caplog.records])


def check_ledger(model: str, role: dict) -> None:
    if model == "gpt-5-mini":
        assert role["reasoning_tokens"] >= REASONING_TOKENS["medium"] * role["calls"]
        assert role["completion_tokens"] > role["reasoning_tokens"]  # inside it, not added to it
    else:
        assert "reasoning_tokens" not in role
    if model == "no-usage":
        assert role["estimated_tokens"] == role["prompt_tokens"] + role["completion_tokens"] > 0
    else:
        assert "estimated_tokens" not in role


# --- the pieces -------------------------------------------------------------------------------------

def test_refusal_reads_each_runtimes_error_body():
    sent = {"messages": [], "max_tokens": 9, "temperature": 0.7, "top_p": 0.9, "n": 4, "seed": 1}
    openai_max = {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                             "'max_completion_tokens' instead.", "type": "invalid_request_error",
                  "param": "max_tokens", "code": "unsupported_parameter"}
    openai_temp = {"message": "Unsupported value: 'temperature' does not support 0.7 with this model. Only the "
                              "default (1) value is supported.", "type": "invalid_request_error",
                   "param": "temperature", "code": "unsupported_value"}
    llama_server = {"code": 500, "message": "Only one completion choice is allowed", "type": "server_error"}
    assert refusal(openai_max, "", sent) == "max_tokens"
    assert refusal(openai_temp, "", sent) == "temperature"
    assert refusal(llama_server, "", sent) == "n"
    assert refusal(llama_server, "", {"messages": []}) is None  # we did not send n: nothing to drop
    # a 400 about the prompt, or a value that is out of range, is no refusal: no parameter is dropped
    too_long = {"message": "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens "
                           "(1000 in the messages, 2000 in the completion).", "param": "messages",
                "code": "context_length_exceeded"}
    assert refusal(too_long, "", sent) is None
    assert refusal({"message": "'temperature' must be between 0 and 2", "param": "temperature"}, "", sent) is None


def test_throttle_halves_on_a_streak_and_widens_when_it_stops(fake_throttle):
    t, clock, hits = fake_throttle(100.0)
    hits[0] = 1
    t.update(0)
    assert t.width == 64  # one 429 is no streak
    hits[0] = 5
    t.update(0)
    assert t.width == 32
    hits[0] = 9
    t.update(0)
    assert t.width == 32  # the same streak, reported by the calls already in flight
    for _ in range(3):
        clock[0] += 1.5
        hits[0] += 3
        t.update(0)
    assert t.width == 4 and t.lowest == 4
    t.update(3)
    assert t.width == 4  # within the cooldown of the last 429
    clock[0] += 1.5
    t.update(3)
    t.update(100)
    assert t.width == 5  # one more per quiet interval, however many items finished in it
    for _ in range(59):
        clock[0] += 1.0
        t.update(1)
    assert t.width == 64 and t.as_dict() == {"limit": 64, "lowest": 4, "last": 64, "halvings": 4, "raises": 60,
                                              "rate_limited": 18}


def test_an_adaptation_is_learned_once_by_many_threads(endpoint, caplog):
    app, url = endpoint
    llm = OpenAILLM("gpt-5-mini", base_url=url, api_key="x")
    msgs = [{"role": "user", "content": "Why is the sky blue?"}]

    def call():
        llm.chat(msgs, temperature=0.7, top_p=0.9, max_tokens=200)
    threads = [threading.Thread(target=call) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for start in ("gpt-5-mini refuses max_tokens", "gpt-5-mini ignores temperature", "gpt-5-mini ignores top_p"):
        assert len(lines(caplog, start)) == 1
    refused = sum(v for k, v in app.state.stats["gpt-5-mini"].items() if k.startswith("400:"))
    assert refused <= 3 * 16
    before = dict(app.state.stats["gpt-5-mini"])
    out = OpenAILLM("gpt-5-mini", base_url=url, api_key="x").chat(msgs, temperature=0.7, max_tokens=200)
    # a second client of the same endpoint and model knows it already: one request, no refusal
    assert app.state.stats["gpt-5-mini"]["requests"] == before["requests"] + 1
    assert {k: v for k, v in app.state.stats["gpt-5-mini"].items() if k != "requests"} == \
        {k: v for k, v in before.items() if k != "requests"}
    assert out[0].reasoning_tokens == REASONING_TOKENS["medium"] < out[0].completion_tokens


# --- reasoning models, as they spend tokens: hundreds of hidden ones a reply, inside the cap ---------

SKY = [{"role": "user", "content": "Why is the sky blue?"}]


def test_a_reasoning_model_gets_room_for_its_reasoning(endpoint, caplog):
    """160 answer tokens against a model that thinks 768 first: the cap sent leaves room on top,
    so the reply has its text (a cap of 160 would come back empty, 160 tokens billed for nothing)."""
    app, url = endpoint
    out = OpenAILLM("gpt-5-mini", base_url=url, api_key="x").chat(SKY, max_tokens=160)
    assert out[0].text.startswith("Here is a thorough answer") and out[0].finish_reason == "stop"
    assert out[0].reasoning_tokens == REASONING_TOKENS["medium"] == 768
    ((cap, effort),) = app.state.sent["gpt-5-mini"]
    assert cap >= 160 + 768 and effort is None  # no effort asked: none sent, the model's own default
    assert len(lines(caplog, "gpt-5-mini refuses max_tokens: a reasoning model")) == 1


def test_reasoning_effort_is_sent_where_taken_and_dropped_once_where_refused(endpoint, caplog):
    app, url = endpoint
    low = OpenAILLM("gpt-5-mini", base_url=url, api_key="x", reasoning_effort="low").chat(SKY, max_tokens=160)
    assert low[0].reasoning_tokens == REASONING_TOKENS["low"] and app.state.sent["gpt-5-mini"][-1][1] == "low"
    high = OpenAILLM("gpt-5-mini", base_url=url, api_key="x", reasoning_effort="high").chat(SKY, max_tokens=160)
    assert high[0].reasoning_tokens == REASONING_TOKENS["high"] and high[0].text  # 3,072 fits the room at high
    assert app.state.stats["gpt-5-mini"]["400:reasoning_effort"] == 0
    # a model that is no reasoning model refuses the parameter: dropped once, said once, never sent again
    for _ in range(3):
        out = OpenAILLM("plain", base_url=url, api_key="x", reasoning_effort="low").chat(SKY, max_tokens=50)
        assert out[0].text and out[0].reasoning_tokens == 0
    assert app.state.stats["plain"]["400:reasoning_effort"] == 1
    assert [effort for _, effort in app.state.sent["plain"]] == [None] * 3
    assert [cap for cap, _ in app.state.sent["plain"]] == [50] * 3  # no room: it showed no reasoning
    assert len(lines(caplog, "plain refuses reasoning_effort")) == 1


def test_a_reply_cut_in_its_reasoning_is_asked_once_more_and_the_room_remembered(caplog):
    """A prompt that makes the model think 3,000 tokens, past the room it starts with: the cut reply
    is asked once more with room for twice what it spent, the cut one's tokens (billed) are counted
    with the answer, and the next call starts with that room."""
    app = make_endpoint_app(reasoning={"medium": 3000})
    with ServerThread(app) as url:
        llm = OpenAILLM("gpt-5-mini", base_url=url, api_key="x")
        out = llm.chat(SKY, max_tokens=160)
        again = llm.chat(SKY, max_tokens=160)
    (cut_cap, _), (retry_cap, _), (next_cap, _) = app.state.sent["gpt-5-mini"]
    assert retry_cap >= 160 + 2 * cut_cap and next_cap == 160 + 2 * 3000  # twice the most one reply spent
    assert out[0].text and out[0].reasoning_tokens == cut_cap + 3000  # both tries, as both are billed
    assert out[0].completion_tokens == cut_cap + 3000 + len(out[0].text.split())
    assert again[0].reasoning_tokens == 3000
    assert len(lines(caplog, "gpt-5-mini spent a reply's whole cap")) == 1


def test_a_reply_cut_before_any_text_is_a_failure_naming_its_roles_flag(endpoint):
    """A model that never stops thinking: one retry, then a failure that says what both tries cost
    and names the flag of the role that failed: --judge-max-tokens for a judge, not --max-tokens."""
    from baize.eval.evaluate import EvalConfig
    from baize.llm.models import load_endpoint
    _, url = endpoint
    forever = [{"role": "user", "content": "think forever"}]
    with pytest.raises(EmptyReplyError) as e:
        OpenAILLM("gpt-5-mini", base_url=url, api_key="x").chat(forever, max_tokens=160)
    assert "raise --max-tokens or lower --reasoning-effort" in str(e.value) and "in two tries" in str(e.value)
    assert e.value.usage["reasoning_tokens"] == e.value.usage["completion_tokens"] > 2 * (160 + 768)
    cfg = EvalConfig(models=["a=openai:plain"], judge="openai:gpt-5-mini", base_url=url, api_key="x")
    with pytest.raises(EmptyReplyError) as e:
        load_endpoint(cfg.judge, cfg, judge=True).chat(forever, max_tokens=cfg.judge_max_tokens)
    assert "raise --judge-max-tokens or lower --judge-reasoning-effort" in str(e.value)
    assert "--max-tokens " not in str(e.value).replace("--judge-max-tokens", "")


# --- the stages against each runtime ---------------------------------------------------------------

@pytest.mark.parametrize("model", RUNTIMES)
@pytest.mark.parametrize("mode", ["oneshot", "turns"])
def test_collect(endpoint, caplog, tmp_path, model, mode):
    app, url = endpoint
    cfg = CollectConfig(seeds="quora", limit=6, mode=mode, max_turns=2, teacher=f"openai:{model}", base_url=url,
                        api_key="x", temperature=0.7, out=str(tmp_path / "d.jsonl"), concurrency=6, progress=False)
    s = collect(cfg)
    assert (s.kept, s.failed) == (6, 0), (s.rejected, list(read_jsonl(sidecar(cfg.out, "failed"))))
    check_learned(caplog, model)
    check_ledger(model, s.ledger["teacher"])
    if model == "rate-limited":
        assert app.state.stats[model]["429"] > 0 and s.width["rate_limited"] > 0


def test_collect_64_wide_on_a_low_tier_key_narrows_and_finishes(tmp_path):
    app = make_endpoint_app(latency=0.05, capacity=4, retry_after=0.05)
    with ServerThread(app) as url:
        cfg = CollectConfig(seeds="quora", limit=64, mode="turns", max_turns=2, teacher="openai:rate-limited",
                            base_url=url, api_key="x", out=str(tmp_path / "d.jsonl"), concurrency=64, progress=False,
                            request_retries=1)
        s = collect(cfg)
    assert (s.kept, s.failed) == (64, 0)
    # narrowed by the streaks (how far depends on timing: the unit test above pins the arithmetic)
    assert s.width["limit"] == 64 and s.width["lowest"] <= 32 and s.width["halvings"] >= 1
    assert json.loads(sidecar(cfg.out, "summary.json").read_text())["width"] == s.width


@pytest.mark.parametrize("model", RUNTIMES)
def test_sdf_gets_n_candidates(endpoint, caplog, tmp_path, model):
    app, url = endpoint
    cfg = SDFConfig(policy=f"openai:{model}", judge=f"openai:{model}", base_url=url, api_key="x", prompts="quora",
                    limit=5, n=4, temperature=0.7, out=str(tmp_path / "sdf.jsonl"), concurrency=1, progress=False)
    s, prefs = sdf(cfg)
    recs = list(read_jsonl(cfg.out)) + list(read_jsonl(sidecar(cfg.out, "rejected")))
    assert s.failed == 0 and len(recs) == 5 and s.kept >= 3
    assert all(len(r["meta"]["candidates"]) == 4 and r["meta"]["dropped"]["duplicate"] == 0 for r in recs)
    how = [r["meta"]["sampling"] for r in recs]
    if model in ("llama-cpp-python", "llama-server"):
        # the first prompt learns it (one short reply, topped up); the others make n calls from the start
        assert sorted(how) == ["single_calls"] * 4 + ["topped_up"]
        assert all(r["meta"]["usage"]["policy"]["calls"] == 4 for r in recs)  # one short reply + 3 top-ups, or 4
        start = "llama-cpp-python ignores n" if model == "llama-cpp-python" else "llama-server refuses n"
        assert len(lines(caplog, start)) == 1
        assert app.state.stats[model]["500:n"] == (1 if model == "llama-server" else 0)
    else:
        assert how == ["n"] * 5
    check_learned(caplog, model)
    check_ledger(model, s.ledger["policy"])
    assert prefs["pairs"] > 0


def test_sdf_policy_that_only_thinks_fails_with_the_fix(tmp_path):
    app = make_endpoint_app(reasoning={"medium": 10 ** 6})  # more than any cap: no reply ever has text
    with ServerThread(app) as url:
        cfg = SDFConfig(policy="openai:gpt-5-mini", judge="openai:gpt-5-mini", base_url=url, api_key="x",
                        prompts="quora", limit=2, n=2, out=str(tmp_path / "sdf.jsonl"), progress=False)
        s, _ = sdf(cfg)
    failed = list(read_jsonl(sidecar(cfg.out, "failed")))
    assert s.failed == 2 and all("raise --max-tokens" in f["error"] and f["usage"]["reasoning_tokens"] > 0
                                 for f in failed)


@pytest.mark.parametrize("model", RUNTIMES)
def test_eval_and_data_filter_judge(endpoint, caplog, tmp_path, model):
    from baize.data.commands import DataFilterConfig, filter_file
    from baize.eval.evaluate import EvalConfig, evaluate
    _, url = endpoint
    cfg = EvalConfig(models=[f"a=openai:{model}", "b=openai:plain"], questions="builtin", limit=2,
                     judge=f"openai:{model}", base_url=url, api_key="x", out=str(tmp_path / "eval"),
                     progress=False, bootstrap=50, max_tokens=200)
    res = evaluate(cfg)
    assert res["models"]["a"]["answers"] == 2 and res["models"]["a"]["score"]["mean"] is not None
    assert res["pairwise"] and res["pairwise"][0]["n"] == 2
    dialogues = [{"id": f"d{i}", "messages": [{"role": "user", "content": f"How do tides work, part {i}?"},
                                              {"role": "assistant", "content": TIDES[i]}],
                  "meta": {"seed": "tides", "source": "t"}} for i in range(3)]
    write_jsonl(tmp_path / "in.jsonl", dialogues)
    fcfg = DataFilterConfig(input=str(tmp_path / "in.jsonl"), out=str(tmp_path / "clean.jsonl"),
                            judge=f"openai:{model}", base_url=url, api_key="x", progress=False, min_score=1)
    s = filter_file(fcfg)
    kept = list(read_jsonl(fcfg.out))
    assert s.kept == 3 and all(r["meta"]["judge_score"] is not None for r in kept)
    check_learned(caplog, model)


# --- the pipeline: two runs cover every runtime in every role ---------------------------------------

@pytest.mark.parametrize("teacher,judge,policy", [("gpt-5-mini", "no-usage", "llama-cpp-python"),
                                                  ("rate-limited", "rate-limited", "llama-server")])
def test_pipeline(tiny_model_dir, tmp_path, teacher, judge, policy):
    out = tmp_path / "demo"
    app = make_endpoint_app()
    with ServerThread(app) as url:
        args = [sys.executable, "-m", "baize", "pipeline", "--out", str(out), "--teacher", f"openai:{teacher}",
                "--judge", f"openai:{judge}", "--base-url", url, "--sdf-policy", f"openai:{policy}",
                "--sdf-base-url", url, "--base", str(tiny_model_dir), "--limit", "3", "--max-steps", "1",
                "--batch-size", "2", "--sdf-prompts", "3", "--v2-steps", "1", "--eval-limit", "2",
                "--eval-max-tokens", "8", "--concurrency", "8"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT,
                           env={**os.environ, "OPENAI_API_KEY": "x", "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(list(read_jsonl(out / "dialogues.jsonl"))) == 3
    sdf_recs = list(read_jsonl(out / "sdf.jsonl")) + list(read_jsonl(sidecar(out / "sdf.jsonl", "rejected")))
    assert len(sdf_recs) == 3 and all(len(r["meta"]["candidates"]) == 4 for r in sdf_recs)
    assert {r["meta"]["sampling"] for r in sdf_recs} <= {"topped_up", "single_calls"}
    assert json.loads((out / "eval" / "results.json").read_text())["n_questions"] == 2
    said = p.stderr
    expect = {"gpt-5-mini": ["gpt-5-mini refuses max_tokens", "gpt-5-mini ignores temperature"],
              "no-usage": ["no-usage sends no token usage"], "llama-cpp-python": ["llama-cpp-python ignores n"],
              "llama-server": ["llama-server refuses n"], "rate-limited": []}
    for model in {teacher, judge, policy}:
        for start in expect[model]:
            assert said.count(start) == 1, (start, said[-3000:])


def test_the_readmes_paper_scale_command_against_a_reasoning_model(tiny_model_dir, tmp_path):
    """The README's paper-scale command, scaled down (--limit, --sdf-prompts, --eval-limit, --concurrency,
    the builtin quora seeds, the tiny model as --base, 16 of its tokens for v1's candidates and the eval
    answers, no --quantize 8bit: that needs CUDA) and otherwise with its flags, against a teacher and a judge that think 768 hidden tokens a reply at their default
    effort: the teacher's cap of 160 and the judge's 512 get room for that, so every seed becomes a
    dialogue and no reply is lost to an empty one."""
    out = tmp_path / "paper"
    app = make_endpoint_app()
    with ServerThread(app) as url:
        args = [sys.executable, "-m", "baize", "pipeline", "--out", str(out), "--teacher", "openai:gpt-5-mini",
                "--judge", "openai:gpt-5-mini", "--base-url", url, "--seeds", "quora", "--base", str(tiny_model_dir),
                "--format", "baize", "--limit", "4", "--max-steps", "-1", "--batch-size", "64", "--sdf-prompts",
                "3", "--v2-steps", "-1", "--sdf-max-tokens", "16", "--eval-limit", "2", "--eval-max-tokens", "16",
                "--concurrency", "8", "--teacher-price-in", "0.00025", "--teacher-price-out", "0.002",
                "--judge-price-in", "0.00025", "--judge-price-out", "0.002", "--max-cost", "150"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT,
                           env={**os.environ, "OPENAI_API_KEY": "x", "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(list(read_jsonl(out / "dialogues.jsonl"))) == 4
    for name in ("dialogues.jsonl", "sdf.jsonl"):
        assert not list(read_jsonl(sidecar(out / name, "failed"))), name
    collect = json.loads((out / "dialogues.summary.json").read_text())["ledger"]["teacher"]
    assert collect["reasoning_tokens"] == REASONING_TOKENS["medium"] * collect["calls"] > 0
    sdf_recs = list(read_jsonl(out / "sdf.jsonl")) + list(read_jsonl(sidecar(out / "sdf.jsonl", "rejected")))
    assert len(sdf_recs) == 3 and all(r["meta"].get("order") is not None for r in sdf_recs)  # each one judged
    judge = json.loads((out / "sdf.summary.json").read_text())["ledger"]["judge"]
    assert judge["reasoning_tokens"] == REASONING_TOKENS["medium"] * judge["calls"] > 0
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["n_questions"] == 2 and results["models"]["v2"]["score"]["mean"] is not None
    assert p.stderr.count("gpt-5-mini refuses max_tokens: a reasoning model") == 1, p.stderr[-3000:]
