"""An analytic robot trajectory shared by tf_peer.py (publisher) and the test (checker)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from m3_core.geometry.se3 import matrix_from_pose, transform_from_rt

STATIC = [
    ("lidar_link", "arm_base_link", matrix_from_pose(np.array([0.2, 0.0, -0.12]), np.array([0, 0, 0, 1.0]))),
    (
        "ee_link",
        "camera_color_optical_frame",
        matrix_from_pose(np.array([0.06, 0, 0.045]), np.array([0.5, -0.5, 0.5, -0.5])),
    ),
]


def world_from_lidar(stamp_ns: int) -> np.ndarray:
    t = stamp_ns * 1e-9
    yaw = 0.5 * t
    return transform_from_rt(
        Rotation.from_euler("z", yaw).as_matrix(), np.array([np.cos(0.5 * t), np.sin(0.5 * t), 0.55])
    )


def armbase_from_ee(stamp_ns: int) -> np.ndarray:
    t = stamp_ns * 1e-9
    return transform_from_rt(
        Rotation.from_euler("y", 0.6 + 0.2 * np.sin(2.0 * t)).as_matrix(), np.array([0.35, 0.0, 0.3])
    )


def dynamic_edges(stamp_ns: int):
    return [
        ("odom", "lidar_link", world_from_lidar(stamp_ns)),
        ("arm_base_link", "ee_link", armbase_from_ee(stamp_ns)),
    ]
