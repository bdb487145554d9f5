"""The simulated bag is geometrically exact: its depth, camera_info and TF chain land on the
ground-truth mesh surfaces (issue 3, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from m3_core.geometry.camera import points_from_depth
from m3_core.geometry.chain import world_from_camera_chain
from m3_core.sim import gt_dir_for, read_cameras, read_mask, read_meshes, read_objects
from m3_core.sim.meshes import distance_to_mesh
from tests.conftest_sim import (
    ROBOT,
    camera_from_info,
    image_array,
    make_tiny,
    pose_matrix,
    read_bag,
    stamp_ns,
    transform_matrix,
)


@pytest.fixture(scope="module")
def tiny_bag(tmp_path_factory):
    """An 8-frame 160x120 default scene (bag path; ground truth at <bag>_gt)."""
    out = tmp_path_factory.mktemp("sim") / "bag"
    make_tiny(out)
    return out


def _chain_from_bag(msgs, robot):
    """{stamp: world_from_camera} composed from the bag alone: /tf_static + odometry + ee pose."""
    frames, topics = robot["frames"], robot["topics"]
    static = {}
    for _, tfm in msgs["/tf_static"]:
        for tf in tfm.transforms:
            static[(tf.header.frame_id, tf.child_frame_id)] = transform_matrix(tf.transform)
    lidar_from_armbase = static[(frames["lidar"], frames["arm_base"])]
    ee_from_camera = static[(frames["ee"], frames["camera"])]
    odom = {}
    for _, m in msgs[topics["odometry"]]:
        assert m.header.frame_id == frames["world"] and m.child_frame_id == frames["lidar"]
        odom[stamp_ns(m.header)] = pose_matrix(m.pose.pose)
    ee = {}
    for _, m in msgs[topics["ee_pose"]]:
        assert m.header.frame_id == frames["arm_base"]
        ee[stamp_ns(m.header)] = pose_matrix(m.pose)
    return lambda s: world_from_camera_chain(odom[s], lidar_from_armbase, ee[s], ee_from_camera)


def test_backprojected_depth_lands_on_gt_surfaces(tiny_bag):
    robot = yaml.safe_load(ROBOT.read_text())
    msgs = read_bag(tiny_bag)
    gt = gt_dir_for(tiny_bag)
    chain = _chain_from_bag(msgs, robot)
    meshes = read_meshes(gt)
    objects = {o["id"]: o["name"] for o in read_objects(gt)}
    infos = {stamp_ns(m.header): m for _, m in msgs[robot["topics"]["camera_info"]]}
    depths = msgs[robot["topics"]["depth"]]
    assert len(depths) == 8
    checked = 0
    for _, depth_msg in depths[::2]:  # several frames along the scan
        s = stamp_ns(depth_msg.header)
        assert depth_msg.header.frame_id == robot["frames"]["camera"]
        camera = camera_from_info(infos[s])
        depth_m = image_array(depth_msg).astype(np.float64) * 1e-3
        ids = read_mask(gt, s)
        world_from_camera = chain(s)
        seen = 0
        for oid, name in objects.items():
            pts, _ = points_from_depth(depth_m, camera, world_from_camera, mask=ids == oid)
            if len(pts) < 20:
                continue
            v, f = meshes[name]
            dist = distance_to_mesh(pts[:: max(1, len(pts) // 2000)], v, f)
            assert np.median(dist) < 0.002, f"{name} at stamp {s}: median {np.median(dist) * 1e3:.2f} mm"
            seen += 1
        assert seen >= 3, f"only {seen} objects visible at stamp {s}"
        checked += 1
    assert checked >= 4


def test_gt_camera_poses_match_the_bag_chain(tiny_bag):
    robot = yaml.safe_load(ROBOT.read_text())
    msgs = read_bag(tiny_bag)
    chain = _chain_from_bag(msgs, robot)
    cams = read_cameras(gt_dir_for(tiny_bag))
    assert len(cams["frames"]) == 8
    for fr in cams["frames"]:
        np.testing.assert_allclose(chain(fr["stamp_ns"]), np.asarray(fr["world_from_camera"]), atol=1e-6)


def test_gt_boxes_are_mesh_boxes_resting_on_the_table(tiny_bag):
    gt = gt_dir_for(tiny_bag)
    objs = read_objects(gt)
    meshes = read_meshes(gt)
    table = next(o for o in objs if o["support"])
    top = table["box_max_world"][2]
    for o in objs:
        v, _ = meshes[o["name"]]
        np.testing.assert_allclose(o["box_center_world"], (v.min(0) + v.max(0)) / 2, atol=1e-5)
        if not o["support"]:
            assert abs(o["box_min_world"][2] - top) < 1e-4, o["name"]
    assert {o["name"] for o in objs} >= {"duck", "teddy", "mug", "lego", "tray", "table"}


def test_rotated_shifted_table_with_random_placement_stays_exact(tmp_path):
    """Scene geometry is built in the table frame: a moved, rotated table with randomly placed
    objects still gives exact depth and boxes resting inside the table top."""
    from dataclasses import replace

    from m3_core.sim import config_dir, generate, load_spec, with_overrides

    spec, spec_dir = load_spec(config_dir() / "sim_default.yaml")
    objects = tuple(replace(o, xy_m=None, yaw_deg=None) for o in spec.objects if o.name != "tray")
    spec = replace(spec, objects=objects, table=replace(spec.table, xy_m=(0.8, -0.3), yaw_deg=35.0))
    result = generate(with_overrides(spec, frames=4, size=(160, 120), seed=7), spec_dir, tmp_path / "bag")
    gt = result.gt_dir
    objs = read_objects(gt)
    table = next(o for o in objs if o["support"])
    c, s = np.cos(np.radians(35.0)), np.sin(np.radians(35.0))
    for o in objs:
        if o["support"]:
            continue
        assert abs(o["box_min_world"][2] - table["box_max_world"][2]) < 1e-4
        local = np.array([[c, s], [-s, c]]) @ (np.asarray(o["box_center_world"][:2]) - [0.8, -0.3])
        assert np.all(np.abs(local) < [0.72, 0.47]), (o["name"], local)
    robot = yaml.safe_load(ROBOT.read_text())
    msgs = read_bag(result.bag_dir)
    chain = _chain_from_bag(msgs, robot)
    meshes = read_meshes(gt)
    infos = {stamp_ns(m.header): m for _, m in msgs[robot["topics"]["camera_info"]]}
    seen = 0
    for _, depth_msg in msgs[robot["topics"]["depth"]]:
        st = stamp_ns(depth_msg.header)
        depth_m = image_array(depth_msg).astype(np.float64) * 1e-3
        ids = read_mask(gt, st)
        for o in objs:
            pts, _ = points_from_depth(depth_m, camera_from_info(infos[st]), chain(st), mask=ids == o["id"])
            if len(pts) >= 20:
                dist = distance_to_mesh(pts[:: max(1, len(pts) // 1000)], *meshes[o["name"]])
                assert np.median(dist) < 0.002, o["name"]
                seen += 1
    assert seen >= 8


def test_distance_to_mesh_is_exact_on_a_cube():
    """The yardstick of the accuracy tests: exact distances to a unit cube's surface."""
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    pts = np.array(
        [[0.5, 0.5, 0.5], [0.5, 0.5, 1.3], [2.0, 2.0, 0.5], [0.5, 0.5, 0.0], [-1, -1, -1.0], [0.9, 0.5, 0.5]]
    )
    want = [0.5, 0.3, np.sqrt(2), 0.0, np.sqrt(3), 0.1]
    np.testing.assert_allclose(distance_to_mesh(pts, v, f), want, atol=1e-9)


