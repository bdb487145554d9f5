#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv by default) on a machine without a
# ROS install: CPU PyTorch, the PyPI ROS 2 wheels, our rosidl interfaces (and tf2_msgs when it is
# absent), and this package in editable mode. Idempotent: a run with nothing changed only checks
# a stamp and returns in seconds.
#
#   M3_VENV=path          where the environment lives (default: .venv in the repo)
#   M3_FORCE_SETUP=1      redo every step
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${M3_VENV:-$repo/.venv}"
log() { printf '\033[1m[m3 setup]\033[0m %s\n' "$*" >&2; }

pick_python() {
  for py in python3.12 python3.11 python3.10 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(not ((3,10) <= sys.version_info[:2] <= (3,12)))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "m3 setup: need Python 3.10-3.12 (the ROS 2 wheels are cp310-cp312); none found" >&2
  return 1
}

# System tools: venv support, a C/C++ compiler and cmake for rosidl. Installed only if missing.
need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
python="$(pick_python)"
"$python" -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing system packages: ${need_apt[*]}"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp_inputs() {
  cat "$repo/scripts/setup_env.sh" "$repo/requirements.txt" "$repo/constraints.txt" "$repo/setup.py" \
      "$repo/CMakeLists.txt" "$repo/package.xml" "$repo"/msg/*.msg "$repo"/srv/*.srv \
      "$repo"/third_party/tf2_msgs/msg/*.msg
  echo "$venv"
}
stamp="$(stamp_inputs | sha256sum | cut -c1-16)"
stamp_file="$venv/.m3_setup_stamp"
if [ -z "${M3_FORCE_SETUP:-}" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] &&
   "$venv/bin/python" -c 'import m3_grasp.srv, tf2_msgs.msg, m3_core' >/dev/null 2>&1; then
  log "environment up to date: $venv"
  exit 0
fi

[ -x "$venv/bin/python" ] || { log "creating virtual environment $venv ($python)"; "$python" -m venv "$venv"; }
# Every install is held to constraints.txt: the exact versions a fresh set-up resolved, so two
# machines set up months apart get the same packages (scripts/freeze_constraints.py renews it).
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
pin=(-c "$repo/constraints.txt")
"${pip[@]}" install "${pin[@]}" --upgrade pip setuptools wheel

# CPU torch first and pinned: left to itself pip resolves torch to a CUDA build (several GB).
if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  log "installing torch==2.13.0 (CPU)"
  "${pip[@]}" install "${pin[@]}" ${M3_TORCH_INDEX:+--index-url "$M3_TORCH_INDEX"} torch==2.13.0
fi
log "installing Python and ROS 2 wheel dependencies (requirements.txt)"
"${pip[@]}" install "${pin[@]}" -r "$repo/requirements.txt"

# The ROS wheels' exported CMake files name their build machine's interpreter; point them here.
py_inc="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
np_inc="$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')"
{ grep -rlI --include='*.cmake' '/opt/python/cp' "$venv/share" 2>/dev/null || true; } | while read -r f; do
  sed -i -E "s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python[0-9.]+/site-packages/numpy/_core/include#$np_inc#g;
             s#/opt/python/cp[0-9]+-cp[0-9]+/include/python[0-9.]+#$py_inc#g" "$f"
done

build_interfaces() {  # <source dir> <build dir> <install component or ""> [cmake args...]
  local src="$1" build="$2" component="$3"; shift 3
  log "generating ROS interfaces: $(sed -n "s:.*<name>\(.*\)</name>.*:\1:p" "$src/package.xml" | head -n1) (rosidl)"
  rm -rf "$build"
  AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH" \
    cmake -S "$src" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" -DBUILD_TESTING=OFF \
      -DPython3_EXECUTABLE="$venv/bin/python" -DPython3_FIND_STRATEGY=LOCATION "$@" >"$build.log" 2>&1 &&
  AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH" \
    cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 &&
  cmake --install "$build" ${component:+--component "$component"} >>"$build.log" 2>&1 ||
    { tail -n 40 "$build.log" >&2; echo "m3 setup: interface generation failed, full log: $build.log" >&2; return 1; }
}
builddir="$venv/.m3_build"; mkdir -p "$builddir"
if ! "$venv/bin/python" -c 'import tf2_msgs.msg' >/dev/null 2>&1; then
  build_interfaces "$repo/third_party/tf2_msgs" "$builddir/tf2_msgs" ""
fi
# everything but the component "python" (m3_core, m3_ros: pip installs them editable below); the
# build tree keeps the full colcon-style install for tests/test_install_layout.py
build_interfaces "$repo" "$builddir/m3_grasp" Unspecified

log "installing m3_core / m3_ros (editable)"
"${pip[@]}" install --no-deps --no-build-isolation -e "$repo"

"$venv/bin/python" -c 'import m3_grasp.srv, m3_grasp.msg, tf2_msgs.msg, m3_core, m3_ros' ||
  { echo "m3 setup: the environment does not import; see messages above" >&2; exit 1; }
# numba compiles the CPU training kernels on first use (~30 s on 2 cores) and caches them; do it
# here, once per install, rather than in the first training (docs/install.md)
log "compiling the CPU training kernels (numba; cached for later processes)"
"$venv/bin/python" -c 'from m3_core.render.torch_backend import warm_up_cpu_kernels as w; w()' ||
  log "could not compile the CPU training kernels now; training will compile them on first use"
echo "$stamp" > "$stamp_file"
log "ready: $venv"
