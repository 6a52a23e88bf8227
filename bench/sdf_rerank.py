"""How SDF's choice changes when the local judge reads its option log-probs debiased: rerank the
candidates of an SDF run (OUT and OUT.rejected) with the same judge in choice and debiased mode.

    python bench/sdf_rerank.py runs/demo/sdf.jsonl --judge default --out bench/results/sdf_rerank.json

Choice mode replays the run's judge cache when it is given (--cache DIR: a copy of OUT's
.judge_cache), so only the debiased mode's extra rotations cost forward passes.
"""
import argparse
import json
import time
from pathlib import Path

from baize.judge.core import Judge
from baize.llm.models import load_llm
from baize.schema import read_jsonl, sidecar
from baize.train.speedups import cpu_info


def main():
    p = argparse.ArgumentParser()
    p.add_argument("sdf")
    p.add_argument("--judge", default="default")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default="bench/results/sdf_rerank.json")
    a = p.parse_args()
    recs = [r for f in (Path(a.sdf), sidecar(a.sdf, "rejected")) if f.exists() for r in read_jsonl(f)]
    recs = [r for r in recs if len(r["meta"].get("candidates") or []) >= 2]
    llm = load_llm(a.judge)
    judges = {m: Judge(llm, cache_dir=a.cache, mode=m) for m in ("choice", "debiased")}
    rows, t0 = [], time.monotonic()
    for r in recs:
        ctx = r["messages"] if r["messages"][-1]["role"] == "user" else r["messages"][:-1]
        texts = [c["text"] for c in r["meta"]["candidates"]]
        got = {m: j.rank(ctx, texts) for m, j in judges.items()}
        tied = {m: len(set(g.points)) == 1 for m, g in got.items()}
        rows.append({"id": r["id"], "k": len(texts), **{f"{m}_best": (None if tied[m] else g.order[0])
                                                          for m, g in got.items()},
                     **{f"{m}_points": g.points for m, g in got.items()},
                     "run_best": None if r["meta"].get("reject_reason") == "no_preference" else r["meta"]["order"][0]})
        print(rows[-1], flush=True)
    for j in judges.values():
        j.close()
    changed = sum(x["choice_best"] != x["debiased_best"] for x in rows)
    out = {"sdf": a.sdf, "judge": a.judge, "prompts": len(rows), "changed_winner": changed,
           "choice_no_preference": sum(x["choice_best"] is None for x in rows),
           "debiased_no_preference": sum(x["debiased_best"] is None for x in rows),
           "choice_best_position_counts": {str(i): sum(x["choice_best"] == i for x in rows) for i in range(4)},
           "debiased_best_position_counts": {str(i): sum(x["debiased_best"] == i for x in rows) for i in range(4)},
           "seconds": round(time.monotonic() - t0, 1), "cpu": cpu_info(), "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print({k: v for k, v in out.items() if k != "rows"})


if __name__ == "__main__":
    main()
