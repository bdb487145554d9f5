"""The layering rules of docs/architecture.md, checked on the real import graph.

m3_core is the numerical core: importing every one of its modules must not pull in rclpy, any ROS
message package or m3_ros. The check runs in a fresh interpreter, so nothing this test process
imported earlier hides a violation.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import m3_core

REPO = Path(__file__).resolve().parents[1]

# Module name prefixes that belong to ROS: the client library, generated interfaces, our adapters.
ROS_PREFIXES = ("rclpy", "rosidl", "rmw", "m3_ros", "m3_grasp")
ROS_SUFFIXES = ("_msgs", "_srvs")

_PROBE = """
import importlib, json, pkgutil, sys
import m3_core
names = [m.name for m in pkgutil.walk_packages(m3_core.__path__, "m3_core.")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as err:  # optional heavy dependency missing: reported, not hidden
        failed[name] = str(err)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules), "failed": failed}))
"""


def _py_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (`from a import b` counts a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top.startswith(ROS_PREFIXES) or top.endswith(ROS_SUFFIXES)


def test_m3_core_imports_no_ros() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report["modules"]) > 40, "the probe did not find m3_core's modules"
    ros = sorted(m for m in report["loaded"] if _is_ros(m))
    assert not ros, f"importing m3_core pulled in ROS modules: {ros[:10]}"
    assert not report["failed"], f"m3_core modules that do not import: {report['failed']}"


def test_ros_detector_sees_ros_modules() -> None:
    """The detector itself: a message package, rclpy and our adapters count as ROS; numpy does not."""
    assert _is_ros("sensor_msgs.msg") and _is_ros("rclpy.node") and _is_ros("m3_ros.cli")
    assert _is_ros("std_srvs.srv") and _is_ros("m3_grasp.msg")
    assert not _is_ros("numpy") and not _is_ros("m3_core.geometry")


def test_every_module_is_found() -> None:
    """walk_packages reaches the subpackages (model/, training/, grasp/...), not only top level."""
    names = {m.name for m in pkgutil.walk_packages(m3_core.__path__, "m3_core.")}
    for expected in (
        "m3_core.model.memory",
        "m3_core.training.trainer",
        "m3_core.robot",
        "m3_core.grasp.types",
    ):
        assert expected in names


# The capture graph's nodes start several at a time (the demo, every ROS test): importing torch,
# the renderer and its compiled kernels cost each of them ~3 s more on a 2-core machine. They once
# did, through m3_core.query's package imports (their parameters need QueryConfig only).
@pytest.mark.parametrize("module", ["m3_ros.capture_node", "m3_ros.pose_chain_node", "m3_ros.replay_cli"])
def test_capture_graph_nodes_do_not_import_torch(module: str) -> None:
    pytest.importorskip("rclpy", reason="the ROS nodes need rclpy")
    probe = f"import sys, {module}; print(sorted(m for m in ('torch', 'numba') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_capture_and_sim_stay_independent() -> None:
    """Two sources of scenes: the robot's capture tools never read the simulator (its ground-truth
    masks are copied by `m3 sim masks`), and the simulator never needs the capture code."""
    crossings = []
    for source, other in (("capture", "sim"), ("sim", "capture")):
        for path in _py_files(f"m3_core/{source}"):
            bad = sorted(m for m in _imported_modules(path) if m.startswith(f"m3_core.{other}"))
            if bad:
                crossings.append(f"{path.relative_to(REPO)} imports {bad}")
    assert not crossings, "\n".join(crossings)


def test_import_finder_sees_local_and_from_imports(tmp_path) -> None:
    code = "import os\nfrom m3_core import sim\ndef f():\n    from m3_core.sim.gt import read_mask\n"
    (tmp_path / "x.py").write_text(code)
    found = _imported_modules(tmp_path / "x.py")
    assert {"os", "m3_core", "m3_core.sim", "m3_core.sim.gt", "m3_core.sim.gt.read_mask"} <= found


def _is_cli_module(path: Path) -> bool:
    return path.name == "cli.py" or path.name.endswith("_cli.py")


def _cli_code(path: Path) -> list[str]:
    """What makes a module command-line code: `def add_arguments`, building or filling an argparse parser."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef) and node.name == "add_arguments":
            found.append(f"line {node.lineno}: def add_arguments")
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if name in ("ArgumentParser", "add_argument", "add_subparsers", "add_parser"):
                found.append(f"line {node.lineno}: {name}(...)")
    return found


