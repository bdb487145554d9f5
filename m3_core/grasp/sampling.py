"""Grasp candidates on an object's surface: antipodal pairs with approaches about their closing axis,
plus top-down grasps across the object's horizontal principal axes."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from m3_core.grasp.config import GraspPlannerConfig
from m3_core.grasp.gripper import grasp_matrix
from m3_core.robot import GripperConfig


def antipodal_pairs(
    points: np.ndarray,          # [N,3] object surface, world
    normals: np.ndarray,         # [N,3] outward unit normals
    tree: cKDTree,
    rng: np.random.Generator,
    max_width_m: float,
    min_width_m: float,
    config: GraspPlannerConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contact pairs whose normals lie in the friction cone of the line joining them.

    From each seed point a ray runs along its normal both ways (normals oriented by the centroid are
    wrong on concave parts) up to `max_width_m`; the object points it passes within one voxel of
    are partner candidates, and the partner whose two contacts best face each other is kept. Returns midpoints [P,3], closing axes [P,3] (seed -> partner) and an
    antipodal score [P] in [0,1] (1: both normals exactly along the closing axis).
    """
    n_seeds = min(config.num_seeds, len(points))
    seeds = np.sort(rng.choice(len(points), size=n_seeds, replace=False))
    step = config.object_voxel_m
    dists = np.arange(max(min_width_m, step), max_width_m + 1e-9, step)
    dists = np.concatenate([dists, -dists])                                   # [S] both ways
    if len(dists) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
    ray = points[seeds, None, :] - normals[seeds, None, :] * dists[None, :, None]  # [n,S,3]
    # a few nearest points per ray sample: near the seed the nearest are its own surface's neighbours,
    # and the other side of a thin wall (a few mm away) would be missed with one
    hit_d, hit = tree.query(ray.reshape(-1, 3), k=config.ray_neighbours, distance_upper_bound=1.5 * step)
    hit = hit.reshape(n_seeds, -1)
    found = np.isfinite(hit_d.reshape(n_seeds, -1))
    hit = np.where(found, hit, 0)
    p, q = points[seeds, None, :], points[hit]
    span = q - p
    length = np.linalg.norm(span, axis=-1)
    axis = span / np.maximum(length, 1e-12)[..., None]
    cos_min = np.minimum(np.abs(np.sum(normals[seeds, None, :] * axis, axis=-1)),
                         np.abs(np.sum(normals[hit] * axis, axis=-1)))
    ok = found & (length >= min_width_m) & (length <= max_width_m)
    cos_min = np.where(ok, cos_min, -np.inf)
    best = np.argmax(cos_min, axis=1)
    rows = np.arange(n_seeds)
    cos_cone = np.cos(np.radians(config.friction_cone_deg))
    keep = cos_min[rows, best] >= cos_cone
    rows, best = rows[keep], best[keep]
    mid = 0.5 * (p[rows, 0] + q[rows, best])
    score = (cos_min[rows, best] - cos_cone) / (1.0 - cos_cone)
    return mid, axis[rows, best], np.clip(score, 0.0, 1.0)


def poses_about_axis(
    origins: np.ndarray, closing: np.ndarray, up: np.ndarray, config: GraspPlannerConfig
) -> tuple[np.ndarray, np.ndarray]:
    """For each (origin, closing axis), grasp poses for `num_approaches` approach directions about the
    axis (starting from the most top-down one) and each depth offset.

    Returns world_from_grasp [P*A*D,4,4] and the index [P*A*D] of the pair each pose came from.
    """
    down = -up
    u0 = down - np.sum(down * closing, axis=1, keepdims=True) * closing
    vertical = np.linalg.norm(u0, axis=1) < 1e-3
    if vertical.any():     # closing axis vertical: any horizontal approach will do as the start
        side = np.cross(closing[vertical], np.array([1.0, 0.0, 0.0]))
        side[np.linalg.norm(side, axis=1) < 1e-3] = np.array([0.0, 1.0, 0.0])
        u0[vertical] = side
    u0 /= np.linalg.norm(u0, axis=1, keepdims=True)
    v0 = np.cross(closing, u0)
    phi = 2.0 * np.pi * np.arange(config.num_approaches) / config.num_approaches
    approach = np.cos(phi)[None, :, None] * u0[:, None] + np.sin(phi)[None, :, None] * v0[:, None]
    offsets = np.asarray(config.depth_offsets_m, dtype=np.float64)
    origin = origins[:, None, None, :] - approach[:, :, None, :] * offsets[None, None, :, None]
    shape = origin.shape[:-1]                                              # [P,A,D]
    poses = grasp_matrix(
        origin.reshape(-1, 3),
        np.broadcast_to(closing[:, None, None, :], shape + (3,)).reshape(-1, 3),
        np.broadcast_to(approach[:, :, None, :], shape + (3,)).reshape(-1, 3),
    )
    pair = np.broadcast_to(np.arange(len(origins))[:, None, None], shape).reshape(-1)
    return poses, pair


def top_down_poses(
    points: np.ndarray, up: np.ndarray, floor_h: float, gripper: GripperConfig, config: GraspPlannerConfig
) -> np.ndarray:
    """Top-down grasps [K,4,4] over the object's footprint centre, closing along `top_down_yaws`
    horizontal directions (starting at the footprint's largest principal axis), at `top_down_heights`
    of the object's height and at the lowest height whose fingertips stay above `floor_h`.

    Principal axes alone are not enough: on a square footprint (a 2x2 brick) they point anywhere,
    often along the diagonal, which is too wide and holds only by two corners."""
    heights = points @ up
    flat = points - heights[:, None] * up
    centre = flat.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((flat - centre).T))
    major = next((v for v in vecs.T[::-1] if abs(v @ up) < 0.5), None)
    if major is None:
        return np.zeros((0, 4, 4))
    major = major - (major @ up) * up
    major /= np.linalg.norm(major)
    side = np.cross(up, major)
    yaws = np.pi * np.arange(config.top_down_yaws) / config.top_down_yaws
    axes = np.cos(yaws)[:, None] * major + np.sin(yaws)[:, None] * side
    top = float(np.percentile(heights, 99.0))
    # fingertips this high keep even their collision margin above the support's noise band: lower,
    # the table's own scatter (and a memory's fuzz at the object's base) counts as an obstacle
    lowest = floor_h + gripper.finger_length_m - gripper.tcp_depth_m + config.collision_margin_m + 1e-3
    bottom = float(np.percentile(heights, 1.0))
    levels = sorted({max(bottom + frac * (top - bottom), lowest) for frac in config.top_down_heights} | {lowest})
    # fingertips below the object's top: a level above it would close on air
    levels = [h for h in levels if h - (gripper.finger_length_m - gripper.tcp_depth_m) < top] or [lowest]
    poses = [grasp_matrix(centre + h * up, axis, -up) for h in levels for axis in axes]
    return np.array(poses).reshape(-1, 4, 4)
