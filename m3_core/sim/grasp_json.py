"""Grasps as JSON, for `m3 sim grasp`: what `m3 query --json` prints, or a grasp written by hand.

Accepted forms (positions in metres in the scene's world frame, quaternions x y z w):
    {"pose": {"position": [x, y, z], "quat_xyzw": [x, y, z, w]}, "width_m": w,
     "pregrasp": {"position": [...], "quat_xyzw": [...]}, "quality": q}   (what the query engine
     prints for each grasp; pregrasp optional)
    {"position": [...], "quat_xyzw": [...], "width_m": w, "pregrasp_position": [...],
     "pregrasp_quat_xyzw": [...]}                                            (pregrasp optional)
    {"world_from_grasp": [[4x4]], "width_m": w, "world_from_pregrasp": [[4x4]]}  (pregrasp optional)
    a query answer {"found": true, "grasps": [<one of the above>, ...]}: grasps[index]
    an older query answer {"found": true, "grasp_position", "grasp_quat_xyzw", "extent"}: the width
    is the object's extent along the closing axis (+x) plus a margin.
Without a pre-grasp, it is the grasp moved back along its approach (-z) by the approach distance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from m3_core.geometry.se3 import matrix_from_pose, pose_from_matrix
from m3_core.grasp.types import Grasp

WIDTH_MARGIN_M = 0.015
"""Opening beyond an object's extent when a grasp gives only the extent (older query answers)."""


def grasp_to_json(grasp: Grasp) -> dict:
    """The nested pose form above (what the query engine prints for each grasp)."""

    def pose(matrix: np.ndarray) -> dict:
        pos, quat = pose_from_matrix(matrix)
        return {"position": [float(v) for v in pos], "quat_xyzw": [float(v) for v in quat]}

    return {
        "pose": pose(grasp.world_from_grasp),
        "pregrasp": pose(grasp.world_from_pregrasp),
        "width_m": float(grasp.width_m),
        "quality": float(grasp.quality),
    }


def width_from_extent(
    world_from_grasp: np.ndarray, extent: np.ndarray, margin_m: float = WIDTH_MARGIN_M
) -> float:
    """Opening for an axis-aligned object extent [3] (world) measured along the closing axis +x."""
    closing = np.asarray(world_from_grasp, np.float64)[:3, 0]
    return float(np.abs(closing) @ np.asarray(extent, np.float64) + margin_m)


def _vector(data: dict, key: str, n: int) -> np.ndarray:
    value = np.asarray(data.get(key), dtype=np.float64)
    if value.shape != (n,) or not np.all(np.isfinite(value)):
        raise ValueError(f"grasp JSON: {key!r} must be {n} finite numbers, got {data.get(key)!r}")
    return value


def _matrix(data: dict, key: str) -> np.ndarray:
    value = np.asarray(data.get(key), dtype=np.float64)
    if value.shape != (4, 4) or not np.all(np.isfinite(value)):
        raise ValueError(f"grasp JSON: {key!r} must be a 4x4 matrix, got {data.get(key)!r}")
    if not np.allclose(value[:3, :3] @ value[:3, :3].T, np.eye(3), atol=1e-4):
        raise ValueError(f"grasp JSON: {key!r} is not a rigid transform (its rotation is not orthonormal)")
    return value


def _pose(data: dict, prefix: str) -> np.ndarray | None:
    """The pose under `<prefix>position`/`<prefix>quat_xyzw` or `world_from_<name>`, or None."""
    matrix_key = "world_from_pregrasp" if prefix == "pregrasp_" else "world_from_grasp"
    if matrix_key in data:
        return _matrix(data, matrix_key)
    nested_key = "pregrasp" if prefix == "pregrasp_" else "pose"
    if nested_key in data:
        if not isinstance(data[nested_key], dict):
            raise ValueError(f"grasp JSON: {nested_key!r} must hold 'position' and 'quat_xyzw'")
        return _pose({f"{prefix}{k}": v for k, v in data[nested_key].items()}, prefix)
    if f"{prefix}position" not in data:
        return None
    quat = _vector(data, f"{prefix}quat_xyzw", 4)
    if np.linalg.norm(quat) < 1e-6:
        raise ValueError(f"grasp JSON: {prefix}quat_xyzw is zero")
    return matrix_from_pose(_vector(data, f"{prefix}position", 3), quat / np.linalg.norm(quat))


def _one_grasp(data: dict, approach_distance_m: float) -> Grasp:
    world_from_grasp = _pose(data, "")
    if world_from_grasp is None:
        raise ValueError(
            "grasp JSON: no pose; give 'pose' {position, quat_xyzw}, 'position' + 'quat_xyzw' or "
            "'world_from_grasp' (or a query answer with 'grasps')"
        )
    width = data.get("width_m")
    if not isinstance(width, (int, float)) or not np.isfinite(width) or width <= 0:
        raise ValueError(f"grasp JSON: 'width_m' must be a positive number of metres, got {width!r}")
    pre = _pose(data, "pregrasp_")
    if pre is None:
        pre = world_from_grasp.copy()
        pre[:3, 3] -= approach_distance_m * world_from_grasp[:3, 2]
    return Grasp(world_from_grasp, float(width), pre, float(data.get("quality", 0.0)))


def grasp_from_json(data: Any, approach_distance_m: float, index: int = 0) -> Grasp:
    """A Grasp from any accepted form (module docstring). Raises ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"grasp JSON must be an object, got {type(data).__name__}")
    if data.get("found") is False:
        raise ValueError(f"the query found nothing: {data.get('message', 'no target')}")
    if "grasps" in data:
        grasps = data["grasps"]
        if not isinstance(grasps, list) or not grasps:
            raise ValueError("grasp JSON: 'grasps' is empty: the query has no feasible grasp")
        if not -len(grasps) <= index < len(grasps):
            raise ValueError(f"grasp index {index} is out of range: the answer has {len(grasps)} grasps")
        return grasp_from_json(grasps[index], approach_distance_m)
    if "grasp_position" in data:  # older query answer: pose + the object's extent
        pose = matrix_from_pose(_vector(data, "grasp_position", 3), _vector(data, "grasp_quat_xyzw", 4))
        width = width_from_extent(pose, _vector(data, "extent", 3))
        return _one_grasp({"world_from_grasp": pose.tolist(), "width_m": width}, approach_distance_m)
    return _one_grasp(data, approach_distance_m)
