"""Every node's ROS parameters, declared one way: name, default, description, type, read_only.

The tables below are what `ros2 param describe` shows and what the launch files and `m3 ros-demo`
type their values by. Parameters that mirror an m3_core config dataclass are built from its fields
(`params_from_dataclass`): the field's type hint gives the ROS type and its docstring the
description, so the node, the CLI and YAML cannot drift apart.

Types are explicit (`ParamType`), never inferred from a value: ROS reads `-p output_dir:=20250101`
as an integer, and an empty list as a byte array. A value of the wrong type is refused at start-up
with one line saying how to write it (`declare_parameters`); the one leniency is that a DOUBLE
takes an integer (`-p rate:=2`). Path parameters have `~` expanded.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import math
import os
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from m3_core.capture.keyframes import KeyframeConfig
from m3_core.capture.session import CaptureConfig
from m3_core.query.config import QueryConfig


class ParamType(enum.Enum):
    """ROS parameter types used by the nodes (value: the rcl_interfaces ParameterType number)."""

    BOOL = ParameterType.PARAMETER_BOOL
    INTEGER = ParameterType.PARAMETER_INTEGER
    DOUBLE = ParameterType.PARAMETER_DOUBLE
    STRING = ParameterType.PARAMETER_STRING
    DOUBLE_ARRAY = ParameterType.PARAMETER_DOUBLE_ARRAY
    STRING_ARRAY = ParameterType.PARAMETER_STRING_ARRAY

    @property
    def python_type(self) -> type:
        """What launch_ros' ParameterValue(value_type=...) takes for this type."""
        # typing.List: launch compares against typing.List[str], which list[str] does not equal
        return {
            ParamType.BOOL: bool, ParamType.INTEGER: int, ParamType.DOUBLE: float, ParamType.STRING: str,
            ParamType.DOUBLE_ARRAY: typing.List[float], ParamType.STRING_ARRAY: typing.List[str],  # noqa: UP006
        }[self]  # fmt: skip

    @property
    def rclpy_type(self) -> Parameter.Type:
        return Parameter.Type(self.value)


@dataclass(frozen=True)
class Param:
    """One ROS parameter of a node."""

    name: str
    """Parameter name."""
    default: Any
    """Value when none is given (of `type`; a list for array types)."""
    description: str
    """One line for `ros2 param describe` (and the launch argument that feeds it)."""
    type: ParamType
    """Declared ROS type; values of another type are refused with a clear message."""
    read_only: bool = True
    """True when a change needs a restart (topics, frames, files); False when the node reads it live."""
    path: bool = False
    """A file or folder: `~` is expanded."""
    none_below: float | None = None
    """For a config field that may be None (ROS has no None): values below this mean None."""

    def __post_init__(self) -> None:
        if _type_of(self.default) not in (self.type, None):
            raise TypeError(f"parameter {self.name}: default {self.default!r} is not a {self.type.name}")

    def convert(self, text: str) -> Any:
        """This parameter's value from a launch argument's text ('true', '1.5', 'a,b' or '[a, b]')."""
        try:
            return _from_text(self.type, text)
        except ValueError:
            raise ValueError(
                f"parameter {self.name} takes a {self.type.name.lower()}, got {text!r}"
            ) from None


def _type_of(value: Any) -> ParamType | None:
    """The ParamType of a Python value (None for an empty list: any array type)."""
    if isinstance(value, bool):
        return ParamType.BOOL
    if isinstance(value, int):
        return ParamType.INTEGER
    if isinstance(value, float):
        return ParamType.DOUBLE
    if isinstance(value, str):
        return ParamType.STRING
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        if all(isinstance(v, str) for v in value):
            return ParamType.STRING_ARRAY
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return ParamType.DOUBLE_ARRAY
    raise TypeError(f"no ROS parameter type for {value!r}")


def _from_text(kind: ParamType, text: str) -> Any:
    if kind is ParamType.STRING:
        return text
    text = text.strip()
    if kind is ParamType.BOOL:
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"
    if kind is ParamType.INTEGER:
        return int(text)
    if kind is ParamType.DOUBLE:
        return float(text)
    items = [t.strip().strip("'\"") for t in text.strip("[]").split(",") if t.strip()]
    return [float(t) for t in items] if kind is ParamType.DOUBLE_ARRAY else items


