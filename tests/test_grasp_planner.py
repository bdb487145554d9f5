"""Grasp planner on synthetic point clouds: boxes, a cylinder and a sphere on a table plane."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial import cKDTree

from m3_core.grasp import scoring
from m3_core.grasp.config import GraspPlannerConfig
from m3_core.grasp.filters import _centre_cluster_extremes, approach_ok, grasp_frame_points, measure_closing
from m3_core.grasp.gripper import grasp_matrix, gripper_boxes, local_boxes
from m3_core.grasp.planner import plan_grasps
from m3_core.grasp.pointcloud import estimate_normals
from m3_core.grasp.support import support_plane
from m3_core.grasp.types import Grasp
from m3_core.robot import ArmConfig, GripperConfig

GRIPPER = GripperConfig()
ARM = ArmConfig()
UP = np.array([0.0, 0.0, 1.0])


def box_surface(size, centre, n=4000, seed=0) -> np.ndarray:  # [n,3]
    """Points uniformly on the faces of an axis-aligned box (area-weighted)."""
    rng = np.random.default_rng(seed)
    size = np.asarray(size, float)
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    axis = rng.choice(3, size=n, p=areas / areas.sum())
    pts = rng.uniform(-0.5, 0.5, (n, 3)) * size
    pts[np.arange(n), axis] = rng.choice([-0.5, 0.5], size=n) * size[axis]
    return pts + np.asarray(centre, float)


def cylinder_surface(radius, height, centre, n=4000, seed=0) -> np.ndarray:
    """Upright cylinder: side and top cap (the bottom rests on the table, unseen)."""
    rng = np.random.default_rng(seed)
    n_side = int(n * height / (height + radius / 2))
    a = rng.uniform(0, 2 * np.pi, n)
    r = np.where(np.arange(n) < n_side, radius, radius * np.sqrt(rng.uniform(0, 1, n)))
    z = np.where(np.arange(n) < n_side, rng.uniform(-height / 2, height / 2, n), height / 2)
    return np.c_[r * np.cos(a), r * np.sin(a), z] + np.asarray(centre, float)


def sphere_surface(radius, centre, n=4000, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True) + np.asarray(centre, float)


def table(half=0.3, height=0.0, spacing=0.004) -> np.ndarray:
    g = np.arange(-half, half + 1e-9, spacing)
    xx, yy = np.meshgrid(g, g)
    return np.c_[xx.ravel(), yy.ravel(), np.full(xx.size, height)]


def points_in_gripper(grasp: Grasp, points: np.ndarray, margin: float = 0.0) -> int:
    """How many points lie inside the gripper's fingers or palm (independent of the planner's code)."""
    inside = 0
    for world_from_box, size in gripper_boxes(grasp, GRIPPER):
        local = (points - world_from_box[:3, 3]) @ world_from_box[:3, :3]
        inside += int(np.all(np.abs(local) <= 0.5 * size + margin, axis=1).sum())
    return inside


def lowest_gripper_point(grasp: Grasp) -> float:
    corners = np.array(np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5])).reshape(3, -1).T
    return min(float(np.min((T[:3, :3] @ (corners * s).T).T[:, 2] + T[2, 3]))
               for T, s in gripper_boxes(grasp, GRIPPER))


def flange_distance(T: np.ndarray, base: np.ndarray) -> float:
    return float(np.linalg.norm(T[:3, 3] - ARM.flange_from_grasp_m * T[:3, 2] - base))


NARROW_BOX = box_surface((0.05, 0.12, 0.08), (0.0, 0.0, 0.04))
# Tests of the measured width: the fingers open to what the grasp needs (no extra approach room).
MEASURE = GraspPlannerConfig(approach_clearance_m=GraspPlannerConfig().opening_clearance_m)


def test_box_grasps_close_across_its_narrow_side():
    grasps = plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, None)
    assert grasps
    for g in grasps:
        assert abs(g.world_from_grasp[0, 0]) > 0.9, "closing axis must run across the 5 cm side (world x)"
        assert 0.05 <= g.width_m <= GRIPPER.max_opening_m
        assert points_in_gripper(g, NARROW_BOX) == 0
    assert [g.quality for g in grasps] == sorted((g.quality for g in grasps), reverse=True)
    assert all(0.0 <= g.quality <= 1.0 for g in grasps)
    best = grasps[0].world_from_grasp
    assert best[:3, 2] @ UP < -0.9, "the best grasp on a free-standing box comes from above"


def test_cylinder_grasped_across_its_diameter():
    cyl = cylinder_surface(0.025, 0.10, (0.0, 0.0, 0.05))
    grasps = plan_grasps(cyl, table(), GRIPPER, ARM, None, MEASURE)
    assert grasps
    for g in grasps:
        assert abs(g.world_from_grasp[:3, 0] @ UP) < 0.3, "10 cm tall: only across the 5 cm diameter"
        assert 0.05 <= g.width_m <= 0.05 + 2 * GraspPlannerConfig().opening_clearance_m + 0.004


def test_sphere_grasp_is_centred():
    ball = sphere_surface(0.03, (0.0, 0.0, 0.03))
    grasps = plan_grasps(ball, table(), GRIPPER, ARM, None)
    assert grasps
    T = grasps[0].world_from_grasp
    offset = np.array([0.0, 0.0, 0.03]) - T[:3, 3]
    off_axis = offset - (offset @ T[:3, 0]) * T[:3, 0]
    assert np.linalg.norm(off_axis) < 0.012, "best grasp's closing line passes near the centre"
    assert 0.06 <= grasps[0].width_m <= GRIPPER.max_opening_m


def test_object_wider_than_the_opening_gets_no_grasp():
    wide = box_surface((0.15, 0.15, 0.10), (0.0, 0.0, 0.05))
    assert plan_grasps(wide, table(), GRIPPER, ARM, None) == []


def test_neighbour_touching_one_side_blocks_fingers_there():
    obj = box_surface((0.05, 0.05, 0.08), (0.0, 0.0, 0.04), seed=1)
    neighbour = box_surface((0.05, 0.05, 0.08), (0.05, 0.0, 0.04), seed=2)     # touches the +x face
    alone = plan_grasps(obj, table(), GRIPPER, ARM, None)
    assert any(points_in_gripper(g, neighbour) > 0 for g in alone), "without it, fingers would go there"
    grasps = plan_grasps(obj, np.concatenate([table(), neighbour]), GRIPPER, ARM, None)
    assert grasps
    for g in grasps:
        assert points_in_gripper(g, neighbour) == 0
        assert abs(g.world_from_grasp[1, 0]) > 0.9, "only closing along y keeps the fingers off it"


def test_no_approach_from_below_the_table():
    obj = box_surface((0.04, 0.04, 0.04), (0.0, 0.0, 0.02))
    # top_k large: the 12-direction top-down candidates alone fill the first 50 of this cube
    config = GraspPlannerConfig(top_k=400, enough_feasible=400, max_evaluated=4096)
    grasps = plan_grasps(obj, table(), GRIPPER, ARM, None, config)
    assert len(grasps) > 3
    up_limit = np.sin(np.radians(config.max_upward_approach_deg)) + 1e-9
    for g in grasps:
        assert g.world_from_grasp[:3, 2] @ UP <= up_limit
        assert g.world_from_pregrasp[:3, 2] @ UP <= up_limit
        assert lowest_gripper_point(g) >= config.support_clearance_m - 1e-9
    assert any(abs(g.world_from_grasp[:3, 2] @ UP) < 0.2 for g in grasps), "side approaches remain"


def test_table_points_above_the_object_bottom_collide():
    """A support the object's points do not reach (its bottom unseen) still blocks the fingers."""
    obj = box_surface((0.04, 0.04, 0.06), (0.0, 0.0, 0.03))
    obj = obj[obj[:, 2] > 0.02]                              # only the upper part was segmented
    grasps = plan_grasps(obj, table(height=0.0), GRIPPER, ARM, None)
    for g in grasps:
        assert lowest_gripper_point(g) >= 0.02 - 1e-9
    raised = table(height=0.03)                              # a shelf edge cutting through the object
    for g in plan_grasps(obj, raised, GRIPPER, ARM, None):
        assert points_in_gripper(g, raised) == 0


