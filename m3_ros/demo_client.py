"""The demo's own rclpy node: it asks the capture node to save and the query node for a target,
like an operator with `ros2 service call` would."""

from __future__ import annotations

import time

import numpy as np
import rclpy
from m3_grasp.srv import Query
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from m3_ros.conversions import image_from_msg
from m3_ros.ready import StatusBoard

# Answers that mean "not ready yet" (memory still loading, no TF or CameraInfo received yet): ask again.
_RETRY_PREFIXES = ("no memory loaded", "no transform", "no camera intrinsics")


def not_ready(message: str) -> bool:
    """Whether a failed query's message means the node lacks something a running replay brings."""
    return message.startswith(_RETRY_PREFIXES)


class DemoClient(Node):
    def __init__(self, capture_node: str = "m3_capture", query_service: str = "/m3/query") -> None:
        super().__init__("m3_demo")
        self.capture_node = capture_node
        self.finish_client = self.create_client(Trigger, f"/{capture_node}/finish")
        self.status_board = StatusBoard(self)
        self.query_client = self.create_client(Query, query_service)
        self._overlay: Image | None = None
        latched = QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
        )
        self.create_subscription(Image, "/m3/relevance_overlay", self._on_overlay, latched)

    def _on_overlay(self, msg: Image) -> None:
        self._overlay = msg

    def _call(self, client, request, timeout: float):
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self, future, timeout_sec=timeout)
        if not future.done():
            raise TimeoutError(f"{client.srv_name} did not answer within {timeout:.0f} s")
        return future.result()

    def wait_for_capture(self, timeout: float) -> None:
        if not self.finish_client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(
                f"capture node service {self.finish_client.srv_name} did not appear in {timeout:.0f} s"
            )

    def wait_capture_received(self, sent: dict[str, int], timeout: float) -> dict[str, int]:
        """Wait until the capture node has taken in every message of `sent` (per topic); returns what
        is still missing when its counts stopped growing (empty: all arrived)."""
        return self.status_board.wait_for_received(
            self.capture_node, sent, lambda t: rclpy.spin_once(self, timeout_sec=t), timeout_s=timeout
        )

    def finish_scene(self, timeout: float) -> str:
        """~/finish: the replay is over and taken in, so the capture decides the frames still waiting
        for transforms now (not tf_timeout_s later) and saves; returns its answer."""
        answer = self._call(self.finish_client, Trigger.Request(), timeout)
        if not answer.success:
            raise RuntimeError(f"capture save failed: {answer.message}")
        return answer.message

    def query(self, text: str, target_frame: str, timeout: float) -> Query.Response:
        """Ask until the answer is final (success, or a failure that waiting cannot fix)."""
        if not self.query_client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"{self.query_client.srv_name} did not appear in {timeout:.0f} s")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._call(
                self.query_client, Query.Request(text=text, target_frame=target_frame), timeout
            )
            if answer.success or not not_ready(answer.message) or time.monotonic() > deadline:
                return answer
            self.get_logger().info(f"query not ready yet ({answer.message}); asking again")
            time.sleep(0.5)

    def latest_overlay(self, wait_s: float = 2.0) -> np.ndarray | None:
        """The query node's latest relevance overlay (RGB), if it published one."""

        deadline = time.monotonic() + wait_s
        while self._overlay is None and time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=0.1)
        return None if self._overlay is None else image_from_msg(self._overlay)
