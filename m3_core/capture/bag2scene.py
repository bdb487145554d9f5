"""`m3 bag2scene BAG OUT`: a ROS 2 bag -> keyframed scene directory, without ROS (rosbags).

Reads color, aligned depth, camera_info, /tf_static (and /tf if present), odometry and the
end-effector pose, turns odometry + ee pose into transforms exactly as the pose-chain node does,
and feeds everything in bag order through the same CaptureSession as the live capture node. Frames
are decided when the transforms have reached stamp + tf_wait (as live), and the rest at the end.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from m3_core.capture.keyframes import KeyframeConfig
from m3_core.capture.pose_chain import PoseChain
from m3_core.capture.session import CaptureConfig, CaptureSession
from m3_core.capture.writer import SceneWriter
from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import matrix_from_pose
from m3_core.robot import DEFAULT_ROBOT_YAML, RobotConfig, load_robot_config

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
    from rosbags.typesys import Stores, get_typestore

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, k = CaptureConfig(), KeyframeConfig()
    parser.add_argument("bag", type=Path, help="ROS 2 bag (directory, .mcap or .db3)")
    parser.add_argument("out", type=Path, help="output scene directory")
    parser.add_argument("--config", type=Path, default=DEFAULT_ROBOT_YAML, help="robot YAML (topics, frames)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing scene at OUT")
    parser.add_argument("--min-translation", type=float, default=k.min_translation_m, help="keyframe gate, m")
    parser.add_argument(
        "--min-rotation", type=float, default=k.min_rotation_deg, help="keyframe gate, degrees"
    )
    parser.add_argument(
        "--max-interval", type=float, default=k.max_interval_s, help="keyframe every N s (0: off)"
    )
    parser.add_argument(
        "--min-interval", type=float, default=k.min_interval_s, help="min s between keyframes"
    )
    parser.add_argument(
        "--min-sharpness", type=float, default=k.min_sharpness, help="Laplacian variance gate"
    )
    parser.add_argument(
        "--min-valid-depth", type=float, default=k.min_valid_depth_fraction, help="min valid depth fraction"
    )
    parser.add_argument(
        "--tf-wait", type=float, default=d.tf_wait_s, help="wait for transforms past a stamp, s"
    )
    parser.add_argument(
        "--save-every", type=int, default=d.save_every, help="rewrite metadata every N keyframes"
    )
    # ground-truth masks are the simulator's: say where the flag went
    parser.add_argument("--gt", type=Path, default=None, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> CaptureConfig:
    keyframes = KeyframeConfig(
        min_translation_m=args.min_translation,
        min_rotation_deg=args.min_rotation,
        max_interval_s=args.max_interval,
        min_interval_s=args.min_interval,
        min_sharpness=args.min_sharpness,
        min_valid_depth_fraction=args.min_valid_depth,
    )
    return CaptureConfig(keyframes=keyframes, tf_wait_s=args.tf_wait, save_every=args.save_every)


def run(args: argparse.Namespace) -> int:
    from rosbags.highlevel import AnyReaderError  # local: rosbags loads only for this command
    from rosbags.rosbag2 import ReaderError

    t0 = time.perf_counter()
    if args.gt is not None:
        print("m3 bag2scene: --gt moved to the simulator: run `m3 sim masks SCENE GT_DIR` after bag2scene")
        return 2
    try:
        robot = load_robot_config(args.config)
        session = bag_to_scene(args.bag, args.out, robot, config_from_args(args), overwrite=args.overwrite)
    except (AnyReaderError, ReaderError) as err:
        print(f"m3 bag2scene: {args.bag} is not a readable ROS 2 bag ({err})")
        return 2
    except (ValueError, M3Error, OSError) as err:  # a bad bag or config, an output that cannot be written
        print(f"m3 bag2scene: {err}")
        return 2
    lost = session.stats.dropped.get("write_error", 0) + session.stats.save_errors
    if lost:  # a keyframe or a save that did not reach the disk: the scene is not what the bag holds
        print(
            f"m3 bag2scene: {lost} keyframe write(s) failed in {args.out} (disk full?); {session.stats.line()}"
        )
        return 1
    print(
        f"{args.out}: {session.stats.kept} keyframes in {time.perf_counter() - t0:.1f}s; {session.stats.line()}"
    )
    return 0 if session.stats.kept else 1
