# Sourced by the before/after scripts (main_job_stages.sh, judge_check_time.sh): run from the repo
# root, print the CPU flags, and give `at_commit REV` (prints a fresh clone of REV checked out beside
# a link to ../shared, removed on exit) so each commit runs its own code.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
_repo=$(pwd)
_shared=$(realpath ../shared)
_work=$(mktemp -d)
trap 'rm -rf "$_work"' EXIT
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16)$' | tr '\n' ' ')"

at_commit() {
  local sha
  sha=$(git rev-parse --short "$1")
  mkdir -p "$_work/$sha" && git clone -q "$_repo" "$_work/$sha/main" && ln -s "$_shared" "$_work/$sha/shared"
  git -C "$_work/$sha/main" checkout -q "$sha"
  echo "$_work/$sha/main"
}
