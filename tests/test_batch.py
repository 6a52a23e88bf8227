"""--batch-api against a fake Files + Batch server built from OpenAI's Batch guide and API reference
(baize.testing.add_batch_api cites them): statuses, request_counts, shuffled output and error files,
batch_expired lines, validation failures; the run's state in OUT.batch/."""
import json

import pytest

from baize.config import BaizeError
from baize.data.collect import CollectConfig, collect
from baize.llm import batch as B
from baize.schema import read_jsonl, sidecar
from baize.testing import ServerThread, add_batch_api, make_app

PRICES = dict(price_in=0.001, price_out=0.002)


def _cfg(tmp_path, url, name="d.jsonl", **kw):
    base = dict(seeds="quora", limit=30, teacher="openai:fake-teacher", base_url=url, api_key="x",
                out=str(tmp_path / name), concurrency=8, progress=False, batch_api=True, batch_poll=0.0, **PRICES)
    return CollectConfig(**{**base, **kw})


def _state(cfg) -> dict:
    return json.loads((tmp_path_of(cfg) / "state.json").read_text())


def tmp_path_of(cfg):
    return B.Batches(cfg.out).folder


def _ctrl_c_on_poll(monkeypatch, which: int):
    """Ctrl-C at the `which`-th poll of a batch's status (the first poll finds it validating)."""
    real, polls = B.Batches._poll, []

    def poll(self, entry, start):
        polls.append(entry["id"])
        if len(polls) == which:
            raise KeyboardInterrupt
        return real(self, entry, start)
    monkeypatch.setattr(B.Batches, "_poll", poll)


def test_collect_30_seeds_killed_while_waiting_then_rerun(tmp_path, monkeypatch, capsys):
    """The issue's "Done when": every 11th line expires, Ctrl-C while waiting, the rerun resumes."""
    app = add_batch_api(make_app(), expire_every=11)
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url)
        _ctrl_c_on_poll(monkeypatch, 2)
        s = collect(cfg)
        assert s.stopped == "interrupted" and s.pending == 30
        st = _state(cfg)
        assert [b["status"] for b in st["batches"]] == ["in_progress"] and len(st["batches"][0]["custom_ids"]) == 30
        said = capsys.readouterr().out
        assert "keep running on the server (batch_1)" in said and "Rerun the same command" in said
        assert json.loads(sidecar(cfg.out, "summary.json").read_text())["stopped"] == "interrupted"
        monkeypatch.undo()

        s = collect(cfg)  # the same command again
        sync = collect(CollectConfig(**{**vars(cfg), "out": str(tmp_path / "sync.jsonl"), "batch_api": False}))
    st, fake = _state(cfg), app.state.batch
    kept, rejected = list(read_jsonl(cfg.out)), list(read_jsonl(sidecar(cfg.out, "rejected")))
    assert len(kept) + len(rejected) == 30 and len({r["id"] for r in kept + rejected}) == 30
    assert not sidecar(cfg.out, "failed").exists() or not list(read_jsonl(sidecar(cfg.out, "failed")))
    # the first batch was polled, not sent again; its two expired lines went into a second batch
    assert [len(b["custom_ids"]) for b in st["batches"]] == [30, 2]
    assert [b["status"] for b in st["batches"]] == ["expired", "completed"]
    assert len(fake.batches) == 2 and len(fake.answered) == 30 and set(fake.answered.values()) == {1}
    assert app.state.requests == 30  # the synchronous run's 30 calls only: the batch run made none
    total = json.loads(sidecar(cfg.out, "summary.json").read_text())["total"]
    assert total["prompt_tokens"] == sync.prompt_tokens and total["completion_tokens"] == sync.completion_tokens
    assert total["ledger"]["teacher"]["calls"] == 30
    assert total["cost"] == pytest.approx(sync.cost / 2, abs=1e-6) and sync.cost > 0


def test_turns_mode_advances_one_exchange_per_round(tmp_path):
    app = add_batch_api(make_app())
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url, limit=4, mode="turns", max_turns=2, first_turn="generate")
        s = collect(cfg)
    st = _state(cfg)
    # human, assistant, human, assistant: each call waits for the one before it
    assert len(st["batches"]) == 4 and all(len(b["custom_ids"]) == 4 for b in st["batches"])
    assert s.kept + sum(s.rejected.values()) == 4
    rec = next(iter(read_jsonl(cfg.out)))
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rec["meta"]["usage"]["calls"] == 4  # the replayed calls count once, in the record and the ledger
    assert json.loads(sidecar(cfg.out, "summary.json").read_text())["total"]["ledger"]["teacher"]["calls"] == 16