def test_reach_filter():
    base = np.eye(4)
    base[:3, 3] = [-0.45, 0.0, 0.0]
    grasps = plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, base)
    assert grasps
    for g in grasps:
        assert flange_distance(g.world_from_grasp, base[:3, 3]) <= ARM.reach_m
        assert flange_distance(g.world_from_pregrasp, base[:3, 3]) <= ARM.reach_m
    far = base.copy()
    far[:3, 3] = [-0.75, 0.0, 0.0]              # only part of the candidates is reachable
    some = plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, far)
    unchecked = plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, None)
    assert any(flange_distance(g.world_from_pregrasp, far[:3, 3]) > ARM.reach_m for g in unchecked)
    for g in some:
        assert flange_distance(g.world_from_pregrasp, far[:3, 3]) <= ARM.reach_m
    out_of_reach = base.copy()
    out_of_reach[:3, 3] = [-2.0, 0.0, 0.0]
    assert plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, out_of_reach) == []


def test_deterministic():
    a = plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, None)
    b = plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, None)
    assert len(a) == len(b) > 0
    for ga, gb in zip(a, b):
        np.testing.assert_array_equal(ga.world_from_grasp, gb.world_from_grasp)
        assert ga.quality == gb.quality and ga.width_m == gb.width_m


