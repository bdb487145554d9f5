"""The query pipeline: text -> embedding -> rendered features -> relevance -> mask -> 3D -> grasp.

`locate` answers from a camera view (render the memory at world_from_camera); `locate_3d` answers
from the Gaussians themselves (no view needed). Both raise NotFoundError rather than invent a
target, and ValueError for bad input (empty or overlong text, unknown model, wrong depth size).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import cv2
import numpy as np
import torch

from m3_core.geometry.camera import PinholeCamera, points_from_depth
from m3_core.query.config import QueryConfig
from m3_core.query.gaussian3d import gaussian_relevance, gaussians_near_points, match_gaussians
from m3_core.query.grasp import grasp_pose
from m3_core.query.mask import erode, mask_from_relevance
from m3_core.query.relevance import relevance as relevance_fn
from m3_core.query.result import NoDepthError, NotFoundError, QueryResult
from m3_core.query.target import ObjectEstimate, estimate_object

log = logging.getLogger(__name__)


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


def check_model(memory: Any, model: str) -> str:
    """`model` if the memory holds it, else ValueError naming the ones it holds."""
    models = list(memory.models)
    if not model:
        raise ValueError(f"no model given; this memory holds {models}")
    if model not in models:
        raise ValueError(f"unknown model {model!r}: this memory holds {models}")
    return model


class QueryCache:
    """What stays the same between queries to one memory: text encoders (loaded once per model),
    the negatives' embeddings, and each model's per-Gaussian features with means and opacities.

    The query text itself is encoded on every call (that is part of the measured latency).
    """

    def __init__(self, memory: Any, device: str | torch.device | None = None) -> None:
        self.memory = memory
        self.device = device if device is not None else getattr(memory, "device", "cpu")
        self._encoders: dict[str, Any] = {}
        self._negatives: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}
        self._gaussians: dict[str, tuple[torch.Tensor, np.ndarray, torch.Tensor]] = {}

    def gaussians(self, model: str) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """(features [N,d] on the memory's device, means [N,3] float64 numpy, opacities [N])."""
        if model not in self._gaussians:
            features = self.memory.gaussian_features(model)
            means, opacities = gaussian_means_opacities(self.memory)
            self._gaussians[model] = (features, means.detach().double().cpu().numpy(), opacities.detach())
        return self._gaussians[model]

    def encoder(self, model: str) -> Any:
        if model not in self._encoders:
            self._encoders[model] = self.memory.text_encoder(model, device=self.device)
        return self._encoders[model]

    def encode(self, model: str, texts: list[str]) -> torch.Tensor:
        out = self.encoder(model).encode_text(list(texts))
        out = torch.as_tensor(out)
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise RuntimeError(
                f"text encoder of {model!r} returned shape {tuple(out.shape)} for {len(texts)} texts"
            )
        return out.float()

    def negatives(self, model: str, negatives: tuple[str, ...]) -> torch.Tensor | None:
        if not negatives:
            return None
        key = (model, tuple(negatives))
        if key not in self._negatives:
            self._negatives[key] = self.encode(model, list(negatives))
        return self._negatives[key]


def _fuse_with_gaussians(
    visible: np.ndarray,
    cache: QueryCache,
    model: str,
    text_emb: torch.Tensor,
    negatives_emb: torch.Tensor | None,
    config: QueryConfig,
    view_score: float,
) -> ObjectEstimate | None:
    """Box centre of the visible points and the relevant Gaussian clusters touching them.

    The view already found the object; a Gaussian only has to be about as relevant as the object's
    pixels were (view_score, their mean relevance), so a query that only just passed in the view
    (a bare "teddy" at 0.80) still gets the back side of its object rather than a surface guess.
    """
    features, means, opacities = cache.gaussians(model)
    relevance, _ = gaussian_relevance(features, opacities, text_emb, negatives_emb, config)
    threshold = min(config.relevance_threshold, config.fuse_relative_relevance * view_score)
    near = gaussians_near_points(visible, means, relevance, config, threshold)
    if len(near) < config.min_cluster_gaussians:
        return None
    # As many visible points as Gaussians, so that the (few) Gaussians of the unseen back side are
    # not cut off as the top percentile of a crowd of front-surface points.
    step = max(1, len(visible) // len(near))
    return estimate_object(
        np.vstack([visible[::step], means[near]]),
        outlier_mad=config.outlier_mad,
        extent_percentile=config.extent_percentile,
        box_percentile=config.box_percentile,
    )


def _sync(t: torch.Tensor | None) -> None:
    if t is not None and t.is_cuda:
        torch.cuda.synchronize(t.device)


def _numpy(x: Any, dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def render_camera_for(camera: PinholeCamera, config: QueryConfig) -> PinholeCamera:
    """The camera the memory is rendered with (config.render_width/height, aspect kept when one is 0)."""
    w, h = config.render_width, config.render_height
    if w == 0 and h == 0:
        return camera
    if h == 0:
        h = max(1, round(w * camera.height / camera.width))
    if w == 0:
        w = max(1, round(h * camera.width / camera.height))
    return camera.scaled(int(w), int(h))


def _rgb_uint8(rgb: Any) -> np.ndarray:
    arr = _numpy(rgb)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    return (
        (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if arr.max(initial=0) <= 1.0 + 1e-3
        else arr.astype(np.uint8)
    )


def _check_depth(depth_m: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    depth_m = np.asarray(depth_m)
    if depth_m.ndim == 3 and depth_m.shape[2] == 1:
        depth_m = depth_m[..., 0]
    if depth_m.ndim != 2 or depth_m.shape != (camera.height, camera.width):
        shape = (
            "x".join(str(s) for s in depth_m.shape[::-1][-2:]) if depth_m.ndim >= 2 else str(depth_m.shape)
        )
        raise ValueError(
            f"depth image is {shape} but the camera is {camera.width}x{camera.height}; "
            "the depth must be aligned to the color camera (aligned_depth_to_color)"
        )
    if not np.issubdtype(depth_m.dtype, np.floating):
        raise TypeError(f"depth_m must be float metres, got {depth_m.dtype}; convert 16UC1 millimetres first")
    return depth_m


def _points_under_mask(
    depth_m: np.ndarray,
    camera: PinholeCamera,
    mask: np.ndarray,
    world_from_camera: np.ndarray,
    max_points: int,
) -> np.ndarray:
    if mask.shape != depth_m.shape:
        mask = cv2.resize(
            mask.astype(np.uint8), (camera.width, camera.height), interpolation=cv2.INTER_NEAREST
        )
        mask = mask.astype(bool)
    stride = max(1, math.ceil(math.sqrt(int(mask.sum()) / max_points)))
    points, _ = points_from_depth(depth_m, camera, world_from_camera, mask=mask, stride=stride)
    return points


def locate(
    memory: Any,
    text: str,
    *,
    model: str,
    world_from_camera: np.ndarray,
    camera: PinholeCamera,
    depth_m: np.ndarray | None = None,
    depth_stamp_ok: bool = True,
    config: QueryConfig | None = None,
    cache: QueryCache | None = None,
) -> QueryResult:
    """Locate `text` in the memory seen from world_from_camera (OpenCV optical frame, world of the memory).

    camera: the real camera (its size is the live depth's size); the memory is rendered at
    config.render_width/height. depth_m: live depth in metres aligned to the camera, used when
    given and depth_stamp_ok (the caller checked it is close in time to the pose), else the
    memory's rendered depth.
    """
    t_start = time.perf_counter()
    config = (config or QueryConfig()).for_model(check_model(memory, model))
    text = validate_text(text, config.max_text_chars)
    world_from_camera = np.asarray(world_from_camera, dtype=np.float64)
    if world_from_camera.shape != (4, 4) or not np.all(np.isfinite(world_from_camera)):
        raise ValueError(
            f"world_from_camera must be a finite 4x4 matrix, got shape {world_from_camera.shape}"
        )
    if not isinstance(camera, PinholeCamera):
        raise TypeError(f"camera must be a PinholeCamera, got {type(camera).__name__}")
    use_live = depth_m is not None and depth_stamp_ok
    if use_live:
        depth_m = _check_depth(depth_m, camera)
    cache = cache or QueryCache(memory)

    t0 = time.perf_counter()
    text_emb = cache.encode(model, [text])[0]
    negatives_emb = cache.negatives(model, tuple(config.negatives))
    t1 = time.perf_counter()

    render_camera = render_camera_for(camera, config)
    rgb, rendered_depth, features, alpha = memory.render(world_from_camera, render_camera, models=[model])
    feats = features[model]
    _sync(feats)
    t2 = time.perf_counter()

    rel, sim = relevance_fn(feats, text_emb, negatives_emb, config.temperature)
    alpha_np = _numpy(alpha).reshape(render_camera.height, render_camera.width)
    valid = alpha_np >= config.min_alpha
    rel_np = np.where(valid, _numpy(rel), 0.0).astype(np.float32)
    sim_np = np.where(valid, _numpy(sim), 0.0).astype(np.float32)
    rgb_np = _rgb_uint8(rgb)
    mask, threshold = mask_from_relevance(
        rel_np,
        config.relevance_threshold,
        mode=config.threshold_mode,
        valid=valid,
        morph_kernel_px=config.morph_kernel_px,
        min_area_px=config.min_area_px,
    )
    best_rel, best_sim = float(rel_np.max(initial=0.0)), float(sim_np.max(initial=0.0))
    if not mask.any():
        raise NotFoundError(
            f'"{text}" not found: no region of the view reaches relevance {threshold:.2f} '
            f"(best {best_rel:.2f}, best similarity {best_sim:.2f}, model {model})",
            relevance=rel_np,
            rgb=rgb_np,
            best_relevance=best_rel,
            best_similarity=best_sim,
        )
    region_sim = float(sim_np[mask].max())
    if region_sim < config.min_similarity:
        raise NotFoundError(
            f'"{text}" not found: the best region\'s similarity {region_sim:.2f} is below '
            f"{config.min_similarity:.2f} (model {model}); nothing in the memory looks like it",
            relevance=rel_np,
            rgb=rgb_np,
            best_relevance=best_rel,
            best_similarity=best_sim,
        )

    core = erode(mask, config.edge_erode_px)
    points = np.zeros((0, 3))
    depth_source = "live" if use_live else "memory"
    if use_live:
        points = _points_under_mask(depth_m, camera, core, world_from_camera, config.max_points)
        if len(points) == 0:
            log.warning("live depth has no valid pixels under the mask of %r; using the memory's depth", text)
            depth_source = "memory (live depth empty under the mask)"
    if len(points) == 0:
        depth_np = _numpy(rendered_depth).reshape(render_camera.height, render_camera.width)
        depth_np = np.where(valid, depth_np, 0.0)
        points = _points_under_mask(depth_np, render_camera, core, world_from_camera, config.max_points)
    if len(points) == 0:
        raise NoDepthError(
            f'"{text}" is in the view but no valid depth lies under its mask ({int(mask.sum())} px)'
        )

    camera_position = world_from_camera[:3, 3]
    estimate = estimate_object(
        points,
        camera_position=camera_position,
        outlier_mad=config.outlier_mad,
        extent_percentile=config.extent_percentile,
        surface_to_centre=config.surface_to_centre,
        max_centre_shift_m=config.max_centre_shift_m,
    )
    centre_source = "surface"
    if config.centre_mode == "fused":
        fused = _fuse_with_gaussians(
            estimate.points, cache, model, text_emb, negatives_emb, config, float(rel_np[mask].mean())
        )
        if fused is not None:
            estimate, centre_source = fused, "fused"
        else:
            log.info("no relevant Gaussians touch the visible %r: centre from the visible surface", text)
    world_from_grasp = grasp_pose(
        estimate.centre,
        mode=config.grasp_mode,
        world_up=config.world_up,
        camera_position=camera_position,
        points=estimate.points,
    )
    t3 = time.perf_counter()
    return QueryResult(
        text=text,
        model=model,
        label=text,
        position=estimate.centre,
        world_from_grasp=world_from_grasp,
        score=float(rel_np[mask].mean()),
        max_similarity=region_sim,
        extent=estimate.extent,
        points=estimate.points,
        source="view",
        depth_source=depth_source,
        centre_source=centre_source,
        world_from_camera=world_from_camera,
        render_camera=render_camera,
        relevance=rel_np,
        mask=mask,
        rgb=rgb_np,
        timings_ms={
            "encode": (t1 - t0) * 1e3,
            "render": (t2 - t1) * 1e3,
            "locate": (t3 - t2) * 1e3,
            "total": (t3 - t_start) * 1e3,
        },
    )


def locate_3d(
    memory: Any,
    text: str,
    *,
    model: str,
    config: QueryConfig | None = None,
    camera_position: np.ndarray | None = None,
    cache: QueryCache | None = None,
) -> QueryResult:
    """Locate `text` among the memory's Gaussians, without a camera view (objects out of sight).

    The grasp approach is top-down unless config.grasp_mode is "view_ray" and camera_position
    (world) is given.
    """
    t_start = time.perf_counter()
    config = (config or QueryConfig()).for_model(check_model(memory, model))
    text = validate_text(text, config.max_text_chars)
    cache = cache or QueryCache(memory)
    t0 = time.perf_counter()
    text_emb = cache.encode(model, [text])[0]
    negatives_emb = cache.negatives(model, tuple(config.negatives))
    t1 = time.perf_counter()
    features, means, opacities = cache.gaussians(model)
    _sync(features)
    t2 = time.perf_counter()
    match = match_gaussians(torch.from_numpy(means), opacities, features, text_emb, negatives_emb, config)
    if match is None:
        raise NotFoundError(
            f'"{text}" not found among the memory\'s Gaussians: no cluster of at least '
            f"{config.min_cluster_gaussians} reaches relevance {config.relevance_threshold:.2f} (model {model})"
        )
    if match.max_similarity < config.min_similarity:
        raise NotFoundError(
            f'"{text}" not found: the best cluster\'s similarity {match.max_similarity:.2f} is below '
            f"{config.min_similarity:.2f} (model {model})",
            best_relevance=match.score,
            best_similarity=match.max_similarity,
        )
    mode = config.grasp_mode if camera_position is not None else "top_down"
    world_from_grasp = grasp_pose(
        match.estimate.centre,
        mode=mode,
        world_up=config.world_up,
        camera_position=camera_position,
        points=match.estimate.points,
    )
    t3 = time.perf_counter()
    return QueryResult(
        text=text,
        model=model,
        label=text,
        position=match.estimate.centre,
        world_from_grasp=world_from_grasp,
        score=match.score,
        max_similarity=match.max_similarity,
        extent=match.estimate.extent,
        points=match.estimate.points,
        source="gaussians",
        timings_ms={
            "encode": (t1 - t0) * 1e3,
            "render": (t2 - t1) * 1e3,
            "locate": (t3 - t2) * 1e3,
            "total": (t3 - t_start) * 1e3,
        },
    )


def gaussian_means_opacities(memory: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Means [N,3] and opacities [N] in [0, 1] of the memory's Gaussians."""
    gaussians = memory.gaussians
    return torch.as_tensor(gaussians.means), torch.as_tensor(gaussians.opacities)


SEARCH_3D_MODES = ("never", "fallback", "always")


def find_target(
    memory: Any,
    text: str,
    *,
    model: str,
    world_from_camera: np.ndarray,
    camera: PinholeCamera,
    depth_m: np.ndarray | None = None,
    depth_stamp_ok: bool = True,
    config: QueryConfig | None = None,
    cache: QueryCache | None = None,
    search_3d: str = "fallback",
) -> QueryResult:
    """`locate` in the view; with search_3d "fallback", the Gaussians answer when the view has nothing.

    search_3d "always" skips the view (locate_3d, grasp approach per config with the camera
    position), "never" answers from the view only.
    """
    if search_3d not in SEARCH_3D_MODES:
        raise ValueError(f"search_3d must be one of {SEARCH_3D_MODES}, got {search_3d!r}")
    cache = cache or QueryCache(memory)
    camera_position = np.asarray(world_from_camera, dtype=np.float64)[:3, 3]
    if search_3d == "always":
        return locate_3d(
            memory, text, model=model, config=config, camera_position=camera_position, cache=cache
        )
    try:
        return locate(
            memory,
            text,
            model=model,
            world_from_camera=world_from_camera,
            camera=camera,
            depth_m=depth_m,
            depth_stamp_ok=depth_stamp_ok,
            config=config,
            cache=cache,
        )
    except NotFoundError as err:
        if search_3d == "never":
            raise
        try:
            result = locate_3d(
                memory,
                text,
                model=model,
                config=config,
                camera_position=camera_position,
                cache=cache,
            )
        except NotFoundError as err3d:
            raise NotFoundError(
                f"{err}; also not among the Gaussians ({err3d})",
                relevance=err.relevance,
                rgb=err.rgb,
                best_relevance=err.best_relevance,
                best_similarity=err.best_similarity,
            ) from err3d
        log.info("%r is not in the view; found among the Gaussians (3D query)", result.text)
        return result
