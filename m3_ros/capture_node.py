"""Capture node: RealSense color + aligned depth + /tf -> keyframed scene directory.

A thin adapter around m3_core.capture.CaptureSession (the same logic `m3 bag2scene` runs offline):
camera topics with sensor-data QoS feed the session; /tf and /tf_static feed its transform buffer;
a timer in its own callback group decides pending frames and writes PNGs; ~/save (std_srvs/Trigger)
rewrites scene.json + sparse/0; ~/finish (std_srvs/Trigger) first decides the frames still waiting
for transforms (the stream is over) and then saves; a diagnostics line is logged periodically. The
scene is saved again on shutdown.

    ros2 run m3_grasp m3_capture_node --ros-args -p output_dir:=~/scans/table1 -p robot_config:=~/robot.yaml

Parameters: m3_ros.params.CAPTURE_PARAMS (`ros2 param describe /m3_capture <name>`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path

from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from m3_core.capture.keyframes import KeyframeConfig
from m3_core.capture.session import CaptureConfig, CaptureSession
from m3_core.capture.writer import SceneWriteError, SceneWriter
from m3_core.robot import load_robot_config
from m3_ros.conversions import camera_from_info_msg, stamp_ns_from_msg, transforms_from_tf_msg
from m3_ros.drops import DropCounter
from m3_ros.params import CAPTURE_PARAMS, dataclass_kwargs, declare_parameters
from m3_ros.ready import ReadinessReporter
from m3_ros.spin import spin_node

log = logging.getLogger(__name__)

TF_QUEUE_DEPTH = 1000
_KEYFRAME_PARAMS = {f.name for f in fields(KeyframeConfig)}  # tunable while capturing


class CaptureNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("m3_capture", **kwargs)
        p = declare_parameters(self, CAPTURE_PARAMS)
        robot = load_robot_config(p["robot_config"])
        self.topics = {
            "color": p["color_topic"] or robot.topics.color,
            "depth": p["depth_topic"] or robot.topics.depth,
            "camera_info": p["camera_info_topic"] or robot.topics.camera_info,
        }
        world_frame = p["world_frame"] or robot.frames.world
        camera_frame = p["camera_frame"] or robot.frames.camera
        config = CaptureConfig(
            keyframes=KeyframeConfig(**dataclass_kwargs(p, CAPTURE_PARAMS, KeyframeConfig)),
            **dataclass_kwargs(p, CAPTURE_PARAMS, CaptureConfig),
        )
        out = Path(p["output_dir"] or f"m3_scene_{datetime.now():%Y%m%d_%H%M%S}")
        writer = SceneWriter(
            out, world_frame=world_frame, camera_frame=camera_frame, source="live",
            depth_scale_m=config.depth_scale_m, save_every=config.save_every, overwrite=bool(p["overwrite"]),
            extra={"topics": self.topics},
        )  # fmt: skip
        chain_frames = replace(robot.frames, world=world_frame, camera=camera_frame)
        self.session = CaptureSession(config, writer, world_frame, camera_frame, chain_frames=chain_frames)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # Groups: one per input stream, so that a burst on one stream cannot starve the other (the
        # executor serves ready subscriptions in creation order: with color and depth in one
        # mutually exclusive group, 100 colors could be taken before the first depth), and the heavy
        # work (decide + PNG writes + save). The session's inputs are thread-safe.
        color_group, depth_group, info_group = (MutuallyExclusiveCallbackGroup() for _ in range(3))
        tf_group = MutuallyExclusiveCallbackGroup()
        heavy_group = MutuallyExclusiveCallbackGroup()
        # sensor-data QoS (best effort) matches any camera driver; reliable resends lost fragments of
        # large images when the publisher is reliable too (a bag replay, realsense2_camera's default)
        camera_reliability = (
            ReliabilityPolicy.RELIABLE if p["camera_reliable"] else ReliabilityPolicy.BEST_EFFORT
        )
        # Reliable means every frame sent is wanted (a bag replay): keep all rather than the last
        # qos_depth, or a burst after a stall (a starved process on a loaded host) overwrites frames
        # the publisher already counts as delivered (CI: 15 of 90 lost at depth 30). The DDS bounds a
        # keep-all history by its resource limits (Fast DDS: 400 samples per topic, ~13 s at 30 Hz,
        # at most ~0.6 GB of 640x480 colour + depth), so a stuck capture cannot grow without end.
        if p["camera_reliable"]:
            sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=camera_reliability)
        else:
            sensor_qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=int(p["qos_depth"]), reliability=camera_reliability
            )
        # /tf is small but fast (odometry + arm pose, 120 messages/s at a 2x replay): a tf callback
        # starved for a second on a loaded host overflowed a 100-deep queue, and a lost sample moves
        # the interpolated pose by millimetres. 1000 holds ~8 s.
        tf_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=TF_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE
        )
        tf_static_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )  # fmt: skip
        inputs = [
            self.create_subscription(
                Image, self.topics["color"], self._on_color, sensor_qos, callback_group=color_group
            ),
            self.create_subscription(
                Image, self.topics["depth"], self._on_depth, sensor_qos, callback_group=depth_group
            ),
            self.create_subscription(
                CameraInfo,
                self.topics["camera_info"],
                self._on_camera_info,
                sensor_qos,
                callback_group=info_group,
            ),  # fmt: skip
            self.create_subscription(TFMessage, "/tf", self._on_tf, tf_qos, callback_group=tf_group),
        ]
        self.create_subscription(
            TFMessage, "/tf_static", self._on_tf_static, tf_static_qos, callback_group=tf_group
        )
        # /tf_static is not required: a robot may publish its fixed transforms on /tf
        # Messages taken in per topic (before any check), so that a driver can wait until the capture
        # has every message a replay sent before it asks for the final save (m3_ros.ready.StatusBoard).
        self.received: Counter[str] = Counter({s.topic_name: 0 for s in inputs})
        self.readiness = ReadinessReporter(self, inputs, stats=self._progress)
        self.drops = DropCounter(self.get_logger())
        self.create_timer(float(p["poll_period_s"]), self._on_poll, callback_group=heavy_group)
        self.create_service(Trigger, "~/save", self._on_save, callback_group=heavy_group)
        self.create_service(Trigger, "~/finish", self._on_finish, callback_group=heavy_group)
        if float(p["diagnostics_period_s"]) > 0:
            self.create_timer(
                float(p["diagnostics_period_s"]), self._on_diagnostics, callback_group=heavy_group
            )
        self.get_logger().info(
            f"capturing {self.topics['color']} + {self.topics['depth']} with poses {world_frame}<-{camera_frame} "
            f"into {out}"
        )

    def _progress(self) -> dict:
        """What the node reports on /m3/node_status under "stats"."""
        stats = self.session.stats
        return {
            "received": dict(self.received),
            "pending": self.session.pending,
            "kept": stats.kept,
            "clock_jumps": stats.clock_jumps,
            # by reason, e.g. stamp_outlier, tf_stamp_outlier, tf_clock_jump, malformed. dict() of a
            # Counter copies in one step under the GIL, so a callback counting meanwhile is safe
            "dropped": dict(stats.dropped),
        }

    # -- inputs ------------------------------------------------------------------------------
    def _on_color(self, msg: Image) -> None:
        self.received[self.topics["color"]] += 1
        self.session.add_image_msg("color", msg, stamp_ns_from_msg(msg.header.stamp), self.topics["color"])

    def _on_depth(self, msg: Image) -> None:
        self.received[self.topics["depth"]] += 1
        self.session.add_image_msg("depth", msg, stamp_ns_from_msg(msg.header.stamp), self.topics["depth"])

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.received[self.topics["camera_info"]] += 1
        try:
            self.session.set_camera(camera_from_info_msg(msg))
        except ValueError as err:
            self._malformed(self.topics["camera_info"], f"camera_info ignored: {err}")

    def _feed_tf(self, msg: TFMessage, static: bool) -> None:
        good, errors = transforms_from_tf_msg(msg)
        for error in errors:  # a malformed transform is dropped alone; the rest of the message is used
            self._malformed("/tf_static" if static else "/tf", error)
        for parent, child, matrix, stamp_ns in good:
            self.session.add_transform(parent, child, matrix, stamp_ns, static=static)

    def _malformed(self, topic: str, error: str) -> None:
        """Count a message that cannot be used (drop reason 'malformed') and warn, throttled."""
        self.session.count_malformed()
        self.drops.drop(topic, error)

    def _on_tf(self, msg: TFMessage) -> None:
        self.received["/tf"] += 1
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
            f"saved {n} keyframes to {self.session.writer.root} ({self.session.pending} pending); "
            f"{self.session.stats.line()}"
        )
        self.get_logger().info(response.message)
        return response

    def _on_finish(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """The stream is over (a replay has been taken in, a scan was stopped): decide every pending
        frame now with the transforms at hand, as on shutdown, and save. ~/save instead leaves the
        last frames waiting up to tf_timeout_s for transforms that may still come."""
        self.session.poll(flush=True)
        return self._on_save(request, response)

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
    # pycolmap (the writer's COLMAP model) takes SIGTERM over when imported: import it before
    # spin_node installs its handlers, so SIGTERM saves and exits like Ctrl-C
    return spin_node(CaptureNode, "m3_capture_node", args, threads=4, preload=("pycolmap",))


if __name__ == "__main__":
    sys.exit(main())
