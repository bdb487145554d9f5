"""The query engine: text -> one graspable object instance and its grasps, from an M3 memory.

    engine = QueryEngine(memory, QueryConfig(render_width=320), robot)
    result = engine.query("yellow bath duck", view=View(world_from_camera, camera, depth_m))
    result.found, result.position, result.grasps[0].world_from_grasp, result.message

Stages, each a method: encode (text embeddings cached per model and text in a TextEmbeddingTable,
which may come from a file of precomputed ones; the negatives, plus the memory's background caption
when it was trained with one; their unit directions cached on the memory's device) -> render +
relevance (view queries; by default straight from the attention's principal components, never the
[h*w, d] feature map: config.relevance_method) -> instances (3D clusters of relevant pixels or Gaussians; support surfaces, oversize regions and
regions outside the workspace refused) -> grasp (m3_core.grasp.planner, or a top-down fallback
while that is not installed) -> one QueryResult, which on failure carries the message, the
relevance heatmap and the refused candidates. `m3 query` and the ROS query node both call it.
Bad input (empty text, unknown model, wrong depth size) raises ValueError/TypeError.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

from m3_core.geometry.camera import points_from_depth
from m3_core.grasp.config import GraspPlannerConfig
from m3_core.grasp.planner import plan_grasps
from m3_core.grasp.types import Grasp
from m3_core.query.config import QueryConfig
from m3_core.query.dense import rendered_points, virtual_views
from m3_core.query.gaussian3d import gaussian_relevance
from m3_core.query.grasp import grasp_pose
from m3_core.query.instances import (
    Instance,
    Workspace,
    choose,
    pixel_clusters,
    rejection_reason,
    split_instances,
    voxel_clusters,
)
from m3_core.query.phrases import query_forms
from m3_core.query.relevance import (
    form_count,
    keep_regions_of_every_form,
    text_and_every_form,
    text_directions,
    text_form,
)
from m3_core.query.result import QueryResult
from m3_core.query.target import ObjectEstimate, estimate_object
from m3_core.query.text_table import TextEmbeddingTable
from m3_core.query.view import RenderedRelevance, View, mask_of_pixels, relevant_points, render_relevance
from m3_core.robot import RobotConfig, load_robot_config

log = logging.getLogger(__name__)

SEARCH_3D_MODES = ("never", "fallback", "always")
_TEXT_CACHE_SIZE = 256
_CLEARANCE_M = 0.01  # scene points this close to the object's are the object's (not obstacles)
# Scene points inside the object's box grown by this are the object's too: the instance holds its
# relevant Gaussians, and the object's less relevant ones (its underside, a 400-step memory's fuzz)
# must not count as obstacles the fingers hit: on the built-in scene's duck every grasp was refused
# without it. 5 mm: at 15 mm, blended edge depth around the object made it too wide to grasp.
_OBJECT_BOX_PAD_M = 0.005
_ABOVE_SUPPORT_M = 0.005  # points this little above an object's bottom may be the support under it
# Normals of memory points (Gaussian means, back-projected depth) are noisier than a mesh's: a
# 25-degree cone found 3 antipodal pairs on the built-in duck, 40 degrees enough to plan it. The
# contact score still ranks the better-aligned pairs first.
MEMORY_PLANNER = GraspPlannerConfig(friction_cone_deg=40.0)


@dataclass(frozen=True)
class EncodedQuery:
    """A query text in one model's feature space, with the config filled in for that model."""

    text: str
    model: str
    config: QueryConfig
    text_emb: torch.Tensor  # [m, d]: the text and its other forms (phrases.query_forms)
    negatives_emb: torch.Tensor | None  # [k, d]
    directions: torch.Tensor | None = None  # [m + k, d] unit forms + negatives, on the engine's device


