"""Keyframe selection by camera motion and time, and a blur score (variance of the Laplacian)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class KeyframeConfig:
    """When a frame is worth keeping."""

    min_translation_m: float = 0.05
    """Keep a frame once the camera moved this far from the last keyframe (metres)."""
    min_rotation_deg: float = 10.0
    """... or turned this much (degrees, geodesic angle)."""
    max_interval_s: float = 5.0
    """... or this long passed since the last keyframe, even without motion (0 disables)."""
    min_interval_s: float = 0.1
    """Never two keyframes closer in time than this (seconds), whatever the motion."""
    min_sharpness: float = 20.0
    """Reject frames whose variance of the Laplacian (grey, 0..255) is below this (0 disables)."""
    min_valid_depth_fraction: float = 0.05
    """Reject frames with fewer valid (non-zero, finite) depth pixels than this fraction."""

    def __post_init__(self) -> None:
        for name in (
            "min_translation_m",
            "min_rotation_deg",
            "max_interval_s",
            "min_interval_s",
            "min_sharpness",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_valid_depth_fraction <= 1.0:
            raise ValueError(
                f"min_valid_depth_fraction must be in [0, 1], got {self.min_valid_depth_fraction}"
            )


def rotation_angle_deg(a_from_b: np.ndarray, a_from_c: np.ndarray) -> float:
    """Geodesic angle between the rotations of two poses, degrees."""
    R = a_from_b[:3, :3].T @ a_from_c[:3, :3]
    # atan2 of sin and cos stays accurate near 0 where arccos(trace) loses half the digits
    sin = 0.5 * np.linalg.norm([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    cos = 0.5 * (np.trace(R) - 1.0)
    return float(np.degrees(np.arctan2(sin, cos)))


class KeyframeSelector:
    """Motion/time gate against the last accepted keyframe.

    `check` says whether a frame is a candidate; the caller runs its other tests (blur, depth) and
    calls `accept` only for frames it actually keeps, so a rejected candidate leaves the reference
    where it was and the next good frame is taken instead.
    """

    def __init__(self, config: KeyframeConfig) -> None:
        self.config = config
        self._last_pose: np.ndarray | None = None
        self._last_stamp_ns: int | None = None

    def check(self, world_from_camera: np.ndarray, stamp_ns: int) -> tuple[bool, str]:
        """(is candidate, why): why in first, translation, rotation, interval, too_soon, no_motion."""
        c = self.config
        if self._last_pose is None:
            return True, "first"
        # after a clock jump the last stamp is unknown: no time test until the next keyframe
        dt_s = float("inf") if self._last_stamp_ns is None else (stamp_ns - self._last_stamp_ns) * 1e-9
        if dt_s < c.min_interval_s:
            return False, "too_soon"
        moved_m = float(np.linalg.norm(world_from_camera[:3, 3] - self._last_pose[:3, 3]))
        if moved_m >= c.min_translation_m:
            return True, "translation"
        if rotation_angle_deg(self._last_pose, world_from_camera) >= c.min_rotation_deg:
            return True, "rotation"
        if c.max_interval_s > 0 and self._last_stamp_ns is not None and dt_s >= c.max_interval_s:
            return True, "interval"
        return False, "no_motion"

    def accept(self, world_from_camera: np.ndarray, stamp_ns: int) -> None:
        self._last_pose = np.array(world_from_camera, dtype=np.float64)
        self._last_stamp_ns = int(stamp_ns)

    def reset_time(self) -> None:
        """After a clock jump: keep the last pose (the place is still covered), forget its stamp."""
        self._last_stamp_ns = None


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (higher = sharper); rgb [H,W,3] uint8."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def valid_depth_fraction(depth_mm: np.ndarray) -> float:
    """Fraction of pixels with a depth reading (non-zero) in a uint16 depth image."""
    return float(np.count_nonzero(depth_mm)) / max(depth_mm.size, 1)
