"""Draw the sample seed sets shipped inside the package from ../shared/data/seeds (run once).

A deterministic random draw (seed 0) of a few hundred rows per set, so `--seeds quora` works from
an installed wheel with no network. Provenance and licenses: baize/samples/README.md.
"""
import json
import random
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/seeds")
DST = Path(__file__).resolve().parent.parent / "baize" / "samples"
N = 300


def rows(name):
    with open(SRC / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def draw(items, n):
    rng = random.Random(0)
    return items if len(items) <= n else rng.sample(items, n)


def main():
    DST.mkdir(parents=True, exist_ok=True)
    sets = {
        "quora": draw(rows("quora.jsonl"), N),
        "stackoverflow": draw(rows("stackoverflow.jsonl"), N),
        # MedQuAD rows that still carry a reference answer are the useful ones for evaluation
        "medquad": draw([r for r in rows("medquad.jsonl") if r["answer"]], N),
        "alpaca": [{"seed": (t["instruction"] + ("\n\n" + t["instances"][0]["input"] if t["instances"][0]["input"] else "")),
                    "source": "alpaca", "id": t["id"], "name": t["name"],
                    "reference": t["instances"][0]["output"]} for t in rows("alpaca_seed_tasks.jsonl")],
    }
    for name, items in sets.items():
        with open(DST / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in items:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(items))


if __name__ == "__main__":
    main()