def validate_text(text: Any, max_chars: int) -> str:
    """The query stripped of surrounding blanks; ValueError for non-text, empty or overlong queries."""
    if not isinstance(text, str):
        raise TypeError(f"query text must be a string, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise ValueError('query text is empty; ask for an object, e.g. "yellow bath duck"')
    if len(text) > max_chars:
        raise ValueError(
            f"query text is {len(text)} characters, more than the limit of {max_chars}; "
            "name one object in a few words"
        )
    return text


def rest_on_support(
    estimate: ObjectEstimate, level_m: float, up: np.ndarray, percentile: float
) -> ObjectEstimate:
    """The estimate with its bottom moved down to the support it stands on (at level_m along up):
    the object's lowest part went with the support's layer when the two were split."""
    heights = estimate.points @ up
    top = float(np.percentile(heights, 100.0 - percentile))
    if top <= level_m:
        return estimate
    centre = estimate.centre + (0.5 * (top + level_m) - float(estimate.centre @ up)) * up
    extent = estimate.extent + np.abs(up) * ((top - level_m) - float(np.abs(up) @ estimate.extent))
    return ObjectEstimate(centre, extent, estimate.points)


def query_texts(text: str, config: QueryConfig, background: str) -> tuple[list[str], list[str]]:
    """(the text's forms, its negatives): every text a query of `text` embeds (background: the
    memory's caption of unlabelled pixels, "" for none)."""
    negatives = list(config.negatives)
    if background and background not in negatives:
        negatives.append(background)
    return query_forms(text, config.attribute_words), negatives


def background_caption(memory: Any, model: str) -> str:
    """The caption the memory's unlabelled pixels were trained on ("" when none, e.g. older memories)."""
    entry = (getattr(memory, "manifest", None) or {}).get("models", {}).get(model, {})
    return str((entry.get("preprocessing") or {}).get("background_caption") or "")


class QueryEngine:
    """Answers text queries from one memory; holds the caches that make repeated queries fast
    (text encoders, text embeddings and directions, the Gaussians' means on the host).

    text_table: precomputed text embeddings (TextEmbeddingTable.load); texts it lacks are encoded
    with the memory's text encoder and added to it."""

    def __init__(
        self,
        memory: Any,
        config: QueryConfig | None = None,
        robot: RobotConfig | None = None,
        device: str | torch.device | None = None,
        text_table: TextEmbeddingTable | None = None,
    ) -> None:
        self.memory = memory
        self.config = config or QueryConfig()
        self.robot = robot or load_robot_config()
        self.device = device if device is not None else getattr(memory, "device", "cpu")
        self._encoders: dict[str, Any] = {}
        self._texts = text_table if text_table is not None else TextEmbeddingTable(_TEXT_CACHE_SIZE)
        self._check_text_table()
        self._directions: OrderedDict[tuple[str, str, tuple[str, ...]], torch.Tensor] = OrderedDict()
        self._gaussians: dict[str, tuple[torch.Tensor, np.ndarray, torch.Tensor]] = {}
        self._host: tuple[np.ndarray, np.ndarray] | None = None
        self._grasp_ms = 0.0  # planning time of the running query (several candidates may be planned)
        self._last_gaussian_relevance: tuple[EncodedQuery | None, tuple[np.ndarray, np.ndarray]] = (None, ())

    # -- stage 1: encode ---------------------------------------------------------------------
    def model_name(self, model: str = "") -> str:
        """`model`, or the default ("language" if held, else the first); ValueError if not held."""
        models = list(self.memory.models)
        if not model:
            return "language" if "language" in models else models[0]
        if model not in models:
            raise ValueError(f"unknown model {model!r}: this memory holds {models}")
        return model

    @property
    def loaded_encoders(self) -> list[str]:
        """The models whose text encoder this engine has loaded (none while every text came from
        its text table)."""
        return list(self._encoders)

    def encoder(self, model: str) -> Any:
        if model not in self._encoders:
            self._encoders[model] = self.memory.text_encoder(model, device=self.device)
            self._texts.model_ids.setdefault(model, str(getattr(self._encoders[model], "model_id", "")))
        return self._encoders[model]

    def _check_text_table(self) -> None:
        """Refuse precomputed embeddings of another encoder than the one the memory was trained on."""
        models = (getattr(self.memory, "manifest", None) or {}).get("models", {})
        for model, made_by in self._texts.model_ids.items():
            trained_on = str((models.get(model) or {}).get("model_id") or "")
            if made_by and trained_on and made_by != trained_on:
                raise ValueError(
                    f"the text embeddings for {model!r} ({self._texts.source or 'table'}) were made by "
                    f"{made_by} but this memory was trained on {trained_on} features; compute them "
                    "with the memory's model"
                )

    @property
    def text_table(self) -> TextEmbeddingTable:
        """The engine's text embeddings (precomputed ones and those encoded so far)."""
        return self._texts

    def embed(self, model: str, texts: list[str]) -> torch.Tensor:
        """[n, d] embeddings, cached per (model, text); the encoder is loaded only for missing texts."""
        todo = [t for t in dict.fromkeys(texts) if (model, t) not in self._texts]
        if todo:
            out = torch.as_tensor(self.encoder(model).encode_text(todo))
            if out.ndim != 2 or out.shape[0] != len(todo):
                raise RuntimeError(
                    f"text encoder of {model!r} returned shape {tuple(out.shape)} for {len(todo)} texts"
                )
            self._texts.put(model, todo, out.float())
        return torch.stack([self._texts[(model, t)] for t in texts])

    def encode(self, text: str, model: str = "", config: QueryConfig | None = None) -> EncodedQuery:
        """The text's embedding and the negatives' (config's, plus the background caption), and
        their unit directions on the engine's device (cached per model, text and negatives)."""
        model = self.model_name(model)
        config = (config or self.config).for_model(model)
        text = validate_text(text, config.max_text_chars)
        forms, negatives = query_texts(text, config, background_caption(self.memory, model))
        negatives_emb = self.embed(model, negatives) if negatives else None
        text_emb = self.embed(model, forms)
        key = (model, text, tuple(negatives), config.attribute_words)
        if key not in self._directions:
            self._directions[key] = text_directions(text_emb, negatives_emb).to(self.device)
        self._directions.move_to_end(key)
        while len(self._directions) > _TEXT_CACHE_SIZE:
            self._directions.popitem(last=False)
        return EncodedQuery(text, model, config, text_emb, negatives_emb, self._directions[key])

    # -- the Gaussians -------------------------------------------------------------------------
    def gaussians(self, model: str) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """(features [N,d] on the memory's device, means [N,3] float64 numpy, opacities [N]):
        decodes every Gaussian's feature (relevance_method "decode"; pictures of all Gaussians)."""
        if model not in self._gaussians:
            features = self.memory.gaussian_features(model)
            g = self.memory.gaussians
            self._gaussians[model] = (
                features,
                self.host_gaussians()[0],
                torch.as_tensor(g.opacities).detach(),
            )
        return self._gaussians[model]

    def host_gaussians(self) -> tuple[np.ndarray, np.ndarray]:
        """(means [N,3] float64, opacities [N] float32) on the host, copied once per engine."""
        if self._host is None:
            g = self.memory.gaussians
            with torch.no_grad():
                packed = (
                    torch.cat([g.means.double(), g.opacities.reshape(-1, 1).double()], dim=1).cpu().numpy()
                )
            self._host = (np.ascontiguousarray(packed[:, :3]), packed[:, 3].astype(np.float32))
        return self._host

    def gaussian_scores(
        self, enc: EncodedQuery, index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(relevance [n], similarity [n]) of the Gaussians `index` (None: all N) to the query's
        text; relevance 0 for Gaussians more transparent than config.min_opacity."""
        return self._gaussian_score_pairs(enc, index)[0]

    def _gaussian_score_pairs(
        self, enc: EncodedQuery, index: np.ndarray | None = None
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """gaussian_scores to the text, and to all its forms at once (their minimum; the same pair
        with one form), from one pass over the Gaussians."""
        forms = form_count(enc.text_emb)
        if enc.config.relevance_method == "decode":
            features, _, opacities = self.gaussians(enc.model)
            if index is not None:
                sel = torch.as_tensor(index, device=features.device)
                features, opacities = features[sel], opacities.reshape(-1)[sel]
            own = gaussian_relevance(features, opacities, text_form(enc.text_emb), enc.negatives_emb, enc.config)
            if forms == 1:
                return own, own
            return own, gaussian_relevance(features, opacities, enc.text_emb, enc.negatives_emb, enc.config)
        _, opacities = self.host_gaussians()
        with torch.no_grad():
            queries = self.memory.gaussians.queries
            if index is not None:
                queries = queries[torch.as_tensor(index, device=queries.device)]
                opacities = opacities[index]
            directions = (
                enc.directions
                if enc.directions is not None
                else text_directions(enc.text_emb, enc.negatives_emb)
            )
            dots, norms = self.memory.feature_products(enc.model, queries, directions.to(queries.device))
            (rel, sim), (rel_all, sim_all) = text_and_every_form(dots, norms, enc.config.temperature, forms)
            planes = [rel, sim] if forms == 1 else [rel, sim, rel_all, sim_all]
            host = torch.stack(planes).float().cpu().numpy()  # one copy
        visible = opacities >= enc.config.min_opacity
        own = (np.where(visible, host[0], 0.0), host[1])
        return (own, own) if forms == 1 else (own, (np.where(visible, host[2], 0.0), host[3]))

    def gaussian_instances(
        self, enc: EncodedQuery, threshold: float | None = None, near: np.ndarray | None = None
    ) -> list[Instance]:
        """Candidates among the Gaussians at or above `threshold` (default: the config's); with
        `near` [M,3] only among those inside its box grown by config.fuse_search_m (when > 0)."""
        means, _ = self.host_gaussians()
        if near is not None and len(near) and enc.config.fuse_search_m > 0:
            grow = enc.config.fuse_search_m
            lo, hi = near.min(axis=0) - grow, near.max(axis=0) + grow
            index = np.nonzero(np.all((means >= lo) & (means <= hi), axis=1))[0]
            rel, sim = self.gaussian_scores(enc, index)
            means = means[index]
        else:
            rel, sim = self._gaussian_relevance(enc)
        if threshold is None:
            threshold = enc.config.relevance_threshold
        idx = np.nonzero(rel >= threshold)[0]
        return split_instances(
            means[idx], rel[idx], sim[idx], source="gaussians", config=enc.config,
            up=self._up(enc.config), min_points=enc.config.min_cluster_gaussians,
        )  # fmt: skip

    def _gaussian_relevance(self, enc: EncodedQuery) -> tuple[np.ndarray, np.ndarray]:
        """(relevance [N], similarity [N]) of every Gaussian to the query, kept for the query's
        duration (each view candidate's fusion asks again). With several forms of the query, only
        clusters that hold a Gaussian relevant to every form keep the text's relevance
        (relevance.keep_regions_of_every_form)."""
        if self._last_gaussian_relevance[0] is not enc:
            (rel, sim), every = self._gaussian_score_pairs(enc)
            if form_count(enc.text_emb) > 1:
                threshold = enc.config.relevance_threshold
                idx = np.nonzero(rel >= threshold)[0]
                labels = np.full(len(rel), -1, np.int64)
                labels[idx] = voxel_clusters(self.host_gaussians()[0][idx], enc.config.cluster_radius_m)
                rel, sim = keep_regions_of_every_form(rel, sim, *every, labels, threshold)
            self._last_gaussian_relevance = (enc, (rel, sim))
        return self._last_gaussian_relevance[1]

    def _scene_points(
        self,
        enc: EncodedQuery,
        object_points: np.ndarray,
        rendered: RenderedRelevance | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(object [N',3], scene [M,3]): the object's points completed with the opaque Gaussians and
        view depth points inside its box (grown by _OBJECT_BOX_PAD_M, above its lowest point), and
        what the gripper may collide with: everything else farther than _CLEARANCE_M from it."""
        means, opacities = self.host_gaussians()
        opaque = means[opacities >= enc.config.min_opacity]
        clouds = [opaque]
        if rendered is not None:
            depth = rendered.live_depth_m if rendered.live_depth_m is not None else rendered.rendered_depth_m
            step = max(1, int(np.sqrt(depth.size / enc.config.max_points)))
            points, _ = points_from_depth(
                depth, rendered.render_camera, rendered.world_from_camera, stride=step
            )
            clouds.append(points)
        scene = np.vstack(clouds)
        if not (len(scene) and len(object_points)):
            return object_points, scene
        dist, _ = cKDTree(object_points).query(scene, distance_upper_bound=_CLEARANCE_M)
        up = self._up(enc.config)
        lo, hi = object_points.min(axis=0) - _OBJECT_BOX_PAD_M, object_points.max(axis=0) + _OBJECT_BOX_PAD_M
        above_bottom = scene @ up >= (object_points @ up).min() + _ABOVE_SUPPORT_M
        inside = np.all((scene >= lo) & (scene <= hi), axis=1) & above_bottom & ~np.isfinite(dist)
        return np.vstack([object_points, scene[inside]]), scene[~np.isfinite(dist) & ~inside]

    # -- stage 3 helpers: complete and check one candidate -----------------------------------
    def _fuse(self, enc: EncodedQuery, candidate: Instance) -> Instance:
        """A view candidate plus the memory's relevant Gaussian instances that touch it (the whole
        object as the memory holds it, back side included). The view already said which object
        it is, so a Gaussian needs only fuse_relative_relevance of the candidate's relevance. Only
        the Gaussians near the candidate (config.fuse_search_m) are scored and clustered."""
        config = enc.config
        threshold = min(config.relevance_threshold, config.fuse_relative_relevance * candidate.score)
        tree = cKDTree(candidate.points)
        parts = [candidate]
        for inst in self.gaussian_instances(enc, threshold, near=candidate.points):
            if inst.support:
                continue
            dist, _ = tree.query(inst.points, distance_upper_bound=config.fuse_radius_m)
            if np.isfinite(dist).any():
                parts.append(inst)
        if len(parts) == 1:
            return candidate
        return replace(
            candidate,
            points=np.vstack([p.points for p in parts]),
            relevance=np.concatenate([p.relevance for p in parts]),
            similarity=np.concatenate([p.similarity for p in parts]),
        )

    def _check(
        self,
        enc: EncodedQuery,
        candidate: Instance,
        workspace: Workspace,
        rendered: RenderedRelevance | None,
        world_from_armbase: np.ndarray | None,
    ) -> Instance:
        """The candidate completed (fused with Gaussians for view candidates), with its rejection
        reason and, when it passes, its grasps."""
        if candidate.source == "view" and enc.config.centre_mode == "fused" and not candidate.support:
            candidate = self._fuse(enc, candidate)
        reason = rejection_reason(candidate, enc.config, workspace, self._up(enc.config))
        if reason:
            return replace(candidate, rejection=reason)
        t0 = time.perf_counter()
        grasps, planner = self.plan(enc, candidate, rendered, world_from_armbase)
        self._grasp_ms += (time.perf_counter() - t0) * 1e3
        candidate = replace(candidate, grasps=grasps, planner=planner)
        # The fallback's empty answer means "not top-down", not "infeasible": only the planner refuses.
        if not grasps and enc.config.require_grasp and planner == "planner":
            length, width, height = candidate.size(self._up(enc.config))
            return replace(
                candidate,
                rejection=f"an object ({length:.2f} x {width:.2f} x {height:.2f} m) on which the "
                f"{planner} finds no feasible grasp",
            )
        return candidate

    # -- stage 4: grasp ---------------------------------------------------------------------
    # One BLAS thread, as in the planner: the point transforms here are [N,3] x [3,3] products, which
    # BLAS threads made 6x slower on a busy 2-core machine (same numbers either way).
    @threadpool_limits.wrap(limits=1, user_api="blas")
    def plan(
        self,
        enc: EncodedQuery,
        instance: Instance,
        rendered: RenderedRelevance | None,
        world_from_armbase: np.ndarray | None,
    ) -> tuple[tuple[Grasp, ...], str]:
        """(grasps best first, which planner made them) for one instance. A 3D instance plans on
        the memory's depth rendered around it; a view instance on what the view saw, and when that
        leaves fewer than `dense_replan_below` feasible grasps (one side seen, a few sparse points
        with scattered normals on the far side) once more with the rendered depth added, keeping
        the plan with more grasps: the memory holds the sides the view does not show."""
        dense = enc.config.dense_views > 0
        points = instance.points
        if instance.source == "gaussians" and dense:
            points = np.vstack([self.dense_object(enc.config, instance), points])
        grasps = self._plan_on(enc, points, rendered, world_from_armbase)
        # supports never get here (rejected before planning)
        if len(grasps) < enc.config.dense_replan_below and instance.source == "view" and dense:
            points = np.vstack([self.dense_object(enc.config, instance), points])
            denser = self._plan_on(enc, points, rendered, world_from_armbase)
            if len(denser) > len(grasps):
                grasps = denser
        return tuple(grasps), "planner"

    def _plan_on(
        self,
        enc: EncodedQuery,
        points: np.ndarray,
        rendered: RenderedRelevance | None,
        world_from_armbase: np.ndarray | None,
    ) -> list[Grasp]:
        obj, scene = self._scene_points(enc, points, rendered)
        planner = replace(MEMORY_PLANNER, workers=enc.config.planner_workers,
                          device=self._planner_device(enc.config.planner_device))
        return plan_grasps(obj, scene, self.robot.gripper, self.robot.arm, world_from_armbase, planner)

    def _planner_device(self, choice: str) -> str | None:
        """GraspPlannerConfig.device for QueryConfig.planner_device (None: numpy on the host)."""
        if choice == "host":
            return None
        if choice == "auto":
            device = torch.device(self.device)
            return str(device) if device.type == "cuda" else None
        return choice

    def dense_object(self, config: QueryConfig, instance: Instance) -> np.ndarray:
        """[N,3] the memory's depth on a 3D instance's surface (m3_core.query.dense): rendered from
        config.dense_views virtual cameras, kept inside the box of its Gaussians grown by
        config.dense_box_pad_m and above its bottom. An instance split from its support rests on
        it (its lowest Gaussians went with the support's layer): its box reaches down to it.

        The rendered points outside the box are not made obstacles: the render blends the object
        into the table around its foot (a fillet 1-2 cm wide), and as obstacles they blocked every
        grasp of the built-in scene's brick, mug and teddy (and raised the support plane's noise);
        the Gaussians remain the collision scene."""
        up = self._up(config)
        points = instance.points
        heights = points @ up
        bottom = float(heights.min())
        if instance.support_level_m is not None:
            bottom = min(bottom, instance.support_level_m)
        lo = points.min(axis=0) - config.dense_box_pad_m - (float(heights.min()) - bottom) * np.abs(up)
        hi = points.max(axis=0) + config.dense_box_pad_m
        views = virtual_views(lo, hi, config, up)
        dense = rendered_points(self.memory, views, config.dense_min_alpha, lo, hi)
        return dense[dense @ up >= bottom + _ABOVE_SUPPORT_M]

    # -- the query ----------------------------------------------------------------------------
    def workspace(
        self, config: QueryConfig, view: View | None, world_from_armbase: np.ndarray | None
    ) -> Workspace:
        reach = config.max_reach_m or (self.robot.arm.reach_m + self.robot.arm.flange_from_grasp_m)
        box = (config.workspace_min_m, config.workspace_max_m)
        return Workspace(
            armbase_position=None if world_from_armbase is None else np.asarray(world_from_armbase)[:3, 3],
            max_reach_m=reach,
            camera_position=None if view is None else view.camera_position,
            max_camera_distance_m=config.max_camera_distance_m,
            box_min=np.asarray(box[0], float) if box[0] else None,
            box_max=np.asarray(box[1], float) if box[1] else None,
        )

    def query(
        self,
        text: str,
        *,
        model: str = "",
        view: View | None = None,
        world_from_armbase: np.ndarray | None = None,
        search_3d: str = "fallback",
        config: QueryConfig | None = None,
    ) -> QueryResult:
        """Answer `text` from the view (None = a 3D query among the Gaussians).

        search_3d: "never" answers from the view only; "fallback" asks the Gaussians when the
        view has no graspable match; "always" skips the view. world_from_armbase [4,4]: where the
        arm base is (reach check), None when unknown.
        """
        if search_3d not in SEARCH_3D_MODES:
            raise ValueError(f"search_3d must be one of {SEARCH_3D_MODES}, got {search_3d!r}")
        if world_from_armbase is not None:
            world_from_armbase = np.asarray(world_from_armbase, dtype=np.float64)
            if world_from_armbase.shape != (4, 4):
                raise ValueError(f"world_from_armbase must be 4x4, got {world_from_armbase.shape}")
        t0 = time.perf_counter()
        self._grasp_ms = 0.0
        enc = self.encode(text, model, config)
        timings = {"encode": (time.perf_counter() - t0) * 1e3}
        if view is None or search_3d == "always":
            result = self._answer_3d(enc, view, world_from_armbase, timings)
        else:
            result = self._answer_view(enc, view, world_from_armbase, timings)
            if not result.found and search_3d == "fallback":
                result = self._view_then_3d(enc, view, world_from_armbase, result)
        total = (time.perf_counter() - t0) * 1e3
        return replace(result, timings_ms={**result.timings_ms, "grasp": self._grasp_ms, "total": total})

    def _view_then_3d(
        self, enc: EncodedQuery, view: View, world_from_armbase: np.ndarray | None, in_view: QueryResult
    ) -> QueryResult:
        result = self._answer_3d(enc, view, world_from_armbase, dict(in_view.timings_ms))
        if result.found:
            log.info("%r has no graspable match in the view; found among the Gaussians", enc.text)
            return result
        return replace(in_view, message=f"{in_view.message}; also not among the Gaussians ({result.message})")

    def _answer_view(
        self, enc: EncodedQuery, view: View, world_from_armbase: np.ndarray | None, timings: dict[str, float]
    ) -> QueryResult:
        t0 = time.perf_counter()
        rendered = render_relevance(
            self.memory, view, enc.model, enc.text_emb, enc.negatives_emb, enc.config, enc.directions
        )
        t1 = time.perf_counter()
        points, pixels, stride, depth_source = relevant_points(rendered, enc.config.max_points)
        # min_area_px counts a region before its edge is eroded and before depth jumps split it
        min_points = max(3, enc.config.min_area_px // (4 * stride * stride))
        depth_z = (points - view.camera_position) @ view.world_from_camera[:3, 2]
        labels = pixel_clusters(
            points, pixels, depth_z, stride, rendered.render_camera.fx, enc.config.cluster_radius_m
        )
        rows, cols = pixels[:, 0], pixels[:, 1]
        candidates = split_instances(
            points, rendered.relevance[rows, cols], rendered.similarity[rows, cols], source="view",
            config=enc.config, up=self._up(enc.config), min_points=min_points, pixels=pixels, labels=labels,
        )  # fmt: skip
        base = QueryResult(
            text=enc.text, model=enc.model, label=enc.text, source="view", depth_source=depth_source,
            world_from_camera=view.world_from_camera, render_camera=rendered.render_camera,
            relevance=rendered.relevance, rgb=rendered.rgb,
        )  # fmt: skip
        if not candidates:
            best = float(rendered.relevance.max(initial=0.0))
            message = (
                f'"{enc.text}" not found: no region of the view reaches relevance {rendered.threshold:.2f} '
                f"(best {best:.2f}, best similarity {float(rendered.similarity.max(initial=0.0)):.2f}, "
                f"model {enc.model})"
            )
            if rendered.mask.any() and not len(points):
                message = f'"{enc.text}" is in the view but no valid depth lies under its mask'
            elif rendered.mask.any():
                message = (
                    f'"{enc.text}" not found: the regions of the view that reach relevance '
                    f"{rendered.threshold:.2f} (best {best:.2f}) are specks, fewer than {min_points} points each"
                )
            return replace(base, found=False, message=message, timings_ms=self._times(timings, t0, t1))
        workspace = self.workspace(enc.config, view, world_from_armbase)
        choice = choose(
            candidates, enc.text, enc.config,
            lambda c: self._check(enc, c, workspace, rendered, world_from_armbase),
            lambda c: replace(c, rejection=rejection_reason(c, enc.config, workspace, self._up(enc.config))),
        )  # fmt: skip
        timings = self._times(timings, t0, t1)
        if choice.instance is None:
            return replace(
                base, found=False, message=choice.message, candidates=choice.candidates, timings_ms=timings
            )
        inst = choice.instance
        shape = rendered.relevance.shape
        return self._found(
            replace(base, mask=mask_of_pixels(inst.pixels, shape, stride, rendered.mask), timings_ms=timings),
            enc,
            inst,
            choice.candidates,
            view,
        )

    def _answer_3d(
        self,
        enc: EncodedQuery,
        view: View | None,
        world_from_armbase: np.ndarray | None,
        timings: dict[str, float],
    ) -> QueryResult:
        t0 = time.perf_counter()
        candidates = self.gaussian_instances(enc)
        t1 = time.perf_counter()
        base = QueryResult(text=enc.text, model=enc.model, label=enc.text, source="gaussians")
        if not candidates:
            message = (
                f'"{enc.text}" not found among the memory\'s Gaussians: no cluster of at least '
                f"{enc.config.min_cluster_gaussians} reaches relevance {enc.config.relevance_threshold:.2f} "
                f"(model {enc.model})"
            )
            return replace(base, found=False, message=message, timings_ms=self._times(timings, t0, t1))
        workspace = self.workspace(enc.config, None, world_from_armbase)
        choice = choose(
            candidates, enc.text, enc.config,
            lambda c: self._check(enc, c, workspace, None, world_from_armbase),
            lambda c: replace(c, rejection=rejection_reason(c, enc.config, workspace, self._up(enc.config))),
        )  # fmt: skip
        timings = self._times(timings, t0, t1)
        if choice.instance is None:
            return replace(
                base, found=False, message=choice.message, candidates=choice.candidates, timings_ms=timings
            )
        return self._found(replace(base, timings_ms=timings), enc, choice.instance, choice.candidates, view)

    def _found(
        self,
        base: QueryResult,
        enc: EncodedQuery,
        inst: Instance,
        candidates: tuple[Instance, ...],
        view: View | None,
    ) -> QueryResult:
        """The answer: the instance's robust centre and extent, and its grasp pose."""
        config = enc.config
        camera_position = None if view is None else view.camera_position
        n_visible = 0 if inst.pixels is None else len(inst.pixels)
        if inst.source == "view" and n_visible == len(inst.points):
            estimate = estimate_object(
                inst.points, camera_position=camera_position, outlier_mad=config.outlier_mad,
                extent_percentile=config.extent_percentile, surface_to_centre=config.surface_to_centre,
                max_centre_shift_m=config.max_centre_shift_m,
            )  # fmt: skip
            centre_source = "surface"
        else:
            # As many visible points as Gaussians, so that the (few) Gaussians of the unseen back
            # side are not cut off as the top percentile of a crowd of front-surface points.
            n_gauss = len(inst.points) - n_visible
            step = max(1, n_visible // max(n_gauss, 1))
            points = np.vstack([inst.points[:n_visible:step], inst.points[n_visible:]])
            estimate = estimate_object(
                points, outlier_mad=config.outlier_mad, extent_percentile=config.extent_percentile,
                box_percentile=config.box_percentile,
            )  # fmt: skip
            centre_source = "fused" if inst.source == "view" else ""
        if inst.support_level_m is not None:
            estimate = rest_on_support(
                estimate, inst.support_level_m, self._up(config), config.extent_percentile
            )
        if inst.grasps:
            world_from_grasp = inst.grasps[0].world_from_grasp
        else:
            mode = config.grasp_mode if camera_position is not None else "top_down"
            world_from_grasp = grasp_pose(
                estimate.centre, mode=mode, world_up=config.world_up, camera_position=camera_position,
                points=estimate.points,
            )  # fmt: skip
        return replace(
            base,
            position=estimate.centre,
            world_from_grasp=world_from_grasp,
            score=inst.score,
            max_similarity=inst.max_similarity,
            extent=estimate.extent,
            points=estimate.points,
            centre_source=centre_source,
            grasps=inst.grasps,
            grasp_planner=inst.planner,
            instance=inst,
            candidates=candidates,
        )

    @staticmethod
    def _up(config: QueryConfig) -> np.ndarray:
        up = np.asarray(config.world_up, dtype=np.float64)
        return up / np.linalg.norm(up)

    @staticmethod
    def _times(timings: dict[str, float], t0: float, t1: float) -> dict[str, float]:
        """timings + render (t0 -> t1) and locate (t1 -> now, instances and grasps)."""
        now = time.perf_counter()
        return {**timings, "render": (t1 - t0) * 1e3, "locate": (now - t1) * 1e3}
