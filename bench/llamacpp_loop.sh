#!/usr/bin/env bash
# A real third-party server in the loop (issue 21.6): llama-cpp-python's OpenAI-compatible server,
# serving the embedded GGUF, is the pipeline's teacher, SDF policy and judge on a small run.
# Not in CI: `pip install 'llama-cpp-python[server]'` is a ~5-minute source build.
#
#   bash bench/llamacpp_loop.sh [OUT_DIR]        # the log goes to bench/results/llamacpp_loop.log
#
# What to read in the log: the endpoint adaptations baize learned (one line each, e.g. that the
# server ignores n), SDF's candidates per prompt and how they were made (meta.sampling), and each
# stage's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/baize_llamacpp_loop}
PORT=${PORT:-8765}
LOG=bench/results/llamacpp_loop.log
GGUF=$(python -c "from baize.llm.models import default_gguf_path; print(default_gguf_path())")
EVAL_ONLY=${EVAL_ONLY:-0}  # 1: only the closing eval, on an OUT the pipeline already filled
[ "$EVAL_ONLY" = 1 ] || rm -rf "$OUT"
mkdir -p "$(dirname "$LOG")"

python -m llama_cpp.server --model "$GGUF" --model_alias smollm2 --host 127.0.0.1 --port "$PORT" \
  --n_ctx 4096 > /tmp/llamacpp_server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null && break
  sleep 0.5
done

URL="http://127.0.0.1:$PORT/v1"

# The pipeline's eval once more, through `baize eval` with --max-unparseable 0: a 135M judge writes
# few parseable verdicts, and the pipeline stops at 8 in a row (the guard that protects a real run);
# here every verdict is asked for and the unparsed ones are counted as such. Answers come from the
# pipeline's cache; only the judge (the llama.cpp server) is called.
closing_eval() {
  echo "# baize eval --models base=default v1=OUT/v1 v2=OUT/v2 --judge openai:smollm2 --max-unparseable 0"
  start=$(date +%s)
  OPENAI_API_KEY=none COLUMNS=160 python -m baize eval --models base=default v1="$OUT/v1" v2="$OUT/v2" \
    --questions builtin --limit 2 --max-tokens 32 --judge openai:smollm2 --base-url "$URL" \
    --max-unparseable 0 --judge-max-tokens 96 --out "$OUT/eval" --concurrency 4 2>&1 && rc=0 || rc=$?
  echo "# eval exit status $rc, $(( $(date +%s) - start )) s"
}
if [ "$EVAL_ONLY" = 1 ]; then
  closing_eval 2>&1 | tee -a "$LOG"
  exit 0
fi
{
  echo "# bench/llamacpp_loop.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD)"
  echo "# cpu: $(python -c 'from baize.train.speedups import cpu_info; print(cpu_info())')"
  echo "# llama-cpp-python $(python -c 'import llama_cpp; print(llama_cpp.__version__)'), model $GGUF (alias smollm2)"
  echo "# baize pipeline --teacher openai:smollm2 --judge openai:smollm2 --sdf-policy openai:smollm2 (all at $URL)"
  start=$(date +%s)
  OPENAI_API_KEY=none COLUMNS=160 python -m baize pipeline --out "$OUT" --teacher openai:smollm2 \
    --judge openai:smollm2 --base-url "$URL" --sdf-policy openai:smollm2 --sdf-base-url "$URL" \
    --mode oneshot --limit 6 --max-tokens 256 --max-steps 2 --batch-size 2 --sdf-prompts 4 --n 4 \
    --sdf-max-tokens 64 --v2-steps 2 --eval-limit 2 --eval-max-tokens 32 --concurrency 4 2>&1 && rc=0 || rc=$?
  echo "# pipeline exit status $rc, $(( $(date +%s) - start )) s"
  echo "# SDF: candidates per prompt, how they were made, what was dropped"
  python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("sdf.jsonl", "sdf.rejected.jsonl"):
    p = out / name
    for line in (p.read_text().splitlines() if p.exists() else []):
        m = json.loads(line)["meta"]
        print(f"{name}: {json.loads(line)['id']}: {len(m.get('candidates', []))} candidates of n={m['n']}, "
              f"sampling={m.get('sampling')}, policy calls={m['usage']['policy']['calls']}, "
              f"dropped={m['dropped']}, reject={m.get('reject_reason')}")
for name in ("dialogues", "sdf"):
    p = out / f"{name}.summary.json"
    if p.exists():
        s = json.loads(p.read_text())
        print(f"{name} summary: kept {s['kept']}, rejected {s['rejected']}, failed {s['failed']}, ledger {s['ledger']}")
EOF
  closing_eval
} 2>&1 | tee "$LOG"
