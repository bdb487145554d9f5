"""Feasibility tests for batches of grasp poses: approach direction, reach, support plane, what lies
between the fingers (opening width, contacts) and collisions of fingers and palm.

All functions take world_from_grasp poses [B,4,4] and return per-candidate arrays [B].
"""

from __future__ import annotations

import itertools
from typing import TypeVar

import numpy as np
from scipy.spatial import cKDTree

from m3_core.grasp.config import GraspPlannerConfig
from m3_core.grasp.gripper import local_boxes
from m3_core.robot import ArmConfig, GripperConfig

ArrayT = TypeVar("ArrayT")  # a numpy array or a torch tensor: the comparisons below work on both

_CORNERS = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))    # [8,3] unit-box corners
ROUNDING_M = 1e-9
"""Slack of a comparison at a bound that points sit on by construction (the top-down sampler puts
the fingertips at a surface point's height): rounding (numpy on the host, a GPU's fused
multiply-adds) must not decide whether such a point is between the fingers."""


def approach_ok(poses: np.ndarray, up: np.ndarray, config: GraspPlannerConfig) -> np.ndarray:
    """True where the approach (+z) points at most `max_upward_approach_deg` above horizontal."""
    return poses[:, :3, 2] @ up <= np.sin(np.radians(config.max_upward_approach_deg)) + 1e-9


def reach_ok(
    poses: np.ndarray, world_from_armbase: np.ndarray, arm: ArmConfig, gripper: GripperConfig
) -> np.ndarray:
    """True where the flange, at the grasp and at the pre-grasp, is within the arm's reach of its base.

    The flange sits `flange_from_grasp_m` behind the grasp origin along -z.
    """
    base = world_from_armbase[:3, 3]
    z = poses[:, :3, 2]
    flange = poses[:, :3, 3] - arm.flange_from_grasp_m * z
    pre_flange = flange - gripper.approach_distance_m * z
    return (np.linalg.norm(flange - base, axis=1) <= arm.reach_m) & (
        np.linalg.norm(pre_flange - base, axis=1) <= arm.reach_m
    )


def support_clearance(
    poses: np.ndarray, widths: np.ndarray, up: np.ndarray, support_h: float, gripper: GripperConfig
) -> np.ndarray:
    """Height [B] of the lowest corner of fingers and palm, at the grasp or at the pre-grasp, above the
    support plane (height `support_h` along `up`); keep those above `support_clearance_m`."""
    lowest = _corner_heights(poses, widths, up, gripper).min(axis=1)
    pre_shift = -gripper.approach_distance_m * (poses[:, :3, 2] @ up)
    return np.minimum(lowest, lowest + pre_shift) - support_h


def support_clearance_bound(
    poses: np.ndarray, up: np.ndarray, support_h: float, gripper: GripperConfig, max_shift_m: float
) -> np.ndarray:
    """An upper bound [B] of `support_clearance` over every opening the gripper has (min_opening_m to
    max_opening_m) and every shift of the origin along the closing axis up to `max_shift_m` (the
    planner centres each grasp on what lies between the fingers): a candidate below the floor by
    this bound is below it whatever width and centring it gets, so it can be dropped before its
    width is measured.

    Each corner's height is linear in the width, so it is at most the larger of its heights at the
    two extreme widths, and the lowest corner at most the smallest of those; a shift moves them all
    by at most `max_shift_m` times the closing axis' slope."""
    g = gripper
    ends = np.array([g.min_opening_m, g.max_opening_m])
    heights = _corner_heights(np.concatenate([poses, poses]), np.repeat(ends, len(poses)), up, g)
    lowest = np.maximum(heights[: len(poses)], heights[len(poses):]).min(axis=1)
    lowest += max_shift_m * np.abs(poses[:, :3, 0] @ up)
    pre_shift = -g.approach_distance_m * (poses[:, :3, 2] @ up)
    return np.minimum(lowest, lowest + pre_shift) - support_h


