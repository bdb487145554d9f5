"""ROS message <-> numpy / m3_core conversions, without cv_bridge (not installable here).

Images: rgb8, bgr8, mono8, 16UC1, 32FC1 (and rgba8/bgra8 -> RGB), honouring `step` (row padding)
and `is_bigendian`. Poses: ROS quaternions are (x, y, z, w); matrices are `<parent>_from_<child>`.
Point clouds: numpy structured arrays <-> sensor_msgs/PointCloud2 (no sensor_msgs_py needed), with
colour packed into a float32 `rgb` field as RViz and PCL read it.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from tf2_msgs.msg import TFMessage

from m3_core.capture.images import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    LAYOUT,
    array_from_image_fields,
    rgb_from_array,
)
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import matrix_from_pose as core_matrix_from_pose
from m3_core.geometry.se3 import pose_from_matrix
from m3_core.geometry.transform_buffer import TransformBuffer

# encoding -> (numpy dtype, channels): the capture decoder's table, one for both directions
ENCODINGS = LAYOUT


# -- time --------------------------------------------------------------------------------------


def stamp_ns_from_msg(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def time_msg_from_ns(stamp_ns: int) -> Time:
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


# -- images ------------------------------------------------------------------------------------


def image_from_msg(msg: Image, want: str | None = None) -> np.ndarray:
    """Pixels of a sensor_msgs/Image as numpy (one decoder with bag2scene: m3_core.capture.images).

    Color encodings come back as RGB uint8 [H,W,3]; mono8 [H,W] uint8; 16UC1 [H,W] uint16;
    32FC1 [H,W] float32. `want` ("color" or "depth") checks the kind and explains a mix-up.
    """
    enc = msg.encoding
    if want == "depth" and enc not in DEPTH_ENCODINGS:
        raise ValueError(
            f"depth must be 16UC1 or 32FC1, got {enc}; is the depth topic remapped to the color stream?"
        )
    if want == "color" and enc not in COLOR_ENCODINGS:
        raise ValueError(
            f"color image must be rgb8/bgr8/mono8, got {enc}; is the color topic remapped to depth?"
        )
    arr = array_from_image_fields(msg.data, enc, msg.height, msg.width, msg.step, bool(msg.is_bigendian))
    if enc in ("bgr8", "bgra8", "rgba8"):
        return rgb_from_array(arr, enc)
    return arr


def msg_from_image(array: np.ndarray, encoding: str, stamp_ns: int = 0, frame_id: str = "") -> Image:
    """A sensor_msgs/Image from numpy; the array layout must match the encoding (RGB order for rgb8)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {sorted(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    arr = np.asarray(array)
    expected_ndim = 3 if channels > 1 else 2
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        raise ValueError(
            f"{encoding} needs an array [H,W{',' + str(channels) if channels > 1 else ''}], got {arr.shape}"
        )
    if arr.dtype != dtype:
        raise ValueError(f"{encoding} needs dtype {dtype}, got {arr.dtype}")
    if encoding in ("bgr8", "bgra8"):
        arr = np.concatenate([arr[..., 2::-1], arr[..., 3:]], axis=2) if channels == 4 else arr[..., ::-1]
    arr = np.ascontiguousarray(arr.astype(dtype.newbyteorder("<"), copy=False))
    msg = Image()
    msg.header.stamp = time_msg_from_ns(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * channels * dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def depth_m_from_msg(msg: Image, depth_scale_m: float = 0.001) -> np.ndarray:
    """Metric depth [H,W] float32 from 16UC1 (units of depth_scale_m) or 32FC1 (metres); invalid -> 0."""
    raw = image_from_msg(msg, want="depth")
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) * np.float32(depth_scale_m)
    depth = raw.astype(np.float32)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


# -- camera info -------------------------------------------------------------------------------


def camera_from_info_msg(msg: CameraInfo) -> PinholeCamera:
    """Pinhole intrinsics from CameraInfo (K; the image must be rectified or distortion-free)."""
    if msg.width == 0 or msg.height == 0:
        raise ValueError("CameraInfo has zero width/height; is the camera driver configured?")
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise ValueError(f"CameraInfo K has non-finite values: {K.reshape(-1).tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"CameraInfo K has non-positive focal lengths: {K[0, 0]}, {K[1, 1]}")
    return PinholeCamera.from_matrix(K, int(msg.width), int(msg.height))


def info_msg_from_camera(camera: PinholeCamera, stamp_ns: int = 0, frame_id: str = "") -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = time_msg_from_ns(stamp_ns)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(camera.width), int(camera.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = camera.K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    P = np.zeros((3, 4))
    P[:3, :3] = camera.K
    msg.p = P.reshape(-1).tolist()
    return msg


# -- poses and transforms ----------------------------------------------------------------------


def _checked_matrix(position: np.ndarray, quat_xyzw: np.ndarray, what: str) -> np.ndarray:
    """4x4 from a message's position and quaternion; ValueError for NaN/inf or a zero quaternion
    (a malformed message: callers drop it and keep running)."""
    if not np.all(np.isfinite(position)):
        raise ValueError(f"{what} has a non-finite position {position.tolist()}")
    try:
        return core_matrix_from_pose(position, quat_xyzw)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err


def matrix_from_pose_msg(pose: Pose | PoseStamped) -> np.ndarray:
    """4x4 `<header frame>_from_<pose's frame>` from a Pose or PoseStamped (ValueError if malformed)."""
    if isinstance(pose, PoseStamped):
        pose = pose.pose
    p, q = pose.position, pose.orientation
    return _checked_matrix(np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w]), "pose")


def pose_from_matrix_msg(T: np.ndarray) -> Pose:
    """geometry_msgs/Pose of a 4x4 transform."""
    position, quat = pose_from_matrix(T)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in quat)
    return pose


def pose_msg_from_matrix(T: np.ndarray, stamp_ns: int = 0, frame_id: str = "") -> PoseStamped:
    """PoseStamped of `frame_id_from_X` (the pose of X in frame_id)."""
    msg = PoseStamped()
    msg.header.stamp = time_msg_from_ns(stamp_ns)
    msg.header.frame_id = frame_id
    msg.pose = pose_from_matrix_msg(T)
    return msg


def matrix_from_transform_msg(msg: TransformStamped) -> np.ndarray:
    """4x4 `header.frame_id _from_ child_frame_id` (ValueError if malformed)."""
    t, q = msg.transform.translation, msg.transform.rotation
    return _checked_matrix(
        np.array([t.x, t.y, t.z]),
        np.array([q.x, q.y, q.z, q.w]),
        f"transform {msg.header.frame_id!r} -> {msg.child_frame_id!r}",
    )


def transform_msg_from_matrix(T: np.ndarray, parent: str, child: str, stamp_ns: int = 0) -> TransformStamped:
    """TransformStamped carrying `parent_from_child`."""
    position, quat = pose_from_matrix(T)
    msg = TransformStamped()
    msg.header.stamp = time_msg_from_ns(stamp_ns)
    msg.header.frame_id = parent
    msg.child_frame_id = child
    tr = msg.transform.translation
    tr.x, tr.y, tr.z = (float(v) for v in position)
    ro = msg.transform.rotation
    ro.x, ro.y, ro.z, ro.w = (float(v) for v in quat)
    return msg


def matrix_from_odometry_msg(msg: Odometry) -> tuple[np.ndarray, str, str, int]:
    """(parent_from_child, parent frame, child frame, stamp_ns) of an Odometry's pose."""
    return (
        matrix_from_pose_msg(msg.pose.pose),
        msg.header.frame_id,
        msg.child_frame_id,
        stamp_ns_from_msg(msg.header.stamp),
    )


def odometry_msg_from_matrix(T: np.ndarray, parent: str, child: str, stamp_ns: int = 0) -> Odometry:
    msg = Odometry()
    msg.header.stamp = time_msg_from_ns(stamp_ns)
    msg.header.frame_id = parent
    msg.child_frame_id = child
    msg.pose.pose = pose_from_matrix_msg(T)
    return msg


def transforms_from_tf_msg(msg: TFMessage) -> tuple[list[tuple[str, str, np.ndarray, int]], list[str]]:
    """The well-formed transforms of a tf2_msgs/TFMessage as (parent, child, parent_from_child,
    stamp_ns), and one error line per malformed one (zero quaternion, NaN, empty frame id)."""
    good, errors = [], []
    for tf in msg.transforms:
        parent, child = tf.header.frame_id, tf.child_frame_id
        if not parent or not child or parent == child:
            errors.append(f"transform {parent!r} -> {child!r} needs two different non-empty frame ids")
            continue
        try:
            good.append((parent, child, matrix_from_transform_msg(tf), stamp_ns_from_msg(tf.header.stamp)))
        except ValueError as err:
            errors.append(str(err))
    return good, errors


def feed_buffer_from_tf_msg(buffer: TransformBuffer, msg: TFMessage, static: bool) -> int:
    """Insert every transform of a tf2_msgs/TFMessage into a m3_core TransformBuffer; returns how many.
    Raises ValueError on a malformed one (nodes use transforms_from_tf_msg to skip those instead)."""
    good, errors = transforms_from_tf_msg(msg)
    if errors:
        raise ValueError("; ".join(errors))
    for parent, child, matrix, stamp_ns in good:
        buffer.set_transform(parent, child, matrix, stamp_ns, static=static)
    return len(good)


# -- point clouds ------------------------------------------------------------------------------

# PointField datatype <-> numpy scalar type (little endian on the wire)
_CLOUD_DTYPES = {
    PointField.INT8: np.dtype("i1"), PointField.UINT8: np.dtype("u1"),
    PointField.INT16: np.dtype("<i2"), PointField.UINT16: np.dtype("<u2"),
    PointField.INT32: np.dtype("<i4"), PointField.UINT32: np.dtype("<u4"),
    PointField.FLOAT32: np.dtype("<f4"), PointField.FLOAT64: np.dtype("<f8"),
}  # fmt: skip
_CLOUD_TYPES = {dtype.newbyteorder("<"): code for code, dtype in _CLOUD_DTYPES.items()}


def cloud_msg_from_array(points: np.ndarray, stamp_ns: int = 0, frame_id: str = "") -> PointCloud2:
    """An unorganised PointCloud2 (height 1) from a structured array [N] of scalar fields.

    e.g. dtype [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4")]; fields keep their order
    and offsets (padding included), so the message bytes are the array's bytes.
    """
    arr = np.asarray(points)
    if arr.dtype.names is None or arr.ndim != 1:
        raise ValueError(f"points must be a 1-D structured array, got dtype {arr.dtype} shape {arr.shape}")
    fields = []
    for name in arr.dtype.names:
        dtype, offset = arr.dtype.fields[name][:2]
        if dtype.shape or dtype.newbyteorder("<") not in _CLOUD_TYPES:
            raise ValueError(f"field {name!r} has dtype {dtype}; PointCloud2 takes scalar ints and floats")
        fields.append(
            PointField(name=name, offset=offset, datatype=_CLOUD_TYPES[dtype.newbyteorder("<")], count=1)
        )
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    msg = PointCloud2()
    msg.header.stamp = time_msg_from_ns(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, int(len(arr))
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = int(arr.dtype.itemsize)
    msg.row_step = int(arr.dtype.itemsize * len(arr))
    msg.is_dense = bool(all(np.isfinite(arr[n]).all() for n in ("x", "y", "z") if n in arr.dtype.names))
    msg.data = np.ascontiguousarray(little).tobytes()
    return msg


def array_from_cloud_msg(msg: PointCloud2) -> np.ndarray:
    """Structured array [height*width] of a PointCloud2's fields (native byte order)."""
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _CLOUD_DTYPES:
            raise ValueError(f"PointCloud2 field {f.name!r} has unknown datatype {f.datatype}")
        if f.count != 1:
            raise ValueError(f"PointCloud2 field {f.name!r} has count {f.count}; only scalar fields are read")
        dtype = _CLOUD_DTYPES[f.datatype]
        names.append(f.name)
        formats.append(dtype.newbyteorder(">") if msg.is_bigendian else dtype)
        offsets.append(f.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    n = int(msg.height) * int(msg.width)
    if msg.row_step != msg.width * msg.point_step:
        raise ValueError(
            f"PointCloud2 row_step {msg.row_step} != width {msg.width} x point_step {msg.point_step}"
        )
    data = bytes(msg.data)
    if len(data) != n * msg.point_step:
        raise ValueError(f"PointCloud2 has {len(data)} data bytes for {n} points of {msg.point_step} bytes")
    arr = np.frombuffer(data, dtype=dtype, count=n)
    return arr.astype([(name, dtype.fields[name][0].newbyteorder("=")) for name in names])


def packed_rgb_from_colors(rgb: np.ndarray) -> np.ndarray:
    """[N] float32 `rgb` field values (0x00RRGGBB bits, RViz/PCL convention) of [N,3] uint8 colours."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 2 or rgb.shape[1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"colours must be uint8 [N,3], got {rgb.dtype} {rgb.shape}")
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    return packed.view(np.float32)


def colors_from_packed_rgb(packed: np.ndarray) -> np.ndarray:
    """[N,3] uint8 colours of [N] float32 `rgb` field values."""
    bits = np.ascontiguousarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=1).astype(np.uint8)


def xyzrgb_cloud_msg(
    points: np.ndarray,  # [N,3] metres, in frame_id
    rgb: np.ndarray,  # [N,3] uint8
    stamp_ns: int = 0,
    frame_id: str = "",
    extra: dict[str, np.ndarray] | None = None,  # name -> [N] float32 (e.g. relevance)
) -> PointCloud2:
    """A coloured cloud (x, y, z, rgb float32, then any extra float32 channels) for RViz."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) != len(rgb):
        raise ValueError(f"points must be [N,3] with one colour each, got {points.shape} and {np.shape(rgb)}")
    extra = extra or {}
    names = ["x", "y", "z", "rgb", *extra]
    arr = np.zeros(len(points), dtype=[(n, "<f4") for n in names])
    arr["x"], arr["y"], arr["z"] = (points[:, i] for i in range(3))
    arr["rgb"] = packed_rgb_from_colors(rgb)
    for name, values in extra.items():
        arr[name] = values
    return cloud_msg_from_array(arr, stamp_ns, frame_id)
