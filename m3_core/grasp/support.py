"""The surface an object rests on: its height along `up` and the noise of its points."""

from __future__ import annotations

import numpy as np

from m3_core.grasp.config import GraspPlannerConfig


def support_plane(
    object_points: np.ndarray, scene_points: np.ndarray, up: np.ndarray, config: GraspPlannerConfig
) -> tuple[float, float]:
    """(height, noise) of the support under the object, metres along `up`.

    The support is read from the scene points around the object's footprint (within
    `support_ring_m` of it horizontally) whose height is within `support_band_m` of the object's
    lowest points: their median height, and their spread (1.4826 x median absolute deviation) as the
    noise. With fewer than `support_min_points` such points (no table in view) the object's lowest
    points are the support and the noise is taken as zero.
    """
    h_obj = object_points @ up
    lowest = float(np.percentile(h_obj, 1.0))
    flat_obj = object_points - np.outer(h_obj, up)
    h_scene = scene_points @ up
    flat_scene = scene_points - np.outer(h_scene, up)
    lo, hi = flat_obj.min(axis=0) - config.support_ring_m, flat_obj.max(axis=0) + config.support_ring_m
    near = np.all((flat_scene >= lo) & (flat_scene <= hi), axis=1) & (np.abs(h_scene - lowest) <= config.support_band_m)
    if near.sum() < config.support_min_points:
        return lowest, 0.0
    heights = h_scene[near]
    height = float(np.median(heights))
    return height, float(1.4826 * np.median(np.abs(heights - height)))
