"""`baize sdf`: sample n answers, a judge ranks them, the best and the whole ranking are kept.

Policy and judge are FakeLLMs or the fake OpenAI server (through the official client, with
faults); the CLI runs as a subprocess for kill -9 + resume and the one-line errors."""
import collections
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from baize.config import BaizeError
from baize.schema import read_jsonl, sidecar
from baize.sdf import SDFConfig, load_prompts, sdf
from baize.testing import FakeLLM, ServerThread, judge_reply, make_app

ROOT = Path(__file__).resolve().parent.parent


def varied_policy():
    """Four distinct answers per prompt, of lengths 1..4 sentences in a rotating order. The count is
    kept per prompt: one shared counter made the answers depend on how worker threads interleave,
    so a rerun could see other candidates (and miss the judge cache)."""
    counters = collections.defaultdict(itertools.count)
    lock = threading.Lock()

    def reply(messages):
        q = messages[-1]["content"]
        with lock:
            i = next(counters[q])
        return " ".join([f"Answer to '{q[:30]}', part {j}." for j in range(1 + i % 4)])
    return reply


def server_reply():
    policy = varied_policy()

    def reply(messages):
        if "impartial judge" in messages[0]["content"]:
            return judge_reply(messages)
        return policy(messages)
    return reply


def cfg_for(tmp_path, **kw):
    base = dict(policy="fake-policy", judge="fake-judge", prompts="quora", limit=6, n=4,
                out=str(tmp_path / "sdf.jsonl"), concurrency=3, progress=False)
    base.update(kw)
    return SDFConfig(**base)


def test_sdf_keeps_the_best_and_the_whole_ranking(tmp_path):
    cfg = cfg_for(tmp_path)
    judge = FakeLLM(name="fake-judge")  # prefers longer answers, in any position
    s, prefs = sdf(cfg, FakeLLM(varied_policy(), name="fake-policy"), judge)
    assert (s.kept, s.rejected, s.failed) == (6, {}, 0)
    recs = list(read_jsonl(cfg.out, validate=True))
    questions = {p.id: p.context[0]["content"] for p in load_prompts("quora", limit=6)}
    for r in recs:
        m = r["meta"]
        cands = m["candidates"]
        assert len(cands) == 4 and sorted(c["rank"] for c in cands) == [1, 2, 3, 4]
        longest = max(cands, key=lambda c: len(c["text"]))
        assert longest["rank"] == 1
        # trainable as it is: the question, then the best answer
        assert r["messages"] == [{"role": "user", "content": questions[r["id"]]},
                                 {"role": "assistant", "content": longest["text"]}]
        assert m["agreement"] == 1.0 and len(m["orders"]) == 2 and len(m["judge_raw"]) == 2
        assert m["policy"] == "fake-policy" and m["judge"] == "fake-judge" and m["mode"] == "sdf"
        assert m["usage"]["judge"]["calls"] == 2 and m["usage"]["policy"]["calls"] == 1
    # preference pairs: the best against each of the 3 worse, in TRL's conversational shape
    rows = list(read_jsonl(sidecar(cfg.out, "prefs")))
    assert prefs["pairs"] == len(rows) == 6 * 3 and prefs["mean_agreement"] == 1.0
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])
        assert row["meta"]["margin"] == row["meta"]["rejected_rank"] - row["meta"]["chosen_rank"] >= 1
    assert {row["meta"]["margin"] for row in rows} == {1, 2, 3}
    # ledger: policy and judge apart
    summ = json.loads(sidecar(cfg.out, "summary.json").read_text())
    assert summ["ledger"]["policy"]["calls"] == 6 and summ["ledger"]["judge"]["calls"] == 12
    assert json.loads(sidecar(cfg.out, "config.json").read_text())["n"] == 4
    # a rerun does nothing; with the output gone, the cached verdicts cost no judge call
    judge2 = FakeLLM(name="fake-judge")
    s2, _ = sdf(cfg, FakeLLM(varied_policy(), name="fake-policy"), judge2)
    assert s2.skipped == 6 and s2.kept == 0 and judge2.calls == []
    Path(cfg.out).unlink()
    s3, _ = sdf(cfg, FakeLLM(varied_policy(), name="fake-policy"), judge2)
    assert s3.kept == 6 and judge2.calls == []
    assert [r["meta"]["order"] for r in read_jsonl(cfg.out)] == [r["meta"]["order"] for r in recs]