def test_lines_expiring_every_time_fail_their_item_with_the_reason(tmp_path):
    app = add_batch_api(make_app(), expire_every=1)
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url, limit=2, batch_tries=2)
        s = collect(cfg)
    failed = list(read_jsonl(sidecar(cfg.out, "failed")))
    assert s.failed == 2 and len(failed) == 2 and len(app.state.batch.batches) == 2
    assert "unanswered after 2 tries: batch_expired: This request could not be executed" in failed[0]["error"]


def test_split_at_the_line_limit_one_model_per_file(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "MAX_LINES", 4)
    app = add_batch_api(make_app())
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url, limit=10)
        s = collect(cfg)
    st = _state(cfg)
    assert [len(b["custom_ids"]) for b in st["batches"]] == [4, 4, 2] and s.kept + sum(s.rejected.values()) == 10
    sent = [json.loads(x) for b in st["batches"] for x in (B.Batches(cfg.out).folder / b["file"]).read_text().splitlines()]
    assert len({x["custom_id"] for x in sent}) == 10
    assert {(x["method"], x["url"], x["body"]["model"]) for x in sent} == {("POST", "/v1/chat/completions",
                                                                            "fake-teacher")}


def test_split_at_the_size_limit(tmp_path):
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": B.ENDPOINT,
              "body": {"model": "m", "messages": [{"role": "user", "content": "x" * 1000}]}} for i in range(5)]
    assert [len(c) for c in B.split(lines, 50_000, 3000)] == [2, 2, 1]
    assert [len(c) for c in B.split(lines, 2, 10 ** 6)] == [2, 2, 1]


@pytest.mark.parametrize("code", ["duplicate_custom_id", "mismatched_model"])
def test_a_validation_failure_is_one_line_with_code_line_and_message(tmp_path, code):
    """Files baize writes cannot fail so (one model per file, one line per custom_id); a file that
    does, in the fake as in OpenAI's errors.data, stops the run with the code, the line, the message."""
    from baize.llm.base import OpenAILLM
    app = add_batch_api(make_app())
    with ServerThread(app) as url:
        b = B.Batches(tmp_path / "d.jsonl", poll=0)
        b.wrap(OpenAILLM("fake-teacher", base_url=url, api_key="x"))
        line = {"custom_id": "one", "method": "POST", "url": B.ENDPOINT,
                "body": {"model": "fake-teacher", "messages": [{"role": "user", "content": "hi"}]}}
        other = {**line, "custom_id": "one" if code == "duplicate_custom_id" else "two",
                 "body": {**line["body"], "model": "fake-teacher" if code == "duplicate_custom_id" else "other"}}
        b._send("fake-teacher", [line, other])
        with pytest.raises(BaizeError) as e:
            b.wait()
    msg = str(e.value)
    assert "\n" not in msg and f"failed validation: {code} at line 2 of" in msg and "requests-0001.jsonl" in msg
    assert ("must be unique" if code == "duplicate_custom_id" else "single model") in msg
    assert _state_at(tmp_path)["batches"][0]["status"] == "failed"


def _state_at(tmp_path) -> dict:
    return json.loads((tmp_path / "d.batch" / "state.json").read_text())


def test_an_endpoint_without_the_files_api_is_a_clear_error(tmp_path):
    with ServerThread(make_app()) as url:  # a chat-only server: /v1/files is a 404
        with pytest.raises(BaizeError) as e:
            collect(_cfg(tmp_path, url, limit=2))
    assert "no Files/Batch API here (404 on /v1/files)" in str(e.value) and "--import" in str(e.value)


def test_max_cost_is_checked_before_a_batch_is_sent(tmp_path):
    app = add_batch_api(make_app())
    with ServerThread(app) as url:
        s = collect(_cfg(tmp_path, url, limit=4, max_cost=0.001))
    assert s.stopped == "budget" and not app.state.batch.batches


