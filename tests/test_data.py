import json

import pytest

from baize.config import BaizeError
from baize.data.commands import export, import_baize, stats
from baize.schema import JsonlAppender, read_jsonl, repair_torn_tail, write_jsonl

RECORDS = [
    {"id": "q-1", "messages": [{"role": "user", "content": "What is LoRA?"},
                               {"role": "assistant", "content": "A low-rank adapter."},
                               {"role": "user", "content": "Why use it?"},
                               {"role": "assistant", "content": "It trains few parameters."}],
     "meta": {"seed": "What is LoRA?", "source": "quora", "mode": "oneshot",
              "usage": {"prompt_tokens": 5, "completion_tokens": 7}}},
    {"id": "q-2", "messages": [{"role": "user", "content": "Hi [|AI|] there"},
                               {"role": "assistant", "content": "Hello."}],
     "meta": {"seed": "greet", "source": "so", "mode": "turns", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}},
]


def test_baize_export_import_roundtrip(tmp_path):
    src = tmp_path / "d.jsonl"
    write_jsonl(src, RECORDS[:1])
    assert export(src, tmp_path / "b.json", "baize") == 1
    items = json.loads((tmp_path / "b.json").read_text())
    assert items[0]["topic"] == "What is LoRA?"
    assert items[0]["input"].startswith("The conversation between human and AI assistant.\n[|Human|] What is LoRA?")
    assert items[0]["input"].endswith("\n[|Human|] ")
    assert import_baize(tmp_path / "b.json", tmp_path / "back.jsonl") == 1
    back = list(read_jsonl(tmp_path / "back.jsonl", validate=True))
    assert back[0]["messages"] == RECORDS[0]["messages"]  # the last exchange survives the round trip


def test_import_paper_sample_keeps_last_exchange(tmp_path):
    paper = [{"topic": "How do I bake bread?",
              "input": "The conversation between human and AI assistant.\n[|Human|] How do I bake bread?\n"
                       "[|AI|] Mix flour, water, yeast and salt.\n[|Human|] How long?\n[|AI|] About 40 minutes.\n[|Human|] "}]
    (tmp_path / "quora_chat_data.json").write_text(json.dumps(paper))
    import_baize(tmp_path / "quora_chat_data.json", tmp_path / "o.jsonl")
    (rec,) = read_jsonl(tmp_path / "o.jsonl")
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rec["messages"][-1]["content"] == "About 40 minutes."
    assert rec["meta"]["source"] == "quora" and rec["meta"]["seed"] == "How do I bake bread?"


def test_sharegpt_export(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    export(tmp_path / "d.jsonl", tmp_path / "s.jsonl", "sharegpt")
    rows = list(read_jsonl(tmp_path / "s.jsonl"))
    assert rows[0]["conversations"][0] == {"from": "human", "value": "What is LoRA?"}
    assert rows[0]["conversations"][1]["from"] == "gpt"


def test_stats_counts(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    write_jsonl(tmp_path / "d.rejected.jsonl", [{**RECORDS[1], "id": "r", "meta": {"reject_reason": "refusal"}}])
    s = stats(tmp_path / "d.jsonl")
    assert s["dialogues"] == 2
    assert s["turns_per_dialogue"] == {"mean": 1.5, "min": 1, "max": 2, "histogram": {1: 1, 2: 1}}
    assert s["teacher_tokens"] == {"prompt": 6, "completion": 9}
    assert s["sources"] == {"quora": 1, "so": 1}
    assert s["reject_reasons"] == {"refusal": 1}


def test_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(RECORDS[0]) + "\n{oops\n")
    with pytest.raises(BaizeError, match=r"d\.jsonl:2: not valid JSON"):
        stats(p)
    p.write_text(json.dumps({"id": "x", "messages": [{"role": "bot", "content": "hi"}]}) + "\n")
    with pytest.raises(BaizeError, match=r"d\.jsonl:1: messages\[0\]"):
        stats(p)


def test_torn_tail_is_repaired_and_appender_resumes(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1])[:30])
    assert repair_torn_tail(p) > 0
    with JsonlAppender(p) as w:
        assert w.ids == {"q-1"}
        w.append(RECORDS[1])
    assert [r["id"] for r in read_jsonl(p)] == ["q-1", "q-2"]


