"""Configuration of a text query: relevance, mask, 3D target, grasp pose, 3D (Gaussian) query.

One frozen dataclass; the node maps its ROS parameters onto it, the CLI its flags, YAML goes
through m3_core.config.from_dict. The two thresholds default per model (MODEL_THRESHOLDS): cosine
similarities of a sentence model (caption embeddings) and of CLIP live on different scales.

Calibration of "language" (all-MiniLM-L6-v2 caption embeddings, built-in scene captions, 4
canonical negatives, temperature 0.1; numbers from the captions themselves, see BENCHMARKS.md):
every object's name and synonyms reach relevance >= 0.86 and cosine >= 0.52 on the right caption
(except "building block" 0.54 and "box lid"/"bin", which MiniLM does not tie to "a shallow tray");
the strongest wrong-object relevance is 0.66 ("toy brick" -> teddy bear) and absent objects stay
below relevance 0.80 and cosine 0.46 ("a yellow banana" 0.79 / 0.46, "banana" 0.36 / 0.31).
Hence relevance >= 0.80 and cosine >= 0.50.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from m3_core.query.phrases import COLOUR_WORDS

CANONICAL_NEGATIVES: tuple[str, ...] = ("object", "things", "stuff", "texture")

# model -> (relevance_threshold, min_similarity) used when the config leaves them None.
# "language" is calibrated (module docstring); the CLIP/SigLIP values follow LERF-style practice
# (relevance 0.6 ~ "clearly closer to the query than to every negative") and are not calibrated
# on this machine (no pretrained CLIP/SigLIP weights here).
MODEL_THRESHOLDS: dict[str, tuple[float, float]] = {
    "language": (0.80, 0.50),
    "clip": (0.60, 0.20),
    "siglip": (0.60, 0.05),
}
DEFAULT_THRESHOLDS: tuple[float, float] = (0.60, 0.20)
RELEVANCE_METHODS: tuple[str, ...] = ("products", "decode")


@dataclass(frozen=True)
class QueryConfig:
    """How a text becomes a grasp target."""

    negatives: tuple[str, ...] = CANONICAL_NEGATIVES
    """Canonical phrases the query competes against (LERF pairwise softmax); () = plain cosine."""
    attribute_words: tuple[str, ...] = COLOUR_WORDS
    """Words a match must do without: relevant pixels must also match the query without them ("a
    red apple" must match "apple" too, not only the red mug; m3_core/query/phrases.py). () = off."""
    temperature: float = 0.1
    """Softmax temperature on cosine similarities (LERF uses 0.1, i.e. a factor of 10)."""
    relevance_threshold: float | None = None
    """Pixels (or Gaussians) with relevance at or above this are candidates; the floor under Otsu.
    None = the model's value in MODEL_THRESHOLDS."""
    min_similarity: float | None = None
    """The best cosine similarity in the target region must reach this, else "not found".
    None = the model's value in MODEL_THRESHOLDS."""
    threshold_mode: str = "fixed"
    """"fixed" (relevance_threshold) or "otsu" (Otsu on the relevance map, never below the floor)."""
    min_alpha: float = 0.5
    """Rendered pixels with opacity below this are background: relevance 0 there."""
    min_area_px: int = 12
    """A mask smaller than this (at the render resolution) counts as not found."""
    morph_kernel_px: int = 3
    """Opening + closing kernel (ellipse) that removes speckle and fills pinholes; 0 = none."""
    edge_erode_px: int = 1
    """Erode the mask this much before back-projection: edge pixels mix object and background depth."""
    outlier_mad: float = 3.0
    """Points farther from the median than median + k * 1.4826 * MAD (of the distances) are outliers."""
    extent_percentile: float = 2.0
    """Extent = the (p, 100 - p) percentile range of the inlier points per axis."""
    surface_to_centre: float = 0.8
    """The view sees the front surface: move the centre along the viewing ray by this factor times
    the object's half width across the ray (a sphere's median visible pixel is 0.707 r in front of
    its centre, and its (2, 98) percentile half width is 0.895 r: 0.79); 0 = off."""
    max_centre_shift_m: float = 0.04
    """Cap on that shift: graspable objects are a few cm deep, and a large flat region (a table
    seen at a slant) is not a sphere."""
    centre_mode: str = "fused"
    """"fused": the visible points plus the memory's relevant Gaussians that touch them (the whole
    object, back side included) give the box centre; falls back to "surface" when no Gaussian
    qualifies (e.g. the object moved since the memory was made). "surface": visible points only."""
    fuse_radius_m: float = 0.02
    """"fused": a relevant Gaussian cluster belongs to the object when it comes this close to the
    visible points."""
    fuse_search_m: float = 0.2
    """"fused": only Gaussians inside the visible points' box grown by this are scored and clustered
    (a low fusion threshold once let 22k-107k Gaussians of the whole scene into the clustering,
    0.5 s). At least half of support_min_width_m: the table under the object must stay wide enough
    inside the box to be recognised as a support and split off (at 0.1 m a block fused with its
    piece of table, tests/test_query_clutter.py). 0 = every Gaussian (the engine before issue 14)."""
    fuse_relative_relevance: float = 0.9
    """"fused": Gaussians need this fraction of the view mask's mean relevance (when that is lower
    than relevance_threshold): the view already said which object it is, the Gaussians only complete
    it. 0.9 of the 0.80 threshold is 0.72, above the strongest wrong-object relevance (0.66)."""
    box_percentile: float = 1.0
    """Box centre = middle of the (p, 100 - p) percentile box of the points covering the object."""
    max_points: int = 20000
    """Back-project at most about this many depth pixels (strided)."""
    grasp_mode: str = "top_down"
    """"top_down" (approach along -up of the world) or "view_ray" (along the camera's viewing ray)."""
    world_up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """The world frame's up axis (REP 103 odom: +z)."""
    render_width: int = 0
    """Render the memory at this width (0 = the camera's own size); height keeps the aspect if 0."""
    render_height: int = 0
    """Render height (0 = from render_width and the camera's aspect ratio)."""
    max_text_chars: int = 200
    """Longer queries are refused (text encoders truncate silently; a paragraph is not an object)."""
    cluster_radius_m: float = 0.02
    """3D query: Gaussians closer than this belong to one cluster."""
    min_cluster_gaussians: int = 5
    """3D query: smaller clusters are ignored."""
    min_opacity: float = 0.1
    """3D query: Gaussians more transparent than this are ignored."""
    support_min_width_m: float = 0.3
    """A horizontal layer of a candidate (within plane_tolerance_m in height) at least this long and
    a third of it deep is a support surface (table top, floor): never the answer. The built-in
    scene's largest object, the tray, is 0.24 m."""
    plane_tolerance_m: float = 0.01
    """Half thickness of a support surface's layer, metres (depth noise and Gaussian spread)."""
    max_object_size_m: float = 0.35
    """A candidate longer than this (largest horizontal or vertical size) is more than the gripper
    can take, even by a part (a rim, a handle, a limb): never the answer."""
    max_camera_distance_m: float = 1.5
    """View queries: candidates farther than this from the camera are outside the workspace (a
    wrist camera near the object sees it closer; farther depth is too noisy to grasp from)."""
    max_reach_m: float = 0.0
    """Candidates farther than this from the arm base are outside the workspace, when the arm base
    pose is known. 0 = the robot's arm reach plus its flange-to-grasp distance."""
    workspace_min_m: tuple[float, ...] = ()
    """Optional workspace box, world frame: lower corner (x, y, z) in metres; () = unbounded."""
    workspace_max_m: tuple[float, ...] = ()
    """Optional workspace box, world frame: upper corner (x, y, z) in metres; () = unbounded."""
    relevance_method: str = "products"
    """"products": relevance straight from the attention's principal components
    (M3Memory.feature_products), never the [H*W, d] feature map nor the [N, d] Gaussian features;
    "decode": decode the features, then relevance (the reference, slower; memories whose heads are
    not attention decode either way)."""
    next_instance_margin: float = 0.1
    """When the best match cannot be grasped (support, too large, outside the workspace, no grasp),
    the next graspable candidate answers if its relevance is within this of the best's."""
    rank_points_bonus: float = 0.01
    """Candidates rank by mean relevance plus this x log10(their points): a 60-point fragment
    at 0.95 ranks after its 700-point object at 0.94, a 0.90 table after a 0.97 block."""
    dense_views: int = 5
    """3D queries: virtual cameras the memory's depth is rendered from to give the grasp planner a
    dense object (m3_core.query.dense): one from above, the others from the side around
    the instance. A 3D instance's Gaussian means alone lie ~1 cm apart, too sparse for contact
    normals and collision checks. 0 = plan on the Gaussian means only."""
    dense_view_distance_m: float = 0.4
    """3D queries: distance of the virtual cameras from the instance's centre (at least the framed
    region's size, so that a camera never sits inside it)."""
    dense_pixel_m: float = 0.0025
    """3D queries: the virtual cameras' pixel footprint at the instance's centre (the planner
    thins the object to 4 mm voxels: finer renders cost time and add nothing)."""
    dense_margin_m: float = 0.02
    """3D queries: the virtual cameras frame the instance's box grown by this on every side."""
    dense_view_elevation_deg: float = 45.0
    """3D queries: the side cameras look down at the instance from this angle above the horizon."""
    dense_min_alpha: float = 0.9
    """3D queries: rendered pixels less opaque than this are not back-projected: an edge pixel's
    depth is a blend of the object and what lies behind it, a point in mid-air."""
    dense_replan_below: int = 3
    """View queries: when the view's own points leave fewer feasible grasps than this (none: one
    side seen; one or two: scattered normals on a poorly seen side, e.g. a single diagonal grasp
    across a brick's corners), plan again with the memory's rendered depth around the instance
    added, and keep the plan with more feasible grasps. 0 = never, 1 = only when none is found."""
    dense_box_pad_m: float = 0.003
    """3D queries: rendered points inside the instance's box (its Gaussians' means) grown by this are
    the object's: the surface lies a few mm outside the means. At 8 mm the render's blend into the
    table around the object's foot joined it (half the built-in duck's feasible grasps lost)."""
    planner_workers: int = 2
    """Threads the grasp planner checks its candidate batches on (1: the query's own thread; 0: one
    per CPU core; see GraspPlannerConfig.workers). The grasps are the same for any number."""
    planner_device: str = "auto"
    """Where the grasp planner checks its candidates: "host" (numpy, batch by batch, on
    `planner_workers` threads), "auto" (the memory's device when it is a GPU, else the host) or a
    torch device name ("cuda:0"). The grasps are the same up to rounding (see
    GraspPlannerConfig.device)."""
    require_grasp: bool = True
    """True: a candidate on which the grasp planner (m3_core.grasp.planner) finds no feasible
    grasp is not the answer. The top-down fallback used without the planner never refuses."""

    def __post_init__(self) -> None:
        self._check_modes()
        self._check_relevance()
        self._check_workspace()
        self._check_dense()
        if self.planner_workers < 0:
            raise ValueError(f"planner_workers must be >= 0, got {self.planner_workers}")
        if not re.fullmatch(r"auto|host|cpu|cuda(:\d+)?", self.planner_device):
            raise ValueError(f"planner_device must be 'auto', 'host', 'cpu', 'cuda' or 'cuda:N', "
                             f"got {self.planner_device!r}")

    def _check_modes(self) -> None:
        if self.threshold_mode not in ("fixed", "otsu"):
            raise ValueError(f"threshold_mode must be 'fixed' or 'otsu', got {self.threshold_mode!r}")
        if self.relevance_method not in RELEVANCE_METHODS:
            raise ValueError(
                f"relevance_method must be one of {RELEVANCE_METHODS}, got {self.relevance_method!r}"
            )
        if self.fuse_search_m != 0 and not self.fuse_search_m >= 0.5 * self.support_min_width_m:
            raise ValueError(
                f"fuse_search_m must be 0 (all Gaussians) or at least half of support_min_width_m "
                f"({0.5 * self.support_min_width_m} m), got {self.fuse_search_m}"
            )
        if self.centre_mode not in ("fused", "surface"):
            raise ValueError(f"centre_mode must be 'fused' or 'surface', got {self.centre_mode!r}")
        if self.grasp_mode not in ("top_down", "view_ray"):
            raise ValueError(f"grasp_mode must be 'top_down' or 'view_ray', got {self.grasp_mode!r}")

    def _check_relevance(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.relevance_threshold is not None and not 0.0 <= self.relevance_threshold <= 1.0:
            raise ValueError(f"relevance_threshold must be in [0, 1], got {self.relevance_threshold}")
        if self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity is a cosine in [-1, 1], got {self.min_similarity}")
        if self.render_width < 0 or self.render_height < 0:
            raise ValueError(f"render size must be >= 0, got {self.render_width}x{self.render_height}")
        if any(not isinstance(n, str) or not n.strip() for n in self.negatives):
            raise ValueError(f"negatives must be non-empty strings, got {self.negatives!r}")
        if any(not isinstance(w, str) or len(w.split()) != 1 for w in self.attribute_words):
            raise ValueError(f"attribute_words must be single words, got {self.attribute_words!r}")
        if len(self.world_up) != 3:
            raise ValueError(f"world_up must be 3 numbers, got {self.world_up!r}")
        if not 0.0 <= self.extent_percentile < 50.0:
            raise ValueError(f"extent_percentile must be in [0, 50), got {self.extent_percentile}")
        if self.max_centre_shift_m < 0 or self.surface_to_centre < 0:
            raise ValueError("surface_to_centre and max_centre_shift_m must be >= 0")
        if not 0.0 < self.fuse_relative_relevance <= 1.0:
            raise ValueError(f"fuse_relative_relevance must be in (0, 1], got {self.fuse_relative_relevance}")
        if self.max_text_chars < 1 or self.max_points < 1:
            raise ValueError("max_text_chars and max_points must be >= 1")

    def _check_dense(self) -> None:
        if self.dense_replan_below < 0:
            raise ValueError(f"dense_replan_below must be >= 0, got {self.dense_replan_below}")
        if self.dense_views < 0 or not 0.0 <= self.dense_min_alpha <= 1.0:
            raise ValueError(
                f"dense_views must be >= 0 and dense_min_alpha in [0, 1], got {self.dense_views} "
                f"and {self.dense_min_alpha}"
            )
        dense = {
            "dense_view_distance_m": self.dense_view_distance_m,
            "dense_pixel_m": self.dense_pixel_m,
        }
        if any(not v > 0 for v in dense.values()) or self.dense_margin_m < 0 or self.dense_box_pad_m < 0:
            raise ValueError(
                f"{dense} must be > 0 and dense_margin_m, dense_box_pad_m >= 0 metres, got "
                f"{self.dense_margin_m} and {self.dense_box_pad_m}"
            )
        if not 0.0 <= self.dense_view_elevation_deg < 90.0:
            raise ValueError(
                f"dense_view_elevation_deg must be in [0, 90), got {self.dense_view_elevation_deg}"
            )

    def _check_workspace(self) -> None:
        sizes = {
            "support_min_width_m": self.support_min_width_m,
            "plane_tolerance_m": self.plane_tolerance_m,
            "max_object_size_m": self.max_object_size_m,
            "max_camera_distance_m": self.max_camera_distance_m,
        }
        bad = {k: v for k, v in sizes.items() if not v > 0}
        if bad:
            raise ValueError(f"these sizes must be > 0 metres: {bad}")
        if self.max_reach_m < 0 or not 0 <= self.next_instance_margin <= 1:
            raise ValueError(
                f"max_reach_m must be >= 0 (0 = the arm's) and next_instance_margin in [0, 1], got "
                f"{self.max_reach_m} and {self.next_instance_margin}"
            )
        box = (self.workspace_min_m, self.workspace_max_m)
        if any(len(c) not in (0, 3) for c in box) or (len(box[0]) != len(box[1])):
            raise ValueError(f"workspace_min_m/workspace_max_m must both be () or (x, y, z), got {box}")
        if box[0] and any(lo >= hi for lo, hi in zip(*box)):
            raise ValueError(f"workspace_min_m must be below workspace_max_m on every axis, got {box}")

    def for_model(self, model: str) -> QueryConfig:
        """This config with the thresholds left None filled in from MODEL_THRESHOLDS[model]."""
        relevance_threshold, min_similarity = MODEL_THRESHOLDS.get(model, DEFAULT_THRESHOLDS)
        return replace(
            self,
            relevance_threshold=relevance_threshold
            if self.relevance_threshold is None
            else self.relevance_threshold,
            min_similarity=min_similarity if self.min_similarity is None else self.min_similarity,
        )
