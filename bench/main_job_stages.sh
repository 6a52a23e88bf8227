#!/usr/bin/env bash
# The main job's stage times at two commits, back to back on this machine (issue 30's "before and
# after"): each commit is cloned fresh beside a link to ../shared and runs `baize pipeline` from its
# own code (PYTHONPATH, so the installed baize does not stand in for it); the console of each run is
# kept as bench/results/main_job-<commit>.log, and the last lines compare SDF's and eval's seconds.
#
#   bash bench/main_job_stages.sh 67baf83 HEAD      # before, after
source "$(dirname "$0")/at_commit.sh"
declare -A steps
for rev in "$@"; do
  sha=$(git rev-parse --short "$rev")
  dir=$(at_commit "$rev")
  log="bench/results/main_job-$sha.log"
  echo "== $rev ($sha): $(uptime)"
  start=$(date +%s)
  rc=0
  (cd "$dir" && PYTHONPATH="$dir" python3 -m baize pipeline) > "$log" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then  # the tiny default's SDF can keep no prompt by chance: say so, go on
    echo "$rev ($sha) failed with exit $rc: $(grep 'error:' "$log" | tail -1)" | tee -a "$log"
    continue
  fi
  line=$(grep 'step times' "$log" | tail -1)
  echo "$line; $(( $(date +%s) - start )) s in all" | tee -a "$log"
  steps[$sha]=$line
done
if [ $# -eq 2 ] && [ -n "${steps[$(git rev-parse --short "$1")]:-}" ] && [ -n "${steps[$(git rev-parse --short "$2")]:-}" ]; then
  python3 - "${steps[$(git rev-parse --short "$1")]}" "${steps[$(git rev-parse --short "$2")]}" <<'PY'
import re, sys
before, after = ({k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", s.split(":", 1)[1])} for s in sys.argv[1:3])
for k in ("sdf", "eval"):
    print(f"{k}: {before[k]:.1f} s -> {after[k]:.1f} s = {after[k] / before[k]:.2f}x (target <= 0.5x: {'met' if after[k] <= before[k] / 2 else 'NOT met'})")
PY
fi
