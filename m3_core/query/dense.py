"""3D queries: a dense object for the grasp planner, rendered from the memory.

A 3D query's instance is a cluster of the memory's Gaussians, whose means lie about 1 cm apart
(28 for a 5 x 5 x 2 cm brick): too sparse for the planner's contact normals, and a finger fits
between them in the collision checks. The memory renders depth at any pose, so the engine looks at
the instance with a few virtual cameras (one from above, the others from the side around it), each
framing the instance's box grown by a margin at a pixel footprint of a few millimetres, and
back-projects their depth. The engine keeps the points inside the instance's box as the object.
The others are not made obstacles: the render blends an object into the table around its foot (a
fillet 1-2 cm wide), and as obstacles those points blocked every grasp of the built-in scene's
brick, mug and teddy; the memory's Gaussians remain the collision scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from m3_core.geometry.camera import PinholeCamera, points_from_depth
from m3_core.geometry.se3 import transform_from_rt
from m3_core.model.memory import render_memory
from m3_core.query.config import QueryConfig

_MAX_SIDE_PX = 256  # a large instance gets a coarser footprint rather than a huge render


@dataclass(frozen=True)
class VirtualView:
    """A camera the memory is rendered from to see one instance."""

    world_from_camera: np.ndarray
    """[4,4] OpenCV optical frame (z forward, x right, y down) in the memory's world."""
    camera: PinholeCamera


def _pose(eye: np.ndarray, forward: np.ndarray, right_hint: np.ndarray) -> np.ndarray:
    """world_from_camera at eye looking along forward, its x as close to right_hint as possible."""
    z = forward / np.linalg.norm(forward)
    x = right_hint - (right_hint @ z) * z
    x /= np.linalg.norm(x)
    return transform_from_rt(np.stack([x, np.cross(z, x), z], axis=1), eye)


def virtual_views(
    box_min: np.ndarray, box_max: np.ndarray, config: QueryConfig, up: np.ndarray
) -> list[VirtualView]:
    """config.dense_views cameras looking at the box's centre from config.dense_view_distance_m: the
    first from straight above, the others around it at config.dense_view_elevation_deg above the
    horizon, evenly spread in azimuth. Each frames the box grown by config.dense_margin_m at a
    pixel footprint of config.dense_pixel_m at the box's centre (coarser for boxes so large that
    the image would exceed 256 pixels a side)."""
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    box_min, box_max = np.asarray(box_min, np.float64), np.asarray(box_max, np.float64)
    centre = 0.5 * (box_min + box_max)
    # The box's diagonal bounds what any camera sees of it, margin included on both sides.
    span = float(np.linalg.norm(box_max - box_min)) + 2.0 * config.dense_margin_m
    distance = max(config.dense_view_distance_m, span)  # the camera stays outside the framed region
    side = min(_MAX_SIDE_PX, max(8, math.ceil(span / config.dense_pixel_m)))
    focal = side * distance / span
    camera = PinholeCamera(focal, focal, (side - 1) / 2.0, (side - 1) / 2.0, side, side)
    # Horizontal reference axes: the world axis least aligned with up, made perpendicular to it.
    ref = np.eye(3)[int(np.argmin(np.abs(up)))]
    east = ref - (ref @ up) * up
    east /= np.linalg.norm(east)
    north = np.cross(up, east)
    views = [VirtualView(_pose(centre + distance * up, -up, east), camera)]
    n_side = config.dense_views - 1
    elevation = math.radians(config.dense_view_elevation_deg)
    for k in range(n_side):
        azimuth = 2.0 * math.pi * k / n_side
        horizontal = math.cos(azimuth) * east + math.sin(azimuth) * north
        direction = math.cos(elevation) * horizontal + math.sin(elevation) * up  # object -> camera
        views.append(
            VirtualView(_pose(centre + distance * direction, -direction, np.cross(horizontal, up)), camera)
        )
    return views[: config.dense_views]


@torch.no_grad()
def rendered_points(
    memory: Any, views: list[VirtualView], min_alpha: float, box_min: np.ndarray, box_max: np.ndarray
) -> np.ndarray:
    """[N,3] world points back-projected from the memory's depth at each view, where the render is
    at least min_alpha opaque (an edge pixel's depth blends the surfaces behind it), inside the box."""
    clouds = []
    for view in views:
        out = render_memory(memory.gaussians, view.world_from_camera, view.camera, render_queries=False)
        depth = out.depth.reshape(view.camera.height, view.camera.width).float().cpu().numpy()
        alpha = out.alpha.reshape(view.camera.height, view.camera.width).float().cpu().numpy()
        points, _ = points_from_depth(depth, view.camera, view.world_from_camera, mask=alpha >= min_alpha)
        clouds.append(points)
    points = np.vstack(clouds) if clouds else np.zeros((0, 3))
    inside = np.all((points >= box_min) & (points <= box_max), axis=1)
    return points[inside]
