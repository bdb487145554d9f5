"""Pictures of dense features: a PCA false-colour image and a text-query heatmap next to the frame.

`m3 features SCENE --preview --query "yellow bath duck"` writes SCENE/features/preview_<model>.png.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def pca_rgb(grid: torch.Tensor) -> np.ndarray:
    """[h,w,d] features -> [h,w,3] uint8: the first three principal components as RGB
    (2-98 percentile stretched); cells without a feature (all zeros) are black."""
    h, w, d = grid.shape
    flat = grid.reshape(-1, d).double()
    valid = flat.abs().sum(1) > 0
    out = np.zeros((h * w, 3), np.uint8)
    if int(valid.sum()) >= 2:
        x = flat[valid] - flat[valid].mean(0)
        _u, _s, v = torch.linalg.svd(x, full_matrices=False)
        comps = (x @ v[:3].T).numpy()
        if comps.shape[1] < 3:
            comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
        lo, hi = np.percentile(comps, 2, axis=0), np.percentile(comps, 98, axis=0)
        scaled = np.clip((comps - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
        out[valid.numpy()] = (scaled * 255).round().astype(np.uint8)
    return out.reshape(h, w, 3)


def similarity_map(grid: torch.Tensor, text_feature: torch.Tensor) -> torch.Tensor:
    """[h,w,d] L2-normalised features . [d] text feature -> [h,w] cosine similarity (0 where no feature)."""
    return grid @ text_feature.to(grid.dtype)


def preview_image(rgb: np.ndarray, grid: torch.Tensor, similarity: torch.Tensor | None = None) -> np.ndarray:
    """[H, 2W or 3W, 3] uint8: the frame | PCA colours of the grid | (query heatmap over the frame).

    Grids are shown at the frame's size with nearest-neighbour cells (no smoothing hides the grid).
    """
    H, W = rgb.shape[:2]
    panels = [rgb, cv2.resize(pca_rgb(grid), (W, H), interpolation=cv2.INTER_NEAREST)]
    if similarity is not None:
        sim = similarity.float().numpy()
        lo, hi = float(sim.min()), float(sim.max())
        norm = ((sim - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
        heat = cv2.applyColorMap(cv2.resize(norm, (W, H), interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_JET)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
        panels.append(cv2.addWeighted(rgb, 0.45, heat, 0.55, 0))
    return np.concatenate(panels, axis=1)