def test_cli_code_lives_in_cli_modules() -> None:
    """One place for command lines: a package's cli.py or a <name>_cli.py next to the logic it drives,
    never inside a logic module or a node file."""
    misplaced = {
        str(path.relative_to(REPO)): found
        for path in _py_files("m3_core", "m3_ros")
        if not _is_cli_module(path) and (found := _cli_code(path))
    }
    assert not misplaced, f"command-line code outside cli modules: {misplaced}"


def test_cli_finder_sees_parsers(tmp_path) -> None:
    (tmp_path / "logic.py").write_text(
        "import argparse\ndef add_arguments(p):\n    p.add_argument('--x')\n"
        "def main():\n    argparse.ArgumentParser()\n"
    )
    assert len(_cli_code(tmp_path / "logic.py")) == 3
    assert _is_cli_module(Path("m3_core/capture/bag2scene_cli.py")) and not _is_cli_module(Path("a/b.py"))


def _local_import_problems(path: Path) -> list[str]:
    """Function-local imports that break the rule: of m3_core/m3_ros at all (they go to the top of the
    file; a cycle is broken by moving code), of anything else without a `# local: <reason>` comment."""
    lines = path.read_text().splitlines()
    problems = []
    for fn in ast.walk(ast.parse("\n".join(lines), str(path))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            statement = lines[node.lineno - 1 : node.end_lineno]
            if getattr(node, "level", 0) or (module or "").split(".")[0] in ("m3_core", "m3_ros"):
                problems.append(
                    f"{path.name}:{node.lineno} imports the project's {module} inside {fn.name}()"
                )
            elif not any("# local:" in line for line in statement):
                problems.append(
                    f"{path.name}:{node.lineno} imports {module} inside {fn.name}() without '# local:'"
                )
    return problems


def test_function_local_imports_only_for_heavy_optional_dependencies() -> None:
    problems = [p for path in _py_files("m3_core", "m3_ros") for p in _local_import_problems(path)]
    assert not problems, "\n".join(problems)


def test_local_import_finder(tmp_path) -> None:
    (tmp_path / "x.py").write_text(
        "import os\n"
        "def f():\n    from m3_core.scene import load_scene\n"
        "def g():\n    import pybullet\n"
        "def h():\n    import pybullet  # local: heavy simulator\n"
    )
    problems = _local_import_problems(tmp_path / "x.py")
    assert len(problems) == 2 and "project's m3_core.scene" in problems[0] and "'# local:'" in problems[1]


# Names of files and folders outside the repository that comments and docs once pointed at; the
# repository must stand on its own (docs/ holds what users and contributors need).
_OUTSIDE = ("ARCHITECTURE" + ".md", "_FACTS" + ".md", "shared" + " notes", "/work/" + "shared")


def test_no_references_to_files_outside_the_repository() -> None:
    suffixes = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".xml", ".cfg", ".json"}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False)
    if tracked.returncode != 0:
        pytest.skip(f"git ls-files failed (not a git checkout?): {tracked.stderr.strip()}")
    hits = []
    for name in tracked.stdout.splitlines():
        path = REPO / name
        if path.suffix not in suffixes or name.startswith("third_party/") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        # file names as written (docs/architecture.md is ours); the phrase in any case
        hits += [f"{name}: {ref}" for ref in _OUTSIDE if ref in text or (" " in ref and ref in text.lower())]
    assert not hits, f"references to files outside the repository: {hits}"