def _corner_heights(poses: np.ndarray, widths: np.ndarray, up: np.ndarray, gripper: GripperConfig) -> np.ndarray:
    """Heights along `up` [B,24] of the 8 corners of each finger and the palm, at the grasp."""
    centres, sizes = local_boxes(widths, gripper)                          # [B,3,3]
    corners = centres[:, :, None, :] + sizes[:, :, None, :] * _CORNERS      # [B,3,8,3]
    up_local = np.einsum("bji,j->bi", poses[:, :3, :3], up)                # up in each grasp frame
    h = poses[:, :3, 3] @ up
    return h[:, None] + np.einsum("bkci,bi->bkc", corners, up_local).reshape(len(poses), 24)


def _ball_pairs(tree: cKDTree, centres: np.ndarray, radius: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """All (query row, point index) pairs with the point within `radius` of the query centre."""
    lists = tree.query_ball_point(centres, radius, return_sorted=False)
    lengths = np.fromiter((len(a) for a in lists), dtype=np.intp, count=len(lists))
    idx = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.intp, count=int(lengths.sum()))
    return np.repeat(np.arange(len(centres)), lengths), idx


def _segment_extreme(values: np.ndarray, rows: np.ndarray, n: int, largest: bool) -> np.ndarray:
    """Max (or min) of `values` per row id in [0, n); -inf (+inf) for rows without values."""
    out = np.full(n, -np.inf if largest else np.inf)
    (np.maximum if largest else np.minimum).at(out, rows, values)
    return out


def grasp_frame_points(poses: np.ndarray, points: np.ndarray) -> np.ndarray:  # [B,4,4],[N,3] -> [B,3,N]
    """`points` in each grasp frame, coordinates first (dense: meant for the object's few thousand points)."""
    B = len(poses)
    grasp_from_world = np.swapaxes(poses[:, :3, :3], 1, 2)
    rotated = (grasp_from_world.reshape(3 * B, 3) @ points.T).reshape(B, 3, len(points))   # one GEMM
    return rotated - np.matmul(grasp_from_world, poses[:, :3, 3, None])


def slab_half_width(gripper: GripperConfig, config: GraspPlannerConfig) -> float:
    """How far along the closing axis from the origin `measure_closing` looks for the object (and so
    the largest shift it can centre a grasp by)."""
    return 0.5 * gripper.max_opening_m + gripper.finger_thickness_m + config.collision_margin_m


def measure_closing(
    poses: np.ndarray, local: np.ndarray, normals: np.ndarray, gripper: GripperConfig, config: GraspPlannerConfig,
) -> dict[str, np.ndarray]:
    """What the fingers would close on: the object points (`local` [B,3,N], in each grasp frame; their
    world `normals` [N,3]) in the fingers' slab (|y| within the finger width, z along the fingers).

    Along x those points fall into pieces wherever a finger fits between them (the wall of a mug
    and the space inside it); the piece nearest the origin is what the fingers take.
    Returns per candidate: `shift` (move the origin this far along +x to centre it on that piece),
    `width` (the opening it needs: its extent along x plus `opening_clearance_m` on both sides),
    `open_width` (the opening to approach with where nothing is in the way: `approach_clearance_m`
    on both sides, at most the gripper's), `count` (its
    points), `contact_cos` (the smaller of the two sides' |cos| between the mean contact normal and
    the closing axis: tested against the friction cone), `contact_mean_cos` (the smaller side's mean
    |cos| of its contact normals: scored) and `ok` (enough points, extent fits the opening).
    """
    g = gripper
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    slab = np.abs(y) <= 0.5 * g.finger_width_m + config.collision_margin_m
    slab &= _along_fingers(z, g)
    slab &= np.abs(x) <= slab_half_width(g, config)
    gap = g.finger_thickness_m + config.opening_clearance_m + config.collision_margin_m
    x_min, x_max, count = _centre_cluster_extremes(x, slab, gap, config.extent_trim_fraction)
    extent = np.where(count > 0, x_max - x_min, np.inf)
    n_x = np.einsum("nj,bj->bn", normals, poses[:, :3, 0])                     # normals along +x
    band = config.contact_band_m
    right = slab & (np.abs(x - x_max[:, None]) <= band)
    left = slab & (np.abs(x - x_min[:, None]) <= band)
    right_patch, right_mean = _mean_normal_cos(right, n_x, normals)
    left_patch, left_mean = _mean_normal_cos(left, n_x, normals)
    right_patch = np.maximum(right_patch, _patch_plane_cos(local, right, g.finger_width_m))
    left_patch = np.maximum(left_patch, _patch_plane_cos(local, left, g.finger_width_m))
    width = extent + 2.0 * config.opening_clearance_m
    ok = (count >= config.min_points_between_fingers) & (width <= g.max_opening_m) & (extent >= g.min_opening_m)
    # fingers that only graze the object's edge (a mug's rim 8 mm into the fingers) slip off it
    ok &= np.minimum(_span(z, right), _span(z, left)) >= config.min_contact_depth_m
    return {"shift": 0.5 * (x_max + x_min), "width": np.minimum(width, g.max_opening_m),
            "open_width": np.minimum(extent + 2.0 * config.approach_clearance_m, g.max_opening_m),
            "count": count, "contact_cos": np.minimum(right_patch, left_patch),
            "contact_mean_cos": np.minimum(right_mean, left_mean), "ok": ok}


