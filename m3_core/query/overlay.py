"""Pictures of a query: relevance heatmap over the rendered colour, the mask outline, the target.

Arrays in, uint8 RGB arrays out; writing files is the caller's business (CLI, node).
"""

from __future__ import annotations

import cv2
import numpy as np

from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import invert, transform_points


def heatmap(relevance: np.ndarray) -> np.ndarray:
    """[h,w,3] uint8 RGB colour map (turbo) of relevance in [0, 1]."""
    rel8 = (np.clip(np.nan_to_num(relevance), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(rel8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)


def overlay_relevance(
    rgb: np.ndarray, relevance: np.ndarray, mask: np.ndarray | None = None, strength: float = 0.65
) -> np.ndarray:
    """Heatmap blended over rgb (more where relevance is high), mask outlined in white."""
    if rgb.shape[:2] != relevance.shape:
        raise ValueError(f"rgb {rgb.shape[:2]} and relevance {relevance.shape} sizes differ")
    weight = (strength * np.clip(relevance, 0.0, 1.0))[..., None]
    out = rgb.astype(np.float32) * (1.0 - weight) + heatmap(relevance).astype(np.float32) * weight
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def mask_image(mask: np.ndarray) -> np.ndarray:
    """[h,w] uint8 0/255 of a boolean mask."""
    return mask.astype(np.uint8) * 255


def draw_target(
    image: np.ndarray,
    camera: PinholeCamera,
    world_from_camera: np.ndarray,
    world_from_grasp: np.ndarray,
    axis_length_m: float = 0.05,
) -> np.ndarray:
    """Copy of image with the grasp frame drawn: x red (closing), y green, z blue (approach)."""
    out = np.ascontiguousarray(image.copy())
    camera_from_world = invert(world_from_camera)
    origin = world_from_grasp[:3, 3]
    tips = origin + axis_length_m * world_from_grasp[:3, :3].T  # rows: x, y, z tips
    pts = transform_points(camera_from_world, np.vstack([origin, tips]))
    if pts[0, 2] <= 1e-6:
        return out  # target behind the camera: nothing to draw
    sx, sy = image.shape[1] / camera.width, image.shape[0] / camera.height
    uv, z = camera.project(pts)
    uv = uv * [sx, sy]
    o = tuple(int(round(c)) for c in uv[0])
    for tip, depth, colour in zip(uv[1:], z[1:], [(255, 0, 0), (0, 255, 0), (0, 128, 255)]):
        if depth > 1e-6:
            cv2.arrowedLine(out, o, tuple(int(round(c)) for c in tip), colour, 2, tipLength=0.2)
    cv2.drawMarker(out, o, (255, 255, 255), cv2.MARKER_CROSS, 14, 2)
    return out
