"""Readiness handshake: a node says, on one latched topic, which of its endpoints are matched.

DDS discovery is not symmetric in time: a publisher may already count a subscriber while that
subscriber has not yet matched the publisher, and messages sent in between are lost. So a sender
that must not lose its first messages (a bag replay) cannot rely on its own subscriber count. Each
receiving node therefore publishes its own view on READY_TOPIC (std_msgs/String, JSON, latched):

    {"node": "/m3_capture", "ready": true, "waiting": [],
     "inputs": {"/camera/...": 1, "/tf": 1}, "outputs": {}}

`inputs` counts the publishers each required subscription has matched, `outputs` the subscribers
each required publisher has matched; `ready` is true once none is 0. A node may add its own
progress under "stats" (the capture node: messages received per topic, frames pending), so that a
driver can wait until a receiver has taken in everything a replay sent (`StatusBoard.wait_for`). The status is re-published
whenever it changes, and every HEARTBEAT_S anyway (a late reader that missed the latched sample under
heavy load still hears it). `m3 replay --wait-ready NODE...` starts only when every named node says
ready, i.e. both sides of every needed connection have matched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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

    def __init__(
        self,
        node: Node,
        inputs: list[Any],
        outputs: list[Any] = (),
        stats: Callable[[], dict] | None = None,
    ) -> None:
        """inputs: subscriptions that need a publisher; outputs: publishers that need a subscriber;
        stats: the node's progress (JSON-able), published with the status under "stats"."""
        self.node = node
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.stats = stats
        self._pub = node.create_publisher(String, READY_TOPIC, READY_QOS)
        self._last: dict | None = None
        self._last_sent = 0.0
        node.create_timer(CHECK_PERIOD_S, self.check)

    def status(self) -> dict:
        inputs = {s.topic_name: s.get_publisher_count() for s in self.inputs}
        outputs = {p.topic_name: p.get_subscription_count() for p in self.outputs}
        waiting = sorted(t for t, n in {**inputs, **outputs}.items() if n < 1)
        status = {
            "node": self.node.get_fully_qualified_name(),
            "ready": not waiting,
            "waiting": waiting,
            "inputs": inputs,
            "outputs": outputs,
        }
        if self.stats is not None:
            status["stats"] = self.stats()
        return status

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


class StatusBoard:
    """The latest status of every node heard on READY_TOPIC (a subscription of `node`)."""

    def __init__(self, node: Node) -> None:
        self.statuses: dict[str, dict] = {}  # fully qualified node name -> its latest status
        node.create_subscription(String, READY_TOPIC, self._on_status, READY_READER_QOS)

    def _on_status(self, msg: String) -> None:
        status = parse_status(msg.data)
        if status is not None:
            self.statuses[status["node"]] = status

    def get(self, name: str) -> dict | None:
        """The latest status of the node `name` ('m3_capture' or '/ns/m3_capture'), if heard."""
        for fully_qualified, status in self.statuses.items():
            if node_matches(name, fully_qualified):
                return status
        return None

    def ready(self, name: str) -> bool:
        status = self.get(name)
        return bool(status and status.get("ready"))

    def wait_for_received(
        self,
        name: str,
        sent: dict[str, int],
        spin_once: Callable[[float], None],
        timeout_s: float = 300.0,
        stall_s: float = 60.0,
    ) -> dict[str, int]:
        """Spin until node `name` reports (stats.received, per topic) at least what a sender `sent`
        on each topic it receives, or until its counts stopped growing for `stall_s` / `timeout_s`
        passed. A reliable replay has handed its samples over when it exits, but a loaded receiver
        may still be decoding them: saving before it took them in loses frames it was sent.
        Returns what is still missing per topic (empty when everything arrived)."""
        deadline = time.monotonic() + timeout_s
        last_counts: dict[str, int] | None = None
        last_change = time.monotonic()
        while True:
            status = self.get(name) or {}
            received = (status.get("stats") or {}).get("received") or {}
            missing = {t: n - int(received.get(t, 0)) for t, n in sent.items() if t in received}
            missing = {t: n for t, n in missing.items() if n > 0}
            if received and not missing:
                return {}
            now = time.monotonic()
            if received != last_counts:
                last_counts, last_change = dict(received), now
            if now > deadline or now - last_change > stall_s:
                return missing or {t: n for t, n in sent.items()}
            spin_once(0.1)
