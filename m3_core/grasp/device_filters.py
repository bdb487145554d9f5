"""The planner's candidate checks as batched torch on a device (a GPU): every candidate at once.

The host path (`m3_core.grasp.filters`, numpy) checks 64 candidates per batch and stops once enough
are feasible; on a GPU that loop is launch-bound, so here all candidates are checked in a few large
chunks and the planner cuts the result at the batch where the host path would have stopped
(`planner._evaluate`). Each function is the dense counterpart of the filter of the same name in
`filters` (masked [B,N] rows instead of the gathered entries the host path works on), in float64 so
the two paths agree to rounding; `tests/test_grasp_device_filters.py` holds them to it.

Tensors: poses [B,4,4] world_from_grasp, `local` [B,3,N] object points in each grasp frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from m3_core.grasp.config import GraspPlannerConfig
from m3_core.grasp.filters import _CORNERS, _along_fingers, slab_half_width
from m3_core.grasp.gripper import local_boxes
from m3_core.robot import GripperConfig

_INF = math.inf


@dataclass(frozen=True)
class DeviceScene:
    """What the checks need of the planner's scene, on the device (float64)."""

    points: torch.Tensor      # [N,3] object surface
    normals: torch.Tensor     # [N,3]
    obstacles: torch.Tensor   # [M,3] scene points that can collide (M may be 0)
    centre: torch.Tensor      # [3]
    up: torch.Tensor          # [3]
    support_h: float
    floor_m: float


@dataclass(frozen=True)
class Checked:
    """Per candidate [B]: feasible, the pose centred on what the fingers hold, the opening the grasp
    needs and the one it approaches with, clearance (from the scene and above the support) and the
    contacts' mean alignment (scored by `scoring.antipodal_score`)."""

    feasible: torch.Tensor
    poses: torch.Tensor
    width: torch.Tensor
    approach_width: torch.Tensor
    clearance: torch.Tensor
    contact_mean_cos: torch.Tensor


def check_candidates(
    poses: torch.Tensor, scene: DeviceScene, gripper: GripperConfig, config: GraspPlannerConfig
) -> Checked:
    """`planner._evaluate_batch`'s checks on every candidate of `poses` (no early stop, no compaction:
    a refused candidate's other fields are meaningless)."""
    alive = support_clearance_bound(poses, scene.up, scene.support_h, gripper,
                                    slab_half_width(gripper, config)) >= scene.floor_m - 1e-9
    local = grasp_frame_points(poses, scene.points)
    closing = measure_closing(poses, local, scene.normals, gripper, config)
    keep = alive & closing["ok"] & (closing["contact_cos"] >= math.cos(math.radians(config.friction_cone_deg)))
    shift, width, open_width = closing["shift"], closing["width"], closing["open_width"]
    centred = poses.clone()
    centred[:, :3, 3] += shift[:, None] * poses[:, :3, 0]
    local = local.clone()
    local[:, 0] -= shift[:, None]
    offset = scene.centre - centred[:, :3, 3]
    lever = torch.linalg.vector_norm(offset - (offset @ scene.up)[:, None] * scene.up, dim=1)
    section = section_plane_cos(local, width, gripper, config)
    keep &= (lever <= config.hanging_lever_m) | (section >= math.cos(math.radians(config.hanging_alignment_deg)))
    free, above, clearance = _clear_at(centred, local, width, scene, gripper, config)
    open_free = _clear_at(centred, local, open_width, scene, gripper, config)[0]
    approach_width = torch.where(free & open_free & (open_width > width), open_width, width)
    return Checked(feasible=keep & free, poses=centred, width=width, approach_width=approach_width,
                   clearance=torch.minimum(clearance, above), contact_mean_cos=closing["contact_mean_cos"])


