"""What a query returns, and the ways it can fail (M3Error subclasses a node reports as success=false)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.grasp.types import Grasp


class QueryError(M3Error):
    """A query that could not produce a target (the message says why)."""


class NotFoundError(QueryError):
    """Nothing in the memory matches the text well enough: no target, on purpose.

    Carries what was computed so far (relevance map, rendered image) for display.
    """

    def __init__(
        self,
        message: str,
        *,
        relevance: np.ndarray | None = None,
        rgb: np.ndarray | None = None,
        best_relevance: float = 0.0,
        best_similarity: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.relevance = relevance
        self.rgb = rgb
        self.best_relevance = best_relevance
        self.best_similarity = best_similarity


class NoDepthError(QueryError):
    """The object was found in the image but no valid depth lies under its mask."""


@dataclass(frozen=True)
class QueryResult:
    """A located object and its grasp pose. All poses and points are in the memory's world frame."""

    text: str
    model: str
    label: str
    """What matched, for display (the query itself unless the memory knows a better name)."""
    position: np.ndarray
    """[3] robust object centre, metres, world."""
    world_from_grasp: np.ndarray
    """[4,4] grasp pose (gripper convention of msg/GraspTarget.msg: +z approach, +x closing)."""
    score: float
    """Mean relevance over the object's region, in [0, 1]."""
    max_similarity: float
    """Best cosine similarity between the query and the object's features."""
    extent: np.ndarray
    """[3] robust axis-aligned size, metres, world axes (see `points` for other frames)."""
    points: np.ndarray
    """[M,3] inlier points behind the estimate, world."""
    source: str
    """"view" (rendered at a camera pose) or "gaussians" (3D query without a view)."""
    depth_source: str = ""
    """"live", "memory" (rendered depth) or "" (3D query)."""
    centre_source: str = ""
    """"fused" (visible points + the memory's Gaussians of the object), "surface" (visible points
    only) or "" (3D query: Gaussians only)."""
    world_from_camera: np.ndarray | None = None
    render_camera: PinholeCamera | None = None
    relevance: np.ndarray | None = None
    """[h,w] float32 relevance at the render resolution (view queries)."""
    mask: np.ndarray | None = None
    """[h,w] bool object mask at the render resolution (view queries)."""
    rgb: np.ndarray | None = None
    """[h,w,3] uint8 rendered colour (view queries)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """encode, render, locate, total (milliseconds)."""
    grasps: tuple[Grasp, ...] = ()
    """Feasible grasps of the object, best first (empty when no planner ran or none is feasible)."""

    @property
    def num_points(self) -> int:
        return int(len(self.points))

    def summary(self) -> dict:
        """JSON-friendly summary (no images)."""
        from m3_core.geometry.se3 import pose_from_matrix

        pos, quat = pose_from_matrix(self.world_from_grasp)
        return {
            "text": self.text,
            "model": self.model,
            "label": self.label,
            "position": [float(v) for v in self.position],
            "grasp_position": [float(v) for v in pos],
            "grasp_quat_xyzw": [float(v) for v in quat],
            "score": round(float(self.score), 4),
            "max_similarity": round(float(self.max_similarity), 4),
            "extent": [float(v) for v in self.extent],
            "num_points": self.num_points,
            "source": self.source,
            "depth_source": self.depth_source,
            "centre_source": self.centre_source,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
