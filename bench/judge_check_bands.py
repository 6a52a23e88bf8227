"""Agreement of a debiased local judge at several tie bands, from one judge-check's verdicts
(their raw replies hold both orders' option log-probs, so no model is loaded).

    python bench/judge_check_bands.py jc/verdicts.jsonl --out bench/results/judge_check-bands.json
"""
import argparse
import json
from pathlib import Path

from baize.judge.check import measures
from baize.judge.core import logprobs_of, pair_margin
from baize.schema import read_jsonl
from baize.train.speedups import cpu_info


def main():
    p = argparse.ArgumentParser()
    p.add_argument("verdicts")
    p.add_argument("--pairs", default=None, help="with --limit: keep the verdicts on the first N pairs of this file")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default="bench/results/judge_check-bands.json")
    a = p.parse_args()
    rows = [r for r in read_jsonl(a.verdicts) if all(logprobs_of(x) for x in r["raw"])]
    if a.pairs and a.limit:
        first = {str(r.get("id")) for r in list(read_jsonl(a.pairs))[:a.limit]}
        rows = [r for r in rows if r["pair_id"] in first]
    out = {"verdicts": a.verdicts, "n": len(rows), "cpu": cpu_info(), "bands": {}}
    for band in (0.0, 0.05, 0.1, 0.2, 0.3):
        rr = []
        for r in rows:
            m = pair_margin(*[logprobs_of(x) for x in r["raw"][:2]])
            rr.append({**r, "margin": m, "winner": "a" if m > band else "b" if m < -band else "tie"})
        got = measures(rr, 1000)
        out["bands"][str(band)] = {k: got[k] for k in ("agreement", "agreement_ci", "decisive", "decisive_rate",
                                                       "prefers_longer", "human_prefers_longer")}
        print(band, out["bands"][str(band)])
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
