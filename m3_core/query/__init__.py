"""Text query -> grasp target: relevance, mask, 3D target, grasp pose, 3D query without a view.

    from m3_core.query import QueryConfig, locate
    result = locate(memory, "yellow bath duck", model="language",
                    world_from_camera=world_from_camera, camera=camera)
    result.position, result.world_from_grasp, result.score, result.extent

Failures a user should see (nothing matches, no depth) raise QueryError subclasses (M3Error);
bad input (empty or overlong text, unknown model, wrong depth size) raises ValueError/TypeError.
"""

from m3_core.query.config import CANONICAL_NEGATIVES, QueryConfig
from m3_core.query.gaussian3d import (
    GaussianMatch,
    cluster_points,
    gaussian_relevance,
    gaussians_near_points,
    match_gaussians,
)
from m3_core.query.grasp import approach_direction, closing_direction, grasp_pose
from m3_core.query.locate import (
    SEARCH_3D_MODES,
    QueryCache,
    check_model,
    find_target,
    locate,
    locate_3d,
    render_camera_for,
    validate_text,
)
from m3_core.query.mask import erode, mask_from_relevance, otsu_threshold
from m3_core.query.relevance import relevance
from m3_core.query.result import NoDepthError, NotFoundError, QueryError, QueryResult
from m3_core.query.target import ObjectEstimate, estimate_object, reject_outliers, robust_extent

__all__ = [
    "CANONICAL_NEGATIVES",
    "GaussianMatch",
    "NoDepthError",
    "NotFoundError",
    "ObjectEstimate",
    "QueryConfig",
    "QueryError",
    "QueryResult",
    "SEARCH_3D_MODES",
    "QueryCache",
    "approach_direction",
    "check_model",
    "closing_direction",
    "cluster_points",
    "erode",
    "estimate_object",
    "find_target",
    "gaussian_relevance",
    "gaussians_near_points",
    "grasp_pose",
    "locate",
    "locate_3d",
    "mask_from_relevance",
    "match_gaussians",
    "otsu_threshold",
    "reject_outliers",
    "relevance",
    "render_camera_for",
    "robust_extent",
    "validate_text",
]