def test_vllm_run_batch_results_imported(tmp_path, capsys):
    """No Files API: the request file is written all the same; results made elsewhere, in the output
    format `vllm run-batch -o` writes (input order, OpenAI's line shape: vllm/entrypoints/openai/
    run_batch.py), are imported by `baize batches OUT --import`, and the rerun uses them."""
    from baize.cli import main
    from baize.testing import chat_completion, default_reply
    app = make_app()
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url, limit=3)
        with pytest.raises(BaizeError):
            collect(cfg)
        requests = B.Batches(cfg.out).folder / "requests-0001.jsonl"
        lines = [json.loads(x) for x in requests.read_text().splitlines()]
        assert len(lines) == 3 and all(x["url"] == "/v1/chat/completions" for x in lines)
        results = tmp_path / "results.jsonl"
        results.write_text("".join(json.dumps({"id": f"vllm-{i}", "custom_id": x["custom_id"], "error": None,
                                               "response": {"status_code": 200, "request_id": f"vllm-{i}",
                                                            "body": chat_completion(x["body"], default_reply, i)}})
                                   + "\n" for i, x in enumerate(lines)))
        assert main(["batches", cfg.out, "--import", str(results)]) == 0
        assert "imported 3 results" in capsys.readouterr().out
        s = collect(cfg)
    assert s.kept + sum(s.rejected.values()) == 3 and app.state.requests == 0
    assert json.loads(sidecar(cfg.out, "summary.json").read_text())["total"]["ledger"]["teacher"]["calls"] == 3
    bad = tmp_path / "other.jsonl"
    bad.write_text(json.dumps({"custom_id": "baize-elsewhere", "response": None, "error": None}) + "\n")
    assert main(["batches", cfg.out, "--import", str(bad)]) == 2
    assert "other.jsonl:1: custom_id baize-elsewhere is in none of" in capsys.readouterr().err


def test_batches_lists_and_cancels(tmp_path, monkeypatch, capsys):
    from baize.cli import main
    app = add_batch_api(make_app())
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url, limit=3)
        _ctrl_c_on_poll(monkeypatch, 1)
        assert collect(cfg).stopped == "interrupted"
        capsys.readouterr()
        monkeypatch.setenv("OPENAI_API_KEY", "x")
        assert main(["batches", cfg.out]) == 0
        listed = capsys.readouterr().out
        assert "batch_1" in listed and "in_progress" in listed and "3 requests" in listed
        assert main(["batches", cfg.out, "--cancel"]) == 0
        assert "cancelling" in capsys.readouterr().out
        assert app.state.batch.batches["batch_1"]["status"] == "cancelling"
        monkeypatch.undo()
        s = collect(cfg)  # the cancelled batch's lines go into a new one
    assert s.kept + sum(s.rejected.values()) == 3
    assert [b["status"] for b in _state(cfg)["batches"]] == ["cancelled", "completed"]


def test_dry_run_shows_both_prices(tmp_path, capsys):
    from baize.cli import main
    plan = tmp_path / "plan.json"
    args = ["--seeds", "quora", "--limit", "30", "--price-in", "0.001", "--price-out", "0.002",
            "--dry-run", "--plan-out", str(plan), "--out", str(tmp_path / "d.jsonl")]
    assert main(["collect", "--teacher", "openai:gpt-4o-mini", "--batch-api", "--batch-discount", "0.5", *args]) == 0
    said = capsys.readouterr().out
    row = json.loads(plan.read_text())[0]
    assert row["batch_cost"] == pytest.approx(row["cost"] / 2, abs=1e-6) and row["cost"] > 0
    assert f"${row['batch_cost']:.2f} instead of ${row['cost']:.2f}" in said
    main(["collect", "--teacher", "openai:gpt-4o-mini", *args])
    assert "batch_cost" not in json.loads(plan.read_text())[0] and "--batch-api" not in capsys.readouterr().out


