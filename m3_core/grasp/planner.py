"""6-DoF parallel-jaw grasp planning on an object instance's points, among the scene's points.

Pipeline: thin the clouds -> surface normals -> candidates (antipodal pairs with approaches about
their closing axis, top-down grasps across the principal axes) -> cheap filters (approach not from
below, reach) -> best prior first, in batches: what lies between the fingers (width, contacts),
support plane, collisions of fingers and palm (with the sweep from the pre-grasp) -> quality ->
near-duplicate suppression -> top-K.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

from m3_core.grasp import device_filters, filters, sampling, scoring
from m3_core.grasp.config import GraspPlannerConfig
from m3_core.grasp.gripper import pregrasp_matrix
from m3_core.grasp.pointcloud import checked_points, estimate_normals, voxel_downsample
from m3_core.grasp.support import support_plane
from m3_core.grasp.types import Grasp
from m3_core.robot import ArmConfig, GripperConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scene:
    """The thinned clouds and what the filters and scores need to know about them."""

    points: np.ndarray        # [N,3] object surface (thinned)
    normals: np.ndarray       # [N,3] outward normals
    tree: cKDTree             # over points
    obstacles: np.ndarray     # [M,3] scene points near the object and above the support plane
    obstacle_tree: cKDTree | None  # over obstacles; None when there are none
    centre: np.ndarray        # [3] centre-of-mass proxy (mean of the thinned surface)
    radius: float             # RMS distance of the surface from the centre
    support_h: float          # height of the support plane along up
    floor_m: float            # the gripper stays this far above the support plane
    up: np.ndarray            # [3]
    reach_dir: np.ndarray | None  # [3] horizontal unit direction arm base -> object, or None


# The planner's matrix products are small ([3B,3] x [3,N] with B = batch_size): BLAS threads cost
# more in start-up and contention than they gain (6x slower on a busy 2-core machine), and one thread
# gives the same numbers.
@threadpool_limits.wrap(limits=1, user_api="blas")
def plan_grasps(
    object_points: np.ndarray,     # [N,3] world, metres
    scene_points: np.ndarray,      # [M,3] world, metres
    gripper: GripperConfig,
    arm: ArmConfig,
    world_from_armbase: np.ndarray | None,   # [4,4]; None skips the reach check
    config: GraspPlannerConfig | None = None,
) -> list[Grasp]:
    """Ranked grasps (best first) of the object given by `object_points`; [] when none is feasible.

    `object_points` is the instance's surface (Gaussian means, back-projected depth points);
    `scene_points` everything else that can collide (the table, neighbours). The support plane is
    read from the scene points around the object (the object's lowest points without a table; see
    `support_plane`). Deterministic for a given config seed. Raises ValueError on malformed input.
    """
    config = config or GraspPlannerConfig()
    _check_gripper(gripper)
    base = _checked_base(world_from_armbase)
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    scene = _prepare(checked_points(object_points, "object_points"),
                     checked_points(scene_points, "scene_points"), base, rng, gripper, config)
    if scene is None:
        return []
    poses, prior = _candidates(scene, rng, gripper, base, arm, config)
    feasible = _evaluate(poses, prior, scene, gripper, config)
    grasps = _suppress_duplicates(feasible, config)
    logger.debug("grasp planning: %d object points, %d obstacle points, %d candidates, %d feasible, "
                 "%d returned in %.1f ms", len(scene.points), len(scene.obstacles), len(poses), len(feasible),
                 len(grasps), 1e3 * (time.perf_counter() - started))
    return [Grasp(world_from_grasp=T, width_m=float(w), world_from_pregrasp=pregrasp_matrix(T, gripper.approach_distance_m),
                  quality=float(q)) for T, w, q in grasps]


def _check_gripper(gripper: GripperConfig) -> None:
    g = gripper
    sizes = {name: getattr(g, name) for name in ("max_opening_m", "finger_length_m", "finger_width_m",
                                                 "finger_thickness_m", "palm_depth_m", "palm_width_m",
                                                 "palm_height_m", "tcp_depth_m")}
    bad = [f"{k}={v}" for k, v in sizes.items() if not v > 0]
    if bad or not 0 <= g.min_opening_m < g.max_opening_m or not g.tcp_depth_m <= g.finger_length_m \
            or g.approach_distance_m < 0:
        raise ValueError(
            f"gripper geometry is inconsistent ({', '.join(bad) or 'see below'}): sizes must be > 0, "
            f"0 <= min_opening_m ({g.min_opening_m}) < max_opening_m ({g.max_opening_m}), tcp_depth_m "
            f"({g.tcp_depth_m}) <= finger_length_m ({g.finger_length_m}), approach_distance_m >= 0; "
            "check the robot YAML's gripper section"
        )


def _checked_base(world_from_armbase: np.ndarray | None) -> np.ndarray | None:
    if world_from_armbase is None:
        return None
    T = np.asarray(world_from_armbase, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"world_from_armbase must be a finite [4,4] transform or None, got shape {T.shape}")
    return T


def _prepare(
    obj: np.ndarray, scene: np.ndarray, base: np.ndarray | None, rng: np.random.Generator,
    gripper: GripperConfig, config: GraspPlannerConfig,
) -> _Scene | None:
    """Thin the object, estimate normals, crop and thin the scene around it; None if too few points."""
    obj = voxel_downsample(obj, config.object_voxel_m)
    if len(obj) > config.max_object_points:
        obj = obj[np.sort(rng.choice(len(obj), config.max_object_points, replace=False))]
    if len(obj) < max(config.normal_neighbours, config.min_points_between_fingers):
        logger.info("grasp planning: %d object points after thinning, too few for grasps", len(obj))
        return None
    tree = cKDTree(obj)
    normals = estimate_normals(obj, tree, config.normal_neighbours)
    up = np.asarray(config.up, dtype=np.float64)
    reach = _gripper_reach(gripper, config)
    scene = scene[np.all((scene >= obj.min(axis=0) - reach) & (scene <= obj.max(axis=0) + reach), axis=1)]
    support_h, noise = support_plane(obj, scene, up, config)
    floor = config.support_clearance_m + config.support_noise_sigmas * noise
    # The support test keeps the whole gripper `floor` above the support plane, so scene points
    # below that (the table top around the object) cannot collide: drop them, they are most of the
    # scene and would dominate the collision checks.
    obstacles = voxel_downsample(scene[scene @ up > support_h + floor - config.collision_margin_m],
                                 config.scene_voxel_m)
    centre = obj.mean(axis=0)
    reach_dir = None
    if base is not None:
        d = centre - base[:3, 3]
        d -= (d @ up) * up
        reach_dir = d / np.linalg.norm(d) if np.linalg.norm(d) > 1e-6 else None
    return _Scene(
        points=obj, normals=normals, tree=tree, obstacles=obstacles,
        obstacle_tree=cKDTree(obstacles) if len(obstacles) else None,
        centre=centre, radius=float(np.sqrt(np.mean(np.sum((obj - centre) ** 2, axis=1)))),
        support_h=support_h, floor_m=floor, up=up, reach_dir=reach_dir,
    )


def _gripper_reach(gripper: GripperConfig, config: GraspPlannerConfig) -> float:
    """How far from a grasp origin inside the object's box a gripper point or a scored scene point can be."""
    g = gripper
    back = g.tcp_depth_m + g.palm_depth_m + (g.approach_distance_m if config.check_approach_sweep else 0.0)
    extent = np.linalg.norm([0.5 * g.max_opening_m + g.finger_thickness_m,
                             0.5 * max(g.finger_width_m, g.palm_height_m, g.palm_width_m),
                             max(back, g.finger_length_m - g.tcp_depth_m)])
    offsets = max([abs(o) for o in config.depth_offsets_m] + [0.0])
    return float(extent + offsets + config.collision_margin_m + config.clearance_saturation_m)


