"""The parallel-jaw gripper as oriented boxes (two fingers, a palm) in the grasp frame and in the world.

Grasp frame: origin between the fingertips' centres, +z approach, +x closing, +y = z cross x.
The palm face lies `tcp_depth_m` behind the origin (z = -tcp_depth_m); the fingers run from the palm
face forward along +z for `finger_length_m`, their inner faces at x = +-width/2; the palm extends
`palm_depth_m` further back. RViz markers, top-down pictures and the physics gripper draw these.
"""

from __future__ import annotations

import numpy as np

from m3_core.grasp.types import Grasp
from m3_core.robot import GripperConfig

FINGER_LEFT, FINGER_RIGHT, PALM = 0, 1, 2
"""Order of the boxes returned by `local_boxes` and `gripper_boxes`."""


def local_boxes(width_m: np.ndarray | float, gripper: GripperConfig) -> tuple[np.ndarray, np.ndarray]:
    """Centres [..., 3, 3] and sizes [..., 3, 3] of (left finger, right finger, palm) in the grasp frame.

    `width_m` is the opening between the fingers' inner faces; any leading shape broadcasts.
    """
    w = np.asarray(width_m, dtype=np.float64)
    g = gripper
    finger_z = -g.tcp_depth_m + 0.5 * g.finger_length_m
    x = 0.5 * w + 0.5 * g.finger_thickness_m
    zeros = np.zeros_like(w)
    centres = np.stack([
        np.stack([-x, zeros, zeros + finger_z], axis=-1),
        np.stack([x, zeros, zeros + finger_z], axis=-1),
        np.stack([zeros, zeros, zeros - g.tcp_depth_m - 0.5 * g.palm_depth_m], axis=-1),
    ], axis=-2)
    finger = [g.finger_thickness_m, g.finger_width_m, g.finger_length_m]
    palm = [g.palm_width_m, g.palm_height_m, g.palm_depth_m]
    sizes = np.broadcast_to(np.array([finger, finger, palm]), centres.shape).copy()
    return centres, sizes


def closing_region(width_m: np.ndarray | float, gripper: GripperConfig) -> tuple[np.ndarray, np.ndarray]:
    """Centre [..., 3] and size [..., 3] of the space the fingers sweep when they close (grasp frame)."""
    w = np.asarray(width_m, dtype=np.float64)
    g = gripper
    zeros = np.zeros_like(w)
    centre = np.stack([zeros, zeros, zeros - g.tcp_depth_m + 0.5 * g.finger_length_m], axis=-1)
    size = np.stack([w, zeros + g.finger_width_m, zeros + g.finger_length_m], axis=-1)
    return centre, size


def grasp_matrix(origin: np.ndarray, closing: np.ndarray, approach: np.ndarray) -> np.ndarray:
    """World_from_grasp [..., 4, 4] from origin, closing axis (+x) and approach (+z), all [..., 3].

    The closing axis is made orthogonal to the approach; +y = z cross x.
    """
    z = approach / np.linalg.norm(approach, axis=-1, keepdims=True)
    x = closing - np.sum(closing * z, axis=-1, keepdims=True) * z
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    T = np.zeros(origin.shape[:-1] + (4, 4))
    T[..., :3, 0], T[..., :3, 1], T[..., :3, 2], T[..., :3, 3] = x, y, z, origin
    T[..., 3, 3] = 1.0
    return T


def pregrasp_matrix(world_from_grasp: np.ndarray, approach_distance_m: float) -> np.ndarray:
    """The grasp pose moved back along its own -z by `approach_distance_m` ([..., 4, 4])."""
    T = np.array(world_from_grasp, dtype=np.float64, copy=True)
    T[..., :3, 3] -= approach_distance_m * T[..., :3, 2]
    return T


def gripper_boxes(grasp: Grasp, gripper: GripperConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """The gripper at `grasp`, open to its width: [(world_from_box [4,4], size [3])] for the left finger
    (-x), the right finger (+x) and the palm. Each box frame is axis-aligned with the grasp frame."""
    centres, sizes = local_boxes(grasp.width_m, gripper)
    boxes = []
    for centre, size in zip(centres, sizes):
        grasp_from_box = np.eye(4)
        grasp_from_box[:3, 3] = centre
        boxes.append((np.asarray(grasp.world_from_grasp, dtype=np.float64) @ grasp_from_box, size))
    return boxes
