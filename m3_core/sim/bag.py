"""ROS 2 messages for the simulated bag, built and written with the pure-Python `rosbags` library.

The bag is mcap (rosbag2 metadata version 8, Jazzy and newer), standard message types from the
rosbags typestore for ROS 2 Jazzy, so `ros2 bag play` on a real install plays it. No ROS import:
rosbags serialises CDR itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import pose_from_matrix

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
BAG_VERSION = 8  # rosbag2 metadata version that Jazzy reads (Kilted reads 9 too)

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
ODOMETRY = "nav_msgs/msg/Odometry"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"

_T = TYPESTORE.types
_ZERO = QosTime(0, 0)


def qos(depth: int, transient_local: bool = False) -> Qos:
    return Qos(
        QosHistory.KEEP_LAST,
        depth,
        QosReliability.RELIABLE,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        _ZERO,
        _ZERO,
        QosLiveliness.AUTOMATIC,
        _ZERO,
        False,
    )


def _header(stamp_ns: int, frame_id: str):
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return _T["std_msgs/msg/Header"](
        stamp=_T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id
    )


def _pose(T: np.ndarray):
    pos, q = pose_from_matrix(T)
    return _T["geometry_msgs/msg/Pose"](
        position=_T["geometry_msgs/msg/Point"](x=pos[0], y=pos[1], z=pos[2]),
        orientation=_T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
    )


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """sensor_msgs/Image from [H,W,3] uint8 (rgb8) or [H,W] uint16 (16UC1, little endian)."""
    array = np.ascontiguousarray(array)
    h, w = array.shape[:2]
    step = w * array.shape[2] * array.itemsize if array.ndim == 3 else w * array.itemsize
    return _T[IMAGE](
        header=_header(stamp_ns, frame_id),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=np.frombuffer(array.astype(array.dtype.newbyteorder("<")).tobytes(), np.uint8),
    )


def camera_info_msg(camera: PinholeCamera, stamp_ns: int, frame_id: str):
    K = camera.K
    P = np.zeros((3, 4))
    P[:, :3] = K
    return _T[CAMERA_INFO](
        header=_header(stamp_ns, frame_id),
        height=camera.height,
        width=camera.width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=K.reshape(-1),
        r=np.eye(3).reshape(-1),
        p=P.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=_T["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )


def tf_message(transforms: list[tuple[str, str, np.ndarray]], stamp_ns: int):
    """tf2_msgs/TFMessage from (parent, child, parent_from_child [4,4]) triples."""
    out = []
    for parent, child, T in transforms:
        pos, q = pose_from_matrix(T)
        out.append(
            _T["geometry_msgs/msg/TransformStamped"](
                header=_header(stamp_ns, parent),
                child_frame_id=child,
                transform=_T["geometry_msgs/msg/Transform"](
                    translation=_T["geometry_msgs/msg/Vector3"](x=pos[0], y=pos[1], z=pos[2]),
                    rotation=_T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
                ),
            )
        )
    return _T[TF_MESSAGE](transforms=out)


def odometry_msg(
    world_from_body: np.ndarray,
    linear_body: np.ndarray,
    angular_body: np.ndarray,
    stamp_ns: int,
    frame_id: str,
    child: str,
):
    """nav_msgs/Odometry: pose of child in frame_id, twist in the child frame (REP 105)."""
    vec = _T["geometry_msgs/msg/Vector3"]
    cov = np.zeros(36)
    return _T[ODOMETRY](
        header=_header(stamp_ns, frame_id),
        child_frame_id=child,
        pose=_T["geometry_msgs/msg/PoseWithCovariance"](pose=_pose(world_from_body), covariance=cov),
        twist=_T["geometry_msgs/msg/TwistWithCovariance"](
            twist=_T["geometry_msgs/msg/Twist"](
                linear=vec(x=linear_body[0], y=linear_body[1], z=linear_body[2]),
                angular=vec(x=angular_body[0], y=angular_body[1], z=angular_body[2]),
            ),
            covariance=cov.copy(),
        ),
    )


def pose_stamped_msg(T: np.ndarray, stamp_ns: int, frame_id: str):
    return _T[POSE_STAMPED](header=_header(stamp_ns, frame_id), pose=_pose(T))


class BagWriter:
    """A thin wrapper: topics registered once, messages serialised to CDR and counted."""

    def __init__(self, path: Path) -> None:
        self._writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        self._connections: dict[str, object] = {}
        self.types: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def add_topic(self, topic: str, msgtype: str, depth: int = 10, transient_local: bool = False) -> None:
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=[qos(depth, transient_local)]
        )
        self.types[topic] = msgtype
        self.counts[topic] = 0

    def write(self, topic: str, msg, log_time_ns: int) -> None:
        data = TYPESTORE.serialize_cdr(msg, self.types[topic])
        self._writer.write(self._connections[topic], int(log_time_ns), data)
        self.counts[topic] += 1
