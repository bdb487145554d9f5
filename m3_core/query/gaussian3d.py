"""3D query without a view: per-Gaussian relevance -> clusters -> the most relevant object.

Each Gaussian's own principal query, read out through the memory attention, gives a feature per
Gaussian ([N,d], M3Memory.gaussian_features). Those above the relevance threshold (and opaque
enough) are grouped by single-linkage clustering (neighbours within `cluster_radius_m`,
connected components via a k-d tree); the cluster with the largest summed relevance is the object.
This finds objects that are outside (or behind something in) the current camera view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from m3_core.query.config import QueryConfig
from m3_core.query.relevance import relevance as relevance_fn
from m3_core.query.target import ObjectEstimate, estimate_object


@dataclass(frozen=True)
class GaussianMatch:
    """The Gaussians of the best cluster and the estimate built from their means."""

    estimate: ObjectEstimate
    score: float
    """Mean relevance of the cluster's Gaussians, in [0, 1]."""
    max_similarity: float
    """Best cosine similarity to the query within the cluster."""
    indices: np.ndarray
    """[M] indices of the cluster's Gaussians in the memory."""
    relevance: np.ndarray
    """[N] relevance of every Gaussian (0 for the ones not considered)."""


def cluster_points(points: np.ndarray, radius_m: float) -> np.ndarray:
    """Single-linkage cluster labels [N] (0..C-1) of points [N,3]: linked when closer than radius_m."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N,3], got shape {points.shape}")
    if not radius_m > 0:
        raise ValueError(f"cluster radius must be > 0 metres, got {radius_m}")
    n = len(points)
    if n == 0:
        return np.zeros(0, np.int64)
    pairs = cKDTree(points).query_pairs(radius_m, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def match_gaussians(
    means: torch.Tensor,  # [N, 3] world
    opacities: torch.Tensor,  # [N] in [0, 1]
    features: torch.Tensor,  # [N, d]
    text_emb: torch.Tensor,  # [d]
    negatives_emb: torch.Tensor | None,  # [k, d]
    config: QueryConfig,
) -> GaussianMatch | None:
    """The most relevant cluster of Gaussians, or None when no cluster qualifies.

    config: thresholds must be set (QueryConfig.for_model fills them).
    """
    if config.relevance_threshold is None:
        raise ValueError("config.relevance_threshold is None; use config.for_model(model) first")
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N,3], got {tuple(means.shape)}")
    n = means.shape[0]
    if features.shape[0] != n or opacities.reshape(-1).shape[0] != n:
        raise ValueError(
            f"means ({n}), opacities ({opacities.numel()}) and features ({features.shape[0]}) disagree in N"
        )
    rel, sim = relevance_fn(features, text_emb, negatives_emb, config.temperature)
    rel = rel.detach().float().cpu().numpy()
    sim = sim.detach().float().cpu().numpy()
    opac = opacities.detach().reshape(-1).float().cpu().numpy()
    rel = np.where(opac >= config.min_opacity, rel, 0.0)
    candidates = np.nonzero(rel >= config.relevance_threshold)[0]
    if len(candidates) < config.min_cluster_gaussians:
        return None
    points = means.detach().double().cpu().numpy()[candidates]
    labels = cluster_points(points, config.cluster_radius_m)
    sizes = np.bincount(labels)
    mass = np.bincount(labels, weights=rel[candidates])
    mass[sizes < config.min_cluster_gaussians] = -1.0
    best = int(np.argmax(mass))
    if mass[best] < 0:
        return None
    members = candidates[labels == best]
    estimate = estimate_object(
        points[labels == best], outlier_mad=config.outlier_mad, extent_percentile=config.extent_percentile
    )
    return GaussianMatch(
        estimate=estimate,
        score=float(rel[members].mean()),
        max_similarity=float(sim[members].max()),
        indices=members,
        relevance=rel,
    )
