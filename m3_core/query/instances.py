"""Relevant points -> candidate object instances -> the one instance a query answers with.

Candidates come from a view (relevant pixels back-projected to 3D) or from the memory's Gaussians
(3D query). Both are clustered in 3D (single linkage on a voxel-downsampled cloud). Objects touch
the table they stand on, so a cluster that holds a large horizontal layer (a table top, the floor)
is split: the layer becomes a *support* candidate and what stands on it is clustered again.
Every candidate is then checked: a support surface, something larger than the gripper can take,
or something outside the workspace (arm reach, a box, camera distance) is never the answer.
`choose` ranks candidates by relevance and answers with the best graspable one, or explains why
the best match cannot be grasped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from m3_core.grasp.types import Grasp
from m3_core.query.config import QueryConfig
from m3_core.query.gaussian3d import cluster_points


@dataclass(frozen=True)
class Instance:
    """One candidate object: points in the memory's world frame with their relevance."""

    points: np.ndarray
    """[M,3] world, metres (back-projected pixels, Gaussian means, or both once fused)."""
    relevance: np.ndarray
    """[M] relevance of each point to the query, in [0, 1]."""
    similarity: np.ndarray
    """[M] cosine similarity of each point's feature to the query."""
    source: str
    """"view" or "gaussians"."""
    support: bool = False
    """True for a support surface's layer (table top, floor)."""
    pixels: np.ndarray | None = None
    """[V,2] (row, col) at the render resolution of the first V points (those from the view);
    None for Gaussian candidates. Points after the first V are Gaussians fused in."""
    rejection: str = ""
    """Why this candidate cannot be the answer ("" = it can)."""
    grasps: tuple[Grasp, ...] = ()
    """Feasible grasps, best first (filled when the candidate was checked and passed)."""
    planner: str = ""
    """Which planner made the grasps ("planner" or "fallback"; "" = none ran)."""
    support_level_m: float | None = None
    """Height (along up) of the support surface this candidate was split from: it rests there,
    and its bottom, inside that surface's layer, went with the layer."""

    @property
    def score(self) -> float:
        """Mean relevance, in [0, 1]: what candidates are ranked by."""
        return float(self.relevance.mean()) if len(self.relevance) else 0.0

    @property
    def max_similarity(self) -> float:
        return float(self.similarity.max()) if len(self.similarity) else -1.0

    @property
    def num_points(self) -> int:
        return int(len(self.points))

    def centre(self, percentile: float = 2.0) -> np.ndarray:
        """[3] middle of the (p, 100 - p) percentile box of the points, world."""
        lo, hi = np.percentile(self.points, [percentile, 100.0 - percentile], axis=0)
        return 0.5 * (lo + hi)

    def size(self, up: np.ndarray, percentile: float = 2.0) -> tuple[float, float, float]:
        """(length, width, height) in metres: the two horizontal principal sizes, longest first,
        and the size along `up`, each a (p, 100 - p) percentile range."""
        return principal_sizes(self.points, up, percentile)

    def summary(self, up: np.ndarray) -> dict:
        length, width, height = self.size(up)
        return {
            "source": self.source,
            "centre": [round(float(v), 4) for v in self.centre()],
            "size_m": [round(length, 4), round(width, 4), round(height, 4)],
            "num_points": self.num_points,
            "score": round(self.score, 4),
            "max_similarity": round(self.max_similarity, 4),
            "support": self.support,
            "rejection": self.rejection,
        }


