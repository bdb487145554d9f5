"""Geometry: SE(3)/Sim(3), quaternions, the pinhole camera, the robot pose chain, a TF buffer.

Conventions: poses are 4x4 float64 `<to>_from_<from>` matrices; cameras use OpenCV axes
(x right, y down, z forward); quaternions are ROS order (x, y, z, w).
"""

from m3_core.geometry.camera import PinholeCamera, points_from_depth
from m3_core.geometry.chain import ArmChainExtrinsics, world_from_camera_chain
from m3_core.geometry.se3 import (
    invert,
    matrix_from_pose,
    matrix_from_quat_xyzw,
    pose_from_matrix,
    quat_xyzw_from_matrix,
    transform_from_rt,
    transform_points,
)
from m3_core.geometry.sim3 import Sim3, umeyama_sim3, umeyama_sim3_robust
from m3_core.geometry.transform_buffer import TransformBuffer

__all__ = [
    "ArmChainExtrinsics",
    "PinholeCamera",
    "Sim3",
    "TransformBuffer",
    "invert",
    "matrix_from_pose",
    "matrix_from_quat_xyzw",
    "points_from_depth",
    "pose_from_matrix",
    "quat_xyzw_from_matrix",
    "transform_from_rt",
    "transform_points",
    "umeyama_sim3",
    "umeyama_sim3_robust",
    "world_from_camera_chain",
]
