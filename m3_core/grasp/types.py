"""What a grasp planner returns: one grasp, in the gripper-frame convention of msg/GraspTarget.msg."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grasp:
    """One parallel-jaw grasp in the memory's world frame.

    Grasp frame: origin between the fingertips' centres, +z the approach direction (the gripper
    moves along +z to reach the object), +x the closing direction, +y = z cross x.
    """

    world_from_grasp: np.ndarray
    """[4,4] grasp pose, metres."""
    width_m: float
    """Opening to approach with and close from (the object's width at the grasp plus clearance on
    both sides: up to `approach_clearance_m` where nothing is in the way), metres."""
    world_from_pregrasp: np.ndarray
    """[4,4] pose the gripper goes to first: the grasp moved back along -z by the approach distance."""
    quality: float
    """Score in [0, 1]; higher is better. Candidates are ranked by it."""
