"""PointCloud2 <-> numpy structured arrays (m3_ros.conversions), as RViz and PCL read them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ros_available

pytestmark = pytest.mark.skipif(
    not ros_available(), reason="rclpy/ROS messages not installed (run scripts/setup_env.sh)"
)

rng = np.random.default_rng(3)


@pytest.mark.parametrize("n", [0, 1, 257])
def test_structured_array_round_trip_keeps_every_field_and_offset(n):
    from m3_ros.conversions import array_from_cloud_msg, cloud_msg_from_array

    # mixed types with padding: offsets must travel as they are
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "ring", "t"],
            "formats": ["<f4", "<f4", "<f4", "<f8", "<u2", "<i4"],
            "offsets": [0, 4, 8, 16, 24, 28],
            "itemsize": 32,
        }
    )
    points = np.zeros(n, dtype=dtype)
    for name in dtype.names:
        points[name] = rng.normal(size=n) * 100 if dtype[name].kind == "f" else rng.integers(0, 500, n)
    msg = cloud_msg_from_array(points, stamp_ns=2_000_000_001, frame_id="odom")
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, n, 32, 32 * n)
    assert [(f.name, f.offset) for f in msg.fields] == [(k, dtype.fields[k][1]) for k in dtype.names]
    assert msg.header.frame_id == "odom" and msg.header.stamp.nanosec == 1 and msg.is_dense
    back = array_from_cloud_msg(msg)
    assert back.dtype.names == dtype.names
    for name in dtype.names:
        np.testing.assert_array_equal(back[name], points[name])


def test_big_endian_cloud_is_read_correctly():
    from m3_ros.conversions import array_from_cloud_msg, cloud_msg_from_array

    points = np.zeros(5, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    points["x"] = np.arange(5)
    msg = cloud_msg_from_array(points)
    msg.is_bigendian = True
    msg.data = np.ascontiguousarray(points.astype(points.dtype.newbyteorder(">"))).tobytes()
    np.testing.assert_array_equal(array_from_cloud_msg(msg)["x"], np.arange(5, dtype=np.float32))


def test_xyzrgb_cloud_packs_colour_as_rviz_reads_it():
    from m3_ros.conversions import array_from_cloud_msg, colors_from_packed_rgb, xyzrgb_cloud_msg

    xyz = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    relevance = rng.random(50).astype(np.float32)
    msg = xyzrgb_cloud_msg(xyz, rgb, frame_id="map", extra={"relevance": relevance})
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "relevance"]
    back = array_from_cloud_msg(msg)
    np.testing.assert_allclose(np.stack([back["x"], back["y"], back["z"]], 1), xyz, atol=1e-6)
    np.testing.assert_array_equal(colors_from_packed_rgb(back["rgb"]), rgb)
    np.testing.assert_array_equal(back["relevance"], relevance)
    # the RViz/PCL convention: the float's bits are 0x00RRGGBB
    bits = back["rgb"][:1].view(np.uint32)[0]
    assert bits == (int(rgb[0, 0]) << 16) | (int(rgb[0, 1]) << 8) | int(rgb[0, 2])


def test_bad_clouds_are_refused_with_a_reason():
    from m3_ros.conversions import array_from_cloud_msg, cloud_msg_from_array, xyzrgb_cloud_msg

    with pytest.raises(ValueError, match="structured"):
        cloud_msg_from_array(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="scalar"):
        cloud_msg_from_array(np.zeros(3, dtype=[("xyz", "<f4", (3,))]))
    with pytest.raises(ValueError, match="colours must be uint8"):
        xyzrgb_cloud_msg(np.zeros((2, 3)), np.zeros((2, 3)))
    msg = cloud_msg_from_array(np.zeros(4, dtype=[("x", "<f4")]))
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match="data bytes"):
        array_from_cloud_msg(msg)