# -- built from config dataclasses ----------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, on one line (what the code documents)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _param_type(hint: Any) -> tuple[ParamType, bool]:
    """(ROS type, may be None) of a dataclass field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, type(int | None)) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _param_type(inner[0])[0], True
    if typing.get_origin(hint) is tuple:
        return (ParamType.STRING_ARRAY if str in args else ParamType.DOUBLE_ARRAY), False
    simple = {bool: ParamType.BOOL, int: ParamType.INTEGER, float: ParamType.DOUBLE, str: ParamType.STRING}
    if hint in simple:
        return simple[hint], False
    raise TypeError(f"no ROS parameter type for a field of type {hint}")


def params_from_dataclass(
    cls: type,
    *,
    read_only: bool,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    none_below: dict[str, float] | None = None,
) -> list[Param]:
    """One Param per field of config dataclass `cls` (nested dataclass fields are left out).

    defaults: node defaults that differ from the dataclass's. none_below: for fields that may be
    None, the threshold under which a ROS value means None (the default is then one below it).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults, none_below = defaults or {}, none_below or {}
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        kind, optional = _param_type(hints[f.name])
        value = defaults.get(f.name, f.default)
        description = docs.get(f.name, "")
        below = None
        if optional:
            if f.name not in none_below:
                raise TypeError(f"{cls.__name__}.{f.name} may be None: give its none_below threshold")
            below = none_below[f.name]
            value = below - 1.0 if value is None else value
            description += f" (ROS: a value below {below:g} means None)"
        if kind is ParamType.DOUBLE:
            value = float(value)
        elif kind in (ParamType.DOUBLE_ARRAY, ParamType.STRING_ARRAY):
            value = list(value)
        out.append(Param(f.name, value, description, kind, read_only=read_only, none_below=below))
    return out


def dataclass_kwargs(values: dict[str, Any], params: list[Param], cls: type) -> dict[str, Any]:
    """Keyword arguments for `cls` from declared values: sentinels back to None, lists to tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for p in params:
        if p.name not in names:
            continue
        value = values[p.name]
        if p.none_below is not None and value < p.none_below:
            value = None
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[p.name] = value
    return kwargs


# -- declaring --------------------------------------------------------------------------------------


def declare_parameters(
    node: Node, params: list[Param], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Declare `params` on `node` with explicit types; returns {name: value} (paths `~`-expanded).

    defaults: this node's own defaults over the table's (e.g. a command line's options).

    A value of the wrong type raises ValueError with one line saying how to write it (the node's
    main turns that into exit code 2), instead of rclpy's InvalidParameterTypeException traceback.
    DOUBLE parameters also take integers (`-p rate:=2`), now and on later `ros2 param set`.
    """
    doubles = {p.name for p in params if p.type is ParamType.DOUBLE}
    node.add_on_set_parameters_callback(lambda changed: _check_doubles(changed, doubles))
    values = {}
    for p in params:
        if defaults and p.name in defaults:
            p = dataclasses.replace(p, default=defaults[p.name])
        # An empty list cannot carry its type (rclpy would infer a byte array): declare the type
        # alone, then set the empty default (so such a parameter cannot be read-only).
        empty_list = p.default == []
        descriptor = ParameterDescriptor(
            name=p.name,
            type=p.type.value,
            description=p.description,
            read_only=p.read_only and not empty_list,
            dynamic_typing=p.name in doubles,  # checked by _check_doubles instead
        )
        try:
            value = node.declare_parameter(
                p.name, p.type.rclpy_type if empty_list else p.default, descriptor
            ).value
            if value is None:
                node.set_parameters([Parameter(p.name, p.type.rclpy_type, [])])
                value = []
        except InvalidParameterTypeException as err:
            raise ValueError(_wrong_type_message(p, err)) from None
        except InvalidParameterValueException as err:
            raise ValueError(f"parameter {p.name}: {err}") from None
        if p.name in doubles:
            value = float(value)
        values[p.name] = os.path.expanduser(value) if p.path and value else value
    return values


