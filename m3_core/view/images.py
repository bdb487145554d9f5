"""Pictures the viewer shows: the memory rendered at a camera, as colour, depth or relevance.

Arrays in, arrays out; no viewer library here, so the pictures are tested without a browser.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from m3_core.geometry.camera import PinholeCamera
from m3_core.query.overlay import heatmap, overlay_relevance

VIEW_MODES = ("rgb", "depth", "relevance")


def camera_from_fov(fov_y_rad: float, aspect: float, height: int) -> PinholeCamera:
    """A pinhole camera of `height` pixels with vertical field of view fov_y_rad and width/height aspect."""
    if not (0.0 < fov_y_rad < math.pi) or not aspect > 0 or height < 1:
        raise ValueError(f"need 0 < fov < pi, aspect > 0, height >= 1; got {fov_y_rad}, {aspect}, {height}")
    width = max(1, round(height * aspect))
    f = 0.5 * height / math.tan(0.5 * fov_y_rad)
    return PinholeCamera(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def depth_image(depth_m: np.ndarray, alpha: np.ndarray, min_alpha: float = 0.5) -> np.ndarray:
    """[H,W,3] uint8: near = bright, far = dark, empty pixels black; the range is the view's own."""
    valid = (alpha >= min_alpha) & np.isfinite(depth_m) & (depth_m > 0)
    out = np.zeros(depth_m.shape + (3,), np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(depth_m[valid], [1, 99])
    scaled = 1.0 - np.clip((depth_m - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    grey = (40 + 215 * scaled).astype(np.uint8)
    out[valid] = grey[valid][:, None]
    return out


@torch.no_grad()
def render_view(
    memory: torch.nn.Module,
    world_from_camera: np.ndarray,  # [4,4] OpenCV optical frame in the memory's world
    camera: PinholeCamera,
    mode: str,
    relevance: np.ndarray | None = None,  # [H,W] in [0,1] at this camera, for mode "relevance"
    mask: np.ndarray | None = None,  # [H,W] bool object mask drawn on the relevance view
) -> np.ndarray:
    """[H,W,3] uint8 picture of the memory at a camera: "rgb", "depth" or "relevance" over rgb."""
    if mode not in VIEW_MODES:
        raise ValueError(f"view mode must be one of {VIEW_MODES}, got {mode!r}")
    pose = torch.as_tensor(np.asarray(world_from_camera), dtype=torch.float32, device=memory.device)
    rgb, depth, _, alpha = memory.render(pose, camera, models=[])
    rgb_u8 = (rgb.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if mode == "rgb":
        return rgb_u8
    if mode == "depth":
        return depth_image(depth.cpu().numpy(), alpha.cpu().numpy())
    if relevance is None:
        return (0.4 * rgb_u8).astype(np.uint8)  # no query yet: dimmed colour
    if relevance.shape != rgb_u8.shape[:2]:
        return heatmap(relevance)
    return overlay_relevance(rgb_u8, relevance, mask)
