#!/usr/bin/env bash
# README test command: set up (or update) .venv, lint with ruff, run the whole pytest suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k geometry -x`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
# The viewer test drives a real headless Chromium: install it (Debian's packages) when missing.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "[m3 test] installing chromium + chromium-driver for the browser viewer test"
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
    echo "[m3 test] could not install chromium; the browser test will skip and say so"
fi
venv="${M3_VENV:-$repo/.venv}"
echo "[m3 test] ruff check"
"$venv/bin/ruff" check .
echo "[m3 test] pytest"
exec "$venv/bin/python" -m pytest "$@"