def _check_doubles(changed: list[Parameter], doubles: set[str]) -> SetParametersResult:
    for param in changed:
        value = param.value
        if param.name not in doubles:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return SetParametersResult(
                successful=False, reason=f"parameter {param.name} takes a number, got {value!r}"
            )
    return SetParametersResult(successful=True)


def _wrong_type_message(p: Param, err: Exception) -> str:
    hint = ""
    if p.type is ParamType.STRING:
        # ROS reads -p values as YAML: 20250101 is a number, true a bool; quotes keep a string
        hint = f"; quote it to keep a string: -p \"{p.name}:='VALUE'\""
    return f"parameter {p.name} must be a {p.type.name.lower()} ({p.description}){hint}; ROS said: {err}"


# -- the nodes' tables ------------------------------------------------------------------------------

ROBOT_CONFIG = Param(
    "robot_config", "",
    "robot YAML (topics, frames, extrinsics, gripper); empty: the package's config/robot_b1z1.yaml",
    ParamType.STRING, path=True,
)  # fmt: skip


def _robot_override(name: str, what: str, section: str) -> Param:
    return Param(name, "", f"{what} (empty: {section} of robot_config)", ParamType.STRING)


CAPTURE_PARAMS: list[Param] = [
    ROBOT_CONFIG,
    Param(
        "output_dir",
        "",
        "scene directory to write (empty: ./m3_scene_<date>_<time>)",
        ParamType.STRING,
        path=True,
    ),
    Param("overwrite", False, "replace an existing scene in output_dir", ParamType.BOOL),
    _robot_override("color_topic", "sensor_msgs/Image rgb8", "topics.color"),
    _robot_override("depth_topic", "aligned depth 16UC1 mm or 32FC1 m", "topics.depth"),
    _robot_override("camera_info_topic", "sensor_msgs/CameraInfo of the color camera", "topics.camera_info"),
    _robot_override("world_frame", "fixed frame of the poses", "frames.world"),
    _robot_override("camera_frame", "color optical frame", "frames.camera"),
    # keyframe gates can be tuned while capturing (ros2 param set)
    *params_from_dataclass(KeyframeConfig, read_only=False),
    *params_from_dataclass(CaptureConfig, read_only=True),
    Param(
        "qos_depth",
        10,
        "history depth of the best-effort camera subscriptions (reliable ones keep every frame)",
        ParamType.INTEGER,
    ),
    Param(
        "camera_reliable",
        False,
        "subscribe the camera RELIABLE and keep every frame (a bag replay; default: sensor-data best effort)",
        ParamType.BOOL,
    ),
    Param("diagnostics_period_s", 5.0, "period of the diagnostics log line, s (0: off)", ParamType.DOUBLE),
    Param("poll_period_s", 0.02, "how often pending frames are checked, s", ParamType.DOUBLE),
]

POSE_CHAIN_PARAMS: list[Param] = [
    ROBOT_CONFIG,
    Param(
        "publish_static",
        False,
        "publish the robot YAML's extrinsics on /tf_static (off if the robot or the bag has them)",
        ParamType.BOOL,
    ),
    _robot_override("odometry_topic", "nav_msgs/Odometry world->lidar", "topics.odometry"),
    _robot_override("ee_pose_topic", "geometry_msgs/PoseStamped ee in arm base", "topics.ee_pose"),
    _robot_override("camera_pose_topic", "output PoseStamped camera in world", "topics.camera_pose"),
    Param(
        "reliable_inputs",
        True,
        "subscribe odometry/ee pose as RELIABLE (false: best effort, matches any)",
        ParamType.BOOL,
    ),
]

