#!/usr/bin/env bash
# README main command: set up (or update) .venv, then run the whole chain on the built-in
# simulated robot scene (sim bag -> ROS capture -> training -> query node -> grasp target).
# Extra arguments go to `m3 demo` (see `m3 demo --help`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
venv="${M3_VENV:-$repo/.venv}"
exec "$venv/bin/m3" demo "$@"
