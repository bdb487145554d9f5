"""The colcon/CMake install that `ros2 launch` and `ros2 run` need, from CMakeLists.txt for real.

scripts/setup_env.sh configures and builds CMakeLists.txt (rosidl generation included) and keeps
the build tree; `cmake --install <build> --prefix <tmp>` here is then the full install, Python
packages included, in about a second. The launch files are loaded and run with the real `launch`
and `launch_ros` where they are importable (a ROS 2 install, or their sources on PYTHONPATH).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BUILD = Path(sys.prefix) / ".m3_build" / "m3_grasp"
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
LAUNCH_FILES = ("capture.launch.py", "demo.launch.py", "query.launch.py")
REQUIRED = {"capture.launch.py": [], "demo.launch.py": ["bag"], "query.launch.py": ["memory"]}


def _executables() -> set[str]:
    """Executables named by the node graph (what launch_ros starts)."""
    graph = yaml.safe_load((REPO / "config" / "demo_graph.yaml").read_text())
    return {entry["executable"] for group in graph["groups"].values() for entry in group}


def _console_scripts() -> set[str]:
    """Console scripts of setup.py (the virtual-environment route) other than `m3`."""
    tree = ast.parse((REPO / "setup.py").read_text())
    scripts = next(
        ast.literal_eval(kw.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "entry_points"
    )["console_scripts"]
    return {s.split("=")[0].strip() for s in scripts} - {"m3"}


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if not (BUILD / "cmake_install.cmake").exists():
        pytest.skip(f"no CMake build tree of m3_grasp in {BUILD} (scripts/setup_env.sh makes it)")
    if (REPO / "CMakeLists.txt").stat().st_mtime > (BUILD / "CMakeCache.txt").stat().st_mtime:
        pytest.fail("CMakeLists.txt changed since the build tree was configured: run scripts/setup_env.sh")
    out = tmp_path_factory.mktemp("install")
    t0 = time.perf_counter()
    done = subprocess.run(
        ["cmake", "--install", str(BUILD), "--prefix", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"cmake --install: {time.perf_counter() - t0:.1f} s")
    return out


def _env(prefix: Path) -> dict[str, str]:
    """What sourcing the install's setup script gives a ROS user (the venv stands in for /opt/ros)."""
    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(prefix), sys.prefix])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(prefix / SITE), env.get("PYTHONPATH", "")]))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(prefix / "lib"), env.get("LD_LIBRARY_PATH", "")])
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # python3 = ours
    env.pop("M3_CONFIG_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_install_has_the_colcon_layout(prefix):
    share = prefix / "share" / "m3_grasp"
    assert (prefix / "share/ament_index/resource_index/packages/m3_grasp").is_file()
    assert (share / "package.xml").is_file()
    for name in (*LAUNCH_FILES, "_graph_launch.py"):
        assert (share / "launch" / name).is_file(), name
    for name in ("robot_b1z1.yaml", "demo_graph.yaml", "m3_demo.rviz"):
        assert (share / "config" / name).is_file(), name
    # one name per node on both routes: `ros2 run m3_grasp <name>` and the venv's console script
    assert _executables() == _console_scripts()
    for exe in _executables():
        path = prefix / "lib" / "m3_grasp" / exe
        assert path.is_file() and os.access(path, os.X_OK), exe
    site = prefix / SITE
    for package in ("m3_core", "m3_ros"):
        installed = {p.relative_to(site / package) for p in (site / package).rglob("*.py")}
        source = {p.relative_to(REPO / package) for p in (REPO / package).rglob("*.py")}
        assert installed == source, package
    assert (site / "m3_grasp" / "srv" / "__init__.py").is_file()  # the generated interfaces


def test_installed_executable_runs_from_the_install(prefix, tmp_path):
    env = _env(prefix)
    done = subprocess.run(
        [str(prefix / "lib/m3_grasp/m3_replay_node"), "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "usage: m3_replay_node" in done.stdout, done.stdout + done.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import m3_ros, m3_core.config as c; print(m3_ros.__file__); print(c.config_dir())"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    module, config = where.stdout.split()
    assert module.startswith(str(prefix)) and config == str(prefix / "share/m3_grasp/config"), where.stderr


# -- the launch files, with the real launch / launch_ros ---------------------------------------------


def _need_launch() -> None:
    # (the repository's own launch/ folder imports as an empty namespace package "launch")
    try:
        import launch_ros  # noqa: F401

        from launch import LaunchService  # noqa: F401
    except ImportError as err:
        pytest.skip(
            f"`launch` / `launch_ros` are not importable ({err}); install ROS 2 or put their sources on PYTHONPATH"
        )


_DESCRIBE = """
import json, sys
from launch.launch_description_sources import get_launch_description_from_python_launch_file
arguments = get_launch_description_from_python_launch_file(sys.argv[1]).get_launch_arguments()
print(json.dumps([[a.name, a.description, a.default_value is None] for a in arguments]))
"""


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_installed_launch_file_describes_its_arguments(prefix, tmp_path, name):
    """What `ros2 launch m3_grasp NAME --show-args` lists: each argument once, described."""
    _need_launch()
    done = subprocess.run(
        [sys.executable, "-c", _DESCRIBE, str(prefix / "share/m3_grasp/launch" / name)],
        env=_env(prefix), cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    arguments = json.loads(done.stdout.splitlines()[-1])
    assert arguments and all(
        description and description != "no description given" for _, description, _ in arguments
    )
    assert [n for n, _, required in arguments if required] == REQUIRED[name]
    assert len({n for n, _, _ in arguments}) == len(arguments)


_RUN = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
path, args = sys.argv[1], [a.split(":=", 1) for a in sys.argv[2:]]
service = LaunchService()
service.include_launch_description(
    LaunchDescription([IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=args)])
)
sys.exit(service.run())
"""


def _launch(prefix: Path, name: str, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", _RUN, str(prefix / "share/m3_grasp/launch" / name), *args]
    return subprocess.Popen(
        command, env=_env(prefix), cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def test_launch_without_a_required_argument_fails_before_any_node(prefix, tmp_path):
    _need_launch()
    log = tmp_path / "launch.log"
    proc = _launch(prefix, "demo.launch.py", ["scene_dir:=/tmp/unused"], tmp_path, log)
    assert proc.wait(120) != 0
    text = log.read_text()
    assert "required argument 'bag'" in text and "process started" not in text, text


def test_launch_passes_a_number_like_string_as_a_string(prefix, tmp_path):
    """Regression: launch_ros read `scene_dir:=20250101` as an integer and the capture node died."""
    _need_launch()
    log = tmp_path / "launch.log"
    proc = _launch(prefix, "capture.launch.py", ["scene_dir:=20250101"], tmp_path, log)
    try:
        deadline = time.monotonic() + 120.0
        while "into 20250101" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert "into 20250101" in text and "InvalidParameterType" not in text, text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    assert (tmp_path / "20250101" / "images").is_dir()


def test_demo_launch_replays_a_bag_into_a_scene(prefix, tmp_path):
    """demo.launch.py for real: replay (bag, rate as parameters) -> pose chain -> capture -> scene."""
    _need_launch()
    from tests.conftest_sim import make_tiny

    make_tiny(tmp_path / "bag", frames=8, size=(160, 120))
    log = tmp_path / "launch.log"
    args = [
        f"bag:={tmp_path / 'bag'}",
        f"scene_dir:={tmp_path / 'scene'}",
        "rate:=2",
        "camera_reliable:=true",
    ]
    proc = _launch(prefix, "demo.launch.py", args, tmp_path, log)
    try:
        deadline = time.monotonic() + 240.0
        while "replayed " not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "replayed " in log.read_text(), log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
    text = log.read_text()
    assert code == 0, text
    assert "no subscriber appeared" not in text, text
    assert (tmp_path / "scene" / "scene.json").is_file(), text
    assert len(list((tmp_path / "scene" / "images").iterdir())) >= 2, text