def _candidates(
    scene: _Scene, rng: np.random.Generator, gripper: GripperConfig, base: np.ndarray | None,
    arm: ArmConfig, config: GraspPlannerConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate poses [K,4,4] that pass the cheap filters, sorted by prior score [K] (best first),
    with near-identical poses merged."""
    max_width = gripper.max_opening_m - 2.0 * config.opening_clearance_m
    mid, axis, pair_score = sampling.antipodal_pairs(
        scene.points, scene.normals, scene.tree, rng, max_width, gripper.min_opening_m, config)
    pair_poses, pair = sampling.poses_about_axis(mid, axis, scene.up, config)
    top = sampling.top_down_poses(scene.points, scene.up, scene.support_h + scene.floor_m, gripper, config)
    poses = np.concatenate([pair_poses, top])
    antipodal = np.concatenate([pair_score[pair], np.ones(len(top))])
    keep = filters.approach_ok(poses, scene.up, config)
    if base is not None:
        keep &= filters.reach_ok(poses, base, arm, gripper)
    poses, antipodal = poses[keep], antipodal[keep]
    top_down, toward = scoring.approach_terms(poses, scene.up, scene.reach_dir)
    prior = scoring.quality(antipodal, scoring.centring(poses, scene.centre, scene.radius), top_down, toward,
                            np.ones(len(poses)), config, scene.reach_dir is not None)
    order = np.argsort(-prior, kind="stable")
    poses, prior = poses[order], prior[order]
    first = _first_of_each_cell(poses, config)
    logger.debug("grasp candidates: %d pairs, %d poses, %d pass approach/reach, %d distinct",
                 len(mid), len(keep), int(keep.sum()), len(first))
    return poses[first], prior[first]


def _first_of_each_cell(poses: np.ndarray, config: GraspPlannerConfig) -> np.ndarray:
    """Indices (ascending) of the first pose in each cell of origin (nms_distance_m) x approach x
    closing axis (about nms_angle_deg; x and -x are the same grasp for a symmetric gripper)."""
    x = poses[:, :3, 0] * np.where(poses[:, :3, 0] @ np.array([1.0, 1e-3, 1e-6]) < 0, -1.0, 1.0)[:, None]
    angle_cell = np.sin(np.radians(config.nms_angle_deg))
    keys = np.concatenate([np.floor(poses[:, :3, 3] / config.nms_distance_m),
                           np.round(poses[:, :3, 2] / angle_cell), np.round(x / angle_cell)], axis=1)
    _, first = np.unique(keys.astype(np.int64), axis=0, return_index=True)
    return np.sort(first)


def _evaluate(
    poses: np.ndarray, prior: np.ndarray, scene: _Scene, gripper: GripperConfig, config: GraspPlannerConfig
) -> list[tuple[np.ndarray, float, float]]:
    """(world_from_grasp, width, quality) of feasible candidates, checked best prior first in batches
    until `enough_feasible` are found or `max_evaluated` were checked; sorted by quality.

    With several workers, `workers` batches are checked at a time and their results taken in order,
    so the check stops after the same batch as one by one would (the batches after it in the same
    round are wasted work, the price of the parallelism)."""
    limit = min(len(poses), config.max_evaluated)
    if config.device is not None:
        found = _evaluate_on_device(poses[:limit], scene, gripper, config) if limit else []
        found.sort(key=lambda item: -item[2])
        return found
    starts = list(range(0, limit, config.batch_size))

    def check(start: int) -> list[tuple[np.ndarray, float, float]]:
        return _evaluate_batch(poses[start:min(start + config.batch_size, limit)], scene, gripper, config)

    workers = max(1, min(config.workers or os.cpu_count() or 1, len(starts)))
    found: list[tuple[np.ndarray, float, float]] = []
    with ThreadPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
        run = pool.map if pool is not None else map
        # rounds of `workers` batches, submitted one round at a time as the results are taken
        batches = (b for first in range(0, len(starts), workers) for b in run(check, starts[first:first + workers]))
        for batch in batches:
            found.extend(batch)
            if len(found) >= config.enough_feasible:
                break
    found.sort(key=lambda item: -item[2])
    return found


def _evaluate_batch(
    poses: np.ndarray, scene: _Scene, gripper: GripperConfig, config: GraspPlannerConfig
) -> list[tuple[np.ndarray, float, float]]:
    # Candidates whose gripper reaches below the support's floor whatever its opening would be
    # refused after the costly width measurement (14 % of the found-path queries' candidates)
    bound = filters.support_clearance_bound(poses, scene.up, scene.support_h, gripper,
                                            filters.slab_half_width(gripper, config))
    poses = poses[bound >= scene.floor_m - 1e-9]          # (1e-9: rounding never drops a feasible one)
    if not len(poses):
        return []
    local = filters.grasp_frame_points(poses, scene.points)                  # [B,3,N]
    closing = filters.measure_closing(poses, local, scene.normals, gripper, config)
    keep = closing["ok"] & (closing["contact_cos"] >= np.cos(np.radians(config.friction_cone_deg)))
    shift, width = closing["shift"][keep], closing["width"][keep]
    open_width = closing["open_width"][keep]
    contact_mean_cos = closing["contact_mean_cos"][keep]
    poses, local = poses[keep].copy(), local[keep]
    if not len(poses):
        return []
    poses[:, :3, 3] += shift[:, None] * poses[:, :3, 0]                      # centre the fingers on the object
    local[:, 0] -= shift[:, None]
    # An object hanging from the fingers (held far from its centre) needs the pads flat on the section
    offset = scene.centre - poses[:, :3, 3]
    lever = np.linalg.norm(offset - (offset @ scene.up)[:, None] * scene.up, axis=1)   # horizontal
    flat = np.ones(len(poses), dtype=bool)
    hanging = np.flatnonzero(lever > config.hanging_lever_m)
    if len(hanging):
        section_cos = filters.section_plane_cos(local[hanging], width[hanging], gripper, config)
        flat[hanging] = section_cos >= np.cos(np.radians(config.hanging_alignment_deg))
    poses, local, width, open_width, contact_mean_cos = (
        poses[flat], local[flat], width[flat], open_width[flat], contact_mean_cos[flat]
    )
    if not len(poses):
        return []
    free, above, clearance = _clear_at(poses, local, width, scene, gripper, config)
    # The same grasps, approached with room to spare where that opening is clear too (the fingers
    # then miss an object whose side the memory placed up to a centimetre off); else with what the
    # grasp needs. Ranked as before: the clearance term is that of the grasp's own opening.
    approach_width = width.copy()
    wide = np.flatnonzero(free & (open_width > width))
    if len(wide):
        ok = _clear_at(poses[wide], local[wide], open_width[wide], scene, gripper, config)[0]
        approach_width[wide[ok]] = open_width[wide[ok]]
    if not free.any():
        return []
    return _ranked(poses[free], width[free], approach_width[free], np.minimum(clearance, above)[free],
                   contact_mean_cos[free], scene, gripper, config)


def _ranked(
    poses: np.ndarray, width: np.ndarray, approach_width: np.ndarray, clearance: np.ndarray,
    contact_mean_cos: np.ndarray, scene: _Scene, gripper: GripperConfig, config: GraspPlannerConfig,
) -> list[tuple[np.ndarray, float, float]]:
    """(world_from_grasp, approach opening, quality) of feasible grasps, in their order."""
    top_down, toward = scoring.approach_terms(poses, scene.up, scene.reach_dir)
    sat = config.clearance_saturation_m
    # the spare-opening term judges the opening the grasp needs (the room a misjudged width has)
    q = scoring.quality(scoring.antipodal_score(contact_mean_cos, config),
                        scoring.centring(poses, scene.centre, scene.radius), top_down, toward,
                        np.clip(clearance / sat, 0.0, 1.0), config, scene.reach_dir is not None,
                        scoring.spare_opening(width, gripper.max_opening_m, config),
                        scoring.approach_room(width, approach_width, config))
    return list(zip(poses, approach_width, q))


def _evaluate_on_device(
    poses: np.ndarray, scene: _Scene, gripper: GripperConfig, config: GraspPlannerConfig
) -> list[tuple[np.ndarray, float, float]]:
    """`_evaluate`'s found grasps (before sorting), checked on `config.device`: every candidate at
    once, then cut after the batch of `batch_size` at which the host path stops."""
    device = torch.device(config.device)
    on = device_filters.DeviceScene(
        points=device_filters.to_device(scene.points, device), normals=device_filters.to_device(scene.normals, device),
        obstacles=device_filters.to_device(scene.obstacles.reshape(-1, 3), device),
        centre=device_filters.to_device(scene.centre, device), up=device_filters.to_device(scene.up, device),
        support_h=float(scene.support_h), floor_m=float(scene.floor_m))
    candidates = device_filters.to_device(poses, device)
    packed = []
    for start in range(0, len(poses), config.device_chunk):
        c = device_filters.check_candidates(candidates[start:start + config.device_chunk], on, gripper, config)
        packed.append(torch.cat([c.feasible[:, None].to(c.width.dtype), c.width[:, None], c.approach_width[:, None],
                                 c.clearance[:, None], c.contact_mean_cos[:, None], c.poses.reshape(-1, 16)], dim=1))
    host = torch.cat(packed).cpu().numpy()                                   # one copy back
    feasible = np.flatnonzero(host[:, 0] > 0.5)
    per_batch = np.cumsum(np.bincount(feasible // config.batch_size, minlength=-(-len(poses) // config.batch_size)))
    enough = np.flatnonzero(per_batch >= config.enough_feasible)
    if len(enough):
        feasible = feasible[feasible // config.batch_size <= enough[0]]
    rows = host[feasible]
    return _ranked(rows[:, 5:].reshape(-1, 4, 4), rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4], scene, gripper, config)


def _clear_at(
    poses: np.ndarray, local: np.ndarray, widths: np.ndarray, scene: _Scene, gripper: GripperConfig,
    config: GraspPlannerConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(free [B] bool, height above the support [B], clearance from the scene [B]) of grasps whose
    fingers open to `widths`: above the floor level, not through the object, not through the scene."""
    above = filters.support_clearance(poses, widths, scene.up, scene.support_h, gripper)
    free = above >= scene.floor_m
    free[free] = ~filters.object_collisions(local[free], widths[free], gripper, config)
    clearance = np.zeros(len(poses))
    if free.any():
        ok, clear = filters.scene_collisions(poses[free], widths[free], scene.obstacles, scene.obstacle_tree, gripper, config)
        clearance[free] = clear
        free[free] = ok
    return free, above, clearance


def _suppress_duplicates(
    ranked: list[tuple[np.ndarray, float, float]], config: GraspPlannerConfig
) -> list[tuple[np.ndarray, float, float]]:
    """Keep a grasp unless a better kept one is within nms_distance_m and nms_angle_deg of it."""
    kept: list[tuple[np.ndarray, float, float]] = []
    cos_limit = np.cos(np.radians(config.nms_angle_deg))
    for item in ranked:
        T = item[0]
        if any(_similar(T, K[0], config.nms_distance_m, cos_limit) for K in kept):
            continue
        kept.append(item)
        if len(kept) == config.top_k:
            break
    return kept


def _similar(A: np.ndarray, B: np.ndarray, distance: float, cos_limit: float) -> bool:
    """Close in position and rotation; a rotation by 180 deg about the approach is the same grasp."""
    if np.linalg.norm(A[:3, 3] - B[:3, 3]) > distance:
        return False
    M = A[:3, :3].T @ B[:3, :3]
    trace = max(np.trace(M), M[2, 2] - M[0, 0] - M[1, 1])
    return (trace - 1.0) / 2.0 >= cos_limit
