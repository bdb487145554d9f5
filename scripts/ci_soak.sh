#!/usr/bin/env bash
# CI soak: N consecutive fresh-clone runs of `.ci/run` (the README test command), optionally pinned to
# a few CPUs with CPU-heavy processes running beside it on the same CPUs, to show that the suite is
# green every time on a small loaded machine (and to catch the run that is not).
#
#   bash scripts/ci_soak.sh --runs 20 --cpus 0,1 --hogs 1 --out /tmp/m3_soak
#   bash scripts/ci_soak.sh --runs 1 --pytest-args "-k test_layers"      # a quick check of the script
#
# Each run: `git clone` of --repo at --ref into a new temporary directory (nothing shared with the
# caller's checkout: its own .venv, set up from scratch), then `CI=true bash .ci/run [pytest args]`
# under `taskset -c CPUS`. Its output goes to OUT/run-NN.log; a table of run / exit code / seconds /
# failed tests is printed as runs finish and written to OUT/summary.txt. Stops at the first red run
# unless --keep-going. Exit code: 0 when every run was green, 1 otherwise, 2 for bad arguments.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: ci_soak.sh [options]
  --repo URL|PATH     repository to clone (default: the repository this script is in)
  --ref REF           branch, tag or commit to test (default: that repository's HEAD commit)
  --runs N            consecutive runs (default 20)
  --cpus LIST         pin each run (and the hogs) to these CPUs with taskset, e.g. 0,1 (default: all)
  --hogs K            start K CPU-heavy processes (sha256sum /dev/zero) on the same CPUs (default 0)
  --out DIR           logs and summary (default: /tmp/m3_soak_<date>_<time>)
  --keep-going        do not stop at the first red run
  --keep-clones       keep each run's clone (default: removed after the run, it holds a full .venv)
  --pytest-args STR   extra arguments for pytest, passed through .ci/run (split on spaces)
EOF
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$here"
ref=""
runs=20
cpus=""
hogs=0
out=""
keep_going=0
keep_clones=0
pytest_args=""
while (($#)); do
  case "$1" in
    --repo) repo="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --hogs) hogs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --keep-going) keep_going=1; shift ;;
    --keep-clones) keep_clones=1; shift ;;
    --pytest-args) pytest_args="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "ci_soak.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "ci_soak.sh: --runs must be a positive integer, got '$runs'" >&2; exit 2; }
[[ "$hogs" =~ ^[0-9]+$ ]] || { echo "ci_soak.sh: --hogs must be a number >= 0, got '$hogs'" >&2; exit 2; }
pin=()
if [ -n "$cpus" ]; then
  command -v taskset >/dev/null 2>&1 || { echo "ci_soak.sh: --cpus needs taskset (util-linux)" >&2; exit 2; }
  taskset -c "$cpus" true 2>/dev/null || { echo "ci_soak.sh: taskset cannot use CPUs '$cpus'" >&2; exit 2; }
  pin=(taskset -c "$cpus")
fi
# The ref is resolved once, so every run tests the same commit even if the branch moves meanwhile.
if [ -d "$repo" ]; then
  commit="$(git -C "$repo" rev-parse --verify -q "${ref:-HEAD}^{commit}")" ||
    { echo "ci_soak.sh: no commit '${ref:-HEAD}' in $repo" >&2; exit 2; }
  ref="$commit"
elif [ -z "$ref" ]; then
  echo "ci_soak.sh: give --ref for a remote --repo" >&2; exit 2
fi
out="${out:-/tmp/m3_soak_$(date +%Y%m%d_%H%M%S)}"
mkdir -p "$out"
summary="$out/summary.txt"
read -r -a extra <<<"$pytest_args"

hog_pids=()
clone=""
cleanup() {
  local pid
  for pid in "${hog_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${hog_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$clone" ] && [ "$keep_clones" -eq 0 ]; then rm -rf "$clone"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for ((h = 0; h < hogs; h++)); do
  "${pin[@]}" sha256sum /dev/zero >/dev/null 2>&1 &
  hog_pids+=("$!")
done

{
  echo "# m3 CI soak: $runs run(s) of .ci/run on fresh clones"
  echo "# repo $repo, ref $ref, cpus ${cpus:-all}, hogs $hogs, pytest args '${pytest_args}'"
  echo "# started $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) CPUs, $(uname -m)"
  ((hogs == 0)) || echo "# hog pids ${hog_pids[*]}, on CPUs $(taskset -cp "${hog_pids[0]}" 2>/dev/null | sed 's/.*: //')"
  printf '%-5s %-4s %-8s %s\n' run rc seconds "failed tests"
} | tee "$summary"

green=0
red=0
for ((i = 1; i <= runs; i++)); do
  log="$out/run-$(printf %02d "$i").log"
  clone="$(mktemp -d "${TMPDIR:-/tmp}/m3_soak_run.XXXXXX")"
  start=$(date +%s)
  rc=0
  {
    git clone -q "$repo" "$clone/m3" && git -C "$clone/m3" checkout -q "$ref" &&
      (cd "$clone/m3" && CI=true "${pin[@]}" bash .ci/run "${extra[@]}")
  } >"$log" 2>&1 || rc=$?
  seconds=$(($(date +%s) - start))
  # pytest's short summary (-ra) names every failed / erroring test on a FAILED / ERROR line
  failed="$(grep -E '^(FAILED|ERROR) ' "$log" | awk '{print $2}' | sort -u | paste -sd' ' - || true)"
  [ "$rc" -ne 0 ] && [ -z "$failed" ] && failed="(none listed; see $(basename "$log"))"
  printf '%-5s %-4s %-8s %s\n' "$i" "$rc" "$seconds" "${failed:--}" | tee -a "$summary"
  if [ "$keep_clones" -eq 0 ]; then rm -rf "$clone"; fi
  clone=""
  if [ "$rc" -eq 0 ]; then
    green=$((green + 1))
  else
    red=$((red + 1))
    [ "$keep_going" -eq 1 ] || break
  fi
done
echo "# $green green, $red red of $((green + red)) run(s); logs in $out" | tee -a "$summary"
[ "$red" -eq 0 ]