def test_policy_gets_the_papers_sampling_and_a_given_system_prompt(tmp_path):
    policy = FakeLLM(varied_policy(), name="fake-policy")
    sdf(cfg_for(tmp_path, limit=2, system="You are Baize."), policy, FakeLLM(name="fake-judge"))
    assert len(policy.calls) == 2 and all(c[0] == {"role": "system", "content": "You are Baize."} for c in policy.calls)
    assert all(c[1]["role"] == "user" for c in policy.calls)
    # temperature 1, top-p 0.95 (the paper's), n candidates in one call, a seed per prompt
    assert {(a["n"], a["temperature"], a["top_p"]) for a in policy.sampling} == {(4, 1.0, 0.95)}
    assert len({a["seed"] for a in policy.sampling}) == 2
    rows = [json.loads(ln) for ln in (tmp_path / "sdf.jsonl").read_text().splitlines()]
    assert all(r["messages"][0]["role"] == "user" for r in rows)  # the record stays the dialogue itself


def test_always_first_judge_gives_no_preference(tmp_path):
    cfg = cfg_for(tmp_path, limit=3)
    first = FakeLLM(["Ranking: [[1]] > [[2]] > [[3]] > [[4]]"], name="first")
    s, prefs = sdf(cfg, FakeLLM(varied_policy()), first)
    assert s.kept == 0 and s.rejected == {"no_preference": 3} and prefs["pairs"] == 0
    for r in read_jsonl(sidecar(cfg.out, "rejected")):
        assert r["meta"]["agreement"] == 0.0 and len({c["points"] for c in r["meta"]["candidates"]}) == 1


def test_min_agreement_rejects_a_judge_that_disagrees_with_itself(tmp_path):
    def flaky(messages):  # prefers length, but swaps its top two when the longest is shown first
        labels = judge_reply(messages).split("Ranking: ")[1].split(" > ")
        if labels[0] == "[[1]]":
            labels[0], labels[1] = labels[1], labels[0]
        return "Ranking: " + " > ".join(labels)
    s, _ = sdf(cfg_for(tmp_path, limit=4, min_agreement=0.9), FakeLLM(varied_policy()), FakeLLM(flaky))
    assert s.rejected == {"low_agreement": 4}
    for r in read_jsonl(sidecar(tmp_path / "sdf.jsonl", "rejected")):
        assert r["meta"]["agreement"] == pytest.approx(5 / 6)


def test_empty_and_identical_candidates_are_dropped_before_judging(tmp_path):
    replies = itertools.cycle(["", "Same answer.", "same   answer.", "Different answer, longer."])
    judge = FakeLLM(name="judge")
    s, prefs = sdf(cfg_for(tmp_path, limit=2), FakeLLM(lambda m: next(replies)), judge)
    assert s.kept == 2 and prefs["pairs"] == 2
    for r in read_jsonl(tmp_path / "sdf.jsonl"):
        assert r["meta"]["dropped"] == {"empty": 1, "duplicate": 1} and len(r["meta"]["candidates"]) == 2
    assert all("[[3]]" not in c[-1]["content"] for c in judge.calls)  # the judge saw two answers
    s, _ = sdf(cfg_for(tmp_path / "same", limit=2), FakeLLM(["Only this."]), FakeLLM(name="j2"))
    assert s.rejected == {"too_few_candidates": 2}


