"""`m3 replay BAG` / `ros2 run m3_grasp m3_replay_node BAG`: publish a ROS 2 bag on live topics with its timing.

Options are command-line flags or the node's parameters (m3_ros.params.REPLAY_PARAMS, e.g.
`--ros-args -p bag:=~/bags/scan -p rate:=2.0`, as the launch files pass them).

A real rclpy node: the bag is read with `rosbags` (no rosbag2_py here), publishers are created
from the bag's type names, and each message's raw CDR bytes are published as they are
(`Publisher.publish(bytes)`; deserialised first on an rclpy without raw publishing). Timing
follows the bag's log times scaled by --rate; --start-offset skips the bag's first seconds;
--loop plays it again; --clock HZ publishes /clock with the bag's time. /tf_static is latched
(TRANSIENT_LOCAL, depth 1) and sent once. Before playing, the node waits for at least one
subscriber on each camera, odometry and ee-pose topic (--wait-for, with --wait-timeout), and with
--wait-ready NODE... until each named node reports on /m3/node_status that it has matched its own
inputs (m3_ros.ready: DDS discovery is not symmetric, so our subscriber count alone does not mean
the subscriber will receive the first messages). Header stamps are the bag's (no restamping);
consumers should use message stamps, not arrival times.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.publisher import Publisher

try:  # where rclpy raises its C-layer errors from (no public alias in rclpy.exceptions)
    from rclpy._rclpy_pybind11 import RCLError
except ImportError:  # pragma: no cover - other rclpy layouts
    RCLError = RuntimeError  # type: ignore[misc,assignment]
from builtin_interfaces.msg import Time
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from rosgraph_msgs.msg import Clock

from m3_core.config import config_dir
from m3_core.robot import load_robot_config
from m3_ros.msg_types import message_class
from m3_ros.params import REPLAY_PARAMS, declare_parameters
from m3_ros.ready import StatusBoard

log = logging.getLogger(__name__)

ROBOT_CONFIG = config_dir() / "robot_b1z1.yaml"
STATIC_TOPICS = ("/tf_static",)
PUBLISHER_DEPTH = 100
# how long the replay waits, before it exits, for reliable subscribers to acknowledge what it sent
ACK_TIMEOUT_S = 10.0


def default_wait_topics(robot_config: str | Path = ROBOT_CONFIG) -> list[str]:
    """The topics of the robot YAML whose subscribers must be there before playing: the camera
    (capture) and odometry + end-effector pose (pose chain; without them no frame gets a pose)."""
    try:
        topics = load_robot_config(robot_config or ROBOT_CONFIG).topics
    except (OSError, ValueError):
        return []
    return [topics.color, topics.depth, topics.camera_info, topics.odometry, topics.ee_pose]


@dataclass
class ReplaySummary:
    """What the node sent."""

    bag: str
    rate: float
    loops: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    bag_span_s: float = 0.0
    waited_s: float = 0.0
    missing_subscribers: list[str] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)
    interrupted: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def text(self) -> str:
        lines = [
            f"replayed {self.bag}: {sum(self.sent.values())} messages, {self.loops} pass(es), "
            f"{self.wall_s:.1f} s wall for {self.bag_span_s:.1f} s of bag at rate {self.rate}"
            + (" (interrupted)" if self.interrupted else "")
        ]
        for topic, n in self.sent.items():
            lines.append(f"  {topic:55s} {self.types.get(topic, ''):32s} {n}")
        if self.missing_subscribers:
            lines.append(f"  no subscriber appeared on: {', '.join(self.missing_subscribers)}")
        if self.not_ready:
            lines.append(f"  never reported ready: {', '.join(self.not_ready)}")
        return "\n".join(lines)


class ReplayNode(Node):
    """Publishers for a bag's topics; `play()` sends the messages with the bag's timing."""

    def __init__(
        self,
        bag: Path | None = None,
        *,
        rate: float = 1.0,
        loop: bool = False,
        start_offset_s: float = 0.0,
        topics: list[str] | None = None,
        wait_for: list[str] | None = None,
        wait_timeout_s: float = 10.0,
        clock_hz: float = 0.0,
        wait_ready: list[str] | None = None,
        node_name: str = "m3_replay",
    ) -> None:
        """Arguments are the defaults of the node's parameters (REPLAY_PARAMS): `-p name:=value`
        wins. wait_for None: the robot YAML's topics; []: start at once."""
        super().__init__(node_name)
        self._stop_requested = False

        p = declare_parameters(
            self, REPLAY_PARAMS,
            defaults={
                "bag": str(bag or ""), "rate": float(rate), "loop": bool(loop),
                "start_offset_s": float(start_offset_s), "topics": list(topics or []),
                "wait_for_subscribers": wait_for is None or bool(wait_for), "wait_for": list(wait_for or []),
                "wait_timeout_s": float(wait_timeout_s), "clock_hz": float(clock_hz),
                "wait_ready": list(wait_ready or []),
            },
        )  # fmt: skip
        bag, rate, loop, start_offset_s = p["bag"], p["rate"], p["loop"], p["start_offset_s"]
        topics, wait_timeout_s, clock_hz = p["topics"], p["wait_timeout_s"], p["clock_hz"]
        if not p["wait_for_subscribers"]:
            wait_for = []
        else:
            wait_for = p["wait_for"] or default_wait_topics(p["robot_config"])
        if not bag:
            raise ValueError("no bag to play: give the bag folder (m3 replay BAG, or -p bag:=BAG)")
        if not rate > 0:
            raise ValueError(f"--rate must be > 0, got {rate}")
        if start_offset_s < 0:
            raise ValueError(f"--start-offset must be >= 0, got {start_offset_s}")
        self.bag = Path(bag)
        if not (self.bag / "metadata.yaml").exists():
            raise ValueError(
                f"{self.bag} is not a ROS 2 bag folder (no metadata.yaml); pass the bag directory"
            )
        self.rate, self.loop, self.start_offset_s = float(rate), bool(loop), float(start_offset_s)
        self.wait_timeout_s = float(wait_timeout_s)
        self._reader_cls = Reader
        with Reader(self.bag) as reader:
            conns = list(reader.connections)
            self.start_ns, self.end_ns = reader.start_time, reader.end_time
        if topics:
            unknown = sorted(set(topics) - {c.topic for c in conns})
            if unknown:
                raise ValueError(
                    f"topics {unknown} are not in {self.bag}; it has {sorted({c.topic for c in conns})}"
                )
            conns = [c for c in conns if c.topic in topics]
        self.types = {c.topic: c.msgtype for c in conns}
        self._raw_ok = {}
        self.publishers_by_topic = self._create_topic_publishers()
        self.wait_for = [t for t in wait_for if t in self.types]
        self.wait_ready = list(p["wait_ready"])
        self.status_board = StatusBoard(self) if self.wait_ready else None
        self.summary = ReplaySummary(bag=str(self.bag), rate=self.rate, types=dict(self.types))
        self.summary.sent = {t: 0 for t in self.types}
        # /clock (rosgraph_msgs/Clock) with the bag's time, for nodes with use_sim_time, as
        # `ros2 bag play --clock` does
        self._clock_pub, self._clock_period_s, self._next_clock = None, 0.0, 0.0
        if clock_hz > 0:
            self._clock_pub = self.create_publisher(Clock, "/clock", 10)
            self._clock_period_s = 1.0 / clock_hz
            self.summary.sent["/clock"] = 0

    def _create_topic_publishers(self) -> dict[str, Publisher]:
        publishers = {}
        for topic, msgtype in self.types.items():
            cls = message_class(msgtype)
            static = topic in STATIC_TOPICS
            # A reliable writer keeps unacknowledged samples only up to its depth: with 10, a reader
            # slowed by a loaded host lost 14 of 300 colour frames (0.9 MB each) at 2x. 100 is ~3 s.
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=1 if static else PUBLISHER_DEPTH,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE,
            )
            publishers[topic] = self.create_publisher(cls, topic, qos)
        return publishers

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Ctrl-C: finish the message being sent (so `sent` counts exactly what went out), then stop.
        A signal handler: only sets a flag."""
        self._stop_requested = True

    def running(self) -> bool:
        return rclpy.ok(context=self.context) and not self._stop_requested

    # -- sending ---------------------------------------------------------------------------------

    def _publish(self, topic: str, raw: bytes) -> None:
        pub = self.publishers_by_topic[topic]
        for attempt in range(50):
            try:
                if self._raw_ok.get(topic, True):
                    try:
                        pub.publish(bytes(raw))
                    except TypeError:  # an rclpy without raw publishing
                        self._raw_ok[topic] = False
                        continue
                else:
                    pub.publish(deserialize_message(bytes(raw), pub.msg_type))
                self.summary.sent[topic] += 1
                return
            except RCLError as err:  # reliable writer queue full: back off
                if attempt == 49:
                    raise
                log.debug("publish on %s failed (%s), retrying", topic, err)
                time.sleep(0.002)

    def _tick_clock(self, bag_ns: float) -> None:
        if self._clock_pub is None or time.monotonic() < self._next_clock:
            return

        sec, nsec = divmod(int(bag_ns), 1_000_000_000)
        self._clock_pub.publish(Clock(clock=Time(sec=sec, nanosec=nsec)))
        self.summary.sent["/clock"] += 1
        self._next_clock = time.monotonic() + self._clock_period_s

    def _unready(self) -> list[str]:
        """The --wait-ready nodes that have not (yet) reported every input matched."""
        return [name for name in self.wait_ready if not self.status_board.ready(name)]

    def wait_for_subscribers(self) -> float:
        """Block until each wait topic has a subscriber and each --wait-ready node reports ready, or
        the timeout passes; returns seconds waited."""
        t0 = time.monotonic()
        pending, unready = list(self.wait_for), self._unready()
        while (pending or unready) and time.monotonic() - t0 < self.wait_timeout_s and self.running():
            pending = [t for t in pending if self.publishers_by_topic[t].get_subscription_count() < 1]
            unready = self._unready()
            if pending or unready:
                rclpy.spin_once(self, timeout_sec=0.02)  # the status subscription
        if pending:
            self.get_logger().warning(
                f"no subscriber on {pending} after {self.wait_timeout_s:.1f} s; playing anyway"
            )
        if unready:
            waiting = {n: s.get("waiting") for n, s in self.status_board.statuses.items()}
            self.get_logger().warning(
                f"{unready} not ready after {self.wait_timeout_s:.1f} s (statuses: {waiting}); playing anyway"
            )
        self.summary.missing_subscribers, self.summary.not_ready = pending, unready
        if not self.wait_ready and len(pending) < len(self.wait_for):
            # Without a readiness report: our writer has matched the reader, but the reader may not have
            # matched us yet (DDS discovery is not symmetric in time): give it a moment before the first
            # image (0.5 s lost the first 7 of 45 frames on a loaded 2-core runner). --wait-ready
            # replaces this guess with the receiving node's own word.
            time.sleep(2.0)
        return time.monotonic() - t0

    def wait_for_acks(self, timeout_s: float = ACK_TIMEOUT_S) -> None:
        """Let reliable subscribers receive what is still in flight before the node goes away: a
        reliable writer resends a sample until the reader acknowledges it, but only while it exists.
        Exiting right after the last publish lost the last frames at 3x, and exiting at once on
        Ctrl-C lost the 10 colour frames a loaded capture had not yet taken in. One deadline for all
        topics, so a subscriber that never answers costs `timeout_s`, not that per topic."""
        deadline = time.monotonic() + timeout_s
        self.get_logger().info(
            f"waiting up to {timeout_s:.0f} s until every subscriber has acknowledged what was sent"
        )
        for topic, pub in self.publishers_by_topic.items():
            wait = getattr(pub, "wait_for_all_acked", None)  # rclpy >= Galactic
            left = max(deadline - time.monotonic(), 0.0)
            if wait is not None and not wait(Duration(seconds=left)):
                self.get_logger().warning(
                    f"{topic}: not every subscriber acknowledged within {timeout_s:.0f} s"
                )

    def play(self) -> ReplaySummary:
        """Publish the bag (again and again with loop) until done or rclpy shuts down."""
        first_ns = self.start_ns + int(self.start_offset_s * 1e9)
        if first_ns > self.end_ns:
            raise ValueError(
                f"--start-offset {self.start_offset_s} s is past the bag's end "
                f"({(self.end_ns - self.start_ns) / 1e9:.1f} s)"
            )
        self.summary.bag_span_s = (self.end_ns - first_ns) / 1e9
        wall0 = time.monotonic()
        static_sent = False
        # latched topics first, so they are there before anyone needs them
        with self._reader_cls(self.bag) as reader:
            static_conns = [
                c for c in reader.connections if c.topic in STATIC_TOPICS and c.topic in self.types
            ]
            if static_conns:
                for conn, _, raw in reader.messages(connections=static_conns):
                    self._publish(conn.topic, raw)
                static_sent = True
        self.summary.waited_s = self.wait_for_subscribers()
        try:
            while self.running():
                self._play_once(first_ns, skip_static=static_sent)
                self.summary.loops += 1
                if not self.loop:
                    break
        finally:
            self.summary.wall_s = time.monotonic() - wall0
        # after Ctrl-C too: `sent` counts what went out, and a reliable subscriber that is behind
        # still needs the writer to exist to receive it
        if rclpy.ok(context=self.context):
            self.wait_for_acks()
        if not self.running():  # Ctrl-C (request_stop) or the context was shut down
            self.summary.interrupted = True
        return self.summary

    def _play_once(self, first_ns: int, skip_static: bool) -> None:
        with self._reader_cls(self.bag) as reader:
            conns = [
                c
                for c in reader.connections
                if c.topic in self.types and not (skip_static and c.topic in STATIC_TOPICS)
            ]
            start_wall = time.monotonic()
            for conn, t_ns, raw in reader.messages(connections=conns, start=first_ns):
                due = start_wall + (t_ns - first_ns) / 1e9 / self.rate
                while self.running():
                    now = time.monotonic()
                    self._tick_clock(first_ns + (now - start_wall) * self.rate * 1e9)
                    delay = due - now
                    if delay <= 0:
                        break
                    time.sleep(min(delay, 0.05, self._clock_period_s or 0.05))
                if not self.running():
                    return
                self._publish(conn.topic, raw)
