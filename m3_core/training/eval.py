"""Evaluate a memory on held-out views (the paper's Table 1 metrics) and `m3 eval`.

Held-out views are the memory's manifest `frames.heldout` (every 8th keyframe, never trained on).
Per view: RGB PSNR and SSIM of the full render at the training resolution; per model the cosine
distance (1 - cos) and L2 distance between the rendered features and the ground-truth grid, at the
grid cell centres that have a feature (zeros = none are skipped). Means over views are reported.

`m3 eval MEMORY SCENE [--json] [--out DIR]` also writes PNGs per view: RGB and depth (ground truth
beside rendered) and, per model, a 3-component PCA of the features (ground truth beside rendered,
one PCA basis fitted on the ground truth so the colours are comparable).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from m3_core.errors import M3Error
from m3_core.model.memory import M3Memory, render_memory
from m3_core.scene import Scene
from m3_core.training.losses import feature_distances, psnr, ssim
from m3_core.training.trainer import load_view

log = logging.getLogger(__name__)


@dataclass
class ViewResult:
    name: str
    psnr: float
    ssim: float
    features: dict[str, dict[str, float]]  # model -> {"cosine": .., "l2": ..}
    images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # PNG name -> RGB uint8


def grid_centre_pixels(h: int, w: int, H: int, W: int, device: torch.device) -> torch.Tensor:
    """[h*w, 2] (row, col) pixel positions of grid cell centres (row-major), clamped into the image."""
    ys = ((torch.arange(h, device=device) + 0.5) * H / h - 0.5).clamp(0, H - 1)
    xs = ((torch.arange(w, device=device) + 0.5) * W / w - 0.5).clamp(0, W - 1)
    rr, cc = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1)


def _sample_image(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of image [H, W, C] at (row, col) pixels [P, 2] -> [P, C]."""
    H, W = image.shape[:2]
    gx = (pixels[:, 1] + 0.5) / W * 2 - 1
    gy = (pixels[:, 0] + 0.5) / H * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)[None, None].to(image.dtype)
    out = torch.nn.functional.grid_sample(
        image.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0, :, 0].T


