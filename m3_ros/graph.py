"""The demo's node graph from config/demo_graph.yaml: one description for launch files and
`m3 ros-demo`, so the two cannot drift apart.

`m3 ros-demo` starts each node as `python -m <module> --ros-args ...`; the launch files turn the
same NodeSpecs into launch_ros Node actions. Each argument has a description and a default or is
required; a parameter filled from an argument takes the type its node declares (m3_ros.params),
so a number-like string such as a date stays a string.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3_core.config import config_dir, read_yaml
from m3_ros.params import node_param

DEMO_GRAPH_YAML = config_dir() / "demo_graph.yaml"
# `python -m` puts the current directory first on sys.path: started from a bag folder, a package
# shipped in it would be imported instead of the installed one. -P (Python 3.11+) leaves it out.
SAFE_PATH_FLAGS: tuple[str, ...] = ("-P",) if sys.version_info >= (3, 11) else ()
_VAR = re.compile(r"\$\{(\w+)\}")


@dataclass(frozen=True)
class Argument:
    """One launch argument of the graph."""

    name: str
    """Argument name (`name:=value`)."""
    description: str
    """What it sets (shown by `ros2 launch ... --show-args`)."""
    default: str | None = None
    """Default value; None: required."""

    @property
    def required(self) -> bool:
        return self.default is None


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
    """A `-p name:=value` value that ROS's YAML reading gives back with its type: strings quoted
    (JSON is YAML), so "20250101" stays a string and "true" a string where a string is meant."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return repr(value)


def graph_argument_specs(path: Path = DEMO_GRAPH_YAML) -> dict[str, Argument]:
    """The declared arguments: description and default (None when required)."""
    specs = {}
    for name, entry in (read_yaml(path).get("arguments") or {}).items():
        if not isinstance(entry, dict) or not entry.get("description"):
            raise ValueError(f"{path}: argument {name!r} needs a mapping with a description")
        required = bool(entry.get("required", False))
        if required == ("default" in entry):
            raise ValueError(f"{path}: argument {name!r} needs either a default or required: true")
        default = None if required else str(entry["default"])
        specs[name] = Argument(name, str(entry["description"]), default)
    return specs


def graph_arguments(path: Path = DEMO_GRAPH_YAML) -> dict[str, str]:
    """The declared arguments and their defaults (strings; "" for a required one)."""
    return {k: a.default or "" for k, a in graph_argument_specs(path).items()}


def group_arguments(groups: list[str], path: Path = DEMO_GRAPH_YAML) -> list[Argument]:
    """The arguments the nodes of `groups` use, in declaration order (what a launch file declares)."""
    data, specs = read_yaml(path), graph_argument_specs(path)
    used: set[str] = set()
    for group in groups:
        for entry in _group_entries(data, group, path):
            texts = [
                *map(str, (entry.get("parameters") or {}).values()),
                *map(str, entry.get("arguments") or []),
            ]
            used.update(name for text in texts for name in _VAR.findall(text))
    undeclared = sorted(used - set(specs))
    if undeclared:
        raise ValueError(f"{path}: groups {groups} use undeclared argument(s) {undeclared}")
    return [a for name, a in specs.items() if name in used]


def _group_entries(data: dict[str, Any], group: str, path: Path) -> list[dict[str, Any]]:
    groups = data.get("groups") or {}
    if group not in groups:
        raise ValueError(f"no node group {group!r} in {path}; groups: {sorted(groups)}")
    return groups[group]


def load_group(
    group: str, values: dict[str, str] | None = None, path: Path = DEMO_GRAPH_YAML
) -> list[NodeSpec]:
    """NodeSpecs of one group with ${...} filled from `values` (over the YAML defaults)."""
    data = read_yaml(path)
    entries = _group_entries(data, group, path)
    args = graph_arguments(path)
    unknown = sorted(set(values or {}) - set(args))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for {path}; declared: {sorted(args)}")
    args.update({k: str(v) for k, v in (values or {}).items()})
    for arg in group_arguments([group], path):
        if arg.required and not args[arg.name].strip():
            raise ValueError(
                f"argument {arg.name} is required: {arg.description} "
                f"(ros2 launch: {arg.name}:=VALUE; m3 ros-demo: --{arg.name.replace('_', '-')} VALUE)"
            )

    def fill(text: str) -> str:
        return _VAR.sub(lambda m: args[m.group(1)], text)

    specs = []
    for entry in entries:
        params = {}
        for key, value in (entry.get("parameters") or {}).items():
            # typed as the node declares it: a launch argument is text, "20250101" stays a string
            text = fill(value) if isinstance(value, str) else json.dumps(value)
            params[key] = node_param(entry["module"], key).convert(text)
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