@dataclass(frozen=True)
class Workspace:
    """Where an answer may lie, in the memory's world frame."""

    armbase_position: np.ndarray | None = None
    """[3] arm base origin; None = unknown (no reach check)."""
    max_reach_m: float = float("inf")
    """Largest distance from the arm base to an object's centre."""
    camera_position: np.ndarray | None = None
    """[3] the view's camera; None for 3D queries."""
    max_camera_distance_m: float = float("inf")
    """Largest distance from the camera to an object's centre."""
    box_min: np.ndarray | None = None
    """[3] lower corner of the workspace box; None = unbounded."""
    box_max: np.ndarray | None = None
    """[3] upper corner of the workspace box."""

    def rejection(self, centre: np.ndarray) -> str:
        """Why `centre` lies outside the workspace ("" when inside)."""
        if self.armbase_position is not None:
            reach = float(np.linalg.norm(centre - self.armbase_position))
            if reach > self.max_reach_m:
                return f"{reach:.2f} m from the arm base, beyond its reach of {self.max_reach_m:.2f} m"
        if self.camera_position is not None:
            dist = float(np.linalg.norm(centre - self.camera_position))
            if dist > self.max_camera_distance_m:
                return (
                    f"{dist:.2f} m from the camera, beyond the workspace's {self.max_camera_distance_m:.2f} m"
                )
        box = self.box_min is not None and self.box_max is not None
        if box and (np.any(centre < self.box_min) or np.any(centre > self.box_max)):
            where = ", ".join(f"{v:.2f}" for v in centre)
            return f"at ({where}), outside the workspace box"
        return ""


def principal_sizes(
    points: np.ndarray, up: np.ndarray, percentile: float = 2.0
) -> tuple[float, float, float]:
    """(length, width, height) of points [N,3]: horizontal principal sizes and the size along up."""
    up = np.asarray(up, dtype=np.float64)
    if len(points) == 0:
        return 0.0, 0.0, 0.0
    heights = points @ up
    flat = points - np.outer(heights, up)
    flat = flat - flat.mean(axis=0)
    _, vecs = np.linalg.eigh(flat.T @ flat)
    # eigh sorts ascending; the smallest direction is `up` itself (flat has no component along it).
    widths = [
        float(np.subtract(*np.percentile(flat @ v, [100 - percentile, percentile]))) for v in vecs.T[1:]
    ]
    height = float(np.subtract(*np.percentile(heights, [100 - percentile, percentile])))
    return max(widths), min(widths), height


def voxel_clusters(points: np.ndarray, radius_m: float) -> np.ndarray:
    """Single-linkage labels [N] of points linked within about radius_m.

    Points are first pooled into voxels of radius_m / 2 (a dense depth cloud has thousands of
    neighbours per radius; its voxels have a few dozen), then the voxels' mean points are
    clustered (means, not voxel centres: a grid of points 0.75 radius apart would otherwise alias
    into voxel centres a whole radius apart and fall apart in stripes).
    """
    if len(points) == 0:
        return np.zeros(0, np.int64)
    keys = np.floor(points / (radius_m / 2.0)).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse)
    means = np.stack([np.bincount(inverse, weights=points[:, k]) for k in range(3)], 1) / counts[:, None]
    return cluster_points(means, radius_m)[inverse]


