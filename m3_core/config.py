"""The one place that reads YAML into configuration dataclasses.

Each module owns its frozen config dataclass (fields with defaults and a docstring each);
`from_dict` builds one from a (nested) mapping, rejecting unknown keys with the valid ones listed,
and `load_yaml` reads a file (optionally one top-level section of it).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; nested dataclass fields take nested mappings."""
    data = dict(data or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or cls.__name__}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints.get(name, Any), value, f"{where or cls.__name__}.{name}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value, where)
        return value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        return tuple(value)
    if hint is np.ndarray:
        return np.asarray(value, dtype=np.float64)
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML/JSON-friendly data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def load_yaml(cls: type[T], path: Path | str, section: str | None = None) -> T:
    """Read `path` (or its top-level `section`) into dataclass `cls`."""
    data = read_yaml(path)
    if section is not None:
        if section not in data:
            raise ValueError(f"{path} has no section {section!r}; sections: {sorted(data)}")
        data = data[section]
    return from_dict(cls, data, where=f"{path}{':' + section if section else ''}")


def config_dir() -> Path:
    """The package's config/ folder: $M3_CONFIG_DIR, else the source tree's config/ (pip -e, a
    checkout), else share/m3_grasp/config of a colcon install found on $AMENT_PREFIX_PATH (read as a
    plain path list: m3_core imports nothing from ROS)."""

    env = os.environ.get("M3_CONFIG_DIR")
    if env:
        return Path(env)
    source = Path(__file__).resolve().parents[1] / "config"
    if source.is_dir():
        return source
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        installed = Path(prefix) / "share" / "m3_grasp" / "config"
        if installed.is_dir():
            return installed
    raise FileNotFoundError(
        "cannot find m3-grasp's config/ folder: set M3_CONFIG_DIR, or source the colcon install"
    )