def _along_fingers(z: ArrayT, gripper: GripperConfig) -> ArrayT:
    """Where grasp-frame heights `z` lie along the fingers, palm face to fingertips (`ROUNDING_M` slack);
    numpy arrays or torch tensors."""
    return (z >= -gripper.tcp_depth_m - ROUNDING_M) & (z <= gripper.finger_length_m - gripper.tcp_depth_m + ROUNDING_M)


def section_plane_cos(
    local: np.ndarray, widths: np.ndarray, gripper: GripperConfig, config: GraspPlannerConfig
) -> np.ndarray:
    """|cos| between each closing axis and the plane of the object section the fingers close on
    (`local` [B,3,N] in each grasp frame, `widths` [B] the openings): the points between the fingers
    within `section_half_width_m` of the closing line across (wider than a finger, so that a wall's
    slope shows through its noise) and along the fingers' length; -1 where there are too few.

    The contact normals come from a few millimetres of a memory's surface; on a thin wall (a tray's
    8 mm side) they scatter by tens of degrees, while the section, centimetres wide, still shows
    which way the wall leans."""
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    section = (np.abs(y) <= config.section_half_width_m) & (np.abs(x) <= 0.5 * widths[:, None])
    section &= _along_fingers(z, gripper)
    return _patch_plane_cos(local, section, gripper.finger_width_m)


