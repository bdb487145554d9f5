"""Messages of a grasp answer: GraspTarget, a PoseArray of the ranked grasps, RViz markers of the gripper.

Pure conversions (numpy + m3_core types in, messages out); the query node publishes them.
Poses are re-expressed from the memory's world into the answer's frame with `frame_from_world`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from geometry_msgs.msg import Point, PoseArray
from m3_grasp.msg import GraspTarget
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from m3_core.grasp.gripper import gripper_boxes
from m3_core.grasp.types import Grasp
from m3_core.query.result import QueryResult
from m3_core.robot import GripperConfig
from m3_ros.conversions import pose_from_matrix_msg, pose_msg_from_matrix, time_msg_from_ns

BEST_COLOUR = ColorRGBA(r=0.1, g=0.85, b=0.3, a=0.9)
CANDIDATE_COLOUR = ColorRGBA(r=0.2, g=0.6, b=1.0, a=0.35)


def grasp_target_msg(
    result: QueryResult,
    frame_from_world: np.ndarray,  # [4,4] answer frame <- memory world
    extent: np.ndarray,  # [3] object size in the answer frame's axes, metres
    frame: str,
    stamp_ns: int,
    query: str,
) -> GraspTarget:
    """GraspTarget of a found object: the best grasp (or the centre pose when no grasp is feasible)."""
    target = GraspTarget()
    best = result.grasps[0] if result.grasps else None
    world_from_grasp = best.world_from_grasp if best is not None else result.world_from_grasp
    target.pose = pose_msg_from_matrix(frame_from_world @ world_from_grasp, stamp_ns, frame)
    if best is not None:
        target.pregrasp_pose = pose_from_matrix_msg(frame_from_world @ best.world_from_pregrasp)
        target.width, target.quality = float(best.width_m), float(best.quality)
    centre = frame_from_world[:3, :3] @ np.asarray(result.position, float) + frame_from_world[:3, 3]
    target.object_centre = Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2]))
    target.query, target.label, target.model = query, result.label, result.model
    target.score = float(result.score)
    target.extent.x, target.extent.y, target.extent.z = (float(v) for v in extent)
    target.num_points = int(result.num_points)
    target.grasps = [pose_from_matrix_msg(frame_from_world @ g.world_from_grasp) for g in result.grasps]
    target.widths = [float(g.width_m) for g in result.grasps]
    target.qualities = [float(g.quality) for g in result.grasps]
    return target


def grasp_pose_array(
    grasps: Sequence[Grasp], frame_from_world: np.ndarray, frame: str, stamp_ns: int
) -> PoseArray:
    """The ranked grasps as a PoseArray (best first), for RViz and planners that read PoseArray."""
    header = Header(stamp=time_msg_from_ns(stamp_ns), frame_id=frame)
    return PoseArray(header=header, poses=[pose_from_matrix_msg(frame_from_world @ g.world_from_grasp) for g in grasps])


def _box_marker(header: Header, ns: str, marker_id: int, frame_from_box: np.ndarray, size: np.ndarray,
                colour: ColorRGBA) -> Marker:  # fmt: skip
    marker = Marker(header=header, ns=ns, id=marker_id, type=Marker.CUBE, action=Marker.ADD)
    marker.pose = pose_from_matrix_msg(frame_from_box)
    marker.scale.x, marker.scale.y, marker.scale.z = (float(max(v, 1e-3)) for v in size)
    marker.color = colour
    return marker


def grasp_markers(
    grasps: Sequence[Grasp],
    gripper: GripperConfig,
    frame_from_world: np.ndarray,
    frame: str,
    stamp_ns: int,
    label: str,
    max_candidates: int = 5,
) -> MarkerArray:
    """The gripper drawn at the best grasp (solid), the next candidates translucent, and a text label.

    Starts with a DELETEALL so markers of an earlier answer never linger in RViz.
    """
    header = Header(stamp=time_msg_from_ns(stamp_ns), frame_id=frame)
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for rank, grasp in enumerate(grasps[: 1 + max_candidates]):
        ns, colour = ("m3_grasp", BEST_COLOUR) if rank == 0 else ("m3_grasp_candidates", CANDIDATE_COLOUR)
        for part, (world_from_box, size) in enumerate(gripper_boxes(grasp, gripper)):
            markers.append(_box_marker(header, ns, 3 * rank + part, frame_from_world @ world_from_box, size, colour))
    if grasps:
        best = frame_from_world @ grasps[0].world_from_pregrasp
        text = Marker(header=header, ns="m3_grasp_label", id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        text.pose = pose_from_matrix_msg(best)
        text.scale.z = 0.03
        text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        text.text = f"{label[:50]} ({100 * grasps[0].width_m:.1f} cm, q {grasps[0].quality:.2f})"
        markers.append(text)
    return MarkerArray(markers=markers)
