"""A time-indexed transform tree, in the spirit of tf2's BufferCore (which is not installable here).

Edges are `parent_from_child` transforms, static or stamped. A lookup between any two frames of
one tree walks both up to their common ancestor, interpolating each dynamic edge at the stamp:
SLERP for rotation, linear for translation. Stamps are integer nanoseconds.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from m3_core.errors import DisconnectedFramesError, ExtrapolationError, UnknownFrameError
from m3_core.geometry.se3 import invert


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    matrices: list[np.ndarray] = field(default_factory=list)


class TransformBuffer:
    """Static and dynamic transforms between named frames, queried at any stamp.

    cache_ns: how much history each dynamic edge keeps (default 10 s, as tf2).
    tolerance_ns: how far past the newest / before the oldest sample a lookup may go; within it
    the nearest sample is used, beyond it ExtrapolationError.
    Thread-safe: ROS callbacks may insert while another thread looks up.
    """

    def __init__(self, cache_ns: int = 10_000_000_000, tolerance_ns: int = 50_000_000) -> None:
        self.cache_ns = int(cache_ns)
        self.tolerance_ns = int(tolerance_ns)
        self._edges: dict[str, _Edge] = {}  # keyed by child frame: a tree has one parent per child
        self._lock = threading.Lock()

    # -- insertion -------------------------------------------------------------------------
    def set_transform(
        self, parent: str, child: str, parent_from_child: np.ndarray, stamp_ns: int = 0, static: bool = False
    ) -> None:
        """Insert one edge sample. A static edge replaces any earlier one; stamps may arrive in any order."""
        if not parent or not child or parent == child:
            raise ValueError(f"need two different non-empty frame ids, got {parent!r} -> {child!r}")
        T = np.asarray(parent_from_child, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"transform {parent}->{child} must be a finite 4x4 matrix")
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, static)
            if static:
                edge.stamps, edge.matrices = [0], [T]
                return
            i = bisect.bisect_left(edge.stamps, stamp_ns)
            if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
                edge.matrices[i] = T
            else:
                edge.stamps.insert(i, int(stamp_ns))
                edge.matrices.insert(i, T)
            newest = edge.stamps[-1]
            cut = bisect.bisect_left(edge.stamps, newest - self.cache_ns)
            if cut:
                del edge.stamps[:cut], edge.matrices[:cut]

    def clear(self) -> None:
        """Forget dynamic history (e.g. after a clock jump when a bag loops); statics stay."""
        with self._lock:
            self._edges = {c: e for c, e in self._edges.items() if e.static}

    # -- queries ---------------------------------------------------------------------------
    @property
    def frames(self) -> set[str]:
        with self._lock:
            return set(self._edges) | {e.parent for e in self._edges.values()}

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
            return True
        except (UnknownFrameError, DisconnectedFramesError, ExtrapolationError):
            return False

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """`target_from_source` at stamp_ns (4x4)."""
        with self._lock:
            for frame in (target, source):
                if frame not in self._edges and not any(e.parent == frame for e in self._edges.values()):
                    known = sorted(set(self._edges) | {e.parent for e in self._edges.values()})
                    raise UnknownFrameError(f"frame {frame!r} is not in the transform tree; known: {known}")
            if target == source:
                return np.eye(4)
            up_s = self._path_to_root(source)
            up_t = self._path_to_root(target)
            common = next((f for f in up_s if f in set(up_t)), None)
            if common is None:
                raise DisconnectedFramesError(
                    f"{target!r} and {source!r} are in different trees (roots {up_t[-1]!r} and {up_s[-1]!r}); "
                    "is a static transform (mount, hand-eye) missing?"
                )
            common_from_source = self._compose_up(up_s[: up_s.index(common)], stamp_ns)
            common_from_target = self._compose_up(up_t[: up_t.index(common)], stamp_ns)
            return invert(common_from_target) @ common_from_source

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        while frame in self._edges:
            frame = self._edges[frame].parent
            if frame in path:
                raise DisconnectedFramesError(f"the transform tree has a cycle through {frame!r}")
            path.append(frame)
        return path

    def _compose_up(self, children: list[str], stamp_ns: int) -> np.ndarray:
        """ancestor_from_first for the chain children[0] -> ... -> parent of children[-1]."""
        T = np.eye(4)
        for child in children:
            T = self._sample(child, stamp_ns) @ T
        return T

    def _sample(self, child: str, stamp_ns: int) -> np.ndarray:
        edge = self._edges[child]
        if edge.static:
            return edge.matrices[0]
        stamps = edge.stamps
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return edge.matrices[i]
        if i == 0 or i == len(stamps):
            nearest = 0 if i == 0 else len(stamps) - 1
            gap = abs(stamps[nearest] - stamp_ns)
            if gap <= self.tolerance_ns:
                return edge.matrices[nearest]
            side = "before the oldest" if i == 0 else "after the newest"
            raise ExtrapolationError(
                f"{edge.parent}->{child} at t={stamp_ns * 1e-9:.3f}s is {gap * 1e-9:.3f}s {side} sample "
                f"(have {stamps[0] * 1e-9:.3f}..{stamps[-1] * 1e-9:.3f}s, tolerance {self.tolerance_ns * 1e-9:.3f}s)"
            )
        t0, t1 = stamps[i - 1], stamps[i]
        A, B = edge.matrices[i - 1], edge.matrices[i]
        alpha = (stamp_ns - t0) / (t1 - t0)
        rot = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([A[:3, :3], B[:3, :3]])))([alpha])
        T = np.eye(4)
        T[:3, :3] = rot.as_matrix()[0]
        T[:3, 3] = (1 - alpha) * A[:3, 3] + alpha * B[:3, 3]
        return T
