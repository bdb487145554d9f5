"""Ground-truth grasps from the simulator's meshes: a reference the physics check must accept.

Used to validate the gripper model (a failure with these is the model's, not a planner's) and by
tests. `top_down_grasp` takes the whole object across its narrow horizontal side; `search_top_down`
also tries parts of it (a handle, a rim, a teddy's arm) when the whole is wider than the opening.
"""

from __future__ import annotations

import numpy as np

from m3_core.geometry.se3 import transform_from_rt
from m3_core.grasp.types import Grasp
from m3_core.robot import GripperConfig


def grasp_from_pose(world_from_grasp: np.ndarray, width_m: float, approach_distance_m: float) -> Grasp:
    """A Grasp with its pre-grasp `approach_distance_m` back along the approach (-z)."""
    pre = world_from_grasp.copy()
    pre[:3, 3] -= approach_distance_m * world_from_grasp[:3, 2]
    return Grasp(
        world_from_grasp=world_from_grasp, width_m=float(width_m), world_from_pregrasp=pre, quality=1.0
    )


def top_down_pose(centre: np.ndarray, closing_xy: np.ndarray) -> np.ndarray:
    """world_from_grasp [4,4]: +z straight down, +x along the horizontal `closing_xy`."""
    x = np.array([closing_xy[0], closing_xy[1], 0.0])
    x /= np.linalg.norm(x)
    z = np.array([0.0, 0.0, -1.0])
    return transform_from_rt(np.stack([x, np.cross(z, x), z], axis=1), np.asarray(centre, np.float64))


def grasp_height(
    vertices: np.ndarray, table_z: float, gripper: GripperConfig, clearance_m: float = 0.008
) -> float:
    """Grasp origin height: the object's mid-height, raised so the fingertips clear the table."""
    tips_below_origin = gripper.finger_length_m - gripper.tcp_depth_m
    mid = (vertices[:, 2].min() + vertices[:, 2].max()) / 2
    return float(max(mid, table_z + tips_below_origin + clearance_m))


def top_down_grasp(
    vertices: np.ndarray, table_z: float, gripper: GripperConfig, margin_m: float = 0.015
) -> Grasp:
    """Top-down grasp at the centre of the object's footprint, closing across its narrow side.

    vertices: [V,3] the object's mesh in world (metres). The width is the footprint's extent along
    the closing direction plus `margin_m` (it can exceed the gripper's opening: the check refuses it).
    """
    xy = vertices[:, :2]
    # the narrowest direction by a 1-degree scan (PCA picks an arbitrary axis on square footprints)
    yaws = np.radians(np.arange(180.0))
    dirs = np.stack([np.cos(yaws), np.sin(yaws)], axis=1)
    spans = np.ptp(xy @ dirs.T, axis=0)
    axis = dirs[int(np.argmin(spans))]
    side = np.array([-axis[1], axis[0]])
    proj_a, proj_s = xy @ axis, xy @ side
    centre_xy = axis * (proj_a.min() + proj_a.max()) / 2 + side * (proj_s.min() + proj_s.max()) / 2
    z = grasp_height(vertices, table_z, gripper)
    pose = top_down_pose(np.array([centre_xy[0], centre_xy[1], z]), axis)
    return grasp_from_pose(pose, float(spans.min()) + margin_m, gripper.approach_distance_m)


def _slab_fit(local: np.ndarray, gripper: GripperConfig, margin_m: float) -> float | None:
    """Width needed for points in the grasp frame [V,3] between the fingers, or None if a finger
    would land on the object (points inside a finger's volume) or nothing is between them."""
    half_w = gripper.finger_width_m / 2
    z_lo, z_hi = -gripper.tcp_depth_m, gripper.finger_length_m - gripper.tcp_depth_m
    in_band = (np.abs(local[:, 1]) <= half_w) & (local[:, 2] >= z_lo) & (local[:, 2] <= z_hi)
    if not in_band.any():
        return None
    x = local[in_band, 0]
    width = 2 * float(np.abs(x).max()) + margin_m
    if width > gripper.max_opening_m:
        return None
    # the fingers (opened to width) must not sweep through the object on their way down
    above = (np.abs(local[:, 1]) <= half_w) & (local[:, 2] < z_hi)
    finger_x = (np.abs(local[:, 0]) >= width / 2) & (
        np.abs(local[:, 0]) <= width / 2 + gripper.finger_thickness_m
    )
    if (above & finger_x).any():
        return None
    return width


def search_top_down(
    vertices: np.ndarray,
    table_z: float,
    gripper: GripperConfig,
    *,
    margin_m: float = 0.012,
    step_m: float = 0.01,
    yaw_steps: int = 12,
) -> list[Grasp]:
    """Top-down grasps over a grid of positions and yaws whose slab of the mesh fits the opening,
    nearest the object's centre first (a grasp near the centre of mass tilts the object least)."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre = (lo + hi) / 2
    z_levels = sorted({grasp_height(vertices, table_z, gripper), float(max(hi[2] - 0.02, lo[2]))})
    found: list[tuple[float, Grasp]] = []
    for gx in np.arange(lo[0], hi[0] + 1e-9, step_m):
        for gy in np.arange(lo[1], hi[1] + 1e-9, step_m):
            for z in z_levels:
                for yaw in np.arange(yaw_steps) * np.pi / yaw_steps:
                    pose = top_down_pose(np.array([gx, gy, z]), np.array([np.cos(yaw), np.sin(yaw)]))
                    local = (vertices - pose[:3, 3]) @ pose[:3, :3]
                    width = _slab_fit(local, gripper, margin_m)
                    if width is not None:
                        cost = float(np.hypot(gx - centre[0], gy - centre[1]))
                        found.append((cost, grasp_from_pose(pose, width, gripper.approach_distance_m)))
    found.sort(key=lambda item: item[0])
    return [g for _, g in found]
