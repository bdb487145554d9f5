"""Real two-process ROS 2 tests of our rosidl-generated interfaces and the TF buffer feed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import PYTHON, ros_available, wait_until

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not ros_available(), reason="rclpy is not installed (run scripts/setup_env.sh)"),
]


def _spin_once(node):
    import rclpy

    return lambda: rclpy.spin_once(node, timeout_sec=0.05, executor=None)


def test_generated_interfaces_import_and_have_documented_fields():
    from m3_grasp.msg import GraspTarget
    from m3_grasp.srv import Query

    req = Query.Request(text="yellow bath duck")
    assert req.target_frame == "" and req.model == "" and req.camera_pose.header.frame_id == ""
    resp = Query.Response()
    assert {"success", "message", "target", "relevance", "total_ms"} <= set(resp.get_fields_and_field_types())
    assert set(GraspTarget.get_fields_and_field_types()) >= {
        "pose",
        "query",
        "label",
        "score",
        "extent",
        "model",
    }


def test_query_service_and_grasp_target_stream_across_processes(rclpy_node, start_process):
    from m3_grasp.msg import GraspTarget
    from m3_grasp.srv import Query
    from rclpy.executors import SingleThreadedExecutor

    node = rclpy_node
    peer = start_process([PYTHON, "-m", "tests.ros_peers.interface_peer", "25"])
    client = node.create_client(Query, "/m3/query")
    assert client.wait_for_service(timeout_sec=30.0), f"service never appeared:\n{peer.output()}"

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)

    def call(request):
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=15.0)
        assert future.done(), f"no answer:\n{peer.output()}"
        return future.result()

    request = Query.Request(text="yellow bath duck", target_frame="odom", model="language")
    request.camera_pose.header.frame_id = "odom"
    request.camera_pose.pose.position.z = 0.75
    answer = call(request)
    assert answer.success and answer.message == "echo: yellow bath duck"
    assert answer.target.query == "yellow bath duck" and answer.target.model == "language"
    assert answer.target.pose.header.frame_id == "odom"
    assert answer.target.pose.pose.position.x == len("yellow bath duck")
    assert answer.target.pose.pose.position.z == pytest.approx(0.75)
    assert bytes(answer.relevance.data) == bytes(range(24))

    empty = call(Query.Request(text="  "))
    assert not empty.success and empty.message == "empty text"
    assert empty.target.pose.header.frame_id == "arm_base_link"  # the default when no frame asked

    received: list[GraspTarget] = []
    node.create_subscription(GraspTarget, "/m3/grasp_target", received.append, 10)
    wait_until(
        lambda: len(received) >= 25,
        30.0,
        spin=lambda: executor.spin_once(timeout_sec=0.05),
        what=f"25 GraspTarget messages (got {len(received)})",
    )
    assert [m.num_points for m in received[:25]] == list(range(25))
    assert all(m.query == "duck" and m.extent.x == pytest.approx(0.07) for m in received)
    executor.shutdown()
    assert peer.stop() == 0, peer.output()


def test_tf_from_another_process_feeds_the_buffer(rclpy_node, start_process):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from tf2_msgs.msg import TFMessage

    from m3_core.geometry import TransformBuffer, world_from_camera_chain
    from m3_ros.conversions import feed_buffer_from_tf_msg
    from tests.ros_peers.tf_trajectory import STATIC, armbase_from_ee, world_from_lidar

    node = rclpy_node
    buffer = TransformBuffer(tolerance_ns=0)
    counts = {"tf": 0, "static": 0}

    def on_tf(msg):
        counts["tf"] += feed_buffer_from_tf_msg(buffer, msg, static=False)

    def on_static(msg):
        counts["static"] += feed_buffer_from_tf_msg(buffer, msg, static=True)

    node.create_subscription(TFMessage, "/tf", on_tf, 100)
    node.create_subscription(
        TFMessage, "/tf_static", on_static, QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    )
    peer = start_process([PYTHON, "-m", "tests.ros_peers.tf_peer"])
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    wait_until(
        lambda: counts["static"] >= 2 and counts["tf"] >= 60,
        40.0,
        spin=lambda: executor.spin_once(timeout_sec=0.05),
        what=f"TF from tf_peer ({counts})\n{peer.output()}",
    )

    # Query between two received samples (interpolated) and compare to the analytic chain.
    stamps = buffer._edges["lidar_link"].stamps  # noqa: SLF001 - the test needs a stamp inside the history
    t_query = (stamps[-10] + stamps[-9]) // 2
    got = buffer.lookup("odom", "camera_color_optical_frame", t_query)
    expected = world_from_camera_chain(
        world_from_lidar(t_query), STATIC[0][2], armbase_from_ee(t_query), STATIC[1][2]
    )
    # 10 ms sampling of smooth motion: interpolation error is tiny but not zero.
    np.testing.assert_allclose(got, expected, atol=2e-5)
    inverse = buffer.lookup("camera_color_optical_frame", "odom", t_query)
    np.testing.assert_allclose(inverse @ got, np.eye(4), atol=1e-9)
    executor.shutdown()
    assert peer.stop() == 0, peer.output()
