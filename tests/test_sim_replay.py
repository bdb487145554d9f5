"""`m3 replay`: a replay node in its own process publishes a simulated bag to a real rclpy
subscriber in this process; counts, latching and timing options are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest_sim import make_tiny

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim_replay") / "bag"
    make_tiny(out, frames=8, size=(160, 120))
    return out


@pytest.fixture(scope="module")
def ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(os.getpid() % 200 + 20)
    env["ROS_LOCALHOST_ONLY"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _bag_counts(bag: Path) -> dict[str, int]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return {c.topic: c.msgcount for c in reader.connections}


def _bag_color_stamps(bag: Path) -> list[int]:
    from rosbags.rosbag2 import Reader

    from tests.conftest_sim import TYPESTORE

    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == "/camera/camera/color/image_raw"]
        out = []
        for conn, _, raw in reader.messages(connections=conns):
            h = TYPESTORE.deserialize_cdr(raw, conn.msgtype).header
            out.append(h.stamp.sec * 10**9 + h.stamp.nanosec)
    return out


def _replay(bag: Path, env: dict, *extra: str, timeout: float = 120) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "m3_ros.replay_cli", str(bag), "--json", *extra]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _summary(proc: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"replay failed ({proc.returncode}):\n{err}"
    return json.loads(out[out.index("{") :])


def _bag_types(bag: Path) -> dict[str, str]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def _subscribe_all(node, types: dict[str, str], make_cb) -> list:
    """A subscription per bag topic with the replay's QoS (latched /tf_static)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from m3_ros.replay_node import message_class

    subscriptions = []
    for topic, msgtype in types.items():
        static = topic == "/tf_static"
        qos = QoSProfile(
            depth=1 if static else 100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE,
        )
        subscriptions.append(node.create_subscription(message_class(msgtype), topic, make_cb(topic), qos))
    return subscriptions


def test_two_process_replay_delivers_every_message(bag, ros_env, monkeypatch):
    from rclpy.executors import SingleThreadedExecutor

    from m3_ros.ready import ReadinessReporter

    for key in ("ROS_DOMAIN_ID", "ROS_LOCALHOST_ONLY"):
        monkeypatch.setenv(key, ros_env[key])
    expected = _bag_counts(bag)
    types = _bag_types(bag)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("sim_replay_test_sink", context=ctx)
    received: dict[str, int] = {t: 0 for t in types}
    stamps: list[int] = []
    lock = threading.Lock()

    def make_cb(topic):
        def cb(msg):
            with lock:
                received[topic] += 1
                if topic.endswith("color/image_raw") and "depth" not in topic:
                    stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)

        return cb

    subscriptions = _subscribe_all(node, types, make_cb)
    # this sink says (m3_ros.ready) when it has matched the replay's publishers; the replay waits for it
    ReadinessReporter(node, subscriptions)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    proc = _replay(bag, ros_env, "--wait-ready", "sim_replay_test_sink", "--wait-timeout", "120")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            with lock:
                if all(received[t] >= expected[t] for t in expected):
                    break
            if proc.poll() is not None and proc.returncode != 0:
                break
        summary = _summary(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert summary["missing_subscribers"] == [] and summary["not_ready"] == []
    assert summary["sent"] == expected
    assert received == expected, f"received {received}, bag has {expected}"
    assert stamps == _bag_color_stamps(bag)  # every frame, in order, bytes decoded by rclpy
    assert summary["wall_s"] >= summary["bag_span_s"] * 0.95  # real time, not as fast as possible


def test_start_offset_rate_and_no_wait(bag, ros_env):
    expected = _bag_counts(bag)
    # nobody listens: --wait-for with no topics starts at once; offset skips the first 0.3 s
    summary = _summary(
        _replay(bag, ros_env, "--wait-for", "--rate", "2", "--start-offset", "0.3", "--clock", "50")
    )
    assert summary["missing_subscribers"] == []
    sent = summary["sent"]
    assert sent["/tf_static"] == 1
    color = "/camera/camera/color/image_raw"
    assert 0 < sent[color] < expected[color]
    assert summary["wall_s"] >= summary["bag_span_s"] / 2 * 0.95
    assert summary["sent"]["/clock"] >= 2  # 50 Hz over ~0.1 s of wall time


def test_missing_subscriber_times_out_and_is_reported(bag, ros_env):
    summary = _summary(
        _replay(
            bag, ros_env, "--wait-timeout", "0.5", "--topics", "/tf_static", "/camera/camera/color/image_raw"
        )
    )
    assert summary["missing_subscribers"] == ["/camera/camera/color/image_raw"]
    assert set(summary["sent"]) == {"/tf_static", "/camera/camera/color/image_raw"}


def test_bad_bag_path_is_a_clear_error(tmp_path, ros_env):
    proc = _replay(tmp_path / "nope", ros_env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not a ROS 2 bag folder" in err


def test_loop_until_ctrl_c_reports_what_it_sent(bag, ros_env, monkeypatch):
    import signal

    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    for key in ("ROS_DOMAIN_ID", "ROS_LOCALHOST_ONLY"):
        monkeypatch.setenv(key, ros_env[key])
    color = "/camera/camera/color/image_raw"
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("sim_replay_loop_sink", context=ctx)
    got = []
    node.create_subscription(Image, color, lambda m: got.append(m.header.stamp.nanosec), 100)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    proc = _replay(bag, ros_env, "--loop", "--rate", "4", "--wait-for", color, "--wait-timeout", "60")
    try:
        deadline = time.monotonic() + 90
        while len(got) < 20 and time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        proc.send_signal(signal.SIGINT)
        summary = _summary(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert len(got) >= 20  # more than two passes of the 8-frame bag
    assert summary["interrupted"] and summary["loops"] >= 2
    assert summary["sent"][color] >= len(got) and summary["sent"]["/tf_static"] == 1
