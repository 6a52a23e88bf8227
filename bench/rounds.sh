#!/usr/bin/env bash
# Issue 31 section 3: the main job's loop at a size that fits 30 minutes on a 2-core CPU, two SDF rounds, the
# embedded model as teacher, student and judge. Writes the run under $OUT and copies its eval/results.json,
# report.md and console output unchanged into bench/results/, with a sidecar saying the commit, the CPU flags and the wall time.
#   bash bench/rounds.sh            # OUT=runs/rounds2 by default
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/rounds2}
commit=$(git rev-parse --short HEAD)
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -x -E 'avx2|avx512f|avx512_bf16|avx512_vnni|amx_bf16' | tr '\n' ' ')
start=$(date +%s)
echo "commit ${commit}; CPU flags ${flags}; $(nproc) CPUs" | tee bench/results/rounds2.log
python3 -m baize pipeline --out "$OUT" --rounds 2 --limit 64 --max-steps 32 --sdf-prompts 16 --v2-steps 8 --eval-limit 12 \
  2>&1 | tee -a bench/results/rounds2.log
wall=$(( $(date +%s) - start ))
cp "$OUT/eval/results.json" bench/results/rounds2.json
cp "$OUT/eval/report.md" bench/results/rounds2-report.md
printf '{"commit": "%s", "cpu_flags": "%s", "cpus": %s, "wall_s": %s, "command": "%s"}\n' "$commit" "${flags% }" \
  "$(nproc)" "$wall" "baize pipeline --out $OUT --rounds 2 --limit 64 --max-steps 32 --sdf-prompts 16 --v2-steps 8 --eval-limit 12" \
  > bench/results/rounds2-run.json
echo "wall ${wall} s at ${commit} on ${flags}; results in bench/results/rounds2*.json"