def pixel_clusters(
    points: np.ndarray,  # [N, 3] world
    pixels: np.ndarray,  # [N, 2] (row, col) on a grid of step `stride`
    depth_z: np.ndarray,  # [N] camera z-depth, metres
    stride: int,
    fx: float,
    radius_m: float,
) -> np.ndarray:
    """Labels [N] of back-projected pixels: 8-neighbours on the pixel grid are linked when their
    points are closer than max(radius_m, 4 x their pixel footprint).

    A far surface seen at a grazing angle (the floor behind a table) has points many cm apart:
    a fixed 3D radius would shatter it into specks, each too small to be refused for what it is.
    The pixel grid knows who is next to whom; depth jumps (an object before the background) cut.
    """
    n = len(points)
    if n == 0:
        return np.zeros(0, np.int64)
    rows, cols = pixels[:, 0] // stride, pixels[:, 1] // stride
    index = np.full((rows.max() + 2, cols.max() + 3), -1, np.int64)
    index[rows, cols + 1] = np.arange(n)  # +1: a column of padding for the (1, -1) neighbour
    pairs = []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        other = index[rows + dr, cols + 1 + dc]
        ok = other >= 0
        pairs.append(np.stack([np.nonzero(ok)[0], other[ok]], 1))
    pairs = np.vstack(pairs)
    footprint = 4.0 * stride / fx * np.maximum(depth_z[pairs[:, 0]], depth_z[pairs[:, 1]])
    gap = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
    pairs = pairs[gap <= np.maximum(radius_m, footprint)]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def support_layer(points: np.ndarray, up: np.ndarray, config: QueryConfig) -> np.ndarray | None:
    """Boolean mask [N] of the points in a support surface's layer, or None when there is none.

    The layer is the most populated height (within config.plane_tolerance_m, along up); it is a
    support when it is at least config.support_min_width_m long and a third of that wide.
    """
    if len(points) < 3:
        return None
    heights = points @ np.asarray(up, dtype=np.float64)
    tol = config.plane_tolerance_m
    bins = np.floor((heights - heights.min()) / tol).astype(np.int64)
    counts = np.bincount(bins)
    # Two neighbouring bins: a layer of thickness 2 tol may straddle a bin edge.
    pair = counts + np.append(counts[1:], 0)
    start = int(np.argmax(pair))
    in_pair = (bins == start) | (bins == start + 1)
    level = float(np.median(heights[in_pair]))
    layer = np.abs(heights - level) <= tol
    length, width, _ = principal_sizes(points[layer], up)
    if length >= config.support_min_width_m and width >= config.support_min_width_m / 3.0:
        return layer
    return None


def split_instances(
    points: np.ndarray,  # [N, 3] world
    relevance: np.ndarray,  # [N]
    similarity: np.ndarray,  # [N]
    *,
    source: str,
    config: QueryConfig,
    up: np.ndarray,
    min_points: int,
    pixels: np.ndarray | None = None,  # [N, 2]
    labels: np.ndarray | None = None,  # [N]
) -> list[Instance]:
    """Candidates of relevant points: clusters (`labels`, default 3D single linkage), each split
    into its support layer (if any) and the clusters of what stands on it."""

    def make(idx: np.ndarray, support: bool = False, level: float | None = None) -> Instance:
        return Instance(
            points[idx], relevance[idx], similarity[idx], source, support,
            None if pixels is None else pixels[idx], support_level_m=level,
        )  # fmt: skip

    out: list[Instance] = []
    if labels is None:
        labels = voxel_clusters(points, config.cluster_radius_m)
    for label in range(int(labels.max(initial=-1)) + 1):
        members = np.nonzero(labels == label)[0]
        if len(members) < min_points:
            continue
        layer = support_layer(points[members], up, config)
        if layer is None:
            out.append(make(members))
            continue
        level = float(np.median(points[members[layer]] @ up))
        rest = members[~layer]
        sub = voxel_clusters(points[rest], config.cluster_radius_m)
        surface = [members[layer]]
        for k in range(int(sub.max(initial=-1)) + 1):
            part = rest[sub == k]
            offset = np.abs(points[part] @ up - level)
            if np.percentile(offset, 95) <= 2.0 * config.plane_tolerance_m:
                surface.append(part)  # a sliver in the surface's plane (its edge, seen slanted)
            elif len(part) >= min_points:
                out.append(make(part, level=level if np.median(points[part] @ up) > level else None))
        out.append(make(np.concatenate(surface), support=True))
    return _merge_slivers(out, up, config)


def _merge_slivers(instances: list[Instance], up: np.ndarray, config: QueryConfig) -> list[Instance]:
    """Candidates that lie in a support surface's plane, next to it (a strip along its edge, cut
    off by a depth jump where it meets the background), become part of that support."""
    supports = [i for i in instances if i.support]
    if not supports:
        return instances
    trees = [cKDTree(s.points) for s in supports]
    levels = [float(np.median(s.points @ up)) for s in supports]
    out = []
    for inst in instances:
        if not inst.support:
            heights = inst.points @ up
            for k, (tree, level) in enumerate(zip(trees, levels)):
                in_plane = np.percentile(np.abs(heights - level), 95) <= 2.0 * config.plane_tolerance_m
                if in_plane and tree.query(inst.points, k=1)[0].min() <= 2.5 * config.cluster_radius_m:
                    supports[k] = _joined(supports[k], inst)
                    break
            else:
                out.append(inst)
    return out + supports


