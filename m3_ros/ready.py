"""Readiness handshake: a node says, on one latched topic, which of its endpoints are matched.

DDS discovery is not symmetric in time: a publisher may already count a subscriber while that
subscriber has not yet matched the publisher, and messages sent in between are lost. So a sender
that must not lose its first messages (a bag replay) cannot rely on its own subscriber count. Each
receiving node therefore publishes its own view on READY_TOPIC (std_msgs/String, JSON, latched):

    {"node": "/m3_capture", "ready": true, "waiting": [],
     "inputs": {"/camera/...": 1, "/tf": 1}, "outputs": {}}

`inputs` counts the publishers each required subscription has matched, `outputs` the subscribers
each required publisher has matched; `ready` is true once none is 0. The status is re-published
whenever it changes, and every HEARTBEAT_S anyway (a late reader that missed the latched sample under
heavy load still hears it). `m3 replay --wait-ready NODE...` starts only when every named node says
ready, i.e. both sides of every needed connection have matched.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

READY_TOPIC = "/m3/node_status"
READY_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
# Readers keep many samples: the topic has no key, so with depth 1 the latched statuses of two
# nodes arriving together overwrote each other and one node was never heard (seen under load).
READY_READER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
CHECK_PERIOD_S = 0.1
HEARTBEAT_S = 1.0


class ReadinessReporter:
    """Publishes a node's readiness (see the module docstring) from a timer of that node."""

    def __init__(self, node: Node, inputs: list[Any], outputs: list[Any] = ()) -> None:
        """inputs: subscriptions that need a publisher; outputs: publishers that need a subscriber."""
        self.node = node
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self._pub = node.create_publisher(String, READY_TOPIC, READY_QOS)
        self._last: dict | None = None
        self._last_sent = 0.0
        node.create_timer(CHECK_PERIOD_S, self.check)

    def status(self) -> dict:
        inputs = {s.topic_name: s.get_publisher_count() for s in self.inputs}
        outputs = {p.topic_name: p.get_subscription_count() for p in self.outputs}
        waiting = sorted(t for t, n in {**inputs, **outputs}.items() if n < 1)
        return {
            "node": self.node.get_fully_qualified_name(),
            "ready": not waiting,
            "waiting": waiting,
            "inputs": inputs,
            "outputs": outputs,
        }

    def check(self) -> None:
        status = self.status()
        now = time.monotonic()
        if status != self._last or now - self._last_sent >= HEARTBEAT_S:
            self._last, self._last_sent = status, now
            self._pub.publish(String(data=json.dumps(status, sort_keys=True)))


def parse_status(text: str) -> dict | None:
    """A status message's JSON, or None if it is not one."""
    try:
        status = json.loads(text)
    except ValueError:
        return None
    if not isinstance(status, dict) or not isinstance(status.get("node"), str):
        return None
    return status


def node_matches(name: str, fully_qualified: str) -> bool:
    """'m3_capture' or '/m3_capture' names the node '/m3_capture' (and '/ns/m3_capture')."""
    name = name.strip()
    if name.startswith("/"):
        return fully_qualified == name
    return fully_qualified.rsplit("/", 1)[-1] == name