def test_multi_turn_contexts_from_a_dialogue_file(tmp_path):
    dialogues = tmp_path / "dialogues.jsonl"
    dialogues.write_text("".join(json.dumps({"id": f"d{i}", "messages": [
        {"role": "user", "content": f"First question {i}?"}, {"role": "assistant", "content": f"First answer {i}."},
        {"role": "user", "content": f"Follow-up {i}?"}, {"role": "assistant", "content": f"Second answer {i}."}]}) + "\n"
        for i in range(2)))
    judge = FakeLLM(name="judge")
    s, _ = sdf(cfg_for(tmp_path, prompts=str(dialogues), limit=None), FakeLLM(varied_policy()), judge)
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "sdf.jsonl")}
    assert s.kept == 4 and set(recs) == {"d0-t1", "d0-t2", "d1-t1", "d1-t2"}
    second = recs["d1-t2"]["messages"]
    assert [m["content"] for m in second[:3]] == ["First question 1?", "First answer 1.", "Follow-up 1?"]
    assert second[3]["role"] == "assistant" and recs["d1-t2"]["meta"]["turn"] == 2
    # the judge saw the earlier turns of the dialogue
    assert any("First answer 1." in c[-1]["content"] and "Follow-up 1?" in c[-1]["content"] for c in judge.calls)


def test_budget_stops_and_a_rerun_finishes(tmp_path):
    cfg = cfg_for(tmp_path, limit=12, concurrency=2, max_tokens_total=300)
    s, _ = sdf(cfg, FakeLLM(varied_policy()), FakeLLM(name="j"))
    assert s.stopped == "budget" and 0 < s.kept < 12
    cfg.max_tokens_total = None
    s2, prefs = sdf(cfg, FakeLLM(varied_policy()), FakeLLM(name="j"))
    ids = [r["id"] for r in read_jsonl(cfg.out)]
    assert s2.skipped == s.kept and len(ids) == len(set(ids)) == 12 and prefs["prompts"] == 12


def test_a_judge_that_writes_garbage_stops_the_run_and_keeps_what_was_written(tmp_path):
    calls = itertools.count()

    def judge(messages):  # good for the first two prompts, then nothing but prose
        return judge_reply(messages) if next(calls) < 4 else "They are all lovely."
    cfg = cfg_for(tmp_path, limit=10, concurrency=1, max_unparseable=3)
    with pytest.raises(BaizeError, match=r"judge bad-judge: .*unparseable.*They are all lovely"):
        sdf(cfg, FakeLLM(varied_policy()), FakeLLM(judge, name="bad-judge"))
    assert len(list(read_jsonl(cfg.out))) == 2  # the prompts judged before are kept
    assert len(list(read_jsonl(sidecar(cfg.out, "prefs")))) == 6


def test_over_http_with_faults_then_prefs_into_dpo_trainer(tmp_path, tiny_model_dir):
    prompts = load_prompts("quora", limit=6)
    faults = {prompts[0].context[0]["content"]: ["429"], prompts[1].context[0]["content"]: ["malformed"],
              prompts[2].context[0]["content"]: ["500", "500"]}
    with ServerThread(make_app(reply=server_reply(), faults=faults)) as url:
        cfg = cfg_for(tmp_path, policy="openai:fake-policy", judge="openai:fake-judge", base_url=url, api_key="x",
                      request_retries=1, timeout=10)
        s, prefs = sdf(cfg)
        assert s.failed == 1 and s.kept == 5  # prompt 2 ran out of retries
        failed = list(read_jsonl(sidecar(cfg.out, "failed")))
        assert [f["id"] for f in failed] == [prompts[2].id] and "HTTP 500" in failed[0]["error"]
        s2, prefs = sdf(cfg)  # the failed prompt is retried; the rest is skipped
        assert (s2.kept, s2.skipped, s2.failed) == (1, 5, 0)
    ids = [r["id"] for r in read_jsonl(cfg.out)]
    assert sorted(ids) == sorted(p.id for p in prompts)
    assert s.ledger["policy"]["calls"] == 5 and s.ledger["judge"]["calls"] == 10
    # the preference file loads with `datasets` and goes into TRL's DPOTrainer unchanged
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    ds = datasets.load_dataset("json", data_files=str(sidecar(cfg.out, "prefs")), split="train")
    assert len(ds) == prefs["pairs"] == 18 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, max_length=256, logging_steps=1, save_strategy="no")
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "baize", "sdf", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_cli_kill9_then_resume_each_prompt_once(tmp_path):
    out = tmp_path / "killed.jsonl"
    n = 40
    with ServerThread(make_app(reply=server_reply(), latency=0.15)) as url:
        args = [sys.executable, "-m", "baize", "sdf", "--prompts", "quora", "--limit", str(n), "--out", str(out),
                "--policy", "openai:fake-policy", "--judge", "openai:fake-judge", "--base-url", url,
                "--no-progress", "--concurrency", "4"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if out.exists() and out.read_text().count("\n") >= 6:
                    break
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=10)
        before = out.read_text().count("\n")
        assert 6 <= before < n
        p = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert p.returncode == 0, p.stderr
    assert "preference pairs" in p.stdout and "agreement 1.00" in p.stdout
    ids = [r["id"] for r in read_jsonl(out, validate=True)]
    assert len(ids) == len(set(ids)) == n and set(ids) == {x.id for x in load_prompts("quora", limit=n)}
    assert len(list(read_jsonl(sidecar(out, "prefs")))) == 3 * n