def test_cli_data_commands(tmp_path, capsys):
    from baize.cli import main
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    assert main(["data", "stats", str(tmp_path / "d.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dialogues"] == 2
    assert main(["data", "stats", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_stats_of_sdf_and_preference_files_show_length_bias(tmp_path):
    import collections
    import itertools

    from baize.data.commands import stats
    from baize.sdf import SDFConfig, sdf
    from baize.testing import FakeLLM
    counts = collections.defaultdict(itertools.count)  # per prompt: workers interleave
    cfg = SDFConfig(policy="p", judge="j", prompts="quora", limit=5, out=str(tmp_path / "s.jsonl"), progress=False)
    policy = FakeLLM(lambda m: "word " * (1 + next(counts[m[-1]["content"]]) % 4))
    sdf(cfg, policy, FakeLLM(name="j"))  # a judge that prefers length
    s = stats(tmp_path / "s.jsonl")
    assert s["sdf"]["candidates_per_prompt"]["mean"] == 4 and s["sdf"]["agreement"]["mean"] == 1.0
    assert s["sdf"]["best_is_longest"] == 1.0 and s["sdf"]["best_words"] > s["sdf"]["candidate_words"]
    assert s["teacher_tokens"]["prompt"] > 0  # policy and judge usage are counted
    p = stats(tmp_path / "s.prefs.jsonl")
    assert p["kind"] == "preferences" and p["pairs"] == 15 and p["prompts"] == 5
    assert p["chosen_longer"] == 1.0 and p["chosen_words"]["mean"] > p["rejected_words"]["mean"]
    assert p["rank_margin"] == {"1": 5, "2": 5, "3": 5}


def test_stats_show_one_example_per_reject_reason(tmp_path, capsys):
    from baize.data.commands import print_stats
    long_echo = "I'm sorry for any misunderstanding, but as an AI designed to assist with this topic, " * 4
    rejected = [
        {"id": "r-1", "messages": RECORDS[0]["messages"][:2] + [{"role": "user", "content": long_echo},
                                                                {"role": "assistant", "content": "Ok."}],
         "meta": {"reject_reason": "echo", "reject_turn": 2, "reject_detail": "0.95 of the human turn copied"}},
        {"id": "r-2", "messages": RECORDS[1]["messages"], "meta": {"reject_reason": "echo", "reject_turn": 0}},
        {"id": "r-3", "messages": RECORDS[0]["messages"], "meta": {"reject_reason": "refusal"}},  # no turn named
    ]
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    write_jsonl(tmp_path / "d.rejected.jsonl", rejected)
    s = stats(tmp_path / "d.jsonl")
    assert s["reject_reasons"] == {"echo": 2, "refusal": 1}
    ex = s["reject_examples"]["echo"]
    assert (ex["id"], ex["turn"], ex["role"], ex["detail"]) == ("r-1", 2, "user", "0.95 of the human turn copied")
    assert ex["excerpt"].startswith("I'm sorry for any misunderstanding") and len(ex["excerpt"]) <= 160
    assert ex["excerpt"].endswith("...")
    assert s["reject_examples"]["refusal"] == {"id": "r-3", "turn": 3, "role": "assistant",
                                               "excerpt": "It trains few parameters.", "detail": ""}
    print_stats(s)
    table = "".join(capsys.readouterr().out.split())
    assert "e.g.echo" in table and "r-1,turn2(user)" in table and "e.g.refusal" in table
    # and in --json
    from baize.cli import main
    assert main(["data", "stats", str(tmp_path / "d.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reject_examples"]["echo"]["id"] == "r-1"
