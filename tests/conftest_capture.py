"""Capture test helpers: a small synthetic robot bag written with rosbags (independent of m3_core.sim).

The bag has exactly the sim bag's contract: color rgb8, aligned depth 16UC1 mm, camera_info,
/tf_static (mount + hand-eye), nav_msgs/Odometry odom->lidar_link, PoseStamped ee in arm_base_link,
no /tf. The body drives along x while the arm sweeps; a few frames are blurred and one has no depth.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import matrix_from_pose, pose_from_matrix
from m3_core.robot import RobotConfig, load_robot_config

REPO = Path(__file__).resolve().parents[1]

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
_T = TYPESTORE.types
_ZERO = QosTime(0, 0)


@dataclass(frozen=True)
class SyntheticBagSpec:
    width: int = 160
    height: int = 120
    frames: int = 45
    fps: float = 30.0
    odom_hz: float = 20.0
    ee_hz: float = 50.0
    speed_mps: float = 0.3
    start_ns: int = 1_700_000_000_000_000_000
    blurred: tuple[int, ...] = (5, 6, 20)
    no_depth: tuple[int, ...] = (12,)
    future_outlier_s: float = 0.0
    """> 0: one extra colour image (beside frame 20) and one extra odometry message (beside the one
    at 1 s) stamped this far in the future, as a misbehaving driver would send them."""
    camera: PinholeCamera = field(default_factory=lambda: PinholeCamera(120.0, 120.0, 79.5, 59.5, 160, 120))


def world_from_lidar(t_s: float, spec: SyntheticBagSpec) -> np.ndarray:
    yaw = 0.2 * np.sin(0.5 * t_s)
    return matrix_from_pose(
        np.array([spec.speed_mps * t_s, 0.05 * np.sin(t_s), 0.0]),
        np.array([0, 0, np.sin(yaw / 2), np.cos(yaw / 2)]),
    )


def armbase_from_ee(t_s: float) -> np.ndarray:
    a = 0.3 * np.sin(1.3 * t_s)  # sweep about the vertical, tilt down a little
    half = np.array([0.0, 0.2, a]) / 2
    quat = np.array([*np.sin(np.linalg.norm(half)) * half / max(np.linalg.norm(half), 1e-12), 0.0])
    quat[3] = np.cos(np.linalg.norm(half))
    return matrix_from_pose(np.array([0.35, 0.05 * np.sin(t_s), 0.3]), quat)


def _qos(transient_local: bool = False) -> Qos:
    durability = QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE
    return Qos(
        QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, durability, _ZERO, _ZERO,
        QosLiveliness.AUTOMATIC, _ZERO, False,
    )  # fmt: skip


def _header(stamp_ns: int, frame_id: str):
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return _T["std_msgs/msg/Header"](
        stamp=_T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id
    )


def _pose(T: np.ndarray):
    p, q = pose_from_matrix(T)
    return _T["geometry_msgs/msg/Pose"](
        position=_T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
        orientation=_T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
    )


def _transform(parent: str, child: str, T: np.ndarray, stamp_ns: int):
    p, q = pose_from_matrix(T)
    return _T["geometry_msgs/msg/TransformStamped"](
        header=_header(stamp_ns, parent),
        child_frame_id=child,
        transform=_T["geometry_msgs/msg/Transform"](
            translation=_T["geometry_msgs/msg/Vector3"](x=p[0], y=p[1], z=p[2]),
            rotation=_T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
        ),
    )


def _image(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    h, w = array.shape[:2]
    data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
    return _T["sensor_msgs/msg/Image"](
        header=_header(stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
        step=data.size // h, data=data,
    )  # fmt: skip


def _camera_info(cam: PinholeCamera, stamp_ns: int, frame_id: str):
    P = np.zeros((3, 4))
    P[:3, :3] = cam.K
    return _T["sensor_msgs/msg/CameraInfo"](
        header=_header(stamp_ns, frame_id), height=cam.height, width=cam.width, distortion_model="plumb_bob",
        d=np.zeros(5), k=cam.K.reshape(-1), r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0,
        roi=_T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )  # fmt: skip


def textured_rgb(h: int, w: int, shift: int, blur_sigma: float = 0.0) -> np.ndarray:
    """A fixed random texture seen through a window that slides with `shift` (pixels)."""
    img = np.random.default_rng(1234).integers(0, 256, (h, w + 256, 3)).astype(np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)[:, shift % 256 : shift % 256 + w]
    if blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    return np.ascontiguousarray(img)


def write_synthetic_bag(
    path: Path, spec: SyntheticBagSpec | None = None, robot: RobotConfig | None = None
) -> Path:
    """Write the synthetic bag (mcap) at `path` (a new directory); returns path."""
    spec = spec or SyntheticBagSpec()
    robot = robot or load_robot_config()
    t, f = robot.topics, robot.frames
    events: list[tuple[int, str, object, str]] = []  # (log time, topic, message, type)
    end_s = spec.frames / spec.fps + 0.3
    static = [_transform(a, b, T, spec.start_ns) for a, b, T in robot.static_transforms()]
    events.append(
        (
            spec.start_ns,
            "/tf_static",
            _T["tf2_msgs/msg/TFMessage"](transforms=static),
            "tf2_msgs/msg/TFMessage",
        )
    )
    for k in range(int(end_s * spec.odom_hz) + 1):
        ts = k / spec.odom_hz
        stamp = spec.start_ns + int(round(ts * 1e9))
        msg = _T["nav_msgs/msg/Odometry"](
            header=_header(stamp, f.world), child_frame_id=f.lidar,
            pose=_T["geometry_msgs/msg/PoseWithCovariance"](pose=_pose(world_from_lidar(ts, spec)), covariance=np.zeros(36)),
            twist=_T["geometry_msgs/msg/TwistWithCovariance"](
                twist=_T["geometry_msgs/msg/Twist"](
                    linear=_T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                    angular=_T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                ),
                covariance=np.zeros(36),
            ),
        )  # fmt: skip
        events.append((stamp + 2_000_000, t.odometry, msg, "nav_msgs/msg/Odometry"))
        if spec.future_outlier_s > 0 and k == int(spec.odom_hz):
            outlier = replace(msg, header=_header(stamp + int(spec.future_outlier_s * 1e9), f.world))
            events.append((stamp + 2_500_000, t.odometry, outlier, "nav_msgs/msg/Odometry"))
    for k in range(int(end_s * spec.ee_hz) + 1):
        ts = k / spec.ee_hz
        stamp = spec.start_ns + int(round(ts * 1e9)) + 3_000_000
        msg = _T["geometry_msgs/msg/PoseStamped"](
            header=_header(stamp, f.arm_base), pose=_pose(armbase_from_ee(ts))
        )
        events.append((stamp + 1_000_000, t.ee_pose, msg, "geometry_msgs/msg/PoseStamped"))
    for i in range(spec.frames):
        stamp = spec.start_ns + 10_000_000 + int(round(i / spec.fps * 1e9))
        rgb = textured_rgb(spec.height, spec.width, 3 * i, 4.0 if i in spec.blurred else 0.0)
        rows = np.arange(spec.height, dtype=np.float64)[:, None]
        depth = np.broadcast_to(800 + 3 * rows + i, (spec.height, spec.width)).astype(np.uint16)
        if i in spec.no_depth:
            depth = np.zeros_like(depth)
        events.append(
            (stamp + 5_000_000, t.color, _image(rgb, "rgb8", stamp, f.camera), "sensor_msgs/msg/Image")
        )
        if spec.future_outlier_s > 0 and i == 20:
            future = stamp + int(spec.future_outlier_s * 1e9)
            events.append(
                (stamp + 5_500_000, t.color, _image(rgb, "rgb8", future, f.camera), "sensor_msgs/msg/Image")
            )
        events.append(
            (stamp + 6_000_000, t.depth, _image(depth, "16UC1", stamp, f.camera), "sensor_msgs/msg/Image")
        )
        info = _camera_info(spec.camera, stamp, f.camera)
        events.append((stamp + 5_000_000, t.camera_info, info, "sensor_msgs/msg/CameraInfo"))
    events.sort(key=lambda e: e[0])
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conns = {}
    try:
        for log_ns, topic, msg, msgtype in events:
            if topic not in conns:
                conns[topic] = writer.add_connection(
                    topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=[_qos(topic == "/tf_static")]
                )
            writer.write(conns[topic], log_ns, TYPESTORE.serialize_cdr(msg, msgtype))
    finally:
        writer.close()
    return path


# -- live pipeline: replay -> pose chain -> capture, as separate processes ----------------------


class LiveCapture:
    """Replay -> m3_pose_chain_node -> m3_capture_node as three processes, driven by a test node
    that waits on events only: the capture's ~/save service, the nodes' readiness reports, the
    replay's exit and its `sent` counts, the capture's received counts and its pending queue."""

    def __init__(
        self, out: Path, env: dict[str, str], log_dir: Path, capture_params: tuple[str, ...]
    ) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_srvs.srv import Trigger

        from m3_ros.ready import StatusBoard

        self.env, self.log_dir = env, log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        py = sys.executable
        self.cmds = {
            "pose_chain": [py, "-m", "m3_ros.pose_chain_node"],
            "capture": [
                py, "-m", "m3_ros.capture_node", "--ros-args", "-p", f"output_dir:={out}",
                "-p", "diagnostics_period_s:=1.0", "-p", "qos_depth:=30",
                *[a for kv in capture_params for a in ("-p", kv)],
            ],
        }  # fmt: skip
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("capture_test_driver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.client = self.node.create_client(Trigger, "/m3_capture/save")
        self.finish_client = self.node.create_client(Trigger, "/m3_capture/finish")
        self.status_board = StatusBoard(self.node)
        self.save_message = ""

    def start(self, name: str, cmd: list[str]) -> None:
        self.logs[name] = self.log_dir / f"{name}.log"
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, cwd=REPO, stdout=self.logs[name].open("w"), stderr=subprocess.STDOUT
        )

    def spin(self, timeout_s: float = 0.05) -> None:
        self.executor.spin_once(timeout_sec=timeout_s)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if name != "replay" and p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}:\n{self.logs[name].read_text()}")

    def wait(self, predicate, timeout_s: float, what: str) -> None:
        """Spin until predicate(), failing if a node died or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            self.spin()

    def start_nodes(self) -> None:
        for name, cmd in self.cmds.items():
            self.start(name, cmd)
        # the nodes are up once the capture's ~/save service is there; the replay itself waits until
        # both nodes report (m3_ros.ready) that they have matched every input they need
        self.wait(self.client.service_is_ready, 120, "the capture node's ~/save service")

    def replay(self, bag: Path, rate: float, timeout_s: float, loop_until: str | None) -> dict:
        """Play the bag (with --loop until the capture logged `loop_until` twice); its summary."""
        self.start(
            "replay",
            [sys.executable, "-m", "m3_ros.cli", "replay", str(bag), "--rate", str(rate),
             *(["--loop"] if loop_until else []),
             "--wait-ready", "m3_capture", "m3_pose_chain", "--wait-timeout", "120", "--json"],
        )  # fmt: skip
        if loop_until:
            self.wait(lambda: self.logs["capture"].read_text().count(loop_until) >= 2, timeout_s,
                      f"{loop_until!r} logged twice by the capture")  # fmt: skip
            self.procs["replay"].send_signal(2)
        self.procs["replay"].wait(timeout=timeout_s)
        replay_log = self.logs["replay"].read_text()
        if self.procs["replay"].returncode != 0:
            raise AssertionError(f"replay failed:\n{replay_log}")
        replay = json.loads(replay_log[replay_log.index("{\n") :])
        if replay["not_ready"] or replay["missing_subscribers"]:
            raise AssertionError(f"replay started before its receivers were ready:\n{replay_log}")
        return replay

    def drain_and_save(self, sent: dict[str, int], timeout_s: float) -> str:
        """Wait until the capture took in everything `sent` (the replay handed it over reliably, but
        a loaded capture may still be decoding), then ~/finish: every frame still waiting for its
        transforms is decided at once and the scene saved. Returns its message."""
        from std_srvs.srv import Trigger

        missing = self.status_board.wait_for_received("m3_capture", sent, self.spin, timeout_s=timeout_s)
        if missing:
            raise AssertionError(f"capture never received {missing} of {sent}")
        self.check_alive()
        future = self.finish_client.call_async(Trigger.Request())
        self.executor.spin_until_future_complete(future, timeout_sec=60)
        response = future.result()
        assert response is not None and response.success, f"~/finish failed: {response}"
        self.save_message = response.message
        # nothing is left waiting: a frame whose pose never came is dropped now, not tf_timeout_s later
        assert "(0 pending)" in self.save_message, self.save_message
        return self.save_message

    def close(self) -> None:
        import rclpy

        from tests.conftest import stop_process

        for name in ("replay", "capture", "pose_chain"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(2)  # SIGINT, like Ctrl-C: the capture node saves on the way out
                # waits past the node's own drain; a hang is dumped (SIGUSR1), killed and printed
                stop_process(p, name, self.logs[name].read_text)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def run_live_capture(
    bag: Path,
    out: Path,
    rate: float,
    env: dict[str, str],
    log_dir: Path,
    timeout_s: float = 180.0,
    capture_params: tuple[str, ...] = (),
    loop_until: str | None = None,
) -> dict:
    """Replay `bag` at `rate` through m3_pose_chain_node and m3_capture_node (three processes) into
    the scene `out` (LiveCapture: events, never sleeps). loop_until: replay with --loop until the
    capture log contains this text twice, then stop it.
    Returns {"save": last ~/save message, "replay": its summary, "logs": {name: text},
    "returncodes": {name: code}}."""
    live = LiveCapture(out, env, log_dir, capture_params)
    try:
        live.start_nodes()
        replay = live.replay(bag, rate, timeout_s, loop_until)
        live.drain_and_save(replay["sent"], timeout_s)
    finally:
        live.close()
    return {
        "save": live.save_message,
        "replay": replay,
        "logs": {n: p.read_text() for n, p in live.logs.items()},
        "returncodes": {n: p.returncode for n, p in live.procs.items()},
    }


def small_sim_bag_path(tmp_path_factory) -> Path:
    """The built-in scene as a 30-frame 160x120 bag (`m3 sim`), made once per test session and shared
    by the capture tests (skips when the simulator is not importable)."""
    import subprocess
    import sys

    import pytest

    try:
        import pybullet  # noqa: F401

        import m3_core.sim  # noqa: F401
    except ImportError as err:
        pytest.skip(f"m3_core.sim / pybullet not importable ({err}); the sim bag cannot be generated")
    out = tmp_path_factory.getbasetemp() / "small_sim_bag"
    if (out / "metadata.yaml").exists():  # `m3 sim` writes the bag atomically: present means whole
        return out
    cmd = [
        sys.executable,
        "-m",
        "m3_ros.cli",
        "sim",
        "--out",
        str(out),
        "--frames",
        "30",
        "--size",
        "160x120",
    ]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd + ["--no-progress"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out
