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


def gaussian_relevance(
    features: torch.Tensor,  # [N, d]
    opacities: torch.Tensor,  # [N] in [0, 1]
    text_emb: torch.Tensor,  # [d]
    negatives_emb: torch.Tensor | None,  # [k, d]
    config: QueryConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """(relevance [N], cosine similarity [N]) per Gaussian; 0 relevance for too transparent ones."""
    if features.ndim != 2 or features.shape[0] != opacities.reshape(-1).shape[0]:
        raise ValueError(
            f"features must be [N,d] with N = {opacities.numel()} opacities, got {tuple(features.shape)}"
        )
    rel, sim = relevance_fn(features, text_emb, negatives_emb, config.temperature)
    rel = rel.detach().float().cpu().numpy()
    opac = opacities.detach().reshape(-1).float().cpu().numpy()
    return np.where(opac >= config.min_opacity, rel, 0.0), sim.detach().float().cpu().numpy()


def _candidate_clusters(
    means: np.ndarray, relevance: np.ndarray, config: QueryConfig, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate indices [M], their cluster labels [M], summed relevance per cluster [C] with
    too-small clusters at -1). threshold: instead of config.relevance_threshold."""
    if threshold is None:
        threshold = config.relevance_threshold
    if threshold is None:
        raise ValueError("config.relevance_threshold is None; use config.for_model(model) first")
    candidates = np.nonzero(relevance >= threshold)[0]
    if len(candidates) == 0:
        return candidates, np.zeros(0, np.int64), np.zeros(0)
    labels = cluster_points(means[candidates], config.cluster_radius_m)
    mass = np.bincount(labels, weights=relevance[candidates])
    mass[np.bincount(labels) < config.min_cluster_gaussians] = -1.0
    return candidates, labels, mass


def gaussians_near_points(
    points: np.ndarray,  # [P, 3] visible object points, world
    means: np.ndarray,  # [N, 3]
    relevance: np.ndarray,  # [N]
    config: QueryConfig,
    threshold: float | None = None,
) -> np.ndarray:
    """Indices of the relevant Gaussian clusters that touch the visible points (within
    config.fuse_radius_m): the whole object as the memory holds it, back side included.
    threshold: Gaussian relevance needed (default config.relevance_threshold)."""
    candidates, labels, mass = _candidate_clusters(means, relevance, config, threshold)
    if len(candidates) == 0 or len(points) == 0:
        return np.zeros(0, np.int64)
    dist, _ = cKDTree(points).query(means[candidates], distance_upper_bound=config.fuse_radius_m)
    touching = np.unique(labels[np.isfinite(dist)])
    touching = touching[mass[touching] >= 0]
    return candidates[np.isin(labels, touching)]


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
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N,3], got {tuple(means.shape)}")
    n = means.shape[0]
    if features.shape[0] != n or opacities.reshape(-1).shape[0] != n:
        raise ValueError(
            f"means ({n}), opacities ({opacities.numel()}) and features ({features.shape[0]}) disagree in N"
        )
    rel, sim = gaussian_relevance(features, opacities, text_emb, negatives_emb, config)
    points = means.detach().double().cpu().numpy()
    candidates, labels, mass = _candidate_clusters(points, rel, config)
    if len(candidates) == 0 or mass.max() < 0:
        return None
    members = candidates[labels == int(np.argmax(mass))]
    estimate = estimate_object(
        points[members],
        outlier_mad=config.outlier_mad,
        extent_percentile=config.extent_percentile,
        box_percentile=config.box_percentile,
    )
    return GaussianMatch(
        estimate=estimate,
        score=float(rel[members].mean()),
        max_similarity=float(sim[members].max()),
        indices=members,
        relevance=rel,
    )
