"""`baize pipeline` killed with -9 at random moments, one in each stage, and rerun after each kill: the
final outputs match an uninterrupted run's. Teacher, SDF policy and judge are a fake OpenAI-compatible
endpoint (baize.testing.make_endpoint_app: deterministic replies, SDF's candidates drawn by the seed
SDF sends, as a seeded server does), so the two runs can be compared count for count; v1, v2 and the
models eval answers with are the tiny random LLaMA, trained and run in the pipeline's own process."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from baize.schema import read_jsonl, sidecar
from baize.testing import ServerThread, make_endpoint_app

ROOT = Path(__file__).resolve().parent.parent
# the header each stage prints as it starts (pipeline.py's _step), in order
STAGES = ["1/6 collect", "2/6 train v1", "3/6 SDF", "4/6 train v2", "5/6 eval"]


def _args(out: Path, url: str, base: Path) -> list[str]:
    return [sys.executable, "-m", "baize", "pipeline", "--out", str(out), "--teacher", "openai:fake-teacher",
            "--judge", "openai:fake-judge", "--base-url", url, "--sdf-policy", "openai:fake-policy",
            "--sdf-base-url", url, "--base", str(base), "--limit", "4", "--sdf-prompts", "4", "--concurrency", "2",
            "--max-steps", "2", "--v2-steps", "2", "--batch-size", "2", "--eval-limit", "2",
            "--eval-max-tokens", "4", "--sdf-max-tokens", "8"]


def _ids(path: Path) -> list:
    return [r["id"] for r in read_jsonl(path)] if path.exists() else []


def _outputs(out: Path) -> dict:
    """What must match between the runs, with each file checked whole: every line JSON, no id twice."""
    for f in out.rglob("*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]  # a corrupt line fails here
        ids = [r["id"] for r in rows if isinstance(r, dict) and "id" in r]
        assert len(ids) == len(set(ids)), f"duplicate ids in {f}"
    kept, rejected = _ids(out / "dialogues.jsonl"), _ids(sidecar(out / "dialogues.jsonl", "rejected"))
    res = json.loads((out / "eval" / "results.json").read_text())
    runs = {}
    for name, data in (("v1", out / "dialogues.jsonl"), ("v2", out / "sdf.jsonl")):
        record = json.loads((out / name / "baize_run.json").read_text())
        steps = [json.loads(line)["step"] for line in (out / name / "loss.jsonl").read_text().splitlines()]
        digest = record["data_digest"][0]
        # trained on the data as it is at the end, which is complete: its line count and hash
        assert Path(digest["path"]) == data.resolve() and digest["lines"] == len(data.read_text().splitlines())
        from baize.train.common import data_digest
        assert data_digest([str(data)]) == record["data_digest"], f"{name} trained on other data than {data}"
        runs[name] = (record["steps"], steps)
    return {"seeds": sorted(kept + rejected), "kept": len(kept),
            "sdf": len(_ids(out / "sdf.jsonl")), "sdf_rejected": len(_ids(sidecar(out / "sdf.jsonl", "rejected"))),
            "pairs": len((out / "sdf.prefs.jsonl").read_text().splitlines()), "runs": runs,
            "eval": (list(res["models"]), res["n_questions"], sorted((p["a"], p["b"], p["n"]) for p in res["pairwise"]))}


def test_kill_9_in_every_stage_then_rerun_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    rng = random.Random()
    seed = rng.randrange(10 ** 6)
    rng.seed(seed)
    env = {**os.environ, "OPENAI_API_KEY": "x", "PYTHONUNBUFFERED": "1"}
    with ServerThread(make_endpoint_app()) as url:
        ref = tmp_path / "ref"  # the uninterrupted run, beside the killed ones (the suite's time, not the CPU's)
        reference = subprocess.Popen(_args(ref, url, tiny_model_dir), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        out, killed = tmp_path / "crash", []
        for i, stage in enumerate(STAGES):
            log = tmp_path / f"run{i}.log"
            with log.open("w") as f:
                proc = subprocess.Popen(_args(out, url, tiny_model_dir), stdout=f, stderr=subprocess.STDOUT,
                                        cwd=ROOT, env=env)
            try:
                deadline = time.monotonic() + 120
                while proc.poll() is None and time.monotonic() < deadline and stage not in log.read_text():
                    time.sleep(0.02)
                time.sleep(rng.uniform(0, 1.0))  # a random moment in (or just after) the stage's start
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(stage)
            finally:
                proc.wait(timeout=30)
            assert proc.returncode in (-signal.SIGKILL, 0), f"seed {seed}, {stage}:\n" + log.read_text()[-3000:]
        p = subprocess.run(_args(out, url, tiny_model_dir), capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env=env)
        assert p.returncode == 0, f"seed {seed}, killed in {killed}:\n" + p.stderr[-3000:]
        _, err = reference.communicate(timeout=300)
        assert reference.returncode == 0, err[-3000:]
    expected = _outputs(ref)
    print(f"random seed {seed}: killed in {killed}")
    assert len(killed) >= 4, f"seed {seed}: the runs ended before their kill ({killed})"
    got = _outputs(out)
    assert got == expected, f"seed {seed}, killed in {killed}"
    assert got["seeds"] == sorted(set(got["seeds"])) and len(got["seeds"]) == 4  # every seed once, kept or rejected
    assert got["runs"]["v1"] == (2, [1, 2]) and got["runs"]["v2"] == (2, [1, 2])  # each step once, no retraining
    assert got["sdf"] > 0 and got["pairs"] > 0