def _clear_at(
    poses: torch.Tensor, local: torch.Tensor, widths: torch.Tensor, scene: DeviceScene,
    gripper: GripperConfig, config: GraspPlannerConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    above = support_clearance(poses, widths, scene.up, scene.support_h, gripper)
    ok, clearance = scene_collisions(poses, widths, scene.obstacles, gripper, config)
    free = (above >= scene.floor_m) & ~object_collisions(local, widths, gripper, config) & ok
    return free, above, clearance


def _affine_boxes(gripper: GripperConfig, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`local_boxes` as centres = c0 + width * c1 (it is affine in the width) and sizes [3,3]."""
    c0, sizes = local_boxes(0.0, gripper)
    c1 = local_boxes(1.0, gripper)[0] - c0
    return tuple(torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in (c0, c1, sizes))


def _corner_heights(poses: torch.Tensor, widths: torch.Tensor, up: torch.Tensor, gripper: GripperConfig) -> torch.Tensor:
    c0, c1, sizes = _affine_boxes(gripper, poses)
    corners_unit = torch.as_tensor(_CORNERS, dtype=poses.dtype, device=poses.device)
    centres = c0 + widths[:, None, None] * c1                                   # [B,3,3]
    corners = centres[:, :, None, :] + sizes[None, :, None, :] * corners_unit                # [B,3,8,3]
    up_local = torch.einsum("bji,j->bi", poses[:, :3, :3], up)
    h = poses[:, :3, 3] @ up
    return h[:, None] + torch.einsum("bkci,bi->bkc", corners, up_local).reshape(len(poses), 24)


def support_clearance(
    poses: torch.Tensor, widths: torch.Tensor, up: torch.Tensor, support_h: float, gripper: GripperConfig
) -> torch.Tensor:
    lowest = _corner_heights(poses, widths, up, gripper).amin(dim=1)
    pre_shift = -gripper.approach_distance_m * (poses[:, :3, 2] @ up)
    return torch.minimum(lowest, lowest + pre_shift) - support_h


def support_clearance_bound(
    poses: torch.Tensor, up: torch.Tensor, support_h: float, gripper: GripperConfig, max_shift_m: float
) -> torch.Tensor:
    g, B = gripper, len(poses)
    ends = torch.tensor([g.min_opening_m, g.max_opening_m], dtype=poses.dtype, device=poses.device)
    heights = _corner_heights(torch.cat([poses, poses]), ends.repeat_interleave(B), up, g)
    lowest = torch.maximum(heights[:B], heights[B:]).amin(dim=1)
    lowest = lowest + max_shift_m * (poses[:, :3, 0] @ up).abs()
    pre_shift = -g.approach_distance_m * (poses[:, :3, 2] @ up)
    return torch.minimum(lowest, lowest + pre_shift) - support_h


def grasp_frame_points(poses: torch.Tensor, points: torch.Tensor) -> torch.Tensor:  # -> [B,3,N]
    grasp_from_world = poses[:, :3, :3].transpose(1, 2)
    return grasp_from_world @ points.T - grasp_from_world @ poses[:, :3, 3, None]


def measure_closing(
    poses: torch.Tensor, local: torch.Tensor, normals: torch.Tensor, gripper: GripperConfig, config: GraspPlannerConfig,
) -> dict[str, torch.Tensor]:
    g = gripper
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    slab = (y.abs() <= 0.5 * g.finger_width_m + config.collision_margin_m)
    slab &= _along_fingers(z, g)
    slab &= x.abs() <= slab_half_width(g, config)
    gap = g.finger_thickness_m + config.opening_clearance_m + config.collision_margin_m
    x_min, x_max, count = _centre_cluster_extremes(x, slab, gap, config.extent_trim_fraction)
    extent = torch.where(count > 0, x_max - x_min, _INF)
    n_x = poses[:, :3, 0] @ normals.T                                           # [B,N]
    band = config.contact_band_m
    right = slab & ((x - x_max[:, None]).abs() <= band)
    left = slab & ((x - x_min[:, None]).abs() <= band)
    right_patch, right_mean = _mean_normal_cos(right, n_x, normals)
    left_patch, left_mean = _mean_normal_cos(left, n_x, normals)
    right_patch = torch.maximum(right_patch, _patch_plane_cos(local, right, g.finger_width_m))
    left_patch = torch.maximum(left_patch, _patch_plane_cos(local, left, g.finger_width_m))
    width = extent + 2.0 * config.opening_clearance_m
    ok = (count >= config.min_points_between_fingers) & (width <= g.max_opening_m) & (extent >= g.min_opening_m)
    ok &= torch.minimum(_span(z, right), _span(z, left)) >= config.min_contact_depth_m
    return {"shift": 0.5 * (x_max + x_min), "width": width.clamp(max=g.max_opening_m),
            "open_width": (extent + 2.0 * config.approach_clearance_m).clamp(max=g.max_opening_m),
            "count": count, "contact_cos": torch.minimum(right_patch, left_patch),
            "contact_mean_cos": torch.minimum(right_mean, left_mean), "ok": ok}


def section_plane_cos(
    local: torch.Tensor, widths: torch.Tensor, gripper: GripperConfig, config: GraspPlannerConfig
) -> torch.Tensor:
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    section = (y.abs() <= config.section_half_width_m) & (x.abs() <= 0.5 * widths[:, None])
    section &= _along_fingers(z, gripper)
    return _patch_plane_cos(local, section, gripper.finger_width_m)


def _centre_cluster_extremes(
    x: torch.Tensor, mask: torch.Tensor, gap: float, fraction: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N = x.shape
    ordered = torch.sort(torch.where(mask, x, _INF), dim=1).values              # unmasked (inf) last
    valid = torch.isfinite(ordered)
    split = torch.diff(ordered, dim=1) > gap
    piece = torch.cat([torch.zeros((B, 1), dtype=torch.long, device=x.device), torch.cumsum(split, dim=1)], dim=1)
    nearest = torch.argmin(torch.where(valid, ordered.abs(), _INF), dim=1, keepdim=True)
    member = valid & (piece == piece.gather(1, nearest))
    count = member.sum(dim=1)
    first = torch.argmax(member.to(torch.uint8), dim=1)
    trim = torch.floor(fraction * count).long()
    lo = ordered.gather(1, (first + trim).clamp(max=N - 1)[:, None])[:, 0]
    hi = ordered.gather(1, (first + count - 1 - trim).clamp(0, N - 1)[:, None])[:, 0]
    empty = count == 0
    return torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi), count


def _mean_normal_cos(side: torch.Tensor, n_x: torch.Tensor, normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = side.to(n_x.dtype)
    count = side.sum(dim=1)
    signed = (w * torch.where(n_x < 0.0, -1.0, 1.0)) @ normals                 # [B,3] sum of sign * normal
    norm = torch.linalg.vector_norm(signed, dim=1)
    abs_x = n_x.abs()
    along = (w * abs_x).sum(dim=1)
    patch = torch.where(norm > 1e-9, along / norm.clamp(min=1e-9), -1.0)
    spread = torch.where(count > 0, along / count.clamp(min=1), -1.0)
    face = _masked_quantile(abs_x, side, count, 0.75)
    return torch.maximum(patch, torch.nan_to_num(face, nan=-1.0)), spread


def _masked_quantile(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor, q: float) -> torch.Tensor:
    """Per row: numpy's 'linear' q-quantile of the masked entries (NaN for none), as `filters._row_quantile`."""
    ordered = torch.sort(torch.where(mask, values, _INF), dim=1).values
    n = count.to(values.dtype)
    virtual = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0
    prev = torch.floor(virtual)
    gamma = virtual - prev
    last = (count - 1).clamp(min=0)
    at_end = virtual >= n - 1
    prev_i = torch.where(at_end, last, prev.clamp(min=0).long())
    next_i = torch.where(at_end, last, torch.minimum(prev_i + 1, last))
    a, b = ordered.gather(1, prev_i[:, None])[:, 0], ordered.gather(1, next_i[:, None])[:, 0]
    diff = b - a
    out = torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    return torch.where(count > 0, out, math.nan)


def _span(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    lo = torch.where(mask, values, _INF).amin(dim=1)
    hi = torch.where(mask, values, -_INF).amax(dim=1)
    return torch.where(mask.any(dim=1), hi - lo, 0.0)


def _patch_plane_cos(local: torch.Tensor, side: torch.Tensor, finger_width_m: float) -> torch.Tensor:
    w = side.to(local.dtype)[:, None, :]                                         # [B,1,N]
    count = side.sum(dim=1)
    n = count.clamp(min=1).to(local.dtype)
    mean = (local * w).sum(dim=2) / n[:, None]
    d = (local - mean[:, :, None]) * w
    cov = d @ d.transpose(1, 2) / n[:, None, None]
    cos = torch.linalg.eigh(cov).eigenvectors[:, 0, 0].abs()                    # least-spread axis . x
    span = torch.where(w > 0, local, -_INF).amax(dim=2) - torch.where(w > 0, local, _INF).amin(dim=2)
    span = torch.where((count > 0)[:, None], span, 0.0)
    wide = (span[:, 1] >= finger_width_m / 3.0) & (span[:, 2] >= finger_width_m / 3.0)
    return torch.where((count >= 5) & wide, cos, -1.0)


def object_collisions(
    local: torch.Tensor, widths: torch.Tensor, gripper: GripperConfig, config: GraspPlannerConfig
) -> torch.Tensor:
    g, m = gripper, config.collision_margin_m
    back = g.approach_distance_m if config.check_approach_sweep else 0.0
    ax, ay, z = local[:, 0].abs(), local[:, 1].abs(), local[:, 2]
    half_w = 0.5 * widths[:, None]
    finger = (ax >= half_w + config.object_noise_m) & (ax <= half_w + g.finger_thickness_m + m)
    finger &= (ay <= 0.5 * g.finger_width_m + m)
    finger &= (z >= -g.tcp_depth_m - back - m) & (z <= g.finger_length_m - g.tcp_depth_m + m)
    palm = (ax <= 0.5 * g.palm_width_m + m) & (ay <= 0.5 * g.palm_height_m + m)
    palm &= (z >= -g.tcp_depth_m - g.palm_depth_m - back - m) & (z <= -g.tcp_depth_m + m)
    return (finger | palm).any(dim=1)


def scene_collisions(
    poses: torch.Tensor, widths: torch.Tensor, points: torch.Tensor, gripper: GripperConfig,
    config: GraspPlannerConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`filters.scene_collisions` against every obstacle point (no ball query): a point farther than
    the host path's ball radius is more than `clearance_saturation_m` from the gripper, so it
    neither collides nor changes the saturated clearance."""
    B, sat, margin = len(poses), config.clearance_saturation_m, config.collision_margin_m
    if not len(points):
        return torch.ones(B, dtype=torch.bool, device=poses.device), torch.full((B,), sat, dtype=poses.dtype,
                                                                                  device=poses.device)
    R, t = poses[:, :3, :3], poses[:, :3, 3]
    local = (points[None] - t[:, None]) @ R                                      # [B,M,3]
    x, y, z = local[..., 0].abs(), local[..., 1].abs(), local[..., 2]
    g, back = gripper, gripper.approach_distance_m if config.check_approach_sweep else 0.0
    half_w = 0.5 * widths[:, None]
    finger = _box_distance(x - half_w - 0.5 * g.finger_thickness_m, y, z + g.tcp_depth_m + 0.5 * (back - g.finger_length_m),
                           0.5 * g.finger_thickness_m, 0.5 * g.finger_width_m, 0.5 * (g.finger_length_m + back))
    palm = _box_distance(x, y, z + g.tcp_depth_m + 0.5 * (g.palm_depth_m + back),
                         0.5 * g.palm_width_m, 0.5 * g.palm_height_m, 0.5 * (g.palm_depth_m + back))
    gap = (x <= half_w) & (y <= 0.5 * g.finger_width_m) & (z >= -g.tcp_depth_m) & (z <= g.finger_length_m - g.tcp_depth_m)
    body = torch.minimum(finger, palm)
    ok = ~((body <= margin) | gap).any(dim=1)
    return ok, body.amin(dim=1).clamp(max=sat)


def _box_distance(dx: torch.Tensor, dy: torch.Tensor, dz: torch.Tensor, hx: float, hy: float, hz: float) -> torch.Tensor:
    ox = (dx.abs() - hx).clamp(min=0.0)
    oy = (dy.abs() - hy).clamp(min=0.0)
    oz = (dz.abs() - hz).clamp(min=0.0)
    return torch.sqrt(ox * ox + oy * oy + oz * oz)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float64, device=device)
