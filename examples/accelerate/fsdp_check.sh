#!/usr/bin/env bash
# The embedded default (SmolLM2-135M) under FSDP on 2 CPU processes against one process: SFT, resume,
# merge, chat, DPO. What docs/fsdp.md reports; about 30 minutes on 2 busy shared cores.
#   bash examples/accelerate/fsdp_check.sh /tmp/fsdp-check
set -euo pipefail
OUT=${1:-/tmp/fsdp-check}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT" && cd "$OUT"
python - <<'PY'
import json
tasks = [json.loads(line) for line in open("/work/shared/data/seeds/alpaca_seed_tasks.jsonl")][:32]
with open("sft.jsonl", "w") as f:
    for t in tasks:
        msgs = [{"role": "user", "content": (t["instruction"] + "\n" + t["instances"][0]["input"]).strip()},
                {"role": "assistant", "content": t["instances"][0]["output"]}]
        f.write(json.dumps({"id": t["id"], "messages": msgs, "meta": {}}) + "\n")
with open("prefs.jsonl", "w") as f:
    for line in list(open("/work/shared/data/prefs/hh_helpful_online.jsonl"))[:32]:
        r = json.loads(line)
        if r["context"][-1]["role"] == "user" and r["chosen"].strip() != r["rejected"].strip():
            f.write(json.dumps({"id": r["id"], "prompt": r["context"],
                                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                "rejected": [{"role": "assistant", "content": r["rejected"]}]}) + "\n")
PY
FSDP="python -m accelerate.commands.launch --config_file $HERE/fsdp_cpu.yaml --num_processes 2"
SFT="--base default --data sft.jsonl --max-steps 3 --batch-size 4 --micro-batch-size 1 --max-length 128 --drop-truncated --lora-dropout 0 --save-steps 2 --precision fp32"
export HF_HUB_OFFLINE=1
rm -rf one two resumed merged dpo two-auto
OMP_NUM_THREADS=2 python -m baize train $SFT --out one > one.log 2>&1
OMP_NUM_THREADS=1 $FSDP -m baize train $SFT --out two > two.log 2>&1
mkdir -p resumed/checkpoints && cp -r two/checkpoints/checkpoint-2 resumed/checkpoints/ && cp two/train_config.json resumed/
head -2 two/loss.jsonl > resumed/loss.jsonl
OMP_NUM_THREADS=1 $FSDP -m baize train --out resumed --resume > resumed.log 2>&1
python -m baize merge two --out merged > merge.log 2>&1
printf 'Give me three tips for a good breakfast.\n' | timeout 600 python -m baize chat two --max-new-tokens 40 > chat.log 2>&1 || true
printf 'Give me three tips for a good breakfast.\n' | timeout 600 python -m baize chat merged --max-new-tokens 40 > chat-merged.log 2>&1 || true
OMP_NUM_THREADS=1 $FSDP -m baize train --method dpo --from two --data prefs.jsonl --max-steps 2 --batch-size 2 \
  --micro-batch-size 1 --max-length 256 --drop-truncated --precision fp32 --save-steps 100 --out dpo > dpo.log 2>&1
python - <<'PY'
import json
from safetensors.torch import load_file
loss = {r: [json.loads(x)["loss"] for x in open(f"{r}/loss.jsonl") if "loss" in json.loads(x)] for r in ("one", "two", "resumed")}
print("step | 1 process | 2 FSDP processes | relative difference | FSDP resumed at 2")
for i, (a, b, c) in enumerate(zip(loss["one"], loss["two"], loss["resumed"]), 1):
    print(f"{i} | {a:.6f} | {b:.6f} | {abs(a - b) / abs(a):.1e} | {c:.6f}")
A, B, R = (load_file(f"{r}/adapter_model.safetensors") for r in ("one", "two", "resumed"))
assert A.keys() == B.keys() and all(A[k].shape == B[k].shape for k in A)
norm = lambda X, Y: sum(float((X[k] - Y[k]).norm() ** 2) for k in X) ** .5 / sum(float(X[k].norm() ** 2) for k in X) ** .5
print("adapter tensors", len(A), "shapes equal; 1 vs FSDP: difference / norm", norm(A, B), "largest element difference",
      max(float((A[k] - B[k]).abs().max()) for k in A), "; FSDP vs resumed", norm(B, R))
PY