QUERY_PARAMS: list[Param] = [
    ROBOT_CONFIG,
    Param(
        "memory_path",
        "",
        "M3 memory directory (manifest.json + memory.safetensors)",
        ParamType.STRING,
        path=True,
    ),
    Param(
        "text_embeddings",
        "",
        "precomputed text embeddings (`m3 text-embeddings`): texts in it need no text encoder at start "
        "or query time; others are encoded as usual (empty: encode every text)",
        ParamType.STRING,
        path=True,
    ),
    Param(
        "device", "cpu", "torch device for rendering and text encoding: cpu, cuda, cuda:1", ParamType.STRING
    ),
    Param(
        "model",
        "",
        'default feature model; empty: "language" if the memory holds it, else the first',
        ParamType.STRING,
        read_only=False,
    ),
    _robot_override("world_frame", "frame of the memory (its world)", "frames.world"),
    Param(
        "target_frame",
        "",
        "frame of the answer when the request has none (empty: frames.arm_base of robot_config)",
        ParamType.STRING,
        read_only=False,
    ),
    _robot_override("camera_frame", "camera optical frame for live poses", "frames.camera"),
    Param("service_name", "/m3/query", "name of the Query service", ParamType.STRING),
    _robot_override("camera_info_topic", "CameraInfo of the color camera", "topics.camera_info"),
    _robot_override("depth_topic", "aligned depth (16UC1 mm or 32FC1 m)", "topics.depth"),
    Param(
        "use_live_depth",
        True,
        "subscribe the depth camera and use it (false: the memory's rendered depth)",
        ParamType.BOOL,
    ),
    Param(
        "camera_intrinsics",
        [],
        "fx fy cx cy width height used until CameraInfo arrives (empty: wait for it)",
        ParamType.DOUBLE_ARRAY,
        read_only=False,
    ),
    Param(
        "depth_max_age_s",
        0.1,
        "live depth is used when this close in time to the pose, s",
        ParamType.DOUBLE,
        read_only=False,
    ),
    Param(
        "search_3d",
        "fallback",
        "3D query among Gaussians: never, fallback (not in view), always",
        ParamType.STRING,
        read_only=False,
    ),
    Param("publish_overlay", True, "publish the relevance heatmap image", ParamType.BOOL, read_only=False),
    Param(
        "publish_clouds",
        True,
        "publish the memory (latched) and each answer's relevance as PointCloud2",
        ParamType.BOOL,
    ),
    *params_from_dataclass(
        QueryConfig,
        read_only=False,
        defaults={"render_width": 320},  # a robot answers fast at 320 px; the offline CLI renders full size
        none_below={"relevance_threshold": 0.0, "min_similarity": -1.0},
    ),
]

REPLAY_PARAMS: list[Param] = [
    ROBOT_CONFIG,
    Param("bag", "", "ROS 2 bag folder to play (required)", ParamType.STRING, path=True),
    Param("rate", 1.0, "playback speed factor", ParamType.DOUBLE),
    Param("loop", False, "play the bag again and again", ParamType.BOOL),
    Param("start_offset_s", 0.0, "skip the bag's first seconds", ParamType.DOUBLE),
    Param("topics", [], "only these topics (empty: all)", ParamType.STRING_ARRAY),
    Param(
        "wait_for_subscribers",
        True,
        "wait for subscribers on the wait_for topics before playing",
        ParamType.BOOL,
    ),
    Param(
        "wait_for",
        [],
        "topics that need a subscriber first (empty: the camera, odometry and ee pose "
        "topics of robot_config)",
        ParamType.STRING_ARRAY,
    ),
    Param(
        "wait_ready",
        [],
        "nodes (e.g. m3_capture, m3_pose_chain) that must report on /m3/node_status that they matched "
        "their inputs before playing (empty: do not wait for any)",
        ParamType.STRING_ARRAY,
    ),
    Param("wait_timeout_s", 10.0, "seconds to wait for subscribers / ready nodes", ParamType.DOUBLE),
    Param("clock_hz", 0.0, "publish /clock with the bag's time at this rate (0: off)", ParamType.DOUBLE),
]

# module -> its node's parameters (the node graph types launch arguments by these)
NODE_PARAMS: dict[str, list[Param]] = {
    "m3_ros.capture_node": CAPTURE_PARAMS,
    "m3_ros.pose_chain_node": POSE_CHAIN_PARAMS,
    "m3_ros.query_node": QUERY_PARAMS,
    "m3_ros.replay_cli": REPLAY_PARAMS,
}


def node_param(module: str, name: str) -> Param:
    """The declared parameter `name` of the node in `module` (ValueError when there is none)."""
    table = {p.name: p for p in NODE_PARAMS.get(module, [])}
    if name not in table:
        raise ValueError(f"{module} declares no parameter {name!r}; it has {sorted(table)}")
    return table[name]
