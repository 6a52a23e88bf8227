#!/usr/bin/env bash
# llama.cpp's own `llama-server`, the real peer for bench/serve_throughput.py (issue 30.3): built
# once from the llama.cpp that the llama-cpp-python sdist vendors (vendor/llama.cpp), cached, reused.
#
#   bash bench/llama_server.sh                 # build if needed; the binary's path is the last line
#   bash bench/llama_server.sh -np 8 ...       # build if needed, then run it with these arguments
#
# LLAMA_CPP_PYTHON=0.3.36 picks the sdist (the newest on PyPI when this was written); the cache is
# ${XDG_CACHE_HOME:-~/.cache}/baize/llama-server/<that version>/, and JOBS (default 2) the build's -j.
# Release, GGML_NATIVE=ON (this CPU's instructions, as a user would build it), static, no CURL and
# no OpenSSL: nothing here downloads a model, and the bench never leaves 127.0.0.1.
set -euo pipefail
VERSION=${LLAMA_CPP_PYTHON:-0.3.36}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/baize/llama-server/$VERSION
BIN=$CACHE/llama-server
FLAGS=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF
       -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON
       -DLLAMA_BUILD_SERVER=ON)

if [ ! -x "$BIN" ]; then
  mkdir -p "$CACHE"
  start=$(date +%s)
  echo "# building llama-server from llama-cpp-python $VERSION's vendor/llama.cpp into $CACHE" >&2
  if [ ! -f "$CACHE"/llama_cpp_python-"$VERSION".tar.gz ]; then
    python -m pip download --no-binary :all: --no-deps -q \
      "llama-cpp-python==$VERSION" -d "$CACHE" >&2
  fi
  rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
  tar xzf "$CACHE"/llama_cpp_python-"$VERSION".tar.gz -C "$CACHE/src" --strip-components=1
  SRC=$CACHE/src/vendor/llama.cpp
  # The sdist drops the submodule's git dir, so llama.cpp's build-info would say "unknown": take
  # the commit from the changelog's line for this release ("update llama.cpp to ggml-org/llama.cpp@HASH").
  COMMIT=$(awk -v v="## [$VERSION]" '$0==v{on=1;next} on&&/^## /{exit} on' "$CACHE/src/CHANGELOG.md" \
           | grep -o 'llama.cpp@[0-9a-f]*' | head -1 | cut -d@ -f2)
  rm -f "$SRC/.git"
  FLAGS+=("-DLLAMA_BUILD_COMMIT=${COMMIT:-unknown}")
  echo "# cmake ${FLAGS[*]}" >&2
  cmake -S "$SRC" -B "$CACHE/build" "${FLAGS[@]}" > "$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log" >&2; exit 1; }
  cmake --build "$CACHE/build" --target llama-server -j "${JOBS:-2}" >> "$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log" >&2; exit 1; }
  cp "$CACHE/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  { echo "llama-cpp-python $VERSION, llama.cpp ${COMMIT:-unknown}"
    echo "cmake ${FLAGS[*]}"
    echo "built in $(( $(date +%s) - start )) s on $(date -u +%Y-%m-%dT%H:%M:%SZ), -j ${JOBS:-2}"
    grep -m1 -i 'CMAKE_C_COMPILER\|The C compiler' "$CACHE/build.log" || true
  } > "$CACHE/BUILD_INFO"
  rm -rf "$CACHE/src" "$CACHE/build"  # ~1 GB of objects; the static binary is all the bench needs
fi
sed 's/^/# /' "$CACHE/BUILD_INFO" >&2
"$BIN" --version 2>&1 | sed 's/^/# /' >&2 || true
if [ $# -eq 0 ]; then
  echo "$BIN"
else
  exec "$BIN" "$@"
fi
