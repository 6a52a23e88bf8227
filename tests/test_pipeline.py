"""`baize pipeline` (the README's main job) end to end on a fake teacher over HTTP and a tiny base."""
import json

from baize.testing import ServerThread, make_app


def test_pipeline_collects_trains_compares_and_resumes(tiny_model_dir, tmp_path, capsys):
    from baize.cli import main
    out = tmp_path / "demo"
    with ServerThread(make_app()) as url:
        args = ["pipeline", "--out", str(out), "--teacher", "openai:fake-teacher", "--base-url", url,
                "--base", str(tiny_model_dir), "--limit", "4", "--max-steps", "2", "--batch-size", "2"]
        assert main(args) == 0
        first = capsys.readouterr().out
        dialogues = (out / "dialogues.jsonl").read_text().splitlines()
        assert len(dialogues) == 4 and all(json.loads(d)["messages"][-1]["role"] == "assistant" for d in dialogues)
        run = json.loads((out / "v1" / "baize_run.json").read_text())
        assert run["steps"] == 2 and run["format"] == "template"
        # the comparison and the commands to use the result
        assert "base (" in first and "v1 (" in first
        flat = "".join(first.split())  # rich wraps long lines
        assert f"baizechat{out / 'v1'}" in flat and f"baizeserve{out / 'v1'}" in flat
        # a rerun collects and trains nothing again
        assert main(args) == 0
        again = capsys.readouterr().out
    assert len((out / "dialogues.jsonl").read_text().splitlines()) == 4
    assert "alreadytrained" in "".join(again.split())
