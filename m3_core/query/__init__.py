"""Text query -> one graspable object instance and its grasps, from an M3 memory.

    from m3_core.query import QueryConfig, QueryEngine, View
    engine = QueryEngine(memory, QueryConfig(render_width=320))
    result = engine.query("yellow bath duck", view=View(world_from_camera, camera, depth_m))
    if result.found:
        result.position, result.grasps[0].world_from_grasp, result.instance.summary(up)
    else:
        result.message, result.relevance  # why not, and the heatmap

"Not found" (nothing matches, or the best match is a table, too large, or out of reach) is a
result with found=False; `result.require_found()` raises NotFoundError instead. Bad input (empty
or overlong text, unknown model, wrong depth size) raises ValueError/TypeError.

Importing this package is cheap: its names load their submodule on first use (PEP 562), so a node
that needs only QueryConfig (the capture and pose-chain nodes' parameters) does not import torch,
the renderer and its compiled kernels (3 s a process on a 2-core machine). The relevance function
is m3_core.query.relevance.relevance (m3_core.query.relevance is its module).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m3_core.query.config import CANONICAL_NEGATIVES, QueryConfig
    from m3_core.query.engine import (
        SEARCH_3D_MODES,
        EncodedQuery,
        QueryEngine,
        background_caption,
        validate_text,
    )
    from m3_core.query.gaussian3d import cluster_points, gaussian_relevance
    from m3_core.query.grasp import approach_direction, closing_direction, fallback_grasps, grasp_pose
    from m3_core.query.instances import (
        Choice,
        Instance,
        Workspace,
        choose,
        pixel_clusters,
        principal_sizes,
        rank_key,
        rejection_reason,
        split_instances,
        support_layer,
        voxel_clusters,
    )
    from m3_core.query.mask import candidate_mask, erode, otsu_threshold
    from m3_core.query.result import NotFoundError, QueryError, QueryResult
    from m3_core.query.target import ObjectEstimate, estimate_object, reject_outliers, robust_extent
    from m3_core.query.text_table import TextEmbeddingTable
    from m3_core.query.view import RenderedRelevance, View, render_camera_for

_EXPORTS: dict[str, str] = {  # name -> the submodule that defines it
    "CANONICAL_NEGATIVES": "config",
    "QueryConfig": "config",
    "EncodedQuery": "engine",
    "QueryEngine": "engine",
    "SEARCH_3D_MODES": "engine",
    "background_caption": "engine",
    "validate_text": "engine",
    "cluster_points": "gaussian3d",
    "gaussian_relevance": "gaussian3d",
    "approach_direction": "grasp",
    "closing_direction": "grasp",
    "fallback_grasps": "grasp",
    "grasp_pose": "grasp",
    "Choice": "instances",
    "Instance": "instances",
    "Workspace": "instances",
    "choose": "instances",
    "pixel_clusters": "instances",
    "principal_sizes": "instances",
    "rank_key": "instances",
    "rejection_reason": "instances",
    "split_instances": "instances",
    "support_layer": "instances",
    "voxel_clusters": "instances",
    "candidate_mask": "mask",
    "erode": "mask",
    "otsu_threshold": "mask",
    "NotFoundError": "result",
    "QueryError": "result",
    "QueryResult": "result",
    "ObjectEstimate": "target",
    "estimate_object": "target",
    "reject_outliers": "target",
    "robust_extent": "target",
    "TextEmbeddingTable": "text_table",
    "RenderedRelevance": "view",
    "View": "view",
    "render_camera_for": "view",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "CANONICAL_NEGATIVES",
    "Choice",
    "EncodedQuery",
    "Instance",
    "NotFoundError",
    "ObjectEstimate",
    "QueryConfig",
    "QueryEngine",
    "QueryError",
    "QueryResult",
    "RenderedRelevance",
    "SEARCH_3D_MODES",
    "TextEmbeddingTable",
    "View",
    "Workspace",
    "approach_direction",
    "background_caption",
    "candidate_mask",
    "choose",
    "closing_direction",
    "cluster_points",
    "erode",
    "estimate_object",
    "fallback_grasps",
    "gaussian_relevance",
    "grasp_pose",
    "otsu_threshold",
    "pixel_clusters",
    "principal_sizes",
    "rank_key",
    "reject_outliers",
    "rejection_reason",
    "render_camera_for",
    "robust_extent",
    "split_instances",
    "support_layer",
    "validate_text",
    "voxel_clusters",
]
