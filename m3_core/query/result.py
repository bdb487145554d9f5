"""What a query returns (found or not), and the error a caller may raise for "not found"."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import pose_from_matrix
from m3_core.grasp.types import Grasp
from m3_core.query.instances import Instance


class QueryError(M3Error):
    """A query that could not produce a target (the message says why)."""


class NotFoundError(QueryError):
    """Nothing in the memory matches the text well enough, or nothing that matches can be grasped:
    no target, on purpose. `QueryResult.require_found` raises it; it carries the failed result
    (relevance map, rendered image, the candidates and why each was refused) for display.
    """

    def __init__(self, message: str, result: QueryResult | None = None) -> None:
        super().__init__(message)
        self.result = result

    @property
    def relevance(self) -> np.ndarray | None:
        return None if self.result is None else self.result.relevance

    @property
    def rgb(self) -> np.ndarray | None:
        return None if self.result is None else self.result.rgb


@dataclass(frozen=True)
class QueryResult:
    """The answer to a query: one object instance and its grasps, or why there is none (found
    False, with the relevance heatmap and the refused candidates). Poses and points: world frame."""

    text: str
    model: str
    label: str
    """What matched, for display (the query itself unless the memory knows a better name)."""
    found: bool = True
    """False: nothing matches, or nothing that matches can be grasped; `message` says why."""
    message: str = ""
    """Why not found ("" when found)."""
    position: np.ndarray | None = None
    """[3] robust object centre, metres, world (None when not found)."""
    world_from_grasp: np.ndarray | None = None
    """[4,4] grasp pose (msg/GraspTarget.msg convention: +z approach, +x closing): the best of
    `grasps`, else a top-down pose at the centre (None when not found)."""
    score: float = 0.0
    """Mean relevance over the object's points, in [0, 1]."""
    max_similarity: float = 0.0
    """Best cosine similarity between the query and the object's features."""
    extent: np.ndarray | None = None
    """[3] robust axis-aligned size, metres, world axes (see `points` for other frames)."""
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    """[M,3] inlier points behind the estimate, world."""
    source: str = ""
    """"view" (rendered at a camera pose) or "gaussians" (3D query without a view)."""
    depth_source: str = ""
    """"live", "memory" (rendered depth) or "" (3D query)."""
    centre_source: str = ""
    """"fused" (visible points + the memory's Gaussians of the object), "surface" (visible points
    only) or "" (3D query: Gaussians only)."""
    world_from_camera: np.ndarray | None = None
    render_camera: PinholeCamera | None = None
    relevance: np.ndarray | None = None
    """[h,w] float32 relevance at the render resolution (view queries, found or not)."""
    mask: np.ndarray | None = None
    """[h,w] bool pixels of the answer's instance at the render resolution (view queries)."""
    rgb: np.ndarray | None = None
    """[h,w,3] uint8 rendered colour (view queries, found or not)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """encode, render, locate, grasp, total (milliseconds)."""
    grasps: tuple[Grasp, ...] = ()
    """Feasible grasps of the object, best first (empty when none is feasible)."""
    grasp_planner: str = ""
    """"planner" (m3_core.grasp.planner) or "fallback" (one top-down grasp, no collision check)."""
    instance: Instance | None = None
    """The candidate the answer is (None when not found)."""
    candidates: tuple[Instance, ...] = ()
    """Candidates considered, ranked best first, each with why it was refused ("" = not refused)."""

    @property
    def num_points(self) -> int:
        return int(len(self.points))

    def require_found(self) -> QueryResult:
        """This result when found, else NotFoundError(message) carrying it."""
        if not self.found:
            raise NotFoundError(self.message, self)
        return self

    def summary(self, world_up=(0.0, 0.0, 1.0)) -> dict:
        """JSON-friendly summary (no images): the instance, its grasps, the refused candidates."""
        up = np.asarray(world_up, dtype=np.float64)
        out = {
            "found": self.found,
            "text": self.text,
            "model": self.model,
            "label": self.label,
            "source": self.source,
            "candidates": [c.summary(up) for c in self.candidates],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
        if not self.found:
            return {**out, "message": self.message}
        pos, quat = pose_from_matrix(self.world_from_grasp)
        return {
            **out,
            "position": [float(v) for v in self.position],
            "grasp_position": [float(v) for v in pos],
            "grasp_quat_xyzw": [float(v) for v in quat],
            "score": round(float(self.score), 4),
            "max_similarity": round(float(self.max_similarity), 4),
            "extent": [float(v) for v in self.extent],
            "num_points": self.num_points,
            "depth_source": self.depth_source,
            "centre_source": self.centre_source,
            "instance": None if self.instance is None else self.instance.summary(up),
            "grasp_planner": self.grasp_planner,
            "grasps": [grasp_summary(g) for g in self.grasps],
        }


def grasp_summary(grasp: Grasp) -> dict:
    """JSON-friendly grasp: poses as position + quaternion (x, y, z, w), width, quality."""

    def pose(matrix: np.ndarray) -> dict:
        pos, quat = pose_from_matrix(matrix)
        return {
            "position": [round(float(v), 4) for v in pos],
            "quat_xyzw": [round(float(v), 5) for v in quat],
        }

    return {
        "pose": pose(grasp.world_from_grasp),
        "pregrasp": pose(grasp.world_from_pregrasp),
        "width_m": round(float(grasp.width_m), 4),
        "quality": round(float(grasp.quality), 4),
    }