def test_pregrasp_is_back_along_minus_z_and_frames_are_right_handed():
    for g in plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, None):
        T, P = g.world_from_grasp, g.world_from_pregrasp
        np.testing.assert_allclose(P[:3, :3], T[:3, :3])
        np.testing.assert_allclose(P[:3, 3], T[:3, 3] - GRIPPER.approach_distance_m * T[:3, 2], atol=1e-12)
        np.testing.assert_allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-9)
        np.testing.assert_allclose(np.cross(T[:3, 2], T[:3, 0]), T[:3, 1], atol=1e-9)


def test_gripper_boxes_follow_the_grasp_convention():
    T = np.eye(4)
    T[:3, 3] = [0.1, 0.2, 0.3]
    boxes = gripper_boxes(Grasp(T, 0.05, T, 1.0), GRIPPER)
    (left, s_left), (right, s_right), (palm, s_palm) = boxes
    assert left[0, 3] + 0.5 * s_left[0] == pytest.approx(0.1 - 0.025)      # inner faces at +-width/2
    assert right[0, 3] - 0.5 * s_right[0] == pytest.approx(0.1 + 0.025)
    assert left[2, 3] + 0.5 * s_left[2] == pytest.approx(0.3 + GRIPPER.finger_length_m - GRIPPER.tcp_depth_m)
    assert palm[2, 3] + 0.5 * s_palm[2] == pytest.approx(0.3 - GRIPPER.tcp_depth_m)   # palm face
    np.testing.assert_allclose(s_palm, [GRIPPER.palm_width_m, GRIPPER.palm_height_m, GRIPPER.palm_depth_m])
    centres, sizes = local_boxes(np.array([0.02, 0.06]), GRIPPER)
    assert centres.shape == sizes.shape == (2, 3, 3)


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"object_points must be an \[N,3\]"):
        plan_grasps(np.zeros((10, 2)), table(), GRIPPER, ARM, None)
    with pytest.raises(ValueError, match="world_from_armbase"):
        plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, np.eye(3))
    with pytest.raises(ValueError, match="gripper geometry"):
        plan_grasps(NARROW_BOX, table(), dataclasses.replace(GRIPPER, tcp_depth_m=0.1), ARM, None)
    with pytest.raises(ValueError, match="gripper geometry"):
        plan_grasps(NARROW_BOX, table(), dataclasses.replace(GRIPPER, finger_width_m=0.0), ARM, None)
    with pytest.raises(ValueError, match="friction_cone_deg"):
        GraspPlannerConfig(friction_cone_deg=95.0)


