"""3D points of a masked object -> a robust centre and extent.

The centre is the per-axis median of the points after rejecting outliers by their distance to a
first median (median + k * 1.4826 * MAD: the MAD of a normal distribution scaled to its sigma).
A camera sees only the object's front, so the median of visible points lies in front of the
true centre; `surface_to_centre` moves it back along the viewing ray (for a sphere of radius r
the median visible pixel is 0.707 r in front of the centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class ObjectEstimate:
    """A robust 3D estimate of one object, in the frame of the input points."""

    centre: np.ndarray
    """[3] metres."""
    extent: np.ndarray
    """[3] robust axis-aligned size in metres (the points' frame axes)."""
    points: np.ndarray
    """[M,3] the inlier points behind the estimate."""

    @property
    def num_points(self) -> int:
        return int(len(self.points))


def reject_outliers(points: np.ndarray, k_mad: float = 3.0) -> np.ndarray:
    """Boolean inlier mask [N] of points [N,3]: distance to the median within median + k * sigma_MAD."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N,3], got shape {points.shape}")
    if len(points) == 0:
        return np.zeros(0, bool)
    dist = np.linalg.norm(points - np.median(points, axis=0), axis=1)
    med = np.median(dist)
    mad = np.median(np.abs(dist - med))
    # A floor on the spread: with perfectly flat data MAD is 0 and would reject everything but the median.
    limit = med + k_mad * max(_MAD_TO_SIGMA * mad, 1e-4)
    return dist <= limit


def robust_extent(points: np.ndarray, percentile: float = 2.0) -> np.ndarray:
    """[3] size of the (p, 100 - p) percentile box of points [N,3]."""
    lo, hi = np.percentile(points, [percentile, 100.0 - percentile], axis=0)
    return hi - lo


def estimate_object(
    points: np.ndarray,  # [N, 3]
    *,
    camera_position: np.ndarray | None = None,  # [3], same frame as points
    outlier_mad: float = 3.0,
    extent_percentile: float = 2.0,
    surface_to_centre: float = 0.0,
    max_centre_shift_m: float = float("inf"),
    box_percentile: float | None = None,
) -> ObjectEstimate:
    """Robust centre and extent of an object's points (any frame; metres).

    box_percentile None: the centre is the inliers' per-axis median (points of a visible surface,
    see below); a number p: the middle of the inliers' (p, 100 - p) percentile box (points that
    cover the whole object, e.g. Gaussians; ground truth is usually the object's box centre).

    camera_position (with surface_to_centre > 0): the points are a visible surface seen from
    there; the centre is pushed away from the camera by surface_to_centre * half the object's
    narrower width across the viewing ray, at most max_centre_shift_m.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N,3], got shape {points.shape}")
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points) == 0:
        raise ValueError("no finite points to estimate an object from")
    inliers = points[reject_outliers(points, outlier_mad)]
    if box_percentile is not None:
        lo, hi = np.percentile(inliers, [box_percentile, 100.0 - box_percentile], axis=0)
        return ObjectEstimate(0.5 * (lo + hi), robust_extent(inliers, extent_percentile), inliers)
    centre = np.median(inliers, axis=0)
    if camera_position is not None and surface_to_centre > 0 and len(inliers) >= 3:
        ray = centre - np.asarray(camera_position, dtype=np.float64)
        norm = np.linalg.norm(ray)
        if norm > 1e-9:
            ray /= norm
            half_width = 0.5 * _narrow_width_across(inliers - centre, ray, extent_percentile)
            centre = centre + min(surface_to_centre * half_width, max_centre_shift_m) * ray
    return ObjectEstimate(centre, robust_extent(inliers, extent_percentile), inliers)


def _narrow_width_across(offsets: np.ndarray, ray: np.ndarray, percentile: float) -> float:
    """Narrower principal width of the points projected on the plane perpendicular to `ray`."""
    lateral = offsets - np.outer(offsets @ ray, ray)
    # Principal axes in that plane (the third eigenvector is ~ the ray itself).
    _, vecs = np.linalg.eigh(lateral.T @ lateral)
    axes = vecs[:, 1:]  # the two largest directions span the plane
    widths = [float(np.subtract(*np.percentile(lateral @ a, [100 - percentile, percentile]))) for a in axes.T]
    return min(widths)