def test_pipeline_passes_batch_api_to_every_stage(tmp_path, capsys):
    from baize.pipeline import PipelineConfig, _collect_cfg, _eval_cfg, _sdf_cfg
    from baize.pipeline import plan as pipeline_plan
    cfg = PipelineConfig(out=str(tmp_path), teacher="openai:gpt-4o-mini", judge="openai:gpt-4o-mini", batch_api=True,
                         batch_poll=5, batch_discount=0.4, teacher_price_in=0.001, judge_price_in=0.001)
    for c in (_collect_cfg(cfg, tmp_path, 3, {}), _sdf_cfg(cfg, tmp_path, {}), _eval_cfg(cfg, tmp_path, {}, 3, {})):
        assert (c.batch_api, c.batch_poll, c.batch_discount) == (True, 5, 0.4)
    p = pipeline_plan(cfg)
    assert {r.stage: r.discount for r in p.rows if r.role in ("teacher", "judge")} == {"collect": 0.4, "sdf": 0.4,
                                                                                      "eval": 0.4}
    assert {r.discount for r in p.rows if r.role == "policy"} == {None}  # local models run in-process


def test_eval_answers_and_judges_through_batches(tmp_path):
    from baize.eval.evaluate import EvalConfig, evaluate
    from baize.testing import default_reply
    longer = {"model-b": lambda msgs: default_reply(msgs) + " And one more detail, with its reason."}
    app = add_batch_api(make_app(), reply=longer, expire_every=7)
    with ServerThread(app) as url:
        cfg = EvalConfig(models=["a=openai:model-a", "b=openai:model-b"], judge="openai:judge", base_url=url,
                         api_key="x", out=str(tmp_path / "eval"), limit=3, progress=False, batch_api=True,
                         batch_poll=0.0, judge_price_in=0.001, judge_price_out=0.002)
        res = evaluate(cfg)
    st = json.loads((tmp_path / "eval" / "batch" / "state.json").read_text())
    sent = [json.loads(x) for b in st["batches"]
            for x in (tmp_path / "eval" / "batch" / b["file"]).read_text().splitlines()]
    assert app.state.requests == 0 and set(app.state.batch.answered.values()) == {1}
    assert {x["body"]["model"] for x in sent} == {"model-a", "model-b", "judge"}
    assert all(len({x["body"]["model"] for x in sent if x["custom_id"] in b["custom_ids"]}) == 1 for b in st["batches"])
    verdicts = list(read_jsonl(tmp_path / "eval" / "verdicts.jsonl"))
    scores = list(read_jsonl(tmp_path / "eval" / "scores.jsonl"))
    assert len(verdicts) == 3 and {v["winner"] for v in verdicts} == {"a" if verdicts[0]["a"] == "b" else "b"}
    assert all(len(v["raw"]) == 2 and v["consistent"] for v in verdicts) and len(scores) == 6
    # both orders of a pair went into the same batch, not one round each
    first_judge = next(b for b in st["batches"] if b["model"] == "judge")
    assert len(first_judge["custom_ids"]) == 3 * 2  # the scores come after, in run_items of their own
    assert res["ledger"]["judge"]["calls"] == 12 and res["ledger"]["judge"]["cost"] > 0


def test_collect_with_an_openai_judge_scores_every_turn_in_one_batch(tmp_path):
    app = add_batch_api(make_app())
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url, limit=3, judge="openai:judge", min_score=1, judge_price_in=0.001)
        s = collect(cfg)
    st = _state(cfg)
    assert [(b["model"], len(b["custom_ids"])) for b in st["batches"]] == [("fake-teacher", 3), ("judge", 6)]
    recs = list(read_jsonl(cfg.out)) + list(read_jsonl(sidecar(cfg.out, "rejected")))
    assert len(recs) == 3 and all(len(r["meta"]["judge_scores"]) == 2 for r in recs)
    assert app.state.requests == 0 and s.ledger["judge"]["calls"] == 6