def test_too_few_or_non_finite_points():
    assert plan_grasps(NARROW_BOX[:5], table(), GRIPPER, ARM, None) == []
    noisy = NARROW_BOX.copy()
    noisy[::50] = np.nan
    assert plan_grasps(noisy, np.zeros((0, 3)), GRIPPER, ARM, None)


def test_smaller_opening_refuses_what_it_cannot_span():
    narrow = dataclasses.replace(GRIPPER, max_opening_m=0.045)
    assert plan_grasps(NARROW_BOX, table(), narrow, ARM, None) == []


def test_approach_path_from_the_pregrasp_must_be_free():
    """A shelf board above the object: the gripper fits at the grasp but not on the way down to it."""
    obj = box_surface((0.04, 0.04, 0.06), (0.0, 0.0, 0.03))
    shelf = table(height=0.16)
    scene = np.concatenate([table(), shelf])
    no_sweep = plan_grasps(obj, scene, GRIPPER, ARM, None, GraspPlannerConfig(check_approach_sweep=False))
    assert any(g.world_from_grasp[:3, 2] @ UP < -0.9 for g in no_sweep), "top-down fits at the grasp itself"
    config = GraspPlannerConfig(top_k=20, max_evaluated=4096)
    grasps = plan_grasps(obj, scene, GRIPPER, ARM, None, config)
    assert grasps, "side approaches stay below the shelf"
    for g in grasps:
        pre = Grasp(g.world_from_pregrasp, g.width_m, g.world_from_pregrasp, g.quality)
        assert points_in_gripper(g, shelf) == 0 and points_in_gripper(pre, shelf) == 0


def test_depth_noise_does_not_widen_the_grasp_or_lower_the_fingers():
    rng = np.random.default_rng(3)
    sigma = 0.002
    obj = NARROW_BOX + rng.normal(0.0, sigma, NARROW_BOX.shape)
    tab = table()
    tab[:, 2] += rng.normal(0.0, sigma, len(tab))
    grasps = plan_grasps(obj, tab, GRIPPER, ARM, None, MEASURE)
    square = [g.width_m for g in grasps if abs(g.world_from_grasp[0, 0]) > 0.99]   # across the 5 cm
    assert square
    # noise spreads the faces over +-8 mm; the grasp widens by no more than 4 sigma (a few degrees of
    # tilt add a little more on some)
    assert np.median(square) <= 0.05 + 2 * GraspPlannerConfig().opening_clearance_m + 4 * sigma
    for g in grasps:
        assert lowest_gripper_point(g) >= 2 * sigma, "fingers stay above the table's noise"


def test_support_plane_comes_from_the_table_around_the_object():
    rng = np.random.default_rng(4)
    tab = table(height=0.02)
    tab[:, 2] += rng.normal(0.0, 0.001, len(tab))
    obj = box_surface((0.04, 0.04, 0.05), (0.0, 0.0, 0.045))
    obj = np.concatenate([obj, [[0.0, 0.0, -0.05]]])                    # one floater far below
    height, noise = support_plane(obj, tab, UP, GraspPlannerConfig())
    assert height == pytest.approx(0.02, abs=0.0005)
    assert noise == pytest.approx(0.001, rel=0.3)
    height, noise = support_plane(obj, np.zeros((0, 3)), UP, GraspPlannerConfig())
    assert height == pytest.approx(0.02, abs=0.001) and noise == 0.0   # no table: the object's bottom


def test_approach_filter_refuses_approaches_from_below():
    """Unit check of the direction rule (the support-plane test alone already rejects most of them)."""
    config = GraspPlannerConfig(max_upward_approach_deg=5.0)
    tilts_deg = np.array([-90.0, -30.0, 0.0, 3.0, 10.0, 90.0])            # approach angle above horizontal
    approach = np.c_[np.cos(np.radians(tilts_deg)), np.zeros(6), np.sin(np.radians(tilts_deg))]
    poses = grasp_matrix(np.zeros((6, 3)), np.tile([0.0, 1.0, 0.0], (6, 1)), approach)
    np.testing.assert_array_equal(approach_ok(poses, UP, config), [True, True, True, True, False, False])