def _pca_rgb(gt: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project [h,w,d] features on the 3 principal axes of the valid ground truth -> two RGB uint8."""
    x = gt[valid] if valid.any() else gt.reshape(-1, gt.shape[-1])
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:3].T if vt.shape[0] >= 3 else np.pad(vt.T, ((0, 0), (0, 3 - vt.shape[0])))
    proj_gt, proj_pred = (gt - mean) @ basis, (pred - mean) @ basis
    lo, hi = np.percentile(proj_gt[valid] if valid.any() else proj_gt.reshape(-1, 3), [2, 98], axis=0)

    def to_rgb(p: np.ndarray) -> np.ndarray:
        return (np.clip((p - lo) / np.maximum(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)

    img_gt = to_rgb(proj_gt)
    img_gt[~valid] = 0
    return img_gt, to_rgb(proj_pred)


def _depth_rgb(depth: np.ndarray, vmax: float) -> np.ndarray:
    import matplotlib  # local: heavy plotting library, only when pictures are drawn

    cmap = matplotlib.colormaps["turbo"]
    img = (cmap(np.clip(depth / max(vmax, 1e-6), 0, 1))[..., :3] * 255).astype(np.uint8)
    img[depth <= 0] = 0
    return img


def _side_by_side(a: np.ndarray, b: np.ndarray, scale_to: int | None = None) -> np.ndarray:
    if scale_to is not None and a.shape[0] != scale_to:
        size = (round(a.shape[1] * scale_to / a.shape[0]), scale_to)
        a = cv2.resize(a, size, interpolation=cv2.INTER_NEAREST)
        b = cv2.resize(b, size, interpolation=cv2.INTER_NEAREST)
    gap = np.full((a.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([a, gap, b], axis=1)


@torch.no_grad()
def evaluate_view(
    memory: M3Memory,
    scene: Scene,
    index: int,
    grids: dict[str, torch.Tensor],  # model -> [h, w, d] ground truth of this frame
    train_width: int,
    with_images: bool = False,
) -> ViewResult:
    view = load_view(scene, index, train_width, memory.device)
    H, W = view.rgb.shape[:2]
    out = render_memory(memory.gaussians, view.world_from_camera, view.camera, background=memory.background)
    rgb, depth, out_q = out.rgb.clamp(0, 1), out.depth, out.queries
    result = ViewResult(view.name, psnr(rgb, view.rgb), float(ssim(rgb, view.rgb)), {})
    for model, grid in grids.items():
        h, w = grid.shape[:2]
        pix = grid_centre_pixels(h, w, H, W, memory.device)
        pred = memory.decode(model, _sample_image(out_q, pix))  # [h*w, d]
        gt = grid.reshape(-1, grid.shape[-1]).to(memory.device)
        valid = gt.abs().amax(dim=1) > 0
        if not bool(valid.any()):
            continue
        cos_d, l2_d = feature_distances(pred[valid], gt[valid])
        result.features[model] = {"cosine": float(cos_d.mean()), "l2": float(l2_d.mean())}
        if with_images:
            gt_img, pred_img = _pca_rgb(gt.cpu().numpy().reshape(h, w, -1), pred.cpu().numpy().reshape(h, w, -1),
                                        valid.cpu().numpy().reshape(h, w))  # fmt: skip
            result.images[f"{view.name}_{model}_pca.png"] = _side_by_side(gt_img, pred_img, scale_to=H)
    if with_images:
        to8 = lambda x: (x.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)  # noqa: E731
        result.images[f"{view.name}_rgb.png"] = _side_by_side(to8(view.rgb), to8(rgb))
        gt_d = view.depth_m.cpu().numpy()
        vmax = float(np.percentile(gt_d[gt_d > 0], 98)) if (gt_d > 0).any() else float(depth.max())
        result.images[f"{view.name}_depth.png"] = _side_by_side(
            _depth_rgb(gt_d, vmax), _depth_rgb(depth.cpu().numpy(), vmax)
        )
    return result


def evaluate_memory(
    memory: M3Memory,
    scene: Scene,
    features: dict[str, Any],  # model -> SceneFeatures (or anything with .names, .grids)
    indices: list[int] | None = None,
    train_width: int | None = None,
    with_images: bool = False,
) -> tuple[dict[str, Any], list[ViewResult]]:
    """Mean metrics over the held-out views (or `indices`) and the per-view results."""
    names = [f.name for f in scene.frames]
    if indices is None:
        held = memory.manifest.get("frames", {}).get("heldout", [])
        missing = [n for n in held if n not in names]
        if missing:
            raise M3Error(
                f"held-out frames {missing[:3]} of the memory are not in scene {scene.root}; wrong scene?"
            )
        indices = [names.index(n) for n in held]
    if not indices:
        raise M3Error("the memory has no held-out frames (trained with heldout_every 0); pass indices")
    if train_width is None:
        train_width = int(memory.manifest.get("training", {}).get("config", {}).get("train_width", 0))
    for model, feats in features.items():
        memory._check_models([model])
        if list(feats.names) != names:
            raise M3Error(f"{model} features do not match the frames of {scene.root}; recompute them")
    results = [
        evaluate_view(
            memory, scene, i, {m: f.grids[i] for m, f in features.items()}, train_width, with_images
        )
        for i in indices
    ]
    summary: dict[str, Any] = {
        "views": len(results),
        "psnr": float(np.mean([r.psnr for r in results])),
        "ssim": float(np.mean([r.ssim for r in results])),
        "features": {},
    }
    for model in features:
        rows = [r.features[model] for r in results if model in r.features]
        if rows:
            summary["features"][model] = {k: float(np.mean([r[k] for r in rows])) for k in ("cosine", "l2")}
    return summary, results


# -- CLI -------------------------------------------------------------------------------------
