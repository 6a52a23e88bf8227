#!/usr/bin/env bash
# What tests/test_ui.py needs: Debian's Chromium (driven by Playwright's Python package through its
# executable path, so no browser download) and gradio. Run as root, or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
python3 -m pip install -q "playwright>=1.45" "gradio>=5"
# never `playwright install`: tests launch /usr/bin/chromium (override with BAIZE_CHROMIUM=/path)
chromium --version
