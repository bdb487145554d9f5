"""m3_ros.conversions: round trips for every encoding (with row padding), poses, odometry."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ros_available

pytestmark = pytest.mark.skipif(
    not ros_available(), reason="rclpy/ROS messages not installed (run scripts/setup_env.sh)"
)

rng = np.random.default_rng(0)
IMAGES = {
    "rgb8": rng.integers(0, 256, (7, 9, 3), dtype=np.uint8),
    "bgr8": rng.integers(0, 256, (7, 9, 3), dtype=np.uint8),
    "mono8": rng.integers(0, 256, (7, 9), dtype=np.uint8),
    "16UC1": rng.integers(0, 65536, (7, 9), dtype=np.uint16),
    "32FC1": rng.normal(size=(7, 9)).astype(np.float32),
}


@pytest.mark.parametrize("encoding", sorted(IMAGES))
def test_image_round_trip(encoding):
    from m3_ros.conversions import image_from_msg, msg_from_image

    array = IMAGES[encoding]
    msg = msg_from_image(array, encoding, stamp_ns=1_500_000_123, frame_id="cam")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_123)
    np.testing.assert_array_equal(image_from_msg(msg), array)


def test_bgr8_is_returned_as_rgb():
    from m3_ros.conversions import image_from_msg, msg_from_image

    rgb = IMAGES["rgb8"]
    msg = msg_from_image(rgb, "bgr8")
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(rgb.shape), rgb[..., ::-1])
    np.testing.assert_array_equal(image_from_msg(msg), rgb)


@pytest.mark.parametrize("encoding", sorted(IMAGES))
def test_row_padding_is_honoured(encoding):
    from m3_ros.conversions import image_from_msg, msg_from_image

    array = IMAGES[encoding]
    msg = msg_from_image(array, encoding)
    row = msg.step
    padded = b"".join(bytes(msg.data)[r * row : (r + 1) * row] + b"\xab" * 5 for r in range(msg.height))
    msg.step = row + 5
    msg.data = padded
    np.testing.assert_array_equal(image_from_msg(msg), array)


def test_big_endian_depth():
    from sensor_msgs.msg import Image

    from m3_ros.conversions import image_from_msg

    depth = IMAGES["16UC1"]
    msg = Image(
        height=7, width=9, encoding="16UC1", is_bigendian=1, step=18, data=depth.astype(">u2").tobytes()
    )
    np.testing.assert_array_equal(image_from_msg(msg), depth)


def test_depth_in_metres_from_both_encodings():
    from m3_ros.conversions import depth_m_from_msg, msg_from_image

    mm = np.array([[0, 1000], [250, 65535]], np.uint16)
    np.testing.assert_allclose(depth_m_from_msg(msg_from_image(mm, "16UC1")), mm * 0.001, rtol=1e-6)
    m = np.array([[np.nan, 1.0], [-1.0, np.inf]], np.float32)
    np.testing.assert_array_equal(depth_m_from_msg(msg_from_image(m, "32FC1")), [[0, 1.0], [0, 0]])


def test_bad_images_are_explained():
    from sensor_msgs.msg import Image

    from m3_ros.conversions import image_from_msg, msg_from_image

    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        image_from_msg(Image(height=1, width=1, encoding="yuv422", step=2, data=b"\0\0"))
    with pytest.raises(ValueError, match="depth topic remapped"):
        image_from_msg(msg_from_image(IMAGES["rgb8"], "rgb8"), want="depth")
    short = msg_from_image(IMAGES["rgb8"], "rgb8")
    short.data = bytes(short.data)[:-1]
    with pytest.raises(ValueError, match="bytes of data, expected"):
        image_from_msg(short)
    with pytest.raises(ValueError, match="needs dtype uint16"):
        msg_from_image(IMAGES["rgb8"][..., 0], "16UC1")
    with pytest.raises(ValueError, match="needs an array"):
        msg_from_image(IMAGES["mono8"], "rgb8")


def test_camera_info_round_trip():
    from m3_core.geometry import PinholeCamera
    from m3_ros.conversions import camera_from_info_msg, info_msg_from_camera

    cam = PinholeCamera(615.2, 614.8, 321.3, 238.9, 640, 480)
    assert camera_from_info_msg(info_msg_from_camera(cam, frame_id="cam")) == cam
    bad = info_msg_from_camera(cam)
    bad.width = 0
    with pytest.raises(ValueError, match="zero width"):
        camera_from_info_msg(bad)


def test_pose_transform_odometry_round_trips():
    from scipy.spatial.transform import Rotation

    from m3_core.geometry import transform_from_rt
    from m3_ros.conversions import (
        matrix_from_odometry_msg,
        matrix_from_pose_msg,
        matrix_from_transform_msg,
        odometry_msg_from_matrix,
        pose_msg_from_matrix,
        stamp_ns_from_msg,
        transform_msg_from_matrix,
    )

    T = transform_from_rt(
        Rotation.from_euler("xyz", [0.1, -1.2, 2.0]).as_matrix(), np.array([1.0, -2.0, 0.5])
    )
    ps = pose_msg_from_matrix(T, 42, "odom")
    assert ps.header.frame_id == "odom" and stamp_ns_from_msg(ps.header.stamp) == 42
    np.testing.assert_allclose(matrix_from_pose_msg(ps), T, atol=1e-12)
    tf = transform_msg_from_matrix(T, "odom", "lidar_link", 7)
    np.testing.assert_allclose(matrix_from_transform_msg(tf), T, atol=1e-12)
    M, parent, child, stamp = matrix_from_odometry_msg(odometry_msg_from_matrix(T, "odom", "lidar_link", 9))
    np.testing.assert_allclose(M, T, atol=1e-12)
    assert (parent, child, stamp) == ("odom", "lidar_link", 9)
