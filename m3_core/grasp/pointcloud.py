"""Point-cloud preparation for grasp planning: checking, voxel thinning and surface normals."""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)


def checked_points(points: np.ndarray, name: str) -> np.ndarray:
    """Return `points` as float64 [N,3] without non-finite rows; raise ValueError on a wrong shape."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must be an [N,3] array of world points in metres, got shape {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        logger.debug("%s: dropped %d non-finite points", name, int((~finite).sum()))
        arr = arr[finite]
    return arr


def voxel_downsample(points: np.ndarray, voxel_m: float) -> np.ndarray:  # [N,3] -> [V,3]
    """One point per occupied voxel (the mean of its points), in a deterministic order."""
    if len(points) == 0:
        return points
    cells = np.floor(points / voxel_m).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]   # one int64 per voxel
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.stack([np.bincount(inverse, weights=points[:, i], minlength=len(counts)) for i in range(3)], 1)
    return sums / counts[:, None]


def smooth_with_normals(points: np.ndarray, tree: cKDTree, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface points with the noise across the surface removed, and unit normals ([N,3] each).

    Local PCA over each point's `neighbours` nearest points: the normal is the direction of least
    variance, and the point is moved onto the plane through the neighbours' mean (first-order moving
    least squares). Depth noise and the spread of Gaussian means otherwise widen the object's
    apparent extent by several millimetres per side. Normals point away from the cloud's centroid:
    right for convex objects, which is what a parallel-jaw gripper mostly takes; on concave parts
    some point inward and their pairs fail the friction-cone test.
    """
    k = min(neighbours, len(points))
    _, idx = tree.query(points, k=k)
    local = points[idx.reshape(len(points), k)]                   # [N,k,3]
    mean = local.mean(axis=1)
    centred = local - mean[:, None, :]
    cov = np.einsum("nki,nkj->nij", centred, centred)
    _, vecs = np.linalg.eigh(cov)                                  # ascending eigenvalues
    normals = vecs[:, :, 0]
    smoothed = points - np.einsum("ni,ni->n", points - mean, normals)[:, None] * normals
    flip = np.einsum("ni,ni->n", normals, smoothed - smoothed.mean(axis=0)) < 0.0
    normals[flip] *= -1.0
    return smoothed, normals
