#!/usr/bin/env bash
# judge-check's wall time on 150 human pairs at two commits, back to back on this machine (issue 30's
# "judge-check on 150 pairs: at least 2x faster"): each commit cloned fresh beside a link to ../shared
# runs `baize judge-check` from its own code (PYTHONPATH); each console is kept as
# bench/results/judge_check_time-<commit>.log and the last line gives the ratio of the wall times.
#
#   bash bench/judge_check_time.sh 67baf83 HEAD      # before, after
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
shared=$(realpath ../shared)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16)$' | tr '\n' ' ')"
declare -a secs
for rev in "$@"; do
  sha=$(git rev-parse --short "$rev")
  mkdir -p "$work/$sha" && git clone -q "$repo" "$work/$sha/main" && ln -s "$shared" "$work/$sha/shared"
  git -C "$work/$sha/main" checkout -q "$sha"
  log="bench/results/judge_check_time-$sha.log"
  echo "== $rev ($sha): $(uptime)" | tee "$log"
  start=$(date +%s.%N)
  (cd "$work/$sha/main" && PYTHONPATH="$work/$sha/main" python3 -m baize judge-check \
     --pairs ../shared/data/prefs/hh_helpful_online.jsonl --limit 150 --no-progress) >> "$log" 2>&1
  s=$(python3 -c "import time; print(round(time.time() - $start, 1))")
  echo "$rev ($sha): $s s wall" | tee -a "$log"
  secs+=("$s")
done
if [ ${#secs[@]} -eq 2 ]; then
  python3 -c "b, a = ${secs[0]}, ${secs[1]}; print(f'judge-check 150 pairs: {b} s -> {a} s = {b / a:.2f}x faster (target >= 2x: {\"met\" if b >= 2 * a else \"NOT met\"})')"
fi
