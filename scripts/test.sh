#!/usr/bin/env bash
# README test command: set up (or update) .venv, lint with ruff, run the whole pytest suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k geometry -x`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
venv="${M3_VENV:-$repo/.venv}"
echo "[m3 test] ruff check"
"$venv/bin/ruff" check .
echo "[m3 test] pytest"
exec "$venv/bin/python" -m pytest "$@"