def mug_surface(outer_r=0.045, wall=0.005, height=0.09, n=8000, seed=0) -> np.ndarray:
    """An open-topped cup resting on z = 0: outer and inner walls, rim annulus, inner bottom."""
    rng = np.random.default_rng(seed)
    inner_r = outer_r - wall
    part = rng.choice(4, size=n, p=[0.45, 0.4, 0.05, 0.1])
    a = rng.uniform(0, 2 * np.pi, n)
    r = np.select([part == 0, part == 1, part == 2],
                  [outer_r, inner_r, rng.uniform(inner_r, outer_r, n)], inner_r * np.sqrt(rng.uniform(0, 1, n)))
    z = np.select([part == 0, part == 1, part == 2],
                  [rng.uniform(0, height, n), rng.uniform(wall, height, n), np.full(n, height)], np.full(n, wall))
    return np.c_[r * np.cos(a), r * np.sin(a), z]


def test_open_cup_wider_than_the_opening_is_taken_by_its_rim():
    cup = mug_surface()
    grasps = plan_grasps(cup, table(), GRIPPER, ARM, None, MEASURE)
    assert grasps, "one finger inside, one outside the 5 mm wall"
    for g in grasps:
        T = g.world_from_grasp
        # the curved wall spans ~7 mm across the finger width; plus clearance and a tilted axis
        assert g.width_m <= 0.028
        radial = T[:2, 3] / np.linalg.norm(T[:2, 3])
        assert 0.040 - 0.004 <= np.linalg.norm(T[:2, 3]) <= 0.045 + 0.004, "centred on the wall"
        assert abs(T[:2, 0] @ radial) > 0.8, "closing across the wall"
        assert points_in_gripper(g, cup) == 0


def test_solid_cylinder_wider_than_the_opening_gets_no_grasp():
    """Its side wall alone is no 'rim': the top cap closes it (a finger would have to enter it)."""
    solid = cylinder_surface(0.045, 0.09, (0.0, 0.0, 0.045), n=8000)
    assert plan_grasps(solid, table(), GRIPPER, ARM, None) == []


def test_closing_takes_the_piece_nearest_the_origin():
    """Points between the fingers split where a finger fits: a cup wall and the body beyond the gap."""
    x = np.array([[-0.040, -0.035, -0.004, 0.0, 0.003, 0.030, np.nan],      # wall around 0, body at +-3 cm
                  [-0.010, -0.005, 0.0, 0.005, 0.010, 0.015, 0.020]])       # one piece
    mask = np.isfinite(x)
    lo, hi, count = _centre_cluster_extremes(np.nan_to_num(x), mask, gap=0.02, fraction=0.0)
    np.testing.assert_allclose(lo, [-0.004, -0.010])
    np.testing.assert_allclose(hi, [0.003, 0.020])
    np.testing.assert_array_equal(count, [3, 7])
    lo, hi, _ = _centre_cluster_extremes(np.nan_to_num(x), mask, gap=0.02, fraction=0.2)
    np.testing.assert_allclose(hi, [0.003, 0.015])                           # one value trimmed per end


def test_square_brick_is_taken_across_faces_not_corners():
    """Top-down across the principal axes of a square footprint can land on corners; those rank lower."""
    yaw = np.radians(30.0)
    R = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    brick = box_surface((0.048, 0.048, 0.035), (0.0, 0.0, 0.0)) @ R.T + [0.0, 0.0, 0.0175]
    grasps = plan_grasps(brick, table(), GRIPPER, ARM, None)
    assert len(grasps) >= 3
    for g in grasps[:3]:
        x = g.world_from_grasp[:3, 0]
        assert max(abs(x @ R[:, 0]), abs(x @ R[:, 1])) > 0.98, "closing axis along a face normal"


