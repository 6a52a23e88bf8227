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
    sets["eval_questions"] = eval_questions(sets)
    for name, items in sets.items():
        with open(DST / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in items:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(items))


FOLLOW_UPS = {
    "coding": ["Can you show a short code example of that?", "What is the most common mistake people make here?"],
    "medical": ["When should someone see a doctor about this?", "Can you summarize that in three short points?"],
    "instruction": ["Now make your answer half as long.", "Explain your answer to a ten-year-old."],
}


def eval_questions(sets, per_category=4):
    """The built-in questions of `baize eval` in MT-bench's shape, two turns each. Drawn only from
    the sets the main job never collects or trains on (it uses quora), short enough for a CPU."""
    rng = random.Random(1)
    picks = {"coding": [r for r in sets["stackoverflow"] if 20 <= len(r["seed"]) <= 90],
             "medical": [r for r in sets["medquad"] if len(r["answer"]) <= 700],
             "instruction": [r for r in sets["alpaca"] if len(r["seed"]) <= 160 and len(r["reference"]) <= 400]}
    drawn = {cat: rng.sample(pool, per_category) for cat, pool in picks.items()}
    out = []
    for i in range(per_category):  # categories interleaved, so `--limit N` keeps a mix
        for cat, rows in drawn.items():
            r = rows[i]
            ref = r.get("answer") or r.get("reference")
            out.append({"question_id": f"{cat}-{i + 1}", "category": cat,
                        "turns": [r["seed"], FOLLOW_UPS[cat][i % 2]], "source": r["source"],
                        **({"reference": [ref, None]} if ref else {})})
    return out


if __name__ == "__main__":
    main()