def _joined(a: Instance, b: Instance) -> Instance:
    pixels = None if a.pixels is None or b.pixels is None else np.vstack([a.pixels, b.pixels])
    return replace(
        a,
        points=np.vstack([a.points, b.points]),
        relevance=np.concatenate([a.relevance, b.relevance]),
        similarity=np.concatenate([a.similarity, b.similarity]),
        pixels=pixels,
    )


def rejection_reason(instance: Instance, config: QueryConfig, workspace: Workspace, up: np.ndarray) -> str:
    """Why `instance` cannot be grasped ("" when it can be tried)."""
    length, width, height = instance.size(up)
    if instance.support:
        return f"a support surface ({length:.2f} m x {width:.2f} m, flat and horizontal, e.g. a table or the floor)"
    largest = max(length, height)
    if largest > config.max_object_size_m:
        return (
            f"a region {largest:.2f} m across, larger than the {config.max_object_size_m:.2f} m "
            "the gripper can take"
        )
    where = workspace.rejection(instance.centre())
    return f"a region {where}" if where else ""


def rank_key(instance: Instance, config: QueryConfig) -> tuple[float, float]:
    """Mean relevance plus config.rank_points_bonus x log10(points): of two about equally relevant
    candidates the one with more evidence ranks first (a stray fragment after its object)."""
    bonus = config.rank_points_bonus * np.log10(max(instance.num_points, 1))
    return instance.score + bonus, instance.max_similarity


@dataclass(frozen=True)
class Choice:
    """The outcome of `choose`: the answer (or None), every candidate seen, and why not found."""

    instance: Instance | None
    candidates: tuple[Instance, ...]
    """Ranked, best first; each with its rejection reason ("" for the answer and unchecked ones)."""
    message: str = ""
    """Why nothing qualifies ("" when instance is not None)."""


def choose(
    candidates: list[Instance],
    text: str,
    config: QueryConfig,
    check: Callable[[Instance], Instance],
    describe: Callable[[Instance], Instance] | None = None,
) -> Choice:
    """The best-ranked candidate that `check` leaves unrejected, within next_instance_margin of the
    best match's relevance; candidates below config.min_similarity are not matches at all.

    check: completes a candidate (e.g. fuses it with the memory's Gaussians, plans its grasps) and
    returns it with `rejection` set when it cannot be the answer. Called in rank order, lazily.
    describe: a cheap check for the candidates ranked below the answer, for display.
    """
    ranked = sorted(candidates, key=lambda c: rank_key(c, config), reverse=True)
    matches = [c for c in ranked if c.max_similarity >= config.min_similarity]
    if not matches:
        best = ranked[0] if ranked else None
        sim = f"{best.max_similarity:.2f}" if best is not None else "-"
        return Choice(
            None, tuple(ranked),
            f'"{text}" not found: the best region\'s similarity {sim} is below '
            f"{config.min_similarity:.2f}; nothing in the memory looks like it",
        )  # fmt: skip
    seen: list[Instance] = []
    best_score = matches[0].score
    for candidate in matches:
        if candidate.score < best_score - config.next_instance_margin:
            break
        checked = check(candidate)
        seen.append(checked)
        if not checked.rejection:
            return Choice(
                checked, tuple(seen + [describe(c) if describe else c for c in matches[len(seen) :]])
            )
    first, rest = seen[0], [describe(c) if describe else c for c in matches[len(seen) :]]
    message = f'"{text}" best matches {first.rejection}, which is not graspable'
    if len(seen) > 1:
        message += "; the other close matches: " + "; ".join(s.rejection for s in seen[1:])
    if rest:
        message += (
            f" (the next candidate's relevance {rest[0].score:.2f} is not within "
            f"{config.next_instance_margin:.2f} of the best's {best_score:.2f})"
        )
    return Choice(None, tuple(seen + rest), message)
