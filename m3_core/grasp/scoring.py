"""Grasp quality in [0, 1]: a weighted mean of antipodal alignment, centring on the object, approach
preference (from above, away from the arm base) and clearance from the scene."""

from __future__ import annotations

import numpy as np

from m3_core.grasp.config import GraspPlannerConfig


def centring(poses: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """1 where the closing line (origin along +x) passes through `centre` (the object's centre of mass
    proxy), falling linearly to 0 at `radius` from it: off-centre grasps let the object twist."""
    offset = centre - poses[:, :3, 3]
    x = poses[:, :3, 0]
    off_axis = offset - np.sum(offset * x, axis=1, keepdims=True) * x
    return 1.0 - np.clip(np.linalg.norm(off_axis, axis=1) / max(radius, 1e-6), 0.0, 1.0)


def approach_terms(
    poses: np.ndarray, up: np.ndarray, reach_dir: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(top_down, toward_robot) in [0, 1]: the approach's cosine with straight down, and with the
    horizontal direction from the arm base to the object (zeros without a base)."""
    z = poses[:, :3, 2]
    top_down = np.clip(-(z @ up), 0.0, 1.0)
    toward = np.zeros(len(poses)) if reach_dir is None else np.clip(z @ reach_dir, 0.0, 1.0)
    return top_down, toward


def quality(
    antipodal: np.ndarray, centred: np.ndarray, top_down: np.ndarray, toward: np.ndarray,
    clearance: np.ndarray, config: GraspPlannerConfig, has_base: bool, spare: np.ndarray | float = 1.0,
    room: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Weighted mean of the terms (each in [0, 1]); the toward-robot term counts only with a base.
    `spare` is the opening-margin term (`spare_opening`; 1 before the width is known), `room` the
    approach-room term (`approach_room`; 1 before the approach opening is known)."""
    c = config
    w_toward = c.weight_toward_robot if has_base else 0.0
    total = (c.weight_antipodal + c.weight_centring + c.weight_top_down + w_toward + c.weight_clearance
             + c.weight_spare_opening + c.weight_approach_room)
    s = (c.weight_antipodal * antipodal + c.weight_centring * centred + c.weight_top_down * top_down
         + w_toward * toward + c.weight_clearance * clearance + c.weight_spare_opening * spare
         + c.weight_approach_room * room)
    return np.clip(s / max(total, 1e-12), 0.0, 1.0)


def spare_opening(widths: np.ndarray, max_opening_m: float, config: GraspPlannerConfig) -> np.ndarray:
    """1 where the fingers open `spare_opening_saturation_m` more than the grasp needs, falling to 0 at
    the gripper's full opening. A memory sees an object's far side poorly or not at all and blurs its
    edges, so its width along the closing axis is often underestimated by millimetres to centimetres:
    a grasp that needs nearly the full opening lands a finger on the object (a mug's 8.2 cm body
    measured 6.9 cm from one side), one with room to spare does not."""
    return np.clip((max_opening_m - widths) / config.spare_opening_saturation_m, 0.0, 1.0)


def approach_room(widths: np.ndarray, approach_widths: np.ndarray, config: GraspPlannerConfig) -> np.ndarray:
    """1 where each finger comes down `approach_clearance_m` beside the object (approach opening =
    measured extent + twice that), falling linearly to 0 with no room at all (see
    GraspPlannerConfig.weight_approach_room); `widths` are the openings the grasps need (the extent
    plus `opening_clearance_m` a side)."""
    room = 0.5 * (approach_widths - widths) + config.opening_clearance_m
    return np.clip(room / config.approach_clearance_m, 0.0, 1.0)


def antipodal_score(contact_mean_cos: np.ndarray, config: GraspPlannerConfig) -> np.ndarray:
    """Mean contact-normal alignment mapped to [0, 1]: 1 along the closing axis, 0 at twice the
    friction cone's half-angle (a corner between two faces at 45 deg scores ~0.2 with the default)."""
    cos_limit = np.cos(np.radians(min(2.0 * config.friction_cone_deg, 89.0)))
    return np.clip((contact_mean_cos - cos_limit) / (1.0 - cos_limit), 0.0, 1.0)