def _centre_cluster_extremes(
    x: np.ndarray, mask: np.ndarray, gap: float, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `x` [B,N]: split the masked values where consecutive ones are more than `gap` apart,
    take the piece holding the value nearest 0, and return its smallest and largest value after
    dropping `fraction` of its values at each end (noise at the object's edges should not widen the
    grasp), and its size. Rows without values give (0, 0, 0)."""
    B, N = x.shape
    ordered = np.sort(np.where(mask, x, np.nan), axis=1)                      # NaN (unmasked) last
    valid = ~np.isnan(ordered)
    with np.errstate(invalid="ignore"):
        split = np.diff(ordered, axis=1) > gap
    piece = np.concatenate([np.zeros((B, 1), dtype=np.intp), np.cumsum(split, axis=1)], axis=1)
    rows = np.arange(B)
    nearest = np.argmin(np.where(valid, np.abs(ordered), np.inf), axis=1)
    member = valid & (piece == piece[rows, nearest][:, None])
    count = member.sum(axis=1)
    first = np.argmax(member, axis=1)
    trim = np.floor(fraction * count).astype(np.intp)
    lo = ordered[rows, np.minimum(first + trim, N - 1)]
    hi = ordered[rows, np.clip(first + count - 1 - trim, 0, N - 1)]
    empty = count == 0
    lo[empty], hi[empty] = 0.0, 0.0
    return lo, hi, count


def _mean_normal_cos(side: np.ndarray, n_x: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How well one side's contact points (`side` [B,N]) face the closing axis (`n_x` [B,N]: each
    normal's component along it): (|cos| of their mean normal, mean of their |cos|); -1 for none.

    Signs are dropped: normals oriented by the centroid are wrong on concave parts (the inside of a
    cup), and the contacts are the points nearest each finger whatever their normals' sign. The mean
    normal says which way the contact patch faces (on a sphere it is the closing axis although no
    single normal is); the mean |cos| also sees a patch that is a corner between two faces, whose
    normals average to the axis although such a grasp twists out of the fingers.
    """
    # On the contacts only (a few percent of the dense rows). sign(n_x) n_x = |n_x|: the mean
    # normal's component along the axis is the sum of the |cos|.
    rows, cols = np.nonzero(side)                                   # row-major: rows ascending
    B, x = len(side), n_x[rows, cols]
    count = np.bincount(rows, minlength=B)
    signed = normals[cols] * np.where(x < 0.0, -1.0, 1.0)[:, None]
    norm = np.linalg.norm(np.stack([np.bincount(rows, signed[:, i], minlength=B) for i in range(3)], axis=1), axis=1)
    abs_x = np.abs(x)
    along = np.bincount(rows, abs_x, minlength=B)
    patch = np.where(norm > 1e-9, along / np.maximum(norm, 1e-9), -1.0)
    spread = np.where(count > 0, along / np.maximum(count, 1), -1.0)
    # A flat face seen through a memory carries its rounded edge in the band too (the top face of a
    # 3 cm brick within the band's 6 mm of the side): those normals point up and drag the mean
    # normal out of the cone although most of the face squarely meets the finger. The upper
    # quartile of |cos| is the face the finger presses; a corner between two faces, whose normals
    # are all oblique, still stays out of the cone.
    face = _row_quantile(abs_x, rows, count, 0.75)                    # NaN for rows without contacts
    patch = np.maximum(patch, np.nan_to_num(face, nan=-1.0))
    return patch, spread


def _masked_entries(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The masked entries of `values` [B,N] (or [B,C,N]: all C channels of each masked column) row by
    row, their row ids (ascending) and each row's count [B]. The contact masks hold a few percent of
    the object's points: working on these entries is far cheaper than on the dense rows."""
    rows, cols = np.nonzero(mask)                                   # row-major: rows ascending
    picked = values[rows, cols] if values.ndim == 2 else values[rows, :, cols]
    return picked, rows, np.bincount(rows, minlength=len(mask))


def _masked_quantile(values: np.ndarray, mask: np.ndarray, q: float) -> np.ndarray:
    """Per row of `values` [B,N]: the `q`-quantile (0..1) of the masked entries, NaN for rows without
    any; bit for bit what `np.nanquantile` (method 'linear') gives on the rows with the unmasked
    entries set to NaN, without its one 1-D call per row."""
    v, rows, count = _masked_entries(values, mask)
    return _row_quantile(v, rows, count, q)


def _row_quantile(v: np.ndarray, rows: np.ndarray, count: np.ndarray, q: float) -> np.ndarray:
    """`_masked_quantile` of the entries `v` [M] of rows `rows` [M] (ascending), `count` [B] per row."""
    v = v[np.lexsort((v, rows))]                                    # sorted within each row
    start = np.cumsum(count) - count
    # numpy's virtual index for 'linear' (alpha = beta = 1), its bounds and its lerp, as numpy writes them
    n = count.astype(np.float64)
    virtual = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0
    prev = np.floor(virtual)
    gamma = virtual - prev
    last = np.maximum(count - 1, 0)
    prev_i = np.where(virtual >= n - 1, last, np.clip(prev, 0, None).astype(np.intp))
    next_i = np.where(virtual >= n - 1, last, np.minimum(prev_i + 1, last))
    out = np.full(len(count), np.nan)
    has = count > 0
    a, b, t = v[(start + prev_i)[has]], v[(start + next_i)[has]], gamma[has]
    diff = b - a
    out[has] = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    return out


def _span(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row of `values` [B,N]: max - min over the masked entries; 0 for rows without any."""
    lo = np.min(np.where(mask, values, np.inf), axis=1)
    hi = np.max(np.where(mask, values, -np.inf), axis=1)
    return np.where(mask.any(axis=1), hi - lo, 0.0)


def _patch_plane_cos(local: np.ndarray, side: np.ndarray, finger_width_m: float) -> np.ndarray:
    """|cos| between the closing axis and the plane through one side's contact points (`side` [B,N]
    of `local` [B,3,N]): the direction of least spread of the patch's positions; -1 where the patch
    has fewer than 5 points or spans less than a third of the finger's width in y or in z.

    Per-point normals come from 16 neighbours; on a memory's small or poorly seen object (the far
    side of a 5 cm brick: ~10 points) they scatter by tens of degrees, while the patch the finger
    presses, taken whole, is still a plane facing the finger."""
    pts, rows, count = _masked_entries(local, side)                              # [M,3]
    B, n = len(side), np.maximum(count, 1)
    mean = np.stack([np.bincount(rows, pts[:, i], minlength=B) for i in range(3)], axis=1) / n[:, None]
    d = pts - mean[rows]
    cov = np.empty((B, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            cov[:, i, j] = cov[:, j, i] = np.bincount(rows, d[:, i] * d[:, j], minlength=B) / n
    _, vecs = np.linalg.eigh(cov)
    cos = np.abs(vecs[:, 0, 0])                                                    # least-spread axis . x
    span = np.zeros((B, 3))
    has = count > 0
    if has.any():
        starts = (np.cumsum(count) - count)[has]
        span[has] = np.maximum.reduceat(pts, starts, axis=0) - np.minimum.reduceat(pts, starts, axis=0)
    wide = (span[:, 1] >= finger_width_m / 3.0) & (span[:, 2] >= finger_width_m / 3.0)
    return np.where((count >= 5) & wide, cos, -1.0)


def _body_boxes(widths: np.ndarray, gripper: GripperConfig, config: GraspPlannerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Centres and sizes [B,3,3] of fingers and palm, swept back to the pre-grasp when configured."""
    centres, sizes = local_boxes(widths, gripper)
    if config.check_approach_sweep:
        centres[:, :, 2] -= 0.5 * gripper.approach_distance_m
        sizes[:, :, 2] += gripper.approach_distance_m
    return centres, sizes


def object_collisions(
    local: np.ndarray, widths: np.ndarray, gripper: GripperConfig, config: GraspPlannerConfig
) -> np.ndarray:
    """True where an object point (`local` [B,3,N], grasp frames) lies in a finger or the palm (inflated
    by `collision_margin_m`, swept back to the pre-grasp when `check_approach_sweep`). The fingers'
    inner faces are the exception: points up to `object_noise_m` past them are noise at the object's
    edges, not a collision (the fingers close onto the object anyway).

    Both fingers are tested at once through |x|: the gripper is symmetric about the y-z plane.
    """
    g, m = gripper, config.collision_margin_m
    back = g.approach_distance_m if config.check_approach_sweep else 0.0
    ax, ay, z = np.abs(local[:, 0]), np.abs(local[:, 1]), local[:, 2]
    half_w = 0.5 * widths[:, None]
    finger = (ax >= half_w + config.object_noise_m) & (ax <= half_w + g.finger_thickness_m + m)
    finger &= (ay <= 0.5 * g.finger_width_m + m)
    finger &= (z >= -g.tcp_depth_m - back - m) & (z <= g.finger_length_m - g.tcp_depth_m + m)
    palm = (ax <= 0.5 * g.palm_width_m + m) & (ay <= 0.5 * g.palm_height_m + m)
    palm &= (z >= -g.tcp_depth_m - g.palm_depth_m - back - m) & (z <= -g.tcp_depth_m + m)
    return (finger | palm).any(axis=1)


def scene_collisions(
    poses: np.ndarray, widths: np.ndarray, points: np.ndarray, tree: cKDTree | None,
    gripper: GripperConfig, config: GraspPlannerConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Collision-free test and clearance of the gripper against scene points (neighbours, table).

    A scene point within `collision_margin_m` of a finger or the palm (swept back to the pre-grasp
    when `check_approach_sweep`) collides, and so does one between the fingers (the gripper would
    close on it). Returns ok [B] and the smallest distance [B] from a scene point to fingers or
    palm, saturated at `clearance_saturation_m`.
    """
    B, sat, margin = len(poses), config.clearance_saturation_m, config.collision_margin_m
    if tree is None:
        return np.ones(B, dtype=bool), np.full(B, sat)
    lo, hi = _gripper_extent(gripper, config)
    centre_local = 0.5 * (lo + hi)
    radius = 0.5 * float(np.linalg.norm(hi - lo)) + margin + sat
    b, idx = _ball_pairs(tree, poses[:, :3, 3] + poses[:, :3, :3] @ centre_local, radius)
    # Points in every grasp frame by one GEMM, then gathered per (candidate, point) pair.
    rotated = points @ poses[:, :3, :3].reshape(B, 9)[:, [0, 3, 6, 1, 4, 7, 2, 5, 8]].reshape(B * 3, 3).T
    rotated = rotated.reshape(len(points), B, 3)[idx, b] - np.einsum("bji,bj->bi", poses[:, :3, :3], poses[:, :3, 3])[b]
    x, y, z = np.abs(rotated[:, 0]), np.abs(rotated[:, 1]), rotated[:, 2]
    g, back = gripper, gripper.approach_distance_m if config.check_approach_sweep else 0.0
    half_w = 0.5 * widths[b]
    finger = _box_distance(x - half_w - 0.5 * g.finger_thickness_m, y, z + g.tcp_depth_m + 0.5 * (back - g.finger_length_m),
                           0.5 * g.finger_thickness_m, 0.5 * g.finger_width_m, 0.5 * (g.finger_length_m + back))
    palm = _box_distance(x, y, z + g.tcp_depth_m + 0.5 * (g.palm_depth_m + back),
                         0.5 * g.palm_width_m, 0.5 * g.palm_height_m, 0.5 * (g.palm_depth_m + back))
    gap = (x <= half_w) & (y <= 0.5 * g.finger_width_m) & (z >= -g.tcp_depth_m) & (z <= g.finger_length_m - g.tcp_depth_m)
    body = np.minimum(finger, palm)
    hit = (body <= margin) | gap
    ok = np.bincount(b[hit], minlength=B) == 0
    clearance = _segment_extreme(body, b, B, largest=False)
    return ok, np.minimum(clearance, sat)


def _box_distance(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, hx: float, hy: float, hz: float) -> np.ndarray:
    """Euclidean distance from points at offsets (dx, dy, dz) from a box centre to the box (0 inside)."""
    ox = np.maximum(np.abs(dx) - hx, 0.0)
    oy = np.maximum(np.abs(dy) - hy, 0.0)
    oz = np.maximum(np.abs(dz) - hz, 0.0)
    return np.sqrt(ox * ox + oy * oy + oz * oz)


def _gripper_extent(gripper: GripperConfig, config: GraspPlannerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Corners (min, max) [3] of the grasp-frame box around the open gripper and its sweep."""
    g = gripper
    back = g.approach_distance_m if config.check_approach_sweep else 0.0
    half_x = max(0.5 * g.palm_width_m, 0.5 * g.max_opening_m + g.finger_thickness_m)
    half_y = 0.5 * max(g.palm_height_m, g.finger_width_m)
    lo = np.array([-half_x, -half_y, -g.tcp_depth_m - g.palm_depth_m - back])
    hi = np.array([half_x, half_y, g.finger_length_m - g.tcp_depth_m])
    return lo, hi
