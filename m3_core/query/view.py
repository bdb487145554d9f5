"""The view stages of a query: render the memory at a camera pose, relevance per pixel, and the
relevant pixels back-projected to 3D points (live depth when given, else the memory's depth).

Everything here works at the render resolution (QueryConfig.render_width/height): one relevant
pixel gives one point, so a candidate's points map back to its pixels (its mask).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from m3_core.geometry.camera import PinholeCamera, points_from_depth
from m3_core.model.memory import render_memory
from m3_core.query.config import QueryConfig
from m3_core.query.mask import candidate_mask, erode
from m3_core.query.relevance import (
    form_count,
    keep_regions_of_every_form,
    text_and_every_form,
    text_directions,
    text_form,
)
from m3_core.query.relevance import relevance as relevance_fn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """A camera pose to answer from, with the live depth when there is one."""

    world_from_camera: np.ndarray
    """[4,4] OpenCV optical frame in the memory's world."""
    camera: PinholeCamera
    """The real camera (the live depth's size); the memory is rendered at the config's size."""
    depth_m: np.ndarray | None = None
    """[H,W] live depth in metres aligned to the camera; None = use the memory's rendered depth."""
    depth_stamp_ok: bool = True
    """False when the caller found the depth too far in time from the pose: it is not used."""

    def __post_init__(self) -> None:
        pose = np.asarray(self.world_from_camera, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"world_from_camera must be a finite 4x4 matrix, got shape {pose.shape}")
        if not isinstance(self.camera, PinholeCamera):
            raise TypeError(f"camera must be a PinholeCamera, got {type(self.camera).__name__}")
        object.__setattr__(self, "world_from_camera", pose)
        if self.depth_m is not None:
            object.__setattr__(self, "depth_m", check_depth(self.depth_m, self.camera))

    @property
    def camera_position(self) -> np.ndarray:
        return self.world_from_camera[:3, 3]


@dataclass(frozen=True)
class RenderedRelevance:
    """The memory rendered at a view, with the query's relevance per pixel (render resolution)."""

    relevance: np.ndarray
    """[h,w] float32 in [0, 1]; 0 where the render is transparent."""
    similarity: np.ndarray
    """[h,w] float32 cosine similarity to the query."""
    valid: np.ndarray
    """[h,w] bool: opaque enough to count (alpha >= config.min_alpha)."""
    rgb: np.ndarray
    """[h,w,3] uint8 rendered colour."""
    rendered_depth_m: np.ndarray
    """[h,w] the memory's depth, 0 where not valid."""
    live_depth_m: np.ndarray | None
    """[h,w] live depth resampled to the render size (nearest), or None."""
    render_camera: PinholeCamera
    world_from_camera: np.ndarray
    threshold: float
    """Relevance threshold used for the candidate mask."""
    mask: np.ndarray
    """[h,w] bool candidate pixels (every region above the threshold, eroded at the edges)."""


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


