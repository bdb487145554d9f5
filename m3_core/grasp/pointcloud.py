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
    """One point per occupied voxel, in a deterministic order.

    The kept point is one of the input points (the first in the voxel), not the voxel's mean: a mean
    merges two surfaces closer than a voxel (the inner and outer side of a cup's wall) into one.
    """
    if len(points) == 0:
        return points
    cells = np.floor(points / voxel_m).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]   # one int64 per voxel
    _, first = np.unique(keys, return_index=True)
    return points[first]


def estimate_normals(points: np.ndarray, tree: cKDTree, neighbours: int) -> np.ndarray:  # [N,3]
    """Unit surface normals by local PCA (the direction of least variance of each point's
    `neighbours` nearest points), oriented away from the cloud's centroid.

    The orientation is right for convex objects; inside concave ones (a cup) it is not, so the
    planner only uses normals up to sign. The points themselves are not smoothed: projecting them
    onto the local planes merges the two sides of a thin wall.
    """
    k = min(neighbours, len(points))
    _, idx = tree.query(points, k=k)
    local = points[idx.reshape(len(points), k)]                   # [N,k,3]
    centred = local - local.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", centred, centred)
    _, vecs = np.linalg.eigh(cov)                                  # ascending eigenvalues
    normals = vecs[:, :, 0]
    flip = np.einsum("ni,ni->n", normals, points - points.mean(axis=0)) < 0.0
    normals[flip] *= -1.0
    return normals
