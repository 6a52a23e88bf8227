"""The one per-item loop (runner.run_items) on its own, with plain functions for work: what every
stage (collect, sdf, eval, data filter) relies on: resume by id, failures kept and retried, the
budget, the stateful accept hook, torn lines, the saved config and the summary across runs."""
import json
import threading
from dataclasses import dataclass

import pytest

from baize.config import BaizeError, EndpointFields, RunFields
from baize.llm.base import Completion, LLMError, TransientLLMError
from baize.runner import Ledger, run_items
from baize.schema import read_jsonl, sidecar


@dataclass
class Item:
    id: str


ITEMS = [Item(f"i{k}") for k in range(6)]


def ids(path):
    return [r["id"] for r in read_jsonl(path)] if path.exists() else []


def test_every_item_once_and_a_rerun_skips_them(tmp_path):
    out = tmp_path / "o.jsonl"
    seen = []
    s = run_items(ITEMS, lambda it: seen.append(it.id) or {"id": it.id}, out=out, ledger=Ledger(), progress=False)
    assert s.kept == 6 and sorted(seen) == sorted(ids(out)) == sorted(i.id for i in ITEMS)
    s2 = run_items(ITEMS, lambda it: pytest.fail("a done item ran again"), out=out, ledger=Ledger(), progress=False)
    assert (s2.kept, s2.skipped) == (0, 6)


def test_rejects_go_to_the_sidecar_and_count_as_done(tmp_path):
    out = tmp_path / "o.jsonl"

    def work(it):
        return {"id": it.id, "meta": {"reject_reason": "odd"} if int(it.id[1:]) % 2 else {}}
    s = run_items(ITEMS, work, out=out, ledger=Ledger(), progress=False)
    assert s.kept == 3 and s.rejected == {"odd": 3}
    assert sorted(ids(sidecar(out, "rejected"))) == ["i1", "i3", "i5"]
    assert run_items(ITEMS, work, out=out, ledger=Ledger(), progress=False).skipped == 6


def test_transient_failures_are_recorded_then_retried_or_not(tmp_path):
    out = tmp_path / "o.jsonl"

    def flaky(it):
        if it.id in ("i2", "i4"):
            raise TransientLLMError("HTTP 503 after retries")
        return {"id": it.id}
    s = run_items(ITEMS, flaky, out=out, ledger=Ledger(), progress=False, meta_of=lambda it: {"k": it.id})
    failed = list(read_jsonl(sidecar(out, "failed")))
    assert s.failed == 2 and {r["id"] for r in failed} == {"i2", "i4"} and failed[0]["error"].startswith("HTTP 503")
    assert run_items(ITEMS, flaky, out=out, ledger=Ledger(), progress=False, retry_failed=False).skipped == 6
    s3 = run_items(ITEMS, lambda it: {"id": it.id}, out=out, ledger=Ledger(), progress=False)
    assert s3.kept == 2 and list(read_jsonl(sidecar(out, "failed"))) == []  # retried, and the sidecar emptied


def test_a_fatal_error_stops_the_run_and_keeps_what_was_written(tmp_path):
    out = tmp_path / "o.jsonl"

    def work(it):
        if it.id == "i3":
            raise LLMError("401, the API key was refused: set OPENAI_API_KEY")
        return {"id": it.id}
    with pytest.raises(LLMError, match="401"):
        run_items(ITEMS, work, out=out, ledger=Ledger(), concurrency=1, progress=False)
    assert ids(out) == ["i0", "i1", "i2"]


def test_failing_in_a_row_stops_with_one_error(tmp_path):
    def down(it):
        raise TransientLLMError("cannot connect")
    with pytest.raises(BaizeError, match="failed in a row, last: cannot connect"):
        run_items([Item(f"x{k}") for k in range(50)], down, out=tmp_path / "o.jsonl", ledger=Ledger(),
                  concurrency=1, progress=False, max_failures_in_a_row=5)


def test_the_budget_stops_submitting_and_an_item_that_never_called_is_left_for_later(tmp_path):
    out = tmp_path / "o.jsonl"
    ledger = Ledger(max_tokens_total=250)

    def work(it):
        if ledger.exhausted():
            return None  # the budget ran out before this item's first call
        ledger.add(Completion("x", 60, 40))
        return {"id": it.id}
    s = run_items(ITEMS, work, out=out, ledger=ledger, concurrency=1, progress=False)
    assert s.stopped == "budget" and s.kept == 3 and s.prompt_tokens + s.completion_tokens == 300
    s2 = run_items(ITEMS, lambda it: {"id": it.id}, out=out, ledger=Ledger(), progress=False)
    assert s2.kept == 3 and s2.skipped == 3