def rounded_brick(size=(0.048, 0.048, 0.02), fillet=0.006, n=4000, seed=0) -> np.ndarray:
    """Top and sides of a box resting on z = 0 whose top edges are rounded over `fillet`, as a memory
    blurs a brick's edges (its bottom is on the table, unseen)."""
    rng = np.random.default_rng(seed)
    size = np.asarray(size, float)
    sx, sy, sz = size
    q = rng.uniform(-0.5, 0.5, (n, 3)) * size
    areas = np.array([sx * sy, sy * sz, sy * sz, sx * sz, sx * sz])
    face = rng.choice(5, n, p=areas / areas.sum())
    q[face == 0, 2] = sz / 2
    q[face == 1, 0], q[face == 2, 0] = sx / 2, -sx / 2
    q[face == 3, 1], q[face == 4, 1] = sy / 2, -sy / 2
    inner = np.clip(q, [-sx / 2 + fillet, -sy / 2 + fillet, -np.inf], [sx / 2 - fillet, sy / 2 - fillet, sz / 2 - fillet])
    d = q - inner
    edge = (np.abs(d[:, 2]) > 0) & (np.linalg.norm(d[:, :2], axis=1) > 0)
    q[edge] = inner[edge] + fillet * d[edge] / np.linalg.norm(d[edge], axis=1, keepdims=True)
    return q + [0.0, 0.0, sz / 2]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_low_rounded_brick_on_a_noisy_table_is_taken_across_its_faces(seed):
    """A 2 cm-high 4.8 cm square brick as a memory shows it: rounded top edges, 1 mm noise, on a table
    whose points scatter 1.5 mm. The rounded edge lies in the fingers' contact band; the grasp must
    still close across two faces (not across the diagonal, 6.8 cm, which holds by two corners)."""
    rng = np.random.default_rng(seed)
    yaw = np.radians(20.0)
    R = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    brick = rounded_brick(seed=seed) @ R.T + rng.normal(0.0, 0.001, (4000, 3))
    tab = table()
    tab[:, 2] += rng.normal(0.0, 0.0015, len(tab))
    tab = tab[np.linalg.norm(tab[:, :2], axis=1) > 0.036]                  # not under the brick
    grasps = plan_grasps(brick, tab, GRIPPER, ARM, None, dataclasses.replace(MEASURE, friction_cone_deg=40.0))
    assert grasps
    best = grasps[0]
    x = best.world_from_grasp[:3, 0]
    assert max(abs(x @ R[:, 0]), abs(x @ R[:, 1])) > 0.95, "closing across two faces"
    assert best.width_m <= 0.048 + 2 * GraspPlannerConfig().opening_clearance_m + 0.008
    assert lowest_gripper_point(best) > 0.003, "fingertips above the table's noise"


def test_a_grasp_with_room_to_spare_ranks_above_one_at_the_full_opening():
    """A 6.6 cm box with a 1.5 cm plate on top (a handle): across the box the fingers need 7.6 cm, all but
    4 mm of the opening; a memory that saw its far side poorly makes such a grasp land a finger on it.
    Across the plate the opening has 5 cm to spare: that one ranks first."""
    body = box_surface((0.066, 0.066, 0.06), (0.0, 0.0, 0.03), n=6000)
    plate = box_surface((0.015, 0.05, 0.04), (0.0, 0.0, 0.08), n=2000, seed=1)
    grasps = plan_grasps(np.concatenate([body, plate]), table(), GRIPPER, ARM, None)
    assert grasps
    assert grasps[0].width_m < 0.015 + 2 * GraspPlannerConfig().approach_clearance_m + 0.004, "across the plate"
    assert grasps[0].world_from_grasp[2, 3] > 0.06, "on the plate"


