"""Capture node: RealSense color + aligned depth + /tf -> keyframed scene directory.

A thin adapter around m3_core.capture.CaptureSession (the same logic `m3 bag2scene` runs offline):
camera topics with sensor-data QoS feed the session; /tf and /tf_static feed its transform buffer;
a timer in its own callback group decides pending frames and writes PNGs; ~/save (std_srvs/Trigger)
rewrites scene.json + sparse/0; a diagnostics line is logged periodically. The scene is saved again
on shutdown.

    ros2 run m3_grasp m3_capture_node --ros-args -p output_dir:=/data/scan1
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from m3_core.capture.keyframes import KeyframeConfig
from m3_core.capture.session import CaptureConfig, CaptureSession
from m3_core.capture.writer import SceneWriteError, SceneWriter
from m3_core.robot import DEFAULT_ROBOT_YAML, load_robot_config
from m3_ros.conversions import camera_from_info_msg, matrix_from_transform_msg, stamp_ns_from_msg
from m3_ros.spin import spin_node

log = logging.getLogger(__name__)

# name: (default, description, read_only). Empty strings mean "take it from the robot YAML".
_PARAMS: dict[str, tuple[object, str, bool]] = {
    "config": (str(DEFAULT_ROBOT_YAML), "robot YAML with topics, frames and extrinsics", True),
    "output_dir": ("", "scene directory to write (default: ./m3_scene_<date>_<time>)", True),
    "overwrite": (False, "replace an existing scene in output_dir", True),
    "color_topic": ("", "sensor_msgs/Image rgb8 (empty: topics.color of the YAML)", True),
    "depth_topic": ("", "aligned depth 16UC1 mm or 32FC1 m (empty: topics.depth)", True),
    "camera_info_topic": ("", "sensor_msgs/CameraInfo of the color camera (empty: topics.camera_info)", True),
    "world_frame": ("", "fixed frame of the poses (empty: frames.world)", True),
    "camera_frame": ("", "color optical frame (empty: frames.camera)", True),
    "min_translation_m": (
        KeyframeConfig.min_translation_m,
        "keyframe when the camera moved this far, m",
        False,
    ),
    "min_rotation_deg": (
        KeyframeConfig.min_rotation_deg,
        "keyframe when the camera turned this much, deg",
        False,
    ),
    "max_interval_s": (KeyframeConfig.max_interval_s, "keyframe at least this often, s (0: off)", False),
    "min_interval_s": (KeyframeConfig.min_interval_s, "never two keyframes closer than this, s", False),
    "min_sharpness": (
        KeyframeConfig.min_sharpness,
        "reject blur: variance of the Laplacian below this",
        False,
    ),
    "min_valid_depth_fraction": (
        KeyframeConfig.min_valid_depth_fraction,
        "reject frames with less depth",
        False,
    ),
    "pair_slop_s": (CaptureConfig.pair_slop_s, "largest color/depth stamp difference that pairs, s", True),
    "tf_wait_s": (CaptureConfig.tf_wait_s, "decide a frame once /tf reached its stamp + this, s", True),
    "tf_timeout_s": (CaptureConfig.tf_timeout_s, "wall time to wait for transforms before skipping, s", True),
    "max_pending": (CaptureConfig.max_pending, "frames waiting for transforms at most", True),
    "max_extrapolation_s": (
        CaptureConfig.max_extrapolation_s,
        "how far a frame may lie past the transforms held, s (0: interpolated poses only)",
        True,
    ),
    "clock_jump_s": (CaptureConfig.clock_jump_s, "backwards stamp jump (s) that resets the buffer", True),
    "save_every": (CaptureConfig.save_every, "rewrite scene.json + sparse/0 every N keyframes", True),
    "depth_scale_m": (CaptureConfig.depth_scale_m, "metres per 16UC1 depth unit", True),
    "qos_depth": (10, "history depth of the camera subscriptions", True),
    "camera_reliable": (False, "subscribe the camera RELIABLE (default: sensor-data best effort)", True),
    "diagnostics_period_s": (5.0, "period of the diagnostics log line, s (0: off)", True),
    "poll_period_s": (0.02, "how often pending frames are checked, s", True),
}
_KEYFRAME_PARAMS = {
    "min_translation_m", "min_rotation_deg", "max_interval_s", "min_interval_s", "min_sharpness",
    "min_valid_depth_fraction",
}  # fmt: skip


class CaptureNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("m3_capture", **kwargs)
        for name, (default, description, read_only) in _PARAMS.items():
            # floats typed dynamically so that `-p min_translation_m:=1` (an int) is accepted too
            descriptor = ParameterDescriptor(
                description=description, read_only=read_only, dynamic_typing=isinstance(default, float)
            )
            self.declare_parameter(name, default, descriptor)
        p = {name: self.get_parameter(name).value for name in _PARAMS}
        robot = load_robot_config(p["config"])
        self.topics = {
            "color": p["color_topic"] or robot.topics.color,
            "depth": p["depth_topic"] or robot.topics.depth,
            "camera_info": p["camera_info_topic"] or robot.topics.camera_info,
        }
        world_frame = p["world_frame"] or robot.frames.world
        camera_frame = p["camera_frame"] or robot.frames.camera
        config = CaptureConfig(
            keyframes=KeyframeConfig(**{k: float(p[k]) for k in _KEYFRAME_PARAMS}),
            pair_slop_s=float(p["pair_slop_s"]),
            tf_wait_s=float(p["tf_wait_s"]),
            tf_timeout_s=float(p["tf_timeout_s"]),
            max_pending=int(p["max_pending"]),
            max_extrapolation_s=float(p["max_extrapolation_s"]),
            clock_jump_s=float(p["clock_jump_s"]),
            save_every=int(p["save_every"]),
            depth_scale_m=float(p["depth_scale_m"]),
        )
        out = Path(p["output_dir"] or f"m3_scene_{datetime.now():%Y%m%d_%H%M%S}").expanduser()
        writer = SceneWriter(
            out, world_frame=world_frame, camera_frame=camera_frame, source="live",
            depth_scale_m=config.depth_scale_m, save_every=config.save_every, overwrite=bool(p["overwrite"]),
            extra={"topics": self.topics},
        )  # fmt: skip
        chain_frames = replace(robot.frames, world=world_frame, camera=camera_frame)
        self.session = CaptureSession(config, writer, world_frame, camera_frame, chain_frames=chain_frames)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # Groups: camera inputs, transforms, and the heavy work (decide + PNG writes + save).
        camera_group = MutuallyExclusiveCallbackGroup()
        tf_group = MutuallyExclusiveCallbackGroup()
        heavy_group = MutuallyExclusiveCallbackGroup()
        # sensor-data QoS (best effort) matches any camera driver; reliable resends lost fragments of
        # large images when the publisher is reliable too (a bag replay, realsense2_camera's default)
        camera_reliability = (
            ReliabilityPolicy.RELIABLE if p["camera_reliable"] else ReliabilityPolicy.BEST_EFFORT
        )
        sensor_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=int(p["qos_depth"]), reliability=camera_reliability
        )
        tf_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE
        )
        tf_static_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )  # fmt: skip
        self.create_subscription(
            Image, self.topics["color"], self._on_color, sensor_qos, callback_group=camera_group
        )
        self.create_subscription(
            Image, self.topics["depth"], self._on_depth, sensor_qos, callback_group=camera_group
        )
        self.create_subscription(
            CameraInfo,
            self.topics["camera_info"],
            self._on_camera_info,
            sensor_qos,
            callback_group=camera_group,
        )
        self.create_subscription(TFMessage, "/tf", self._on_tf, tf_qos, callback_group=tf_group)
        self.create_subscription(
            TFMessage, "/tf_static", self._on_tf_static, tf_static_qos, callback_group=tf_group
        )
        self.create_timer(float(p["poll_period_s"]), self._on_poll, callback_group=heavy_group)
        self.create_service(Trigger, "~/save", self._on_save, callback_group=heavy_group)
        if float(p["diagnostics_period_s"]) > 0:
            self.create_timer(
                float(p["diagnostics_period_s"]), self._on_diagnostics, callback_group=heavy_group
            )
        self._info_error_logged = False
        self.get_logger().info(
            f"capturing {self.topics['color']} + {self.topics['depth']} with poses {world_frame}<-{camera_frame} "
            f"into {out}"
        )

    # -- inputs ------------------------------------------------------------------------------
    def _on_color(self, msg: Image) -> None:
        self.session.add_image_msg("color", msg, stamp_ns_from_msg(msg.header.stamp), self.topics["color"])

    def _on_depth(self, msg: Image) -> None:
        self.session.add_image_msg("depth", msg, stamp_ns_from_msg(msg.header.stamp), self.topics["depth"])

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self.session.set_camera(camera_from_info_msg(msg))
        except ValueError as err:
            if not self._info_error_logged:
                self._info_error_logged = True
                self.get_logger().error(f"camera_info on {self.topics['camera_info']} ignored: {err}")

    def _feed_tf(self, msg: TFMessage, static: bool) -> None:
        for tf in msg.transforms:
            self.session.add_transform(
                tf.header.frame_id, tf.child_frame_id, matrix_from_transform_msg(tf),
                stamp_ns_from_msg(tf.header.stamp), static=static,
            )  # fmt: skip

    def _on_tf(self, msg: TFMessage) -> None:
        self._feed_tf(msg, static=False)

    def _on_tf_static(self, msg: TFMessage) -> None:
        self._feed_tf(msg, static=True)

    # -- heavy group -------------------------------------------------------------------------
    def _on_poll(self) -> None:
        self.session.poll(now_s=time.monotonic())

    def _on_save(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.session.poll(now_s=time.monotonic())
        try:
            n = self.session.save()
        except SceneWriteError as err:
            response.success, response.message = False, str(err)
            self.get_logger().error(str(err))
            return response
        response.success = True
        # pending frames wait for transforms (tf_wait_s / tf_timeout_s); a caller may save again later
        response.message = (
            f"saved {n} keyframes to {self.session.writer.root} ({self.session.pending} pending)"
        )
        self.get_logger().info(response.message)
        return response

    def _on_diagnostics(self) -> None:
        s = self.session
        self.get_logger().info(
            f"{s.stats.line()}; pending={s.pending}, saved={s.writer.saved_frames}, clock_jumps={s.stats.clock_jumps}"
        )

    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {p.name: float(p.value) for p in params if p.name in _KEYFRAME_PARAMS}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            keyframes = replace(self.session.config.keyframes, **changes)
        except (ValueError, TypeError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        self.session.config = replace(self.session.config, keyframes=keyframes)
        self.session.selector.config = keyframes
        return SetParametersResult(successful=True)

    def finalize(self) -> None:
        """Decide what is still pending and save (on shutdown; rclpy's context may be gone, so the
        messages go through Python logging rather than the node's logger and /rosout)."""
        self.session.poll(flush=True)
        try:
            n = self.session.save()
            log.info(
                "final scene: %d keyframes in %s; %s", n, self.session.writer.root, self.session.stats.line()
            )
        except SceneWriteError as err:
            log.error("final save failed: %s", err)


def main(args: list[str] | None = None) -> int:
    return spin_node(CaptureNode, "m3_capture_node", args, threads=4)


if __name__ == "__main__":
    sys.exit(main())