def test_accept_runs_on_the_calling_thread_and_may_reject(tmp_path):
    threads = set()

    def accept(it, rec):
        threads.add(threading.current_thread())
        rec["meta"]["seen"] = True
        return "near_duplicate" if it.id == "i1" else None
    out = tmp_path / "o.jsonl"
    s = run_items(ITEMS, lambda it: {"id": it.id}, out=out, ledger=Ledger(), accept=accept, concurrency=4,
                  progress=False)
    assert threads == {threading.current_thread()}
    assert s.rejected == {"near_duplicate": 1} and all(r["meta"]["seen"] for r in read_jsonl(out))


def test_a_torn_last_line_is_repaired_and_its_item_redone(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": "i0"}) + "\n" + '{"id": "i1", "mess')
    s = run_items(ITEMS, lambda it: {"id": it.id}, out=out, ledger=Ledger(), progress=False)
    assert s.skipped == 1 and sorted(ids(out)) == [f"i{k}" for k in range(6)]


@dataclass
class Cfg(RunFields, EndpointFields):
    out: str = "o.jsonl"


def test_config_saved_with_secrets_masked_and_summary_totals_every_run(tmp_path):
    out = tmp_path / "o.jsonl"
    prices = {"teacher": (1.0, 2.0)}

    def work(it, ledger):
        ledger.add(Completion("x", 100, 50))
        return {"id": it.id}
    la = Ledger(prices=prices)
    run_items(ITEMS[:3], lambda it: work(it, la), out=out, ledger=la, config=Cfg(api_key="sk-secret"), progress=False)
    saved = json.loads(sidecar(out, "config.json").read_text())
    assert saved["api_key"] == "***" and "sk-secret" not in sidecar(out, "config.json").read_text()
    lb = Ledger(prices=prices)
    s = run_items(ITEMS, lambda it: work(it, lb), out=out, ledger=lb, config=Cfg(), progress=False)
    assert json.loads(sidecar(out, "config.json").read_text())["api_key"] is None
    assert s.kept == 3 and s.cost == pytest.approx(3 * 0.2)
    total = json.loads(sidecar(out, "summary.json").read_text())["total"]
    assert (total["kept"], total["prompt_tokens"], total["cost"]) == (6, 600, pytest.approx(1.2))


def test_ledger_children_share_the_budget_and_count_their_own_part():
    parent = Ledger(max_tokens_total=100, prices={"judge": (1.0, 1.0)})
    a, b = parent.child(), parent.child()
    a.add(Completion("x", 30, 20), role="judge")
    assert not b.exhausted()
    b.add(usage={"prompt_tokens": 40, "completion_tokens": 10, "calls": 2}, role="judge")
    assert b.exhausted() and parent.calls == 3 and (a.calls, b.calls) == (1, 2)
    assert parent.as_dict()["judge"]["cost"] == pytest.approx(0.1)


def test_the_throttle_grows_by_one_per_quiet_interval_not_by_one_per_item(fake_throttle):
    # AIMD as TCP's congestion avoidance: +1 per round trip without loss; +1 per finished item would
    # double a width whose items all finish within the interval, and be right back at the 429s
    t, clock, hits = fake_throttle(0.0)
    hits[0] = 2
    t.update(0)
    assert t.width == 32
    widths = []
    for _ in range(5):
        clock[0] += 1.0
        t.update(t.width)  # every item in flight finished in this interval
        widths.append(t.width)
    assert widths == [33, 34, 35, 36, 37]
    t.update(37)
    t.update(37)
    assert t.width == 37  # within the same interval: no more growth


def test_a_judges_429s_do_not_narrow_the_policys_width(tmp_path):
    from baize.llm.base import LLM, rate_limits
    policy, judge = LLM(), LLM()
    policy.where, judge.where = "openai:policy at http://a/v1", "openai:judge at http://b/v1"
    items = [Item(f"j{k}") for k in range(40)]

    def work(it, where):
        for _ in range(3):
            rate_limits.hit(where)
        return {"id": it.id}
    s = run_items(items, lambda it: work(it, judge.where), out=tmp_path / "a.jsonl", ledger=Ledger(),
                  progress=False, concurrency=8, throttle_on=[policy])
    assert s.kept == 40 and s.width == {}  # the judge was rate limited: the policy's width never moved
    assert rate_limits.of(judge.where) >= 120 and rate_limits.of(policy.where) == 0
    s = run_items(items, lambda it: work(it, policy.where), out=tmp_path / "b.jsonl", ledger=Ledger(),
                  progress=False, concurrency=8, throttle_on=[policy])
    assert s.width["rate_limited"] == 120 and s.width["lowest"] < 8