def test_cli_one_line_errors(tmp_path):
    p = run_cli("--policy", str(tmp_path / "no-such-run"), "--judge", "openai:j", "--base-url", "http://127.0.0.1:9/v1",
                "--limit", "2", "--out", str(tmp_path / "x.jsonl"), "--no-progress")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "unknown model spec" in p.stderr
    p = run_cli("--policy", "openai:p", "--judge", "openai:j", "--base-url", "http://127.0.0.1:9/v1", "--n", "1",
                "--out", str(tmp_path / "y.jsonl"), "--no-progress")
    assert p.returncode == 2 and "--n 1" in p.stderr
    policy = varied_policy()
    with ServerThread(make_app(reply=lambda m: "I cannot decide." if "impartial" in m[0]["content"]
                               else policy(m))) as url:
        p = run_cli("--policy", "openai:p", "--judge", "openai:garbage-judge", "--base-url", url, "--limit", "20",
                    "--out", str(tmp_path / "z.jsonl"), "--no-progress", "--max-unparseable", "4")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert "garbage-judge" in p.stderr and "I cannot decide." in p.stderr


def test_the_summary_keeps_the_ledger_of_earlier_runs(tmp_path):
    cfg = cfg_for(tmp_path, limit=6, concurrency=2, max_tokens_total=200, price_in=1.0, judge_price_out=2.0)
    s1, _ = sdf(cfg, FakeLLM(varied_policy()), FakeLLM(name="j"))
    cfg.max_tokens_total = None
    s2, _ = sdf(cfg, FakeLLM(varied_policy()), FakeLLM(name="j"))
    s3, _ = sdf(cfg, FakeLLM(varied_policy()), FakeLLM(name="j"))  # nothing left to do
    total = json.loads(sidecar(cfg.out, "summary.json").read_text())["total"]
    assert s3.kept == 0 and total["kept"] == 6
    for role in ("policy", "judge"):
        assert total["ledger"][role]["calls"] == s1.ledger[role]["calls"] + s2.ledger[role]["calls"]
    assert total["cost"] == pytest.approx(s1.cost + s2.cost) and total["cost"] > 0


# --- issue 28, section 4: the debiased judge's flags and tie band ----------------------------------

class LocalRanker(FakeLLM):
    """A local judge reading option log-probs: a strong prior for the first shown, plus `quality` of
    each shown answer (RANK_ANSWER's '[The Start of Response [[k]]]' blocks, as prompts.py writes them)."""
    can_score_options = True

    def __init__(self, quality, name="local-judge"):
        super().__init__(name=name)
        self.quality, self.read = quality, 0

    def option_logprobs(self, messages, prefix, options):
        self.read += 1
        blocks = messages[-1]["content"].split("[The Start of Response [[")[1:]
        return [-2.0 * pos + self.quality(b.split("[The End")[0]) for pos, b in enumerate(blocks)]


@pytest.mark.parametrize("flag,kw", [("--judge-orders", {"judge_orders": 4}),
                                     ("--min-agreement", {"min_agreement": 0.5})])
