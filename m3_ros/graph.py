"""The demo's node graph from config/demo_graph.yaml: one description for launch files and
`m3 ros-demo`, so the two cannot drift apart.

No rclpy import here: `m3 ros-demo` starts each node as `python -m <module> --ros-args ...`, and the
launch files turn the same NodeSpecs into launch_ros Node actions.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3_core.config import config_dir, read_yaml

DEMO_GRAPH_YAML = config_dir() / "demo_graph.yaml"
# `python -m` puts the current directory first on sys.path: started from a bag folder, a package
# shipped in it would be imported instead of the installed one. -P (Python 3.11+) leaves it out.
SAFE_PATH_FLAGS: tuple[str, ...] = ("-P",) if sys.version_info >= (3, 11) else ()
_VAR = re.compile(r"\$\{(\w+)\}")


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: how (module / executable), its name, parameters and extra arguments."""

    name: str
    module: str
    executable: str
    parameters: dict[str, Any] = field(default_factory=dict)
    arguments: tuple[str, ...] = ()

    def command(self, python: str = sys.executable) -> list[str]:
        """argv to start this node as a process (what `m3 ros-demo` runs)."""
        args = [python, *SAFE_PATH_FLAGS, "-m", self.module, *self.arguments]
        args += ["--ros-args", "-r", f"__node:={self.name}"]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_ros_value(value)}"]
        return args


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


def _parse_scalar(text: str) -> Any:
    """Launch arguments are strings; parameters keep the type their node declares."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def graph_arguments(path: Path = DEMO_GRAPH_YAML) -> dict[str, str]:
    """The declared arguments and their defaults (strings)."""
    return {k: str(v) for k, v in (read_yaml(path).get("arguments") or {}).items()}


def load_group(
    group: str, values: dict[str, str] | None = None, path: Path = DEMO_GRAPH_YAML
) -> list[NodeSpec]:
    """NodeSpecs of one group with ${...} filled from `values` (over the YAML defaults)."""
    data = read_yaml(path)
    groups = data.get("groups") or {}
    if group not in groups:
        raise ValueError(f"no node group {group!r} in {path}; groups: {sorted(groups)}")
    args = graph_arguments(path)
    unknown = sorted(set(values or {}) - set(args))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for {path}; declared: {sorted(args)}")
    args.update({k: str(v) for k, v in (values or {}).items()})

    def fill(text: str) -> str:
        return _VAR.sub(lambda m: args[m.group(1)], text)

    specs = []
    for entry in groups[group]:
        params = {}
        for key, value in (entry.get("parameters") or {}).items():
            if isinstance(value, str):
                filled = fill(value)
                # a parameter that is only a ${var} takes the variable's natural type
                value = _parse_scalar(filled) if _VAR.fullmatch(value) and filled != "" else filled
            params[key] = value
        specs.append(
            NodeSpec(
                name=entry["name"],
                module=entry["module"],
                executable=entry["executable"],
                parameters=params,
                arguments=tuple(fill(str(a)) for a in entry.get("arguments") or []),
            )
        )
    return specs
