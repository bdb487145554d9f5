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
from dataclasses import dataclass

import numpy as np

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
    neighbours per radius; its voxels have a few dozen), then the voxel centres are clustered.
    """
    if len(points) == 0:
        return np.zeros(0, np.int64)
    voxel = radius_m / 2.0
    keys = np.floor(points / voxel).astype(np.int64)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    labels = cluster_points((unique + 0.5) * voxel, radius_m)
    return labels[inverse.reshape(-1)]


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
) -> list[Instance]:
    """Candidates of relevant points: 3D clusters, support layers split off and refused."""

    def make(idx: np.ndarray, support: bool = False) -> Instance:
        return Instance(
            points[idx], relevance[idx], similarity[idx], source, support,
            None if pixels is None else pixels[idx],
        )  # fmt: skip

    out: list[Instance] = []
    labels = voxel_clusters(points, config.cluster_radius_m)
    for label in range(int(labels.max(initial=-1)) + 1):
        members = np.nonzero(labels == label)[0]
        if len(members) < min_points:
            continue
        layer = support_layer(points[members], up, config)
        if layer is None:
            out.append(make(members))
            continue
        out.append(make(members[layer], support=True))
        rest = members[~layer]
        sub = voxel_clusters(points[rest], config.cluster_radius_m)
        for k in range(int(sub.max(initial=-1)) + 1):
            part = rest[sub == k]
            if len(part) >= min_points:
                out.append(make(part))
    return out


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
) -> Choice:
    """The best-ranked candidate that `check` leaves unrejected, within next_instance_margin of the
    best match's relevance; candidates below config.min_similarity are not matches at all.

    check: completes a candidate (e.g. fuses it with the memory's Gaussians, plans its grasps) and
    returns it with `rejection` set when it cannot be the answer. Called in rank order, lazily.
    """
    ranked = sorted(candidates, key=lambda c: (c.score, c.max_similarity), reverse=True)
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
            rest = [c for c in matches if all(c is not s for s in seen)]
            return Choice(checked, tuple(seen + rest))
    first = seen[0]
    message = f'"{text}" best matches {first.rejection}, which is not graspable'
    if len(seen) > 1:
        message += "; the other close matches: " + "; ".join(s.rejection for s in seen[1:])
    nxt = [c for c in matches if all(c is not s for s in seen)]
    if nxt:
        message += (
            f" (the next candidate's relevance {nxt[0].score:.2f} is not within "
            f"{config.next_instance_margin:.2f} of the best's {best_score:.2f})"
        )
    return Choice(None, tuple(seen + nxt), message)
