"""`m3 bag2scene BAG OUT`: a ROS 2 bag -> keyframed scene directory, without ROS (rosbags).

Reads color, aligned depth, camera_info, /tf_static (and /tf if present), odometry and the
end-effector pose, turns odometry + ee pose into transforms exactly as the pose-chain node does,
and feeds everything in bag order through the same CaptureSession as the live capture node. Frames
are decided when the transforms have reached stamp + tf_wait (as live), and the rest at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from m3_core.capture.pose_chain import PoseChain
from m3_core.capture.session import CaptureConfig, CaptureSession
from m3_core.capture.writer import SceneWriter
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import matrix_from_pose
from m3_core.robot import RobotConfig, load_robot_config

log = logging.getLogger(__name__)

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"


def stamp_ns_of(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _matrix_from_pose_fields(pose: Any) -> np.ndarray:
    p, q = pose.position, pose.orientation
    return matrix_from_pose(np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w]))


def _matrix_from_transform_fields(tf: Any) -> np.ndarray:
    t, q = tf.translation, tf.rotation
    return matrix_from_pose(np.array([t.x, t.y, t.z]), np.array([q.x, q.y, q.z, q.w]))


def camera_from_info_fields(k: Any, width: int, height: int) -> PinholeCamera:
    """Pinhole intrinsics from CameraInfo.k (row-major 3x3) and the image size."""
    return PinholeCamera.from_matrix(np.asarray(k, np.float64).reshape(3, 3), int(width), int(height))


class BagFeeder:
    """Dispatches deserialized bag messages (rosbags objects) into a CaptureSession."""

    def __init__(self, session: CaptureSession, robot: RobotConfig) -> None:
        self.session = session
        self.robot = robot
        self.chain = PoseChain(robot)
        t = robot.topics
        self.handlers = {
            t.color: self._on_color,
            t.depth: self._on_depth,
            t.camera_info: self._on_camera_info,
            t.odometry: self._on_odometry,
            t.ee_pose: self._on_ee_pose,
            TF_TOPIC: lambda m: self._on_tf(m, static=False),
            TF_STATIC_TOPIC: lambda m: self._on_tf(m, static=True),
        }

    def feed(self, topic: str, msg: Any) -> None:
        try:
            self.handlers[topic](msg)
        except ValueError as err:  # e.g. a zero quaternion: skip the message, as the nodes do
            self.session.drop_input("bad_message", f"message on {topic} ignored: {err}")

    def _on_color(self, msg: Any) -> None:
        self.session.add_image_msg("color", msg, stamp_ns_of(msg.header), self.robot.topics.color)

    def _on_depth(self, msg: Any) -> None:
        self.session.add_image_msg("depth", msg, stamp_ns_of(msg.header), self.robot.topics.depth)

    def _on_camera_info(self, msg: Any) -> None:
        try:
            self.session.set_camera(camera_from_info_fields(msg.k, msg.width, msg.height))
        except ValueError as err:
            self.session.drop_input("bad_camera_info", f"camera_info ignored: {err}")

    def _on_tf(self, msg: Any, static: bool) -> None:
        for tf in msg.transforms:
            self.session.add_transform(
                tf.header.frame_id,
                tf.child_frame_id,
                _matrix_from_transform_fields(tf.transform),
                stamp_ns_of(tf.header),
                static=static,
            )

    def _on_odometry(self, msg: Any) -> None:
        tf = self.chain.odometry_transform(
            msg.header.frame_id,
            msg.child_frame_id,
            _matrix_from_pose_fields(msg.pose.pose),
            stamp_ns_of(msg.header),
        )
        self.session.add_transform(tf.parent, tf.child, tf.parent_from_child, tf.stamp_ns)

    def _on_ee_pose(self, msg: Any) -> None:
        tf = self.chain.ee_transform(
            msg.header.frame_id, _matrix_from_pose_fields(msg.pose), stamp_ns_of(msg.header)
        )
        self.session.add_transform(tf.parent, tf.child, tf.parent_from_child, tf.stamp_ns)


def bag_to_scene(
    bag: Path | str,
    out: Path | str,
    robot: RobotConfig | None = None,
    config: CaptureConfig | None = None,
    overwrite: bool = False,
) -> CaptureSession:
    """Convert a bag (directory or .mcap/.db3) into a scene directory at `out`; returns the session
    (its `stats` say what was kept and dropped). Raises ValueError for an unusable bag."""
    from rosbags.highlevel import AnyReader  # local: only this path needs rosbags
    from rosbags.typesys import Stores, get_typestore  # local: rosbags loads only when a bag is read

    robot = robot or load_robot_config()
    config = config or CaptureConfig()
    bag = Path(bag)
    if not bag.exists():
        raise ValueError(f"bag {bag} does not exist")
    writer = SceneWriter(
        out,
        world_frame=robot.frames.world,
        camera_frame=robot.frames.camera,
        source="bag",
        depth_scale_m=config.depth_scale_m,
        save_every=config.save_every,
        overwrite=overwrite,
        extra={"bag": str(bag.resolve())},
    )
    session = CaptureSession(
        config, writer, robot.frames.world, robot.frames.camera, chain_frames=robot.frames
    )
    feeder = BagFeeder(session, robot)
    with AnyReader([bag], default_typestore=get_typestore(Stores.LATEST)) as reader:
        connections = [c for c in reader.connections if c.topic in feeder.handlers]
        topics = {c.topic for c in connections}
        missing = [
            t for t in (robot.topics.color, robot.topics.depth, robot.topics.camera_info) if t not in topics
        ]
        if missing:
            raise ValueError(
                f"bag {bag} lacks topic(s) {missing}; it has {sorted(c.topic for c in reader.connections)}. "
                "Fix topics: in the robot YAML (--config)."
            )
        for conn, _log_ns, raw in reader.messages(connections=connections):
            feeder.feed(conn.topic, reader.deserialize(raw, conn.msgtype))
            session.poll()
    session.poll(flush=True)
    session.save()
    return session
