"""`baize pipeline --rounds N` (issue 31, section 2): round k (k >= 2) samples v{k} on fresh seeds into
round{k}/ and trains v{k+1}; every round resumes after a kill; --rounds 1 is the pipeline as before;
--dry-run and the caps span every round. Fake teacher and judge over HTTP (baize.testing.make_app,
which copies the OpenAI chat completions API), a tiny base."""
import json
import os
import subprocess
import sys
from pathlib import Path

from baize.schema import read_jsonl
from baize.testing import ServerThread, make_app

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--limit", "2", "--max-steps", "1", "--batch-size", "2", "--sdf-prompts", "2", "--v2-steps", "1",
         "--n", "2", "--eval-limit", "1", "--eval-max-tokens", "4", "--sdf-max-tokens", "4", "--max-turns", "1"]


def test_rounds_two_trains_v3_from_v2_on_fresh_prompts_and_survives_a_kill_between_rounds(tiny_model_dir, tmp_path,
                                                                                          sigkill_when):
    """Killed after v2, stopped after round 2's SDF (--stop-after sdf2), then run to the end."""
    out = tmp_path / "demo"
    app = make_app()
    with ServerThread(app) as url:
        args = [sys.executable, "-m", "baize", "pipeline", "--out", str(out), "--teacher", "openai:fake-teacher",
                "--judge", "openai:fake-judge", "--base-url", url, "--base", str(tiny_model_dir), *SMALL,
                "--rounds", "2"]
        env = {**os.environ, "OPENAI_API_KEY": "x"}
        # killed between the rounds: v2 trained, round 2 not yet done
        alive, err = sigkill_when(args, out / "v2" / "baize_run.json", cwd=ROOT, env=env)
        assert alive, err
        assert (out / "v2" / "baize_run.json").exists() and not (out / "v3" / "baize_run.json").exists()
        # --stop-after names a later round's stage too: round 2's SDF written, then no v3 and no eval
        p = subprocess.run([*args, "--stop-after", "sdf2"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                           env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        flat = "".join(p.stdout.split())
        assert "v2alreadytrained" in flat and "5/8SDFround2:v2samples" in flat and "6/8" not in flat
        assert len(list(read_jsonl(out / "round2" / "sdf.jsonl", validate=True))) == 2
        assert not (out / "v3").exists() and not (out / "eval").exists()
        sdf2 = (out / "round2" / "sdf.jsonl").read_text()
        # the rerun without it goes on from there: round 2's SDF kept as it was, v3 trained on it
        p = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    flat = "".join(p.stdout.split())
    assert "v1alreadytrained" in flat and "v2alreadytrained" in flat
    assert "5/8SDFround2:v2samples" in flat and "6/8trainv3" in flat and "7/8eval" in flat
    assert (out / "round2" / "sdf.jsonl").read_text() == sdf2
    # round 2 asked the seeds after round 1's, none of them twice
    first = [json.loads(line)["seed"] for line in (out / "sdf_prompts.jsonl").read_text().splitlines()]
    second = [json.loads(line)["seed"] for line in (out / "round2" / "sdf_prompts.jsonl").read_text().splitlines()]
    assert len(first) == len(second) == 2 and not set(first) & set(second)
    assert len(list(read_jsonl(out / "round2" / "sdf.jsonl", validate=True))) == 2
    v3 = json.loads((out / "v3" / "baize_run.json").read_text())
    assert Path(v3["from_run"]) == (out / "v2").resolve()
    assert v3["data"] == [str((out / "round2" / "sdf.jsonl").resolve())]
    res = json.loads((out / "eval" / "results.json").read_text())
    assert list(res["models"]) == ["base", "v1", "v2", "v3"]
    # every version meets the base and the version before it
    assert {(q["a"], q["b"]) for q in res["pairwise"]} >= {("v2", "base"), ("v3", "base"), ("v2", "v1"), ("v3", "v2")}
    # the report (both files) shows the three versions and the trend across them
    md, html = (out / "eval" / "report.md").read_text(), (out / "eval" / "report.html").read_text()
    assert "## Trend across rounds" in md and "| figure | better | v1 | v2 | v3 |" in md
    assert "| judge win rate vs base | higher |" in md and "| degenerate rate | lower |" in md
    assert "<h2>Trend across rounds</h2>" in html and "<th>v1</th><th>v2</th><th>v3</th>" in html
    assert 'alt="Trend across rounds"' in html
    # the trend: every version by the judge against the base and by each judge-free measure, with intervals
    t = res["trend"]
    assert t["versions"] == ["v1", "v2", "v3"]
    assert all(set(r["judge_vs_base"]) >= {"value", "ci"} and set(r["degenerate"]) == {"value", "ci"}
               for r in t["rows"])
    assert "trendacrossrounds" in flat and "judgewinratevsbase:v1" in flat and "->v3" in flat
    assert f"baizechat{out / 'v3'}".replace(" ", "") in flat


def _records(out: Path) -> dict:
    """Each trained stage's run record, less what differs between any two runs: paths under --out, and the
    data's sha256 (sdf.jsonl names its policy by path; the files are compared modulo --out below)."""
    drop = {"sha256"}

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in drop}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x.replace(str(out), "OUT") if isinstance(x, str) else x
    return {p.parent.name: clean(json.loads(p.read_text())) for p in sorted(out.glob("*/baize_run.json"))}


def test_rounds_one_writes_what_the_pipeline_wrote_without_the_flag(tiny_model_dir, tmp_path):
    from baize.cli import main
    outs = [tmp_path / "plain", tmp_path / "one"]
    with ServerThread(make_app()) as url:
        for out, extra in zip(outs, [[], ["--rounds", "1"]]):
            assert main(["pipeline", "--out", str(out), "--teacher", "openai:fake-teacher", "--judge",
                         "openai:fake-judge", "--base-url", url, "--base", str(tiny_model_dir), *SMALL, *extra,
                         "--concurrency", "1"]) == 0  # in flight one at a time: the files' order is fixed
    files = [sorted(str(p.relative_to(o)) for p in o.rglob("*") if p.is_file()) for o in outs]
    assert files[0] == files[1] and not any(f.startswith("round") or f.startswith("v3") for f in files[0])
    assert _records(outs[0]) == _records(outs[1]) and set(_records(outs[0])) == {"v1", "v2"}
    # the same dialogues, prompts and SDF choices (the fakes and the tiny model's sampling are seeded)
    for name in ["dialogues.jsonl", "sdf_prompts.jsonl", "sdf.jsonl", "sdf.prefs.jsonl"]:
        assert (outs[0] / name).read_text().replace(str(outs[0]), "OUT") == \
            (outs[1] / name).read_text().replace(str(outs[1]), "OUT")
    res = [json.loads((o / "eval" / "results.json").read_text()) for o in outs]
    assert list(res[0]["models"]) == list(res[1]["models"]) == ["base", "v1", "v2"]
    assert set(res[0]) == set(res[1]) and "trend" not in res[1]


def test_dry_run_plans_every_round_and_the_caps_count_every_round(tmp_path, capsys):
    import baize.pipeline as pl
    from baize.cli import main
    out, plan = tmp_path / "demo", tmp_path / "plan.json"
    assert main(["pipeline", "--out", str(out), "--dry-run", "--plan-out", str(plan), "--limit", "3",
                 "--sdf-prompts", "2", "--rounds", "3", "--dpo"]) == 0
    rows = json.loads(plan.read_text())
    policies = {r["stage"]: r["model"] for r in rows if r["role"] == "policy"}
    assert policies == {"sdf": str(out / "v1"), "sdf2": str(out / "v2"), "sdf3": str(out / "v3")}
    assert [r["role"] for r in rows if r["stage"] == "eval"][:-1] == ["base", "v1", "v2", "v2-dpo", "v3", "v3-dpo",
                                                                       "v4", "v4-dpo"]
    assert not out.exists()
    # what round 2's SDF spent counts against --max-tokens-total like round 1's
    (out / "round2").mkdir(parents=True)
    (out / "round2" / "sdf.summary.json").write_text(json.dumps({"total": {"prompt_tokens": 60, "completion_tokens": 40,
                                                                           "cost": 0.5}}))
    cfg = pl.PipelineConfig(out=str(out), rounds=2, max_tokens_total=150, max_cost=1.0)
    assert pl._budget(cfg, out) == {"max_cost": 0.5, "max_tokens_total": 50}


def test_rounds_refuses_what_it_cannot_run_before_any_work(tmp_path):
    import pytest

    from baize.config import BaizeError
    from baize.pipeline import PipelineConfig, run
    with pytest.raises(BaizeError, match="lower --rounds or --sdf-prompts"):
        run(PipelineConfig(out=str(tmp_path / "demo"), limit=3, sdf_prompts=2,
                           rounds=10**6))
    with pytest.raises(BaizeError, match="drop --sdf-policy or use --rounds 1"):
        run(PipelineConfig(out=str(tmp_path / "demo"), rounds=2, sdf_policy="openai:v1"))
    # --stop-after: round k's stages exist for k <= --rounds only; the line names every stage there is
    with pytest.raises(BaizeError, match=r"^--stop-after sdf3: no such stage with --rounds 2; use one of collect, "
                                         r"v1, sdf, v2, sdf2, v3 \(or raise --rounds\)$"):
        run(PipelineConfig(out=str(tmp_path / "demo"), rounds=2, stop_after="sdf3"))
    with pytest.raises(BaizeError, match=r"^--stop-after v3: no such stage with --rounds 1; use one of collect, v1, "
                                         r"sdf, v2 \(or raise --rounds\)$"):
        run(PipelineConfig(out=str(tmp_path / "demo"), stop_after="v3"))
    with pytest.raises(BaizeError, match=r"use one of collect, v1, sdf, v2$"):
        run(PipelineConfig(out=str(tmp_path / "demo"), stop_after="train"))
    assert not (tmp_path / "demo").exists()


def test_trend_reads_each_version_against_the_base_with_intervals():
    from baize.eval.trend import trend, trend_lines
    jf = lambda d: {"degenerate": {"value": d, "ci": [0.0, d * 2], "n": 4}}  # noqa: E731
    res = {"models": {"base": {"judge_free": jf(0.5)}, "v1": {"judge_free": jf(0.25)}, "v2": {"judge_free": jf(0.1)},
                      "v3": {"judge_free": {}}},
           "pairwise": [{"a": "v2", "b": "v1", "win_rate": 0.9, "ci": [0.8, 1.0], "n": 4},
                        {"a": "v1", "b": "base", "win_rate": 0.5, "ci": [0.2, 0.8], "n": 4},
                        {"a": "v2", "b": "base", "win_rate": 0.75, "ci": [0.5, 1.0], "n": 4}]}
    t = trend(res)
    assert t["versions"] == ["v1", "v2", "v3"]
    assert [r["judge_vs_base"] and r["judge_vs_base"]["value"] for r in t["rows"]] == [0.5, 0.75, None]
    assert [r["degenerate"] for r in t["rows"]] == [{"value": 0.25, "ci": [0.0, 0.5]}, {"value": 0.1, "ci": [0.0, 0.2]},
                                                    None]
    assert trend_lines(t) == ["judge win rate vs base: v1 0.50 [0.20, 0.80] -> v2 0.75 [0.50, 1.00] -> v3 –",
                              "degenerate rate: v1 0.25 [0.00, 0.50] -> v2 0.10 [0.00, 0.20] -> v3 –"]


def _three_versions() -> dict:
    jf = lambda d, w: {"degenerate": {"value": d, "ci": [0.0, d * 2], "n": 4},  # noqa: E731
                       "mean_words": {"value": w, "ci": [w - 2, w + 2], "n": 4}}
    return {"models": {"base": {"judge_free": jf(0.5, 9)}, "v1": {"judge_free": jf(0.25, 12)},
                       "v2": {"judge_free": jf(0.125, 14)}, "v2-dpo": {"judge_free": jf(0.25, 10)},
                       "v<b>3": {"judge_free": {}}},
            "pairwise": [{"a": "v1", "b": "base", "win_rate": 0.5, "ci": [0.2, 0.8], "n": 4},
                         {"a": "v2", "b": "base", "win_rate": 0.75, "ci": [0.5, 1.0], "n": 4},
                         {"a": "v2-dpo", "b": "base", "win_rate": 0.625, "ci": [0.25, 1.0], "n": 4}]}


def test_the_report_shows_the_trend_when_the_results_carry_one(tmp_path):
    from baize.eval.report import write_report
    from baize.eval.trend import trend
    res = _three_versions()
    plain = write_report(res, tmp_path / "plain")
    res["trend"] = trend(res)
    paths = write_report(res, tmp_path / "trend")
    md, html = paths["md"].read_text(), paths["html"].read_text()
    # one row per figure, the versions left to right in the order the rounds made them
    assert "## Trend across rounds" in md
    assert "| figure | better | v1 | v2 | v2-dpo | v\\<b\\>3 |" in md
    assert "| judge win rate vs base | higher | 0.50 [0.20, 0.80] | 0.75 [0.50, 1.00] | 0.62 [0.25, 1.00] | – |" in md
    assert "| degenerate rate | lower | 0.25 [0.00, 0.50] | 0.12 [0.00, 0.25] | 0.25 [0.00, 0.50] | – |" in md
    assert "| mean words | – | 12.0 [10.0, 14.0] | 14.0 [12.0, 16.0] | 10.0 [8.0, 12.0] | – |" in md
    assert "distinct-2" not in md.split("## Trend across rounds")[1].split("##")[0]  # no version has it
    assert "<h2>Trend across rounds</h2>" in html and "<th>v&lt;b&gt;3</th>" in html and "<b>3" not in html
    assert '<img src="data:image/png;base64,' in html.split("<h2>Trend across rounds</h2>")[1].split("</section>")[0]
    # results without a trend (eval alone, --rounds 1) show none
    assert "Trend" not in plain["md"].read_text() and "Trend" not in plain["html"].read_text()
