"""The robot description shared by capture, pose chain and bag2scene: config/robot_b1z1.yaml.

Three sections: `topics` (ROS topic names), `frames` (frame ids of the pose chain) and
`extrinsics` (the two calibrated static links of the paper's eq. 3). Read with m3_core.config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3_core.config import config_dir, from_dict, read_yaml
from m3_core.geometry.chain import ArmChainExtrinsics
from m3_core.geometry.se3 import matrix_from_pose

DEFAULT_ROBOT_YAML = config_dir() / "robot_b1z1.yaml"


@dataclass(frozen=True)
class TopicsConfig:
    """ROS topic names (realsense2_camera defaults for a wrist D435/D405)."""

    color: str = "/camera/camera/color/image_raw"
    """sensor_msgs/Image, rgb8 (bgr8/mono8 accepted)."""
    depth: str = "/camera/camera/aligned_depth_to_color/image_raw"
    """sensor_msgs/Image, 16UC1 millimetres (or 32FC1 metres), aligned to color."""
    camera_info: str = "/camera/camera/color/camera_info"
    """sensor_msgs/CameraInfo of the color camera."""
    odometry: str = "/lidar_odometry"
    """nav_msgs/Odometry: world (odom) -> lidar_link."""
    ee_pose: str = "/z1/ee_pose"
    """geometry_msgs/PoseStamped: ee_link in arm_base_link."""
    camera_pose: str = "/m3/camera_pose"
    """geometry_msgs/PoseStamped: camera in world, published by the pose-chain node."""


@dataclass(frozen=True)
class FramesConfig:
    """Frame ids of the chain world <- lidar <- arm base <- end effector <- camera."""

    world: str = "odom"
    """LiDAR odometry frame (fixed)."""
    lidar: str = "lidar_link"
    """Body frame as the odometry reports it."""
    arm_base: str = "arm_base_link"
    """Arm base."""
    ee: str = "ee_link"
    """End effector (flange)."""
    camera: str = "camera_color_optical_frame"
    """Color optical frame (OpenCV axes); depth is aligned to it."""


@dataclass(frozen=True)
class PoseConfig:
    """A static transform as position (metres) + quaternion (x, y, z, w)."""

    position: tuple[float, ...] = (0.0, 0.0, 0.0)
    """Translation of the child frame in the parent frame, metres."""
    quat_xyzw: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0)
    """Rotation parent_from_child, ROS order."""

    def matrix(self) -> np.ndarray:
        if len(self.position) != 3 or len(self.quat_xyzw) != 4:
            raise ValueError(
                f"a pose needs position [x, y, z] and quat_xyzw [x, y, z, w], got {self.position} "
                f"and {self.quat_xyzw}"
            )
        return matrix_from_pose(np.asarray(self.position, float), np.asarray(self.quat_xyzw, float))


@dataclass(frozen=True)
class ExtrinsicsConfig:
    """The calibrated static links of the chain."""

    lidar_from_armbase: PoseConfig = field(default_factory=PoseConfig)
    """Mount: the arm base in the LiDAR frame."""
    ee_from_camera: PoseConfig = field(default_factory=PoseConfig)
    """Hand-eye: the camera optical frame in the end-effector frame."""

    def chain(self) -> ArmChainExtrinsics:
        return ArmChainExtrinsics(self.lidar_from_armbase.matrix(), self.ee_from_camera.matrix())


@dataclass(frozen=True)
class GripperConfig:
    """Parallel-jaw gripper geometry, in the grasp frame of msg/GraspTarget.msg.

    Grasp frame: origin at the point between the fingertips' centres, +z the approach direction,
    +x the closing direction, +y = z cross x. The palm lies behind the fingers at z < 0.
    """

    max_opening_m: float = 0.08
    """Widest gap between the fingers' inner faces, metres."""
    min_opening_m: float = 0.005
    """Narrowest object the fingers can still hold, metres."""
    finger_length_m: float = 0.06
    """Finger length along the approach (+z), from the palm to the tip, metres."""
    finger_width_m: float = 0.02
    """Finger size along +y (across the closing direction), metres."""
    finger_thickness_m: float = 0.012
    """Finger size along +x (the closing direction), metres."""
    palm_depth_m: float = 0.04
    """Palm (gripper body) size along +z behind the fingers, metres."""
    palm_width_m: float = 0.1
    """Palm size along +x, metres (at least the opening plus both fingers)."""
    palm_height_m: float = 0.05
    """Palm size along +y, metres."""
    tcp_depth_m: float = 0.04
    """Grasp origin's distance ahead of the palm face along +z (how deep fingers reach over the object)."""
    approach_distance_m: float = 0.10
    """Pre-grasp pose: this far back along -z from the grasp pose, metres."""
    max_force_n: float = 30.0
    """Finger closing force limit, newtons."""


@dataclass(frozen=True)
class ArmConfig:
    """What the planner needs to know about the arm that carries the gripper."""

    reach_m: float = 0.74
    """Maximum reach from the arm base origin to the flange, metres (Unitree Z1: 740 mm)."""
    flange_from_grasp_m: float = 0.1
    """Distance from the flange to the grasp origin along the approach, metres (gripper length)."""


@dataclass(frozen=True)
class RobotConfig:
    """Topics, frames, extrinsics, gripper and arm of one robot (one YAML file)."""

    topics: TopicsConfig = field(default_factory=TopicsConfig)
    """ROS topic names."""
    frames: FramesConfig = field(default_factory=FramesConfig)
    """Frame ids of the pose chain."""
    extrinsics: ExtrinsicsConfig = field(default_factory=ExtrinsicsConfig)
    """Mount and hand-eye calibration."""
    gripper: GripperConfig = field(default_factory=GripperConfig)
    """Gripper geometry for grasp planning and the physics check."""
    arm: ArmConfig = field(default_factory=ArmConfig)
    """Arm reach for grasp planning."""

    def static_transforms(self) -> list[tuple[str, str, np.ndarray]]:
        """[(parent, child, parent_from_child)] of the two static links, for /tf_static."""
        f = self.frames
        return [
            (f.lidar, f.arm_base, self.extrinsics.lidar_from_armbase.matrix()),
            (f.ee, f.camera, self.extrinsics.ee_from_camera.matrix()),
        ]


def load_robot_config(path: Path | str | None = None) -> RobotConfig:
    """Read topics/frames/extrinsics/gripper/arm from a robot YAML (default: config/robot_b1z1.yaml).

    Other top-level sections (used by other tools) are ignored.
    """
    path = Path(path) if path else DEFAULT_ROBOT_YAML
    data = read_yaml(path)
    wanted = {k: data[k] for k in ("topics", "frames", "extrinsics", "gripper", "arm") if k in data}
    return from_dict(RobotConfig, wanted, where=str(path))
