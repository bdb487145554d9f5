"""`rasterize`: render RGB, expected depth, principal queries and alpha of a GaussianModel.

Two backends with the same compositing rules (gsplat 1.5, classic mode, eps2d 0.3, RGB+ED):
"gsplat" (CUDA) and "torch" (pure PyTorch, CPU or GPU). "auto" picks gsplat for CUDA tensors.
Pixel convention is m3's (OpenCV): pixel (row, col) has its centre at u = col, v = row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from m3_core.geometry.camera import PinholeCamera
from m3_core.render.gsplat_backend import rasterize_gsplat
from m3_core.render.torch_backend import rasterize_torch

if TYPE_CHECKING:
    from m3_core.model.gaussians import GaussianModel

BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class RenderOutput:
    """What one camera sees. Shapes are [H,W,...] for a full image or [P,...] for chosen pixels."""

    rgb: Tensor  # [H,W,3] | [P,3] colour (background blended in where given)
    depth: Tensor  # [H,W] | [P] expected camera z in metres (sum w_i z_i / alpha); ~0 where alpha ~ 0
    queries: Tensor  # [H,W,Q] | [P,Q] rendered principal queries, all models (GaussianModel.query_slices)
    alpha: Tensor  # [H,W] | [P] accumulated opacity 1 - T
    meta: dict[str, Any] = field(default_factory=dict)
    """Backend details: "backend", "means2d" [1,N,2] (retain_grad() it before backward for screen-space
    densification statistics), "radii" [1,N,2] int (0 = not visible), "width", "height", "n_cameras"."""


def rasterize(
    gaussians: GaussianModel,
    world_from_camera: Tensor | np.ndarray,  # [4,4] OpenCV camera axes
    camera: PinholeCamera,
    *,
    pixels: Tensor | None = None,  # [P,2] (row, col), float allowed
    backend: str = "auto",
    background: Tensor | None = None,  # [3] RGB blended where alpha < 1
    render_queries: bool = True,
    near: float = 0.01,
    far: float = 100.0,
) -> RenderOutput:
    """Render `gaussians` from a camera at `world_from_camera`; differentiable in all parameters.

    pixels: render only these pixels (row, col in m3/OpenCV pixel coordinates, 0 <= row <= H-1,
    0 <= col <= W-1). The torch backend evaluates exactly there and touches nothing else (cheap CPU
    training); gsplat renders the full image and samples it (integer pixels exactly, fractional ones
    bilinearly, so for backend-exact results pass integer-valued pixels).
    render_queries False renders RGB/depth/alpha only and returns queries with 0 columns.
    """
    means = gaussians.means
    device, dtype = means.device, means.dtype
    resolved = _resolve_backend(backend, device)
    camera_from_world = _camera_from_world(world_from_camera, device, dtype)
    features = torch.cat([gaussians.colors, gaussians.queries], dim=1) if render_queries else gaussians.colors
    n_query = features.shape[1] - 3
    # gsplat puts the image edge at 0 (pixel centres at +0.5); m3 puts pixel centres at integers.
    args = (camera.fx, camera.fy, camera.cx + 0.5, camera.cy + 0.5, camera.width, camera.height)
    xy = None if pixels is None else _pixels_xy(pixels, camera, device, dtype)
    scene = (means, gaussians.quats, gaussians.scales, gaussians.opacities, features, camera_from_world)

    if resolved == "torch":
        feat, depth, alpha, proj = rasterize_torch(*scene, *args, pixels_xy=xy, near=near, far=far)
        meta: dict[str, Any] = {
            "means2d": proj.means2d,
            "radii": proj.radii[None],
            "depths": proj.depths[None],
        }
        if pixels is None:
            H, W = camera.height, camera.width
            feat, depth, alpha = feat.reshape(H, W, -1), depth.reshape(H, W), alpha.reshape(H, W)
    else:
        feat, depth, alpha, meta = rasterize_gsplat(*scene, *args, near=near, far=far)
        if xy is not None:
            stacked = _sample(torch.cat([feat, depth[..., None], alpha[..., None]], dim=-1), xy - 0.5)
            feat, depth, alpha = stacked[:, :-2], stacked[:, -2], stacked[:, -1]
    meta = {**meta, "backend": resolved, "width": camera.width, "height": camera.height, "n_cameras": 1}

    rgb = feat[..., :3]
    if background is not None:
        background = torch.as_tensor(background, device=device, dtype=dtype)
        if background.shape != (3,):
            raise ValueError(f"background must be an RGB tensor of shape [3], got {tuple(background.shape)}")
        rgb = rgb + (1.0 - alpha)[..., None] * background
    return RenderOutput(rgb=rgb, depth=depth, queries=feat[..., 3 : 3 + n_query], alpha=alpha, meta=meta)


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError(
            f"backend 'gsplat' needs the Gaussians on a CUDA device, they are on {device}; "
            "move the model with .cuda() or use backend='torch' (or 'auto') on CPU"
        )
    return backend


def _camera_from_world(world_from_camera: Tensor | np.ndarray, device: torch.device, dtype) -> Tensor:
    pose = torch.as_tensor(world_from_camera)
    if pose.shape != (4, 4):
        raise ValueError(f"world_from_camera must be a [4,4] matrix, got shape {tuple(pose.shape)}")
    # Invert in float64 (poses are float64 in m3) and only then cast; stays differentiable. inv_ex:
    # linalg.inv's singularity check reads a flag back from the GPU, a synchronisation per render.
    return torch.linalg.inv_ex(pose.to(device=device, dtype=torch.float64)).inverse.to(dtype)


def _pixels_xy(pixels: Tensor, camera: PinholeCamera, device: torch.device, dtype) -> Tensor:
    pixels = torch.as_tensor(pixels)
    if pixels.ndim != 2 or pixels.shape[1] != 2:
        raise ValueError(f"pixels must be [P,2] (row, col), got shape {tuple(pixels.shape)}")
    pixels = pixels.to(device=device, dtype=dtype)
    if pixels.numel() and (
        pixels[:, 0].min() < 0
        or pixels[:, 1].min() < 0
        or pixels[:, 0].max() > camera.height - 1
        or pixels[:, 1].max() > camera.width - 1
    ):
        raise ValueError(
            f"pixels must lie inside the {camera.width}x{camera.height} image (0 <= row <= {camera.height - 1}, "
            f"0 <= col <= {camera.width - 1}); are they (x, y) instead of (row, col)?"
        )
    return torch.stack([pixels[:, 1], pixels[:, 0]], dim=-1) + 0.5


def _sample(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples of image [H,W,C] at m3 pixel coordinates uv [P,2] (x=col, y=row) -> [P,C]."""
    H, W = image.shape[:2]
    u0 = uv[:, 0].floor().clamp(0, W - 1)
    v0 = uv[:, 1].floor().clamp(0, H - 1)
    fu, fv = (uv[:, 0] - u0)[:, None], (uv[:, 1] - v0)[:, None]
    u0l, v0l = u0.long(), v0.long()
    u1l, v1l = (u0l + 1).clamp(max=W - 1), (v0l + 1).clamp(max=H - 1)
    top = image[v0l, u0l] * (1 - fu) + image[v0l, u1l] * fu
    bottom = image[v1l, u0l] * (1 - fu) + image[v1l, u1l] * fu
    return top * (1 - fv) + bottom * fv
