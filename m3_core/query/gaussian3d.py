"""Per-Gaussian relevance and single-linkage clustering (the 3D query's building blocks).

Each Gaussian's own principal query, read out through the memory attention, gives a feature per
Gaussian ([N,d], M3Memory.gaussian_features), so objects outside (or behind something in) the
current view can be found; m3_core.query.instances turns relevant Gaussians into candidates.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from m3_core.query.config import QueryConfig
from m3_core.query.relevance import relevance as relevance_fn


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
    text_emb: torch.Tensor,  # [d] or [m, d] (the query's forms)
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