def test_fingers_that_only_graze_the_top_edge_are_refused():
    """Top-down across a 4 cm cube: fingertips 2 cm into it hold it; 5 mm into it they slip off."""
    cube = box_surface((0.04, 0.04, 0.04), (0.0, 0.0, 0.02))
    normals = estimate_normals(cube, cKDTree(cube), 16)
    tips_below_origin = GRIPPER.finger_length_m - GRIPPER.tcp_depth_m
    tips_at = np.array([0.02, 0.035])                                     # 2 cm and 5 mm below the top
    origins = np.c_[np.zeros(2), np.zeros(2), tips_at + tips_below_origin]
    poses = grasp_matrix(origins, np.tile([1.0, 0.0, 0.0], (2, 1)), np.tile([0.0, 0.0, -1.0], (2, 1)))
    closing = measure_closing(poses, grasp_frame_points(poses, cube), normals, GRIPPER, GraspPlannerConfig())
    np.testing.assert_array_equal(closing["ok"], [True, False])


def test_contact_faces_are_judged_by_the_patch_when_point_normals_are_unreliable():
    """A memory's per-point normals on a small, poorly seen object scatter by tens of degrees; the
    patch a finger presses is still a plane facing it. With every normal wrong (pointing up), a
    face-on grasp of a cube keeps its contacts in the friction cone through the patch's plane."""
    cube = box_surface((0.04, 0.04, 0.04), (0.0, 0.0, 0.02))
    wrong = np.tile([0.0, 0.0, 1.0], (len(cube), 1))
    pose = grasp_matrix(np.array([[0.0, 0.0, 0.04]]), np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, -1.0]]))
    closing = measure_closing(pose, grasp_frame_points(pose, cube), wrong, GRIPPER, GraspPlannerConfig())
    assert closing["ok"][0]
    assert closing["contact_cos"][0] > 0.95


def test_fingers_approach_with_room_to_spare_where_nothing_is_in_the_way():
    """A memory can place an object's side a centimetre off, and a finger coming down then lands on
    it: where nothing is beside the object the fingers open `approach_clearance_m` past each side
    (collision-free at that opening), and only beside a neighbour as little as the grasp needs."""
    cfg = GraspPlannerConfig()
    free = plan_grasps(NARROW_BOX, table(), GRIPPER, ARM, None)
    assert free
    for g in free:
        assert g.width_m == pytest.approx(min(0.05 + 2 * cfg.approach_clearance_m, GRIPPER.max_opening_m), abs=0.004)
        assert points_in_gripper(g, NARROW_BOX) == 0 and points_in_gripper(g, table()) == 0

    # a plate 2.5 cm beside the box's face: the wide opening's finger would stand in it
    yy, zz = np.meshgrid(np.arange(-0.06, 0.0601, 0.003), np.arange(0.0, 0.0801, 0.003))
    plate = np.c_[np.full(yy.size, 0.05), yy.ravel(), zz.ravel()]
    scene = np.concatenate([table(), plate])
    beside = plan_grasps(NARROW_BOX, scene, GRIPPER, ARM, None)
    assert beside, "the grasp the box needs still fits beside the plate"
    for g in beside:
        assert g.width_m <= 0.05 + 2 * cfg.opening_clearance_m + 0.004, g.width_m
        assert points_in_gripper(g, plate) == 0


def flared_tray(size=0.24, height=0.05, flare_deg=33.0, wall=0.008, spacing=0.003, seed=0) -> np.ndarray:
    """A shallow square tray with sides leaning outward by `flare_deg` (like the built-in scene's):
    both faces of each 8 mm side and the floor, as points around (0, 0, 0) on a table at z = 0."""
    rng = np.random.default_rng(seed)
    t = np.radians(flare_deg)
    pts = []
    half = size / 2
    along = np.arange(-half, half, spacing)
    up_len = np.arange(0.0, height / np.cos(t), spacing)
    for yaw in np.radians([0, 90, 180, 270]):
        c, s = np.cos(yaw), np.sin(yaw)
        for face in (-0.5, 0.5):
            a, u = np.meshgrid(along, up_len)
            x = half - height * np.tan(t) + u * np.sin(t) + face * wall * np.cos(t)
            z = u * np.cos(t) - face * wall * np.sin(t) + wall / 2
            y = a
            pts.append(np.c_[c * x.ravel() - s * y.ravel(), s * x.ravel() + c * y.ravel(), z.ravel()])
    g = np.arange(-half + height * np.tan(np.radians(flare_deg)), half - height * np.tan(t), spacing)
    fx, fy = np.meshgrid(g, g)
    pts.append(np.c_[fx.ravel(), fy.ravel(), np.full(fx.size, 0.006)])
    out = np.concatenate(pts)
    return out + rng.normal(0.0, 0.0005, out.shape)