def test_debiased_mode_refuses_the_flags_it_cannot_honour(tmp_path, flag, kw):
    policy = FakeLLM(varied_policy())
    judge = LocalRanker(lambda text: 0.1 * len(text))
    with pytest.raises(BaizeError, match=f"^{flag} .*debiased") as e:  # auto: debiased for a local judge
        sdf(cfg_for(tmp_path, **kw), policy, judge)
    assert "\n" not in str(e.value) and judge.read == 0
    with pytest.raises(BaizeError, match=f"^{flag}"):  # given explicitly: refused before anything loads
        sdf(cfg_for(tmp_path, judge_mode="debiased", judge="openai:j", **kw), policy)
    assert policy.calls == []
    s, _ = sdf(cfg_for(tmp_path, limit=2, judge_mode="text", **kw), policy, FakeLLM(name="fake-judge"))
    assert s.kept == 2  # text mode honours both


def sentences(text):
    return text.count(".")  # varied_policy's candidates: 1 to 4 sentences


@pytest.mark.parametrize("gap,kept", [(0.04, False), (0.08, True)])
def test_the_debiased_tie_band_means_the_same_for_pairs_and_rankings(tmp_path, gap, kept):
    """One sentence more is worth `gap` nats of the judge's log-odds per presentation; summed over two
    orders that is 2 * gap: inside the 0.1 tie band at 0.04, outside at 0.08, for a pair and a ranking alike."""
    from baize.judge.core import Judge
    judge = LocalRanker(lambda text: gap * sentences(text))

    def pair_lp(messages, prefix, options):  # a pair: a prior of 1 nat for position A, as the ranking's
        text = messages[-1]["content"]
        a = text.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
        b = text.split("[The Start of Assistant B's Answer]")[1].split("[The End")[0]
        return [1.0 + gap * sentences(a), gap * sentences(b), -3.0]
    judge.option_logprobs = lambda m, prefix, o, rank=judge.option_logprobs: (
        pair_lp(m, prefix, o) if prefix == "[[" else rank(m, prefix, o))
    v = Judge(judge, mode="debiased").pair("Q?", "One. Two.", "One.")
    assert v.margin == pytest.approx(2 * gap) and v.winner == ("A" if kept else "tie")
    s, prefs = sdf(cfg_for(tmp_path, limit=3), FakeLLM(varied_policy()), judge)
    if kept:  # the best is one sentence clear of the second: a target, and three preference pairs each
        assert s.kept == 3 and prefs["pairs"] == 9
    else:  # the best and the second are a near-tie: neither a target nor a preference pair
        assert s.kept == 0 and s.rejected == {"tied_best": 3} and prefs["pairs"] == 0
        for r in read_jsonl(sidecar(cfg_for(tmp_path).out, "rejected")):
            assert sorted(c["rank"] for c in r["meta"]["candidates"]) == [1, 1, 2, 3]  # 0.08, 0.16, 0.24 below


def test_one_cut_reply_on_an_n_ignoring_server_does_not_fail_the_prompt(tmp_path):
    """llama-cpp-python's server ignores n and answers one choice (abetlen/llama-cpp-python#1906); a
    reply that spends its max_tokens before any text comes back as OpenAI's finish_reason "length" with
    empty content. The first request of a prompt (asking n=4) gets such a reply: that is one cut reply,
    not four, so the prompt tops up with single calls instead of failing."""
    from fastapi import FastAPI, Request
    app, seen = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body.get("n"))
        msgs = body["messages"]
        if "impartial judge" in msgs[0]["content"]:
            text, finish = judge_reply(msgs), "stop"
        elif len(seen) == 1:
            text, finish = "", "length"
        else:
            text, finish = f"Answer number {len(seen)} about {msgs[-1]['content'][:20]}.", "stop"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}

    with ServerThread(app) as url:
        s, _ = sdf(cfg_for(tmp_path, policy="openai:llama", judge="openai:llama", base_url=url, api_key="x", limit=1,
                           concurrency=1))
    rec = (list(read_jsonl(tmp_path / "sdf.jsonl")) + list(read_jsonl(sidecar(tmp_path / "sdf.jsonl", "rejected"))))
    assert s.failed == 0 and len(rec) == 1, list(read_jsonl(sidecar(tmp_path / "sdf.jsonl", "failed")))
    meta = rec[0]["meta"]
    assert meta["sampling"] == "topped_up" and meta["dropped"]["cut_by_max_tokens"] == 1
    assert len(meta["candidates"]) == 3 and seen[:4] == [4, None, None, None]
