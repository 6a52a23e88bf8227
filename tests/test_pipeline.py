"""`baize pipeline` (the README's main job) end to end on a fake teacher and judge over HTTP and a
tiny base: collect -> v1 -> SDF -> v2 -> eval -> report, killed mid-way and resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baize.schema import read_jsonl
from baize.testing import ServerThread, make_app

ROOT = Path(__file__).resolve().parent.parent


def test_pipeline_closes_the_loop_killed_and_resumed(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    app = make_app(latency=0.05)  # counts its chat requests: the teacher's and the judge's
    with ServerThread(app) as url:
        args = [sys.executable, "-m", "baize", "pipeline", "--out", str(out), "--teacher", "openai:fake-teacher",
                "--judge", "openai:fake-judge", "--base-url", url, "--base", str(tiny_model_dir), "--limit", "4",
                "--max-steps", "2", "--batch-size", "2", "--sdf-prompts", "4", "--v2-steps", "2",
                "--eval-limit", "3", "--eval-max-tokens", "8", "--sdf-max-tokens", "8", "--dpo"]
        env = {**os.environ, "OPENAI_API_KEY": "x"}
        # killed once v1 is trained, while SDF samples
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                if (out / "v1" / "baize_run.json").exists():
                    break
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=10)
        assert (out / "v1" / "baize_run.json").exists() and not (out / "eval" / "report.html").exists()
        p = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        flat = "".join(p.stdout.split())  # rich wraps long lines
        assert "v1alreadytrained" in flat
        # every stage wrote real output, each item once
        dialogues = list(read_jsonl(out / "dialogues.jsonl", validate=True))
        assert len(dialogues) == 4
        sdf = list(read_jsonl(out / "sdf.jsonl", validate=True))
        assert len(sdf) == len({r["id"] for r in sdf}) == 4
        assert all(len(r["meta"]["candidates"]) >= 2 and r["meta"]["agreement"] == 1.0 for r in sdf)
        v2 = json.loads((out / "v2" / "baize_run.json").read_text())
        assert Path(v2["from_run"]) == (out / "v1").resolve() and v2["data"] == [str((out / "sdf.jsonl").resolve())]
        assert json.loads((out / "v2-dpo" / "baize_run.json").read_text())["method"] == "dpo"
        res = json.loads((out / "eval" / "results.json").read_text())
        assert list(res["models"]) == ["base", "v1", "v2", "v2-dpo"] and res["n_questions"] == 3
        assert {(p["a"], p["b"]) for p in res["pairwise"]} >= {("v2", "v1"), ("v1", "base"), ("v2", "base")}
        assert all(p["n"] == 3 for p in res["pairwise"]) and res["judge"]["consistency"] is not None
        assert (out / "eval" / "report.html").exists() and "report.html" in flat
        assert "baizechat" in flat and "baizeserve" in flat
        # a rerun does nothing again: no teacher or judge request reaches the server, and no policy or
        # model call (SDF's candidates and each model's answers come out of the caches, byte for byte)
        cached = [out / "eval" / "verdicts.jsonl", out / "sdf.jsonl", *sorted((out / "eval" / "answers").glob("*.jsonl"))]
        assert {f.name for f in cached} >= {f"{m}.jsonl" for m in res["models"]}  # with their failed/rejected sidecars
        before, requests = [f.read_bytes() for f in cached], app.state.requests
        p = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        assert app.state.requests == requests and [f.read_bytes() for f in cached] == before
        # killed between the adapter and the run record (train/common.py writes the record last): the rerun
        # resumes from the final checkpoint instead of skipping v1 or refusing its directory
        record = json.loads((out / "v1" / "baize_run.json").read_text())
        (out / "v1" / "baize_run.json").unlink()
        p = subprocess.run([*args, "--stop-after", "v1"], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        flat = "".join(p.stdout.split())
        assert "v1alreadytrained" not in flat and "startingfromstep0" not in flat and app.state.requests == requests
        assert json.loads((out / "v1" / "baize_run.json").read_text()) == record


def test_pipeline_refuses_dpo_on_a_quantized_base_before_any_work(tmp_path):
    from baize.config import BaizeError
    from baize.pipeline import PipelineConfig, run
    with pytest.raises(BaizeError, match="drop --quantize or --dpo"):
        run(PipelineConfig(out=str(tmp_path / "demo"), dpo=True, quantize="4bit"))
    assert not (tmp_path / "demo").exists()


def test_pipeline_stops_after_a_stage(tiny_model_dir, tmp_path, capsys):
    from baize.cli import main
    out = tmp_path / "demo"
    with ServerThread(make_app()) as url:
        assert main(["pipeline", "--out", str(out), "--teacher", "openai:fake-teacher", "--base-url", url,
                     "--base", str(tiny_model_dir), "--limit", "2", "--stop-after", "collect"]) == 0
    assert len(list(read_jsonl(out / "dialogues.jsonl"))) == 2 and not (out / "v1").exists()
    assert "2/6 train v1" not in capsys.readouterr().out