def test_section_plane_follows_a_leaning_wall():
    """The section between the fingers shows the wall's 33-degree lean: a horizontal closing axis
    meets it at ~33 degrees, one along the wall's normal squarely."""
    from m3_core.grasp.filters import section_plane_cos

    tray = flared_tray()
    t = np.radians(33.0)
    # a point on the +x side, half way up, and the side's outward normal
    mid = np.array([0.12 - 0.05 * np.tan(t) + 0.5 * 0.05 / np.cos(t) * np.sin(t), 0.0, 0.025])
    normal = np.array([np.cos(t), 0.0, -np.sin(t)])
    along_wall_down = -np.array([np.sin(t), 0.0, np.cos(t)])
    poses = np.stack([
        grasp_matrix(mid, np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),   # top-down, horizontal
        grasp_matrix(mid, normal, along_wall_down),                                   # down the wall
    ])
    cos = section_plane_cos(grasp_frame_points(poses, tray), np.array([0.03, 0.03]), GRIPPER, GraspPlannerConfig())
    assert abs(np.degrees(np.arccos(cos[0])) - 33.0) < 6.0
    assert cos[1] > 0.97


def test_a_tray_held_by_its_leaning_side_is_gripped_along_the_side_normal():
    """In physics a tray held at its flared side by a horizontal closing axis hung tilted onto the
    table (24 of 24 such grasps); closed along the side's normal it lifted clear (15 of 15). Every grasp
    far from the tray's centre must close within `hanging_alignment_deg` of its side's normal."""
    # a memory's surface: millimetres of scatter on an 8 mm side, so per-point normals scatter by tens
    # of degrees; the query engine's planner widens the friction cone for memories (40 degrees)
    tray = flared_tray()
    tray = tray + np.random.default_rng(1).normal(0.0, 0.0025, tray.shape)
    config = GraspPlannerConfig(friction_cone_deg=40.0)
    grasps = plan_grasps(tray, table(half=0.3), GRIPPER, ARM, None, config)
    assert grasps, "the tray's sides can be gripped"
    t = np.radians(33.0)
    limit = config.hanging_alignment_deg   # before: up to 48 degrees off, the best-ranked 35
    for g in grasps:
        x, p = g.world_from_grasp[:3, 0], g.world_from_grasp[:3, 3]
        assert np.hypot(p[0], p[1]) > config.hanging_lever_m    # on a side, not the centre
        side = np.argmax(np.abs(p[:2]))
        normal = np.zeros(3)
        normal[side] = np.sign(p[side]) * np.cos(t)
        normal[2] = -np.sin(t)
        angle = np.degrees(np.arccos(min(1.0, abs(float(x @ normal)))))
        assert angle < limit, f"grasp at {p.round(3)} closes {angle:.0f} deg off its side's normal"


def test_approach_room_ranks_a_grasp_with_room_beside_the_object_higher():
    """A grasp that can only come down with opening_clearance_m beside the object (a thin wall whose
    wider opening meets the tray's floor) scores below one approached with approach_clearance_m to
    spare; with everything else equal, it ranks second."""
    config = GraspPlannerConfig()
    wall = np.array([0.008 + 2 * config.opening_clearance_m])  # needed opening: extent + clearance
    room = scoring.approach_room(
        np.array([wall[0], 0.05]), np.array([wall[0], 0.04 + 2 * config.approach_clearance_m]), config
    )
    np.testing.assert_allclose(room, [config.opening_clearance_m / config.approach_clearance_m, 1.0])
    ones = np.ones(2)
    q = scoring.quality(ones, ones, ones, ones, ones, config, True, 1.0, room)
    assert q[0] < q[1] == pytest.approx(1.0)