def test_sdf_samples_then_ranks_through_batches(tmp_path):
    from baize.sdf import SDFConfig, sdf
    app = add_batch_api(make_app(), expire_every=5)
    with ServerThread(app) as url:
        cfg = SDFConfig(policy="openai:policy", judge="openai:judge", base_url=url, api_key="x", prompts="quora",
                        limit=3, n=4, out=str(tmp_path / "sdf.jsonl"), progress=False, batch_api=True, batch_poll=0.0,
                        price_in=0.001, judge_price_in=0.001)
        s, _ = sdf(cfg)
    st = _state(cfg)
    sent = [json.loads(x) for b in st["batches"] for x in (B.Batches(cfg.out).folder / b["file"]).read_text().splitlines()]
    assert app.state.requests == 0 and set(app.state.batch.answered.values()) == {1}
    assert {x["body"]["n"] for x in sent if x["body"]["model"] == "policy"} == {4}
    first_judge = next(b for b in st["batches"] if b["model"] == "judge")
    assert [len(b["custom_ids"]) for b in st["batches"]] == [3, 6, 1, 1]  # the 5th and 10th lines expired
    assert first_judge["n"] == 2  # both orders of each ranking at once
    recs = list(read_jsonl(cfg.out)) + list(read_jsonl(sidecar(cfg.out, "rejected")))
    assert len(recs) == 3 and all(len(r["meta"]["orders"]) == 2 for r in recs)
    assert s.ledger["policy"]["calls"] == 3 and s.ledger["judge"]["calls"] == 6


def test_a_local_teacher_is_not_resampled_while_its_judge_waits(tmp_path):
    """A local teacher's dialogues are kept, so the batched judge is asked about the same text on every
    replay (a fresh sample would be a new request, sent and paid again)."""
    import itertools

    from baize.testing import FakeLLM, default_reply
    draws = itertools.count()

    def sampled(msgs):  # a sampling model: another draw, another text
        return default_reply(msgs).replace("main facts", f"main facts (draw {next(draws)})")
    teacher = FakeLLM(sampled)
    app = add_batch_api(make_app(), expire_every=4)
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url, limit=3, teacher="default", judge="openai:judge", min_score=1)
        collect(cfg, llm=teacher)
        with pytest.raises(BaizeError, match="none of this stage's models is an openai: model"):
            collect(CollectConfig(**{**vars(cfg), "judge": None, "min_score": None}), llm=FakeLLM())
    assert len(teacher.calls) == 3  # once per seed, over every round
    st = _state(cfg)
    assert [len(b["custom_ids"]) for b in st["batches"]] == [6, 1]  # the 4th line expired, asked again
    recs = list(read_jsonl(cfg.out)) + list(read_jsonl(sidecar(cfg.out, "rejected")))
    assert len(recs) == 3 and all(len(r["meta"]["judge_scores"]) == 2 for r in recs)


def test_judge_check_judges_through_batches(tmp_path):
    from baize.judge.check import JudgeCheckConfig, check
    app = add_batch_api(make_app())
    with ServerThread(app) as url:
        cfg = JudgeCheckConfig(judge="openai:judge", base_url=url, api_key="x", limit=4, out=str(tmp_path / "jc"),
                               progress=False, batch_api=True, batch_poll=0.0, judge_price_in=0.001)
        res = check(cfg)
    st = json.loads((tmp_path / "jc" / "batch" / "state.json").read_text())
    assert [len(b["custom_ids"]) for b in st["batches"]] == [8] and app.state.requests == 0
    assert res["n"] == 4 and res["usage"]["calls"] == 8
    assert res["cost"] == pytest.approx(res["usage"]["prompt_tokens"] * 0.001 / 1000 / 2, abs=1e-6)


def test_waiting_says_a_line_when_something_changes(tmp_path, monkeypatch):
    """Polled every minute for a day, a batch would print 1,440 lines: a line when its status or counts
    change, else one every SAY_EVERY seconds."""
    from types import SimpleNamespace as NS
    statuses = ["validating", "in_progress", "in_progress", "in_progress", "in_progress", "completed"]
    counts = [0, 0, 0, 1, 1, 2]
    client = NS(batches=NS(retrieve=lambda i: NS(id=i, status=statuses.pop(0), errors=None, output_file_id=None,
                                                  error_file_id=None, request_counts=NS(total=2, completed=counts.pop(0),
                                                                                        failed=0))))
    said = []
    b = B.Batches(tmp_path / "d.jsonl", poll=0, say=said.append)
    b.clients["m"] = NS(client=client)
    b.state["batches"].append({"n": 1, "id": "batch_x", "model": "m", "file": "f", "custom_ids": ["a", "b"],
                               "status": "validating"})
    assert b.wait()
    assert [line.split(",")[0:2] for line in said] == [["batch batch_x: validating", " 0/2 completed"],
                                                       ["batch batch_x: in_progress", " 0/2 completed"],
                                                       ["batch batch_x: in_progress", " 1/2 completed"],
                                                       ["batch batch_x: completed", " 2/2 completed"]]
    assert said[0].endswith("0:00:00 elapsed")