def check_depth(depth_m: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    """depth_m as [H,W] float metres matching the camera; ValueError/TypeError saying how to fix it."""
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


def numpy_f32(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def rgb_uint8(rgb: Any) -> np.ndarray:
    arr = numpy_f32(rgb)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.max(initial=0) <= 1.0 + 1e-3:
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr.astype(np.uint8)


@torch.no_grad()
def render_relevance(
    memory: Any,
    view: View,
    model: str,
    text_emb: torch.Tensor,  # [d] or [m, d] (the query's forms)
    negatives_emb: torch.Tensor | None,  # [k, d]
    config: QueryConfig,
    directions: torch.Tensor | None = None,  # [m + k, d] text_directions, cached by the caller
) -> RenderedRelevance:
    """Render the memory at the view and score every pixel against the query (config: for_model).

    config.relevance_method "products" takes relevance from the rendered queries' products with the
    text directions (the [h*w, d] feature map is never formed); "decode" decodes the map first (the
    reference). What the host needs (relevance, similarity, alpha, depth, rgb) comes back in one
    device-to-host copy."""
    render_camera = render_camera_for(view.camera, config)
    shape = (render_camera.height, render_camera.width)
    forms = form_count(text_emb)
    if config.relevance_method == "products":
        out = render_memory(
            memory.gaussians, view.world_from_camera, render_camera, background=memory.background
        )
        if directions is None:
            directions = text_directions(text_emb, negatives_emb)
        dots, norms = memory.feature_products(model, out.queries, directions.to(out.queries.device))
        (rel, sim), (rel_all, sim_all) = text_and_every_form(dots, norms, config.temperature, forms)
        rgb, depth, alpha = out.rgb, out.depth, out.alpha
    else:
        rgb, depth, features, alpha = memory.render(view.world_from_camera, render_camera, models=[model])
        rel, sim = relevance_fn(features[model], text_form(text_emb), negatives_emb, config.temperature)
        rel_all, sim_all = (
            (rel, sim) if forms == 1 else relevance_fn(features[model], text_emb, negatives_emb, config.temperature)
        )
    planes = [rel, sim, alpha, depth] + ([rel_all, sim_all] if forms > 1 else [])
    packed = torch.cat(
        [p.reshape(*shape, 1).float() for p in planes] + [rgb.reshape(*shape, 3).float()], dim=-1
    )
    host = packed.cpu().numpy()  # one copy
    rel_np, sim_np, alpha_np, depth_np = (host[..., i] for i in range(4))
    valid = alpha_np >= config.min_alpha
    if forms > 1:
        regions = (rel_np >= config.relevance_threshold) & valid
        _, labels = cv2.connectedComponents(regions.astype(np.uint8), connectivity=8)
        rel_np, sim_np = keep_regions_of_every_form(
            rel_np, sim_np, host[..., 4], host[..., 5], np.where(regions, labels, -1), config.relevance_threshold
        )
    rel_np = np.where(valid, rel_np, 0.0).astype(np.float32)
    mask, threshold = candidate_mask(
        rel_np,
        config.relevance_threshold,
        mode=config.threshold_mode,
        valid=valid,
        morph_kernel_px=config.morph_kernel_px,
        min_area_px=config.min_area_px,
    )
    live = None
    if view.depth_m is not None and view.depth_stamp_ok:
        live = cv2.resize(view.depth_m.astype(np.float32), shape[::-1], interpolation=cv2.INTER_NEAREST)
    return RenderedRelevance(
        relevance=rel_np,
        similarity=np.where(valid, sim_np, 0.0).astype(np.float32),
        valid=valid,
        rgb=rgb_uint8(host[..., -3:]),
        rendered_depth_m=np.where(valid, depth_np, 0.0),
        live_depth_m=live,
        render_camera=render_camera,
        world_from_camera=view.world_from_camera,
        threshold=threshold,
        mask=erode(mask, config.edge_erode_px),
    )


def relevant_points(rendered: RenderedRelevance, max_points: int) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(points [N,3] world, pixels [N,2] (row, col), stride, depth source) of the candidate pixels.

    Live depth when it has valid pixels under the candidates, else the memory's rendered depth;
    strided so that about max_points remain.
    """
    mask = rendered.mask
    stride = max(1, math.ceil(math.sqrt(int(mask.sum()) / max_points)))
    args = (rendered.render_camera, rendered.world_from_camera)
    if rendered.live_depth_m is not None:
        points, pixels = points_from_depth(rendered.live_depth_m, *args, mask=mask, stride=stride)
        if len(points):
            return points, pixels, stride, "live"
        log.warning("live depth has no valid pixels under the candidates; using the memory's depth")
        points, pixels = points_from_depth(rendered.rendered_depth_m, *args, mask=mask, stride=stride)
        return points, pixels, stride, "memory (live depth empty under the mask)"
    points, pixels = points_from_depth(rendered.rendered_depth_m, *args, mask=mask, stride=stride)
    return points, pixels, stride, "memory"


def mask_of_pixels(
    pixels: np.ndarray, shape: tuple[int, int], stride: int, candidates: np.ndarray
) -> np.ndarray:
    """[h,w] bool: the candidate pixels around the given (strided) pixels."""
    mask = np.zeros(shape, np.uint8)
    if len(pixels):
        mask[pixels[:, 0], pixels[:, 1]] = 1
    if stride > 1:
        mask = cv2.dilate(mask, np.ones((stride, stride), np.uint8), anchor=(stride - 1, stride - 1))
    return mask.astype(bool) & candidates
