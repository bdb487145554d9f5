"""Grasp pose of a located object, in the gripper-frame convention of msg/GraspTarget.msg.

Gripper frame: +z is the approach direction (the gripper moves along +z to reach the object),
+x the fingers' closing direction (across the object's narrow side), +y = z x x (right-handed).
Modes:
  "top_down"  approach straight down: +z = -world_up.
  "view_ray"  approach along the camera's viewing ray to the target (camera -> object).
The closing direction is the object's narrowest principal direction perpendicular to +z, from its
points; with too few points (or a round object) it falls back to a fixed, deterministic axis.
`fallback_grasps` turns that pose into a Grasp while the 6-DoF planner is not installed.
"""

from __future__ import annotations

import logging

import numpy as np

from m3_core.geometry.se3 import transform_from_rt
from m3_core.grasp.types import Grasp
from m3_core.robot import GripperConfig

log = logging.getLogger(__name__)


def _unit(v: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    if v.shape != (3,) or not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"{name} must be a finite non-zero 3-vector, got {v}")
    return v / n


def approach_direction(
    mode: str, position: np.ndarray, *, world_up=(0.0, 0.0, 1.0), camera_position: np.ndarray | None = None
) -> np.ndarray:
    """Unit +z of the gripper in the world for `mode` ("top_down" or "view_ray")."""
    if mode == "top_down":
        return -_unit(world_up, "world_up")
    if mode == "view_ray":
        if camera_position is None:
            raise ValueError("grasp mode 'view_ray' needs the camera position; use 'top_down' for 3D queries")
        return _unit(np.asarray(position, float) - np.asarray(camera_position, float), "viewing ray")
    raise ValueError(f"grasp mode must be 'top_down' or 'view_ray', got {mode!r}")


def closing_direction(
    approach: np.ndarray, points: np.ndarray | None = None, min_points: int = 10
) -> np.ndarray:
    """Unit +x perpendicular to `approach`: the points' narrowest spread across the approach.

    Fallback (few points, or no clear narrow side): the world axis least aligned with the approach,
    made perpendicular - deterministic, so a repeated query gives the same pose.
    """
    z = _unit(approach, "approach")
    fallback_axis = np.eye(3)[int(np.argmin(np.abs(z)))]
    x = fallback_axis - (fallback_axis @ z) * z
    x /= np.linalg.norm(x)
    if points is not None and len(points) >= min_points:
        offsets = np.asarray(points, float) - np.median(points, axis=0)
        lateral = offsets - np.outer(offsets @ z, z)
        vals, vecs = np.linalg.eigh(lateral.T @ lateral / len(lateral))
        # eigh sorts ascending; vals[0] ~ 0 belongs to z. Use the smaller in-plane axis when the two
        # in-plane spreads differ clearly (10 %), else the object is round: keep the fallback.
        if vals[2] > 1e-12 and vals[1] < 0.9 * vals[2]:
            cand = vecs[:, 1] - (vecs[:, 1] @ z) * z
            if np.linalg.norm(cand) > 1e-6:
                x = cand / np.linalg.norm(cand)
    # Sign convention: +x points to the side of the fallback axis, so the pose is stable under
    # eigenvector sign flips.
    if x @ fallback_axis < 0 or (abs(x @ fallback_axis) < 1e-9 and x[np.argmax(np.abs(x))] < 0):
        x = -x
    return x


def grasp_pose(
    position: np.ndarray,
    *,
    mode: str = "top_down",
    world_up=(0.0, 0.0, 1.0),
    camera_position: np.ndarray | None = None,
    points: np.ndarray | None = None,
) -> np.ndarray:
    """world_from_grasp [4,4]: origin at `position` (world, metres), axes per the convention above."""
    position = np.asarray(position, dtype=np.float64)
    if position.shape != (3,) or not np.all(np.isfinite(position)):
        raise ValueError(f"position must be 3 finite numbers, got {position}")
    z = approach_direction(mode, position, world_up=world_up, camera_position=camera_position)
    x = closing_direction(z, points)
    y = np.cross(z, x)
    return transform_from_rt(np.stack([x, y, z], axis=1), position)


def fallback_grasps(
    object_points: np.ndarray,  # [N, 3] world
    gripper: GripperConfig,
    world_up=(0.0, 0.0, 1.0),
) -> list[Grasp]:
    """FALLBACK, used only while m3_core.grasp.planner (the 6-DoF planner) is not installed.

    One top-down grasp at the points' box centre, closing across their narrow side; its width is
    the points' (2, 98) percentile size along the closing direction. No collision or reach check.
    [] when that width exceeds the gripper's opening. Quality is a flat 0.5: nothing was scored.
    """
    points = np.asarray(object_points, dtype=np.float64)
    if len(points) == 0:
        return []
    lo, hi = np.percentile(points, [2.0, 98.0], axis=0)
    centre = 0.5 * (lo + hi)
    world_from_grasp = grasp_pose(centre, mode="top_down", world_up=world_up, points=points)
    across = (points - centre) @ world_from_grasp[:3, 0]
    width = float(np.subtract(*np.percentile(across, [98.0, 2.0])))
    if width > gripper.max_opening_m:
        return []
    world_from_pregrasp = world_from_grasp.copy()
    world_from_pregrasp[:3, 3] -= gripper.approach_distance_m * world_from_grasp[:3, 2]
    return [Grasp(world_from_grasp, max(width, gripper.min_opening_m), world_from_pregrasp, 0.5)]
