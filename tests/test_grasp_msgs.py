"""The grasp answer as ROS messages: GraspTarget fields, the PoseArray order, the gripper markers,
all re-expressed in the answer's frame."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup_env.sh)")

from m3_core.geometry.se3 import transform_from_rt  # noqa: E402
from m3_core.grasp.gripper import pregrasp_matrix  # noqa: E402
from m3_core.grasp.types import Grasp  # noqa: E402
from m3_core.query.result import QueryResult  # noqa: E402
from m3_core.robot import GripperConfig  # noqa: E402
from m3_ros.conversions import matrix_from_pose_msg  # noqa: E402
from m3_ros.grasp_msgs import grasp_markers, grasp_pose_array, grasp_target_msg  # noqa: E402


def _grasp(x: float, width: float, quality: float) -> Grasp:
    down = np.diag([1.0, -1.0, -1.0])  # +z approach points down, +x closing along world x
    T = transform_from_rt(down, np.array([x, 0.0, 0.75]))
    return Grasp(T, width, pregrasp_matrix(T, 0.1), quality)


@pytest.fixture
def answer() -> QueryResult:
    grasps = (_grasp(0.1, 0.05, 0.9), _grasp(0.12, 0.04, 0.6))
    return QueryResult(
        text="duck", model="language", label="a yellow rubber duck", position=np.array([0.1, 0.0, 0.74]),
        world_from_grasp=grasps[0].world_from_grasp, score=0.95, extent=np.array([0.06, 0.05, 0.07]),
        points=np.zeros((7, 3)), grasps=grasps,
    )  # fmt: skip


def test_grasp_target_carries_the_best_grasp_in_the_answer_frame(answer: QueryResult) -> None:
    frame_from_world = transform_from_rt(np.eye(3), np.array([-1.0, 2.0, 0.0]))
    target = grasp_target_msg(answer, frame_from_world, answer.extent, "arm_base_link", 5, "duck")
    np.testing.assert_allclose(matrix_from_pose_msg(target.pose), frame_from_world @ answer.grasps[0].world_from_grasp, atol=1e-9)
    np.testing.assert_allclose(
        matrix_from_pose_msg(target.pregrasp_pose), frame_from_world @ answer.grasps[0].world_from_pregrasp, atol=1e-9
    )
    assert target.pose.header.frame_id == "arm_base_link"
    assert (target.object_centre.x, target.object_centre.y) == pytest.approx((-0.9, 2.0))
    assert target.width == pytest.approx(0.05) and target.quality == pytest.approx(0.9)
    assert list(target.widths) == pytest.approx([0.05, 0.04]) and len(target.grasps) == 2
    assert target.num_points == 7 and target.label == "a yellow rubber duck"


def test_pose_array_is_ranked_best_first(answer: QueryResult) -> None:
    poses = grasp_pose_array(answer.grasps, np.eye(4), "odom", 0)
    assert [p.position.x for p in poses.poses] == pytest.approx([0.1, 0.12])
    assert poses.header.frame_id == "odom"


def test_markers_draw_the_gripper_and_clear_old_ones(answer: QueryResult) -> None:
    markers = grasp_markers(answer.grasps, GripperConfig(), np.eye(4), "odom", 0, "duck").markers
    assert markers[0].action == markers[0].DELETEALL
    best = [m for m in markers if m.ns == "m3_grasp"]
    assert len(best) == 3 and len([m for m in markers if m.ns == "m3_grasp_candidates"]) == 3
    fingers_x = sorted(m.pose.position.x for m in best[:2])
    gap = fingers_x[1] - fingers_x[0] - GripperConfig().finger_thickness_m
    assert gap == pytest.approx(0.05)  # the fingers stand open to the grasp's width
    assert "5.0 cm" in markers[-1].text


def test_no_grasp_still_gives_a_target(answer: QueryResult) -> None:
    from dataclasses import replace

    bare = replace(answer, grasps=())
    target = grasp_target_msg(bare, np.eye(4), bare.extent, "odom", 0, "duck")
    assert target.width == 0.0 and len(target.grasps) == 0
    assert len(grasp_markers((), GripperConfig(), np.eye(4), "odom", 0, "duck").markers) == 1
