"""Fixtures and bag helpers for the simulator tests (imported by tests/test_sim_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import matrix_from_pose
from m3_core.sim import config_dir, generate, load_spec, with_overrides

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
ROBOT = config_dir() / "robot_b1z1.yaml"


def make_tiny(out: Path, frames: int = 8, size=(160, 120), seed: int | None = None, **realism):
    spec, spec_dir = load_spec(config_dir() / "sim_default.yaml")
    spec = with_overrides(spec, frames=frames, size=size, seed=seed, **realism)
    return generate(spec, spec_dir, out)


def read_bag(bag: Path) -> dict[str, list[tuple[int, object]]]:
    """{topic: [(log time ns, deserialised message)]} of a whole bag."""
    out: dict[str, list] = {}
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, TYPESTORE.deserialize_cdr(raw, conn.msgtype)))
    return out


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def pose_matrix(pose) -> np.ndarray:
    p, q = pose.position, pose.orientation
    return matrix_from_pose([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


def transform_matrix(tf) -> np.ndarray:
    t, q = tf.translation, tf.rotation
    return matrix_from_pose([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])


def camera_from_info(info) -> PinholeCamera:
    K = np.asarray(info.k, np.float64).reshape(3, 3)
    return PinholeCamera.from_matrix(K, info.width, info.height)


def image_array(msg) -> np.ndarray:
    data = np.asarray(msg.data, np.uint8)
    if msg.encoding == "rgb8":
        return data.reshape(msg.height, msg.width, 3)
    if msg.encoding == "16UC1":
        return data.view("<u2").reshape(msg.height, msg.width)
    raise ValueError(msg.encoding)
