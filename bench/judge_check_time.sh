#!/usr/bin/env bash
# judge-check's wall time on 150 human pairs at two commits, back to back on this machine (issue 30's
# "judge-check on 150 pairs: at least 2x faster"): each commit cloned fresh beside a link to ../shared
# runs `baize judge-check` from its own code (PYTHONPATH); each console is kept as
# bench/results/judge_check_time-<commit>.log and the last line gives the ratio of the wall times.
#
#   bash bench/judge_check_time.sh 67baf83 HEAD      # before, after
source "$(dirname "$0")/at_commit.sh"
declare -a secs
for rev in "$@"; do
  sha=$(git rev-parse --short "$rev")
  dir=$(at_commit "$rev")
  log="bench/results/judge_check_time-$sha.log"
  echo "== $rev ($sha): $(uptime)" | tee "$log"
  start=$(date +%s.%N)
  (cd "$dir" && PYTHONPATH="$dir" python3 -m baize judge-check \
     --pairs ../shared/data/prefs/hh_helpful_online.jsonl --limit 150 --no-progress) >> "$log" 2>&1
  s=$(python3 -c "import time; print(round(time.time() - $start, 1))")
  echo "$rev ($sha): $s s wall" | tee -a "$log"
  secs+=("$s")
done
if [ ${#secs[@]} -eq 2 ]; then
  python3 -c "b, a = ${secs[0]}, ${secs[1]}; print(f'judge-check 150 pairs: {b} s -> {a} s = {b / a:.2f}x faster (target >= 2x: {\"met\" if b >= 2 * a else \"NOT met\"})')"
fi