def test_a_5mm_hand_eye_error_is_caught(tiny_bag):
    """The 2 mm bound has teeth: the same check with a hand-eye off by 5 mm fails it."""
    robot = yaml.safe_load(ROBOT.read_text())
    msgs = read_bag(tiny_bag)
    gt = gt_dir_for(tiny_bag)
    good = _chain_from_bag(msgs, robot)
    shift = np.eye(4)
    shift[:3, 3] = [0.005, 0.0, 0.0]  # 5 mm along the optical x axis
    meshes = read_meshes(gt)
    duck = next(o for o in read_objects(gt) if o["name"] == "duck")
    _, depth_msg = msgs[robot["topics"]["depth"]][2]
    s = stamp_ns(depth_msg.header)
    info = next(m for _, m in msgs[robot["topics"]["camera_info"]] if stamp_ns(m.header) == s)
    depth_m = image_array(depth_msg).astype(np.float64) * 1e-3
    mask = read_mask(gt, s) == duck["id"]
    medians = []
    for world_from_camera in (good(s), good(s) @ shift):
        pts, _ = points_from_depth(depth_m, camera_from_info(info), world_from_camera, mask=mask)
        medians.append(np.median(distance_to_mesh(pts, *meshes["duck"])))
    assert medians[0] < 0.001 < 0.002 < medians[1]