def test_killed_between_creating_a_batch_and_writing_its_id(tmp_path, monkeypatch):
    """state.json has the lines and the uploaded file before the batch exists; a kill right after
    batches.create, before its id is written, is found again by the input file: nothing sent twice."""
    app = add_batch_api(make_app())
    real, saves = B.Batches._save, []

    def save(self):
        saves.append(1)
        if len(saves) == 3:  # 1: the lines, 2: the input file id, 3: the batch id
            raise KeyboardInterrupt  # as a kill -9 would, before the write
        real(self)
    with ServerThread(app) as url:
        cfg = _cfg(tmp_path, url, limit=3)
        monkeypatch.setattr(B.Batches, "_save", save)
        with pytest.raises(KeyboardInterrupt):
            collect(cfg)
        monkeypatch.undo()
        assert [(b["status"], "id" in b, "input_file_id" in b) for b in _state(cfg)["batches"]] == [
            ("uploading", False, True)]
        s = collect(cfg)
    assert len(app.state.batch.batches) == 1 and s.kept + sum(s.rejected.values()) == 3
    assert [(b["id"], b["status"]) for b in _state(cfg)["batches"]] == [("batch_1", "completed")]


def test_kill_9_while_waiting_then_rerun(tmp_path):
    """The issue's "killed once while waiting", as a kill: `baize collect --batch-api` in a process of
    its own, SIGKILLed while its batch is in progress; the same command again polls that batch."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    app = add_batch_api(make_app(), expire_every=11)
    app.state.batch.hold = True
    out = tmp_path / "d.jsonl"
    with ServerThread(app) as url:
        args = [sys.executable, "-m", "baize", "collect", "--seeds", "quora", "--limit", "30", "--teacher",
                "openai:fake-teacher", "--base-url", url, "--api-key", "x", "--out", str(out), "--batch-api",
                "--batch-poll", "0.05", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not any(
                b["status"] == "in_progress" for b in app.state.batch.batches.values()):
            time.sleep(0.05)
        time.sleep(0.3)  # a few polls of a batch in progress
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert [b["status"] for b in _state(CollectConfig(out=str(out)))["batches"]] == ["in_progress"]
        app.state.batch.hold = False
        rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    recs = list(read_jsonl(out)) + list(read_jsonl(sidecar(out, "rejected")))
    assert len(recs) == 30 and len({r["id"] for r in recs}) == 30
    assert len(app.state.batch.batches) == 2 and set(app.state.batch.answered.values()) == {1}
    assert app.state.requests == 0
    assert "batch batch_1: expired, 28/30 completed, 2 failed" in rerun.stdout


def test_requests_that_change_on_every_replay_stop_instead_of_batching_without_end(tmp_path, monkeypatch):
    """A request body that differs on each replay of its item (here a nonce, as a random seed or a clock in a
    prompt would) never finds its answer in the store: each round would send a new batch, each paid for. The run
    stops with one line after the first replay that asks for none of the answers the last wait brought."""
    import itertools

    nonce = itertools.count()
    real_body = B.BatchLLM.body
    monkeypatch.setattr(B.BatchLLM, "body", lambda self, messages, **kw: {
        **real_body(self, messages, **kw), "user": f"nonce-{next(nonce)}"})
    real_submit, sent = B.Batches.submit, []

    def submit(self):
        sent.append(1)
        assert len(sent) <= 4, "rounds without end"  # without the guard the run would batch forever
        return real_submit(self)
    monkeypatch.setattr(B.Batches, "submit", submit)
    app = add_batch_api(make_app())
    with ServerThread(app) as url:
        with pytest.raises(BaizeError, match=r"^--batch-api: the items replayed after the last batches asked for none "
                                             r"of their 3 answers and made 3 new requests"):
            collect(_cfg(tmp_path, url, limit=3, mode="oneshot"))
    assert len(sent) == 1  # one batch paid for, not one per round
    assert len(list(read_jsonl(tmp_path / "d.batch" / "results.jsonl"))) == 3  # its answers kept
