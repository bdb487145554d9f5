"""The robot's camera pose chain (M3 paper, Sec. 4.4, eq. 3).

world_from_camera(t) = world_from_lidar(t) @ lidar_from_armbase @ armbase_from_ee(t) @ ee_from_camera

world_from_lidar comes from LiDAR odometry, armbase_from_ee from the arm's forward kinematics,
the other two are calibrated extrinsics (mount and hand-eye).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m3_core.geometry.se3 import _check_matrix


@dataclass(frozen=True)
class ArmChainExtrinsics:
    """The two static links of the chain, 4x4 float64 each."""

    lidar_from_armbase: np.ndarray = field(default_factory=lambda: np.eye(4))
    """Mount: arm base in the LiDAR (odometry child) frame. Calibrate per robot."""
    ee_from_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    """Hand-eye: camera optical frame in the end-effector frame. Calibrate per robot."""

    def world_from_camera(self, world_from_lidar: np.ndarray, armbase_from_ee: np.ndarray) -> np.ndarray:
        return world_from_camera_chain(
            world_from_lidar, self.lidar_from_armbase, armbase_from_ee, self.ee_from_camera
        )


def world_from_camera_chain(
    world_from_lidar: np.ndarray,
    lidar_from_armbase: np.ndarray,
    armbase_from_ee: np.ndarray,
    ee_from_camera: np.ndarray,
) -> np.ndarray:
    """Compose the paper's eq. 3 (all 4x4, left to right)."""
    mats = [
        _check_matrix(m, name)
        for m, name in (
            (world_from_lidar, "world_from_lidar"),
            (lidar_from_armbase, "lidar_from_armbase"),
            (armbase_from_ee, "armbase_from_ee"),
            (ee_from_camera, "ee_from_camera"),
        )
    ]
    return mats[0] @ mats[1] @ mats[2] @ mats[3]
