"""Self-chat collection end to end: FakeLLM for the logic, then the real HTTP path (a uvicorn fake
teacher on 127.0.0.1 driven through the official openai client), the CLI, and kill -9 + resume."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baize.config import BaizeError
from baize.data.collect import SELF_CHAT_TEMPLATE, CollectConfig, collect
from baize.data.seeds import load_seeds
from baize.llm.base import LLMError, TransientLLMError
from baize.llm.models import load_llm
from baize.schema import read_jsonl, sidecar
from baize.testing import FakeLLM, ServerThread, canned_transcript, make_app

ROOT = Path(__file__).resolve().parents[1]


def cfg_for(tmp_path, **kw):
    kw.setdefault("seeds", "quora")
    kw.setdefault("limit", 8)
    kw.setdefault("progress", False)
    kw.setdefault("concurrency", 4)
    return CollectConfig(out=str(tmp_path / "d.jsonl"), **kw)


def records(path):
    path = Path(path)
    return list(read_jsonl(path)) if path.exists() else []


def files(cfg):
    out = Path(cfg.out)
    return records(out), records(sidecar(out, "rejected")), records(sidecar(out, "failed"))


def seed_of(messages):
    """The seed a FakeLLM call is about (every prompt names it as topic: '...')."""
    import re
    return re.search(r"topic: '(.*?)'\.", "\n".join(m["content"] for m in messages), re.DOTALL).group(1)


def check_record_format(r, seed, mode, teacher="fake"):
    assert r["id"] == seed.id
    assert r["meta"]["seed"] == seed.text
    assert r["meta"]["source"] == seed.source
    assert r["meta"]["teacher"] == teacher and r["meta"]["mode"] == mode
    u = r["meta"]["usage"]
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0 and u["calls"] >= 1
    roles = [m["role"] for m in r["messages"]]
    assert roles and roles == ["user", "assistant"] * (len(roles) // 2)
    assert all(isinstance(m["content"], str) and m["content"].strip() == m["content"] and m["content"] for m in r["messages"])


# --- FakeLLM: the logic -------------------------------------------------------------------------

def test_oneshot_records(tmp_path):
    cfg = cfg_for(tmp_path)
    llm = FakeLLM(prompt_tokens=11, completion_tokens=23)
    s = collect(cfg, llm)
    seeds = load_seeds("quora", limit=8)
    kept, rej, failed = files(cfg)
    assert (s.kept, s.rejected, s.failed, s.skipped) == (8, {}, 0, 0)
    assert sorted(r["id"] for r in kept) == sorted(x.id for x in seeds)
    by_id = {x.id: x for x in seeds}
    for r in kept:
        check_record_format(r, by_id[r["id"]], "oneshot")
        assert r["meta"]["usage"] == {"prompt_tokens": 11, "completion_tokens": 23, "calls": 1}
        topic = r["meta"]["seed"]
        assert r["messages"] == [
            {"role": "user", "content": f"Can you explain {topic}?"},
            {"role": "assistant", "content": f"Sure. Here is a detailed explanation of {topic}, with the main facts and a worked example."},
            {"role": "user", "content": f"What should I read next about {topic}?"},
            {"role": "assistant", "content": f"Start with an introductory text on {topic}, then practise with small exercises."}]
    list(read_jsonl(cfg.out, validate=True))  # the documented format, checked by the schema
    # the paper's template, one call per seed, the seed substituted
    assert len(llm.calls) == 8
    prompts = sorted(c[0]["content"] for c in llm.calls)
    assert prompts == sorted(SELF_CHAT_TEMPLATE.replace("${SEED}", x.text) for x in seeds)
    assert rej == [] and failed == []
    summ = json.loads(sidecar(cfg.out, "summary.json").read_text())
    assert summ["kept"] == 8 and summ["prompt_tokens"] == 8 * 11 and summ["completion_tokens"] == 8 * 23
    assert s.prompt_tokens == 88 and s.completion_tokens == 184


def test_oneshot_cut_by_max_tokens_drops_the_cut_answer(tmp_path):
    from baize.llm.base import Completion
    text = "[Human] Q one?\n[AI] A full first answer.\n[Human] Q two?\n[AI] A second answer that was cut in the mi"
    cfg = cfg_for(tmp_path, limit=2)
    collect(cfg, FakeLLM(lambda m: Completion(text, 5, 7, "length")))
    for r in records(cfg.out):
        assert r["messages"] == [{"role": "user", "content": "Q one?"}, {"role": "assistant", "content": "A full first answer."}]
    cfg2 = cfg_for(tmp_path / "stop", limit=1)
    collect(cfg2, FakeLLM(lambda m: Completion(text, 5, 7, "stop")))
    assert len(records(cfg2.out)[0]["messages"]) == 4


def test_cost_ledger(tmp_path):
    cfg = cfg_for(tmp_path, limit=4, price_in=1.0, price_out=2.0)
    s = collect(cfg, FakeLLM(prompt_tokens=100, completion_tokens=50))
    assert s.cost == pytest.approx(4 * (100 * 1.0 + 50 * 2.0) / 1000)


def test_progress_bar_runs(tmp_path):
    from rich.console import Console
    buf = io.StringIO()
    s = collect(cfg_for(tmp_path, limit=3, progress=True), FakeLLM(), console=Console(file=buf, force_terminal=False))
    assert s.kept == 3 and "collect" in buf.getvalue()


def test_turns_mode_ends_on_END_and_first_turn_is_seed(tmp_path):
    cfg = cfg_for(tmp_path, mode="turns", max_turns=4, limit=5)
    llm = FakeLLM()
    s = collect(cfg, llm)
    assert s.kept == 5
    by_id = {x.id: x for x in load_seeds("quora", limit=5)}
    for r in records(cfg.out):
        seed = by_id[r["id"]]
        check_record_format(r, seed, "turns")
        # default_reply's human says [END] after two AI answers: seed, answer, follow-up, answer
        assert len(r["messages"]) == 4
        assert r["messages"][0]["content"] == seed.text
        assert r["messages"][2]["content"] == f"Tell me more about {seed.text} (part 2)?"
        assert "[END]" not in json.dumps(r["messages"])
        # 2 answers + 1 follow-up + 1 [END]
        assert r["meta"]["usage"] == {"prompt_tokens": 40, "completion_tokens": 80, "calls": 4}
    # the human writer sees the transcript so far; the assistant sees the dialogue as chat messages
    human_calls = [c for c in llm.calls if "playing a curious human" in c[0]["content"]]
    assert any("[Human] " in c[1]["content"] and "[AI] " in c[1]["content"] for c in human_calls)
    assistant_calls = [c for c in llm.calls if c[0]["content"].startswith("You are a helpful AI assistant")]
    assert len(assistant_calls) == 10 and all(c[-1]["role"] == "user" for c in assistant_calls)


def test_turns_mode_first_turn_generate(tmp_path):
    cfg = cfg_for(tmp_path, mode="turns", max_turns=4, limit=3, first_turn="generate")
    collect(cfg, FakeLLM())
    for r in records(cfg.out):
        seed = r["meta"]["seed"]
        assert r["messages"][0]["content"] == f"Tell me more about {seed} (part 1)?"  # written by the teacher
        assert r["messages"][0]["content"] != seed
        assert len(r["messages"]) == 4


def test_turns_mode_respects_max_turns(tmp_path):
    def never_ends(msgs):
        if "playing a curious human" in msgs[0]["content"]:
            return "Human: And another question?"  # a marker the teacher added is stripped
        return "A complete answer."
    cfg = cfg_for(tmp_path, mode="turns", max_turns=3, limit=2)
    collect(cfg, FakeLLM(never_ends))
    for r in records(cfg.out):
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * 3
        assert r["messages"][2]["content"] == "And another question?"
    cfg1 = cfg_for(tmp_path / "one", mode="turns", max_turns=1, limit=2)
    llm = FakeLLM(never_ends)
    collect(cfg1, llm)
    assert all(len(r["messages"]) == 2 for r in records(cfg1.out)) and len(llm.calls) == 2


def test_turns_mode_end_variants_and_cut_answers(tmp_path):
    from baize.llm.base import Completion

    def teacher(msgs):
        if "playing a curious human" in msgs[0]["content"]:
            return "Thanks, that's all! [end]"
        return Completion("First sentence is complete. The second one was cut off in the mi", 5, 9, "length")
    cfg = cfg_for(tmp_path, mode="turns", max_turns=4, limit=2)
    collect(cfg, FakeLLM(teacher))
    for r in records(cfg.out):
        assert r["messages"][1]["content"] == "First sentence is complete."  # trimmed to the last full sentence
        assert len(r["messages"]) == 2


def test_rejected_go_to_sidecar_with_reason(tmp_path):
    seeds = load_seeds("quora", limit=8)
    bad = {seeds[0].text: "I'm sorry, I cannot write that.",  # nothing parseable
           seeds[1].text: "[Human] What is it?\n[AI] As an AI language model, I can't have opinions.\n",
           seeds[2].text: "[Human] Tell me?\n[AI] ok\n"}  # short turn (min_chars=3)

    def teacher(msgs):
        topic = seed_of(msgs)
        return bad.get(topic) or canned_transcript(topic)
    cfg = cfg_for(tmp_path, min_chars=3, limit=8)
    s = collect(cfg, FakeLLM(teacher))
    kept, rej, failed = files(cfg)
    assert s.kept == 5 and len(kept) == 5 and failed == []
    reasons = {r["id"]: r["meta"]["reject_reason"] for r in rej}
    assert reasons == {seeds[0].id: "unparseable", seeds[1].id: "refusal", seeds[2].id: "short_turn"}
    assert s.rejected == {"unparseable": 1, "refusal": 1, "short_turn": 1}
    raw = {r["id"]: r["meta"].get("raw") for r in rej}
    assert raw[seeds[0].id] == bad[seeds[0].text]  # kept for diagnosis
    for r in rej:
        assert r["meta"]["seed"] and r["meta"]["usage"]["calls"] == 1 and r["meta"]["teacher"] == "fake"
    assert {r["id"] for r in kept}.isdisjoint(reasons)
    summ = json.loads(sidecar(cfg.out, "summary.json").read_text())
    assert summ["rejected"] == s.rejected and summ["kept"] == 5


def test_custom_reject_pattern_and_near_duplicates(tmp_path):
    seeds = load_seeds("quora", limit=6)

    def teacher(msgs):
        topic = seed_of(msgs)
        if topic == seeds[1].text:
            return canned_transcript(seeds[0].text)  # the same dialogue as seed 0
        if topic == seeds[2].text:
            return canned_transcript(topic).replace("Sure.", "Sure, let us delve into it.")
        return canned_transcript(topic)
    # repetition off: the copy names seed 0's question in every turn, a loop when read as seed 1's dialogue
    cfg = cfg_for(tmp_path, limit=6, concurrency=1, reject_pattern=[r"\bdelve\b"], repetition=0)
    s = collect(cfg, FakeLLM(teacher))
    assert s.rejected == {"near_duplicate": 1, "refusal": 1} and s.kept == 4
    cfg2 = cfg_for(tmp_path / "nodedup", limit=6, concurrency=1, near_dup=0, default_reject_patterns=False,
                   repetition=0)
    assert collect(cfg2, FakeLLM(teacher)).kept == 6


def test_config_saved_without_api_key(tmp_path):
    cfg = cfg_for(tmp_path, api_key="sk-very-secret-123", mode="turns", limit=2)
    collect(cfg, FakeLLM())
    path = sidecar(cfg.out, "config.json")
    text = path.read_text()
    assert "sk-very-secret-123" not in text
    saved = json.loads(text)
    assert saved["api_key"] == "***" and saved["mode"] == "turns" and saved["seeds"] == "quora" and saved["limit"] == 2
    assert "baize_version" in saved
    # no key given: nothing to hide
    cfg2 = cfg_for(tmp_path / "b", limit=1)
    collect(cfg2, FakeLLM())
    assert json.loads(sidecar(cfg2.out, "config.json").read_text())["api_key"] is None


@pytest.mark.parametrize("mode,calls_per_seed", [("oneshot", 1), ("turns", 2)])
def test_budget_stops_cleanly(tmp_path, mode, calls_per_seed):
    per_call, conc, budget = 30, 4, 600
    cfg = cfg_for(tmp_path, mode=mode, max_turns=8, limit=60, concurrency=conc, max_tokens_total=budget)
    llm = FakeLLM(prompt_tokens=10, completion_tokens=20, delay=0.01)
    s = collect(cfg, llm)
    spent = s.prompt_tokens + s.completion_tokens
    assert s.stopped == "budget"
    assert spent >= budget
    # overshoot: only the calls already in flight (one per worker, two in turns mode: a worker that
    # checked the budget just before it ran out writes its human line and its answer)
    assert spent <= budget + conc * calls_per_seed * per_call
    assert spent == len(llm.calls) * per_call
    kept = records(cfg.out)
    assert 0 < len(kept) < 60 and s.kept == len(kept)
    assert all(len(r["messages"]) >= 2 for r in kept)
    # rerun without the budget: the rest, nothing twice
    cfg.max_tokens_total = None
    s2 = collect(cfg, FakeLLM())
    ids = [r["id"] for r in records(cfg.out)]
    assert s2.skipped == len(kept) and len(ids) == len(set(ids)) == 60 and s2.stopped == ""


def test_budget_spent_before_a_dialogue_starts_leaves_the_seed_for_later(tmp_path, monkeypatch):
    # the race: a seed is submitted while budget remains, the calls in flight spend it before this
    # dialogue's worker starts. Simulated deterministically: the budget looks spent to workers only.
    import threading

    import baize.data.collect as bc
    monkeypatch.setattr(bc.Ledger, "exhausted", lambda self: threading.current_thread() is not threading.main_thread())
    cfg = cfg_for(tmp_path, mode="turns", limit=6, max_tokens_total=1000)
    llm = FakeLLM()
    s = collect(cfg, llm)
    assert llm.calls == [] and s.kept == 0 and s.rejected == {} and s.stopped == "budget"
    assert records(cfg.out) == [] and records(sidecar(cfg.out, "rejected")) == []  # not "unparseable" forever
    monkeypatch.undo()
    cfg.max_tokens_total = None
    s2 = collect(cfg, FakeLLM())
    assert s2.kept == 6 and s2.skipped == 0


def test_resume_skips_done(tmp_path):
    cfg = cfg_for(tmp_path, limit=10)
    collect(cfg, FakeLLM())
    cfg.limit = 20
    llm = FakeLLM()
    s = collect(cfg, llm)
    assert s.skipped == 10 and s.kept == 10 and len(llm.calls) == 10
    done = {x.text for x in load_seeds("quora", limit=10)}
    assert all(seed_of(c) not in done for c in llm.calls)
    ids = [r["id"] for r in records(cfg.out)]
    assert len(ids) == len(set(ids)) == 20
    llm3 = FakeLLM()
    s3 = collect(cfg, llm3)
    assert (s3.skipped, s3.kept, len(llm3.calls)) == (20, 0, 0)
    assert len(records(cfg.out)) == 20


def test_resume_skips_rejected_too(tmp_path):
    cfg = cfg_for(tmp_path, limit=4)
    collect(cfg, FakeLLM(["no transcript here"]))
    assert len(records(sidecar(cfg.out, "rejected"))) == 4
    llm = FakeLLM()
    assert collect(cfg, llm).skipped == 4 and llm.calls == []


def test_failed_seeds_are_recorded_and_retried(tmp_path):
    seeds = load_seeds("quora", limit=10)
    flaky = {seeds[2].text, seeds[7].text}

    def teacher(msgs):
        topic = seed_of(msgs)
        return TransientLLMError(f"HTTP 500 after retries ({topic[:10]})") if topic in flaky else canned_transcript(topic)
    cfg = cfg_for(tmp_path, limit=10)
    s = collect(cfg, FakeLLM(teacher))
    kept, rej, failed = files(cfg)
    assert s.failed == 2 and s.kept == 8
    assert {r["id"] for r in failed} == {seeds[2].id, seeds[7].id}
    assert all("HTTP 500" in r["error"] and r["meta"]["seed"] in flaky for r in failed)
    # --no-retry-failed: they stay failed and are skipped
    cfg.retry_failed = False
    llm = FakeLLM()
    s2 = collect(cfg, llm)
    assert s2.skipped == 10 and llm.calls == [] and len(records(sidecar(cfg.out, "failed"))) == 2
    # the default retries them; they are now kept and no longer failed
    cfg.retry_failed = True
    llm = FakeLLM()
    s3 = collect(cfg, llm)
    assert s3.kept == 2 and s3.skipped == 8 and sorted(seed_of(c) for c in llm.calls) == sorted(flaky)
    kept, rej, failed = files(cfg)
    ids = [r["id"] for r in kept]
    assert len(ids) == len(set(ids)) == 10 and failed == []


def test_all_failing_stops_with_one_error(tmp_path):
    cfg = cfg_for(tmp_path, limit=40, concurrency=2)
    with pytest.raises(BaizeError, match="20 seeds failed in a row, last: .*rate limited"):
        collect(cfg, FakeLLM(lambda m: TransientLLMError("rate limited")))


def test_fatal_llm_error_stops_the_run(tmp_path):
    cfg = cfg_for(tmp_path, limit=20, concurrency=2)
    llm = FakeLLM(lambda m: LLMError("401, the API key was refused"))
    with pytest.raises(LLMError, match="401"):
        collect(cfg, llm)
    assert len(llm.calls) <= 4  # nowhere near every seed
    assert records(sidecar(cfg.out, "failed")) == []  # not the seeds' fault: nothing to retry later


def test_torn_last_line_repaired_on_rerun(tmp_path):
    cfg = cfg_for(tmp_path, limit=5)
    collect(cfg, FakeLLM())
    out = Path(cfg.out)
    whole = load_seeds("quora", limit=6)
    # a kill -9 in the middle of writing the 6th record
    with out.open("a") as f:
        f.write(json.dumps({"id": whole[5].id, "messages": [{"role": "user", "content": "x"}]})[:25])
    cfg.limit = 6
    s = collect(cfg, FakeLLM())
    assert s.kept == 1 and s.skipped == 5
    ids = [r["id"] for r in read_jsonl(out, validate=True)]
    assert sorted(ids) == sorted(x.id for x in whole)


def test_torn_sidecars_repaired_on_rerun(tmp_path):
    seeds = load_seeds("quora", limit=6)
    cfg = cfg_for(tmp_path, limit=6)
    collect(cfg, FakeLLM(lambda m: TransientLLMError("boom") if seed_of(m) == seeds[0].text else "junk"))
    for kind in ("rejected", "failed"):
        with sidecar(cfg.out, kind).open("a") as f:
            f.write('{"id": "torn-by-a-kill", "messa')
    s = collect(cfg, FakeLLM())  # the failed seed is retried, the rejected stay rejected
    assert s.kept == 1 and s.skipped == 5
    kept, rej, failed = files(cfg)
    assert [r["id"] for r in kept] == [seeds[0].id] and len(rej) == 5 and failed == []


# --- the real HTTP path -------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_faults_every_seed_accounted_for(tmp_path):
    seeds = load_seeds("quora", limit=12)
    t = [x.text for x in seeds]
    faults = {t[0]: ["429"], t[1]: ["500", "500"], t[2]: ["timeout"], t[3]: ["malformed"],
              t[4]: ["429", "500"], t[5]: ["500"] * 10,   # more 500s than retries: failed
              t[6]: ["malformed"] * 10,                  # never a valid body: failed
              t[7]: ["timeout"] * 10}                    # never answers in time: failed

    def reply(msgs):
        topic = seed_of(msgs)
        return "Sorry, no." if topic == t[8] else canned_transcript(topic)
    app = make_app(reply=reply, faults=faults)
    with ServerThread(app) as url:
        llm = load_llm("openai:fake-teacher", base_url=url, max_retries=2, timeout=0.6)
        cfg = cfg_for(tmp_path, limit=12, concurrency=6, teacher="openai:fake-teacher")
        start = time.monotonic()
        s = collect(cfg, llm)
        took = time.monotonic() - start
    kept, rej, failed = files(cfg)
    ids = {"kept": {r["id"] for r in kept}, "rejected": {r["id"] for r in rej}, "failed": {r["id"] for r in failed}}
    every = [r["id"] for r in kept + rej + failed]
    assert len(every) == len(set(every)) == 12  # each seed exactly once across the three files
    assert set(every) == {x.id for x in seeds}
    assert ids["failed"] == {seeds[5].id, seeds[6].id, seeds[7].id}
    assert ids["rejected"] == {seeds[8].id} and rej[0]["meta"]["reject_reason"] == "unparseable"
    assert ids["kept"] == {x.id for x in seeds[:5] + seeds[9:]}
    errors = {r["meta"]["seed"]: r["error"] for r in failed}
    assert "HTTP 500" in errors[t[5]] and "malformed" in errors[t[6]] and "timed out" in errors[t[7]]
    assert (s.kept, s.failed, s.rejected) == (8, 3, {"unparseable": 1})
    for r in kept:
        assert r["meta"]["teacher"] == "fake-teacher" and r["meta"]["usage"]["prompt_tokens"] > 0
    # the faults were really served (and consumed by retries)
    assert all(not app.state.faults[k] for k in (t[0], t[1], t[2], t[3], t[4]))
    assert took < 30
    # a rerun retries only the failed ones; the server is healthy now
    with ServerThread(make_app()) as url:
        s2 = collect(cfg, load_llm("openai:fake-teacher", base_url=url, max_retries=2, timeout=5))
    kept, rej, failed = files(cfg)
    assert s2.kept == 3 and s2.skipped == 9 and failed == [] and len(kept) == 11 and len(rej) == 1


def test_http_401_fails_fast(tmp_path):
    app = make_app(faults={"": ["401"] * 100})
    with ServerThread(app) as url:
        cfg = cfg_for(tmp_path, limit=30, teacher="openai:fake-teacher", base_url=url, api_key="sk-wrong",
                      request_retries=3)
        start = time.monotonic()
        with pytest.raises(LLMError) as e:
            collect(cfg)
        assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "\n" not in msg and "401" in msg and "API key" in msg
    assert app.state.requests <= cfg.concurrency + 1  # stopped at once, not per seed
    assert records(cfg.out) == [] and records(sidecar(cfg.out, "failed")) == []


def test_http_404_unknown_model_fails_fast(tmp_path):
    app = make_app(models=["fake-teacher"])
    with ServerThread(app) as url:
        cfg = cfg_for(tmp_path, limit=30, teacher="openai:gpt-9-nonexistent", base_url=url)
        start = time.monotonic()
        with pytest.raises(LLMError) as e:
            collect(cfg)
        assert time.monotonic() - start < 10
        # the allow-listed model works on the same server
        cfg2 = cfg_for(tmp_path / "ok", limit=2, teacher="openai:fake-teacher", base_url=url)
        assert collect(cfg2).kept == 2
    msg = str(e.value)
    assert "\n" not in msg and "404" in msg and "gpt-9-nonexistent" in msg and "model" in msg
    assert records(cfg.out) == [] and records(sidecar(cfg.out, "failed")) == []


def test_unreachable_endpoint_fails_fast(tmp_path):
    port = free_port()  # closed: nothing listens there
    cfg = cfg_for(tmp_path, limit=5, teacher="openai:fake-teacher", base_url=f"http://127.0.0.1:{port}/v1")
    start = time.monotonic()
    with pytest.raises(LLMError) as e:
        collect(cfg)
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "\n" not in msg and "cannot connect" in msg and f"127.0.0.1:{port}" in msg
    assert records(cfg.out) == []


# --- the CLI ------------------------------------------------------------------------------------

def run_cli(*args, timeout=60):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    return subprocess.run([sys.executable, "-m", "baize", "collect", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_cli_collect_against_fake_server(tmp_path):
    out = tmp_path / "cli.jsonl"
    with ServerThread(make_app(models=["fake-teacher"])) as url:
        p = run_cli("--seeds", "stackoverflow", "--limit", "6", "--out", str(out), "--teacher", "openai:fake-teacher",
                    "--base-url", url, "--api-key", "sk-cli-secret", "--no-progress", "--concurrency", "3",
                    "--mode", "turns", "--max-turns", "2")
        assert p.returncode == 0, p.stderr
        assert "kept" in p.stdout and "6" in p.stdout
        recs = list(read_jsonl(out, validate=True))
        assert len(recs) == 6 and {r["meta"]["mode"] for r in recs} == {"turns"}
        assert {r["meta"]["source"] for r in recs} == {"stackoverflow"}
        assert all(len(r["messages"]) == 4 for r in recs)
        assert "sk-cli-secret" not in sidecar(out, "config.json").read_text()
        # an unknown model: exit 2 and one line on stderr
        p = run_cli("--seeds", "quora", "--limit", "3", "--out", str(tmp_path / "x.jsonl"),
                    "--teacher", "openai:nope", "--base-url", url, "--no-progress")
        assert p.returncode == 2
        assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("baize: error:") and "404" in p.stderr
    # nothing listening: exit 2 and one line
    p = run_cli("--seeds", "quora", "--limit", "3", "--out", str(tmp_path / "y.jsonl"), "--teacher", "openai:m",
                "--base-url", f"http://127.0.0.1:{free_port()}/v1", "--no-progress")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "cannot connect" in p.stderr
    # a bad seed file: exit 2, the message names the place
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"seed": "a"}\n{oops\n')
    p = run_cli("--seeds", str(bad), "--out", str(tmp_path / "z.jsonl"), "--teacher", "openai:m",
                "--base-url", "http://127.0.0.1:9/v1", "--no-progress")
    assert p.returncode == 2 and f"{bad}:2" in p.stderr


def test_kill9_then_resume(tmp_path):
    out = tmp_path / "killed.jsonl"
    n = 60
    with ServerThread(make_app(latency=0.2)) as url:
        args = [sys.executable, "-m", "baize", "collect", "--seeds", "quora", "--limit", str(n), "--out", str(out),
                "--teacher", "openai:fake-teacher", "--base-url", url, "--no-progress", "--concurrency", "4"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if out.exists() and out.read_text().count("\n") >= 8:
                    break
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        before = out.read_text().count("\n")
        assert 8 <= before < n  # killed mid-run
        p = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert p.returncode == 0, p.stderr
    summary = json.loads(sidecar(out, "summary.json").read_text())
    assert summary["skipped"] >= before and summary["skipped"] + summary["kept"] == n
    ids = [r["id"] for r in read_jsonl(out, validate=True)]
    assert len(ids) == len(set(ids)) == n
    assert set(ids) == {x.id for x in load_seeds("quora", limit=n)}


def test_budget_stop_mid_dialogue_leaves_it_unfinished_and_the_rerun_finishes_it(tmp_path):
    """Turns mode, the budget spent after the first exchange of a dialogue that has more: it is not kept
    as a one-exchange dialogue (min_turns 1 would pass it, and every rerun would skip it); the rerun
    goes on from that exchange, paying for no call twice, and ends with the uninterrupted dialogue."""
    whole = cfg_for(tmp_path / "whole", mode="turns", max_turns=4, limit=1, concurrency=1)
    collect(whole, FakeLLM())
    expected = records(whole.out)[0]
    assert len(expected["messages"]) == 4  # the fake human ends after two exchanges

    cfg = cfg_for(tmp_path, mode="turns", max_turns=4, limit=1, concurrency=1, max_tokens_total=30)
    s = collect(cfg, FakeLLM())  # 30 tokens a call: spent by the answer to the seed
    assert s.stopped == "budget" and s.kept == 0 and s.rejected == {}
    assert records(cfg.out) == [] and records(sidecar(cfg.out, "rejected")) == []
    assert [len(r["messages"]) for r in records(sidecar(cfg.out, "unfinished"))] == [2]
    assert not sidecar(whole.out, "unfinished").exists()  # no budget stop, no such file
    cfg.max_tokens_total = None
    llm = FakeLLM()
    s2 = collect(cfg, llm)
    got = records(cfg.out)
    assert s2.kept == 1 and got[0]["messages"] == expected["messages"]
    assert len(llm.calls) == expected["meta"]["usage"]["calls"] - 1  # the first answer was not asked again
    assert got[0]["meta"]["usage"] == expected["meta"]["usage"]  # the dialogue's usage over both runs
    assert collect(cfg, FakeLLM()).skipped == 1
