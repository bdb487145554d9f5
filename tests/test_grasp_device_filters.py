"""The planner's candidate checks as batched torch (`GraspPlannerConfig.device`) give the host path's
grasps: on torch's CPU here, and on a GPU where one is present."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from m3_core.grasp import device_filters, filters
from m3_core.grasp.planner import plan_grasps
from m3_core.query.config import QueryConfig
from m3_core.robot import ArmConfig, GripperConfig
from tests.test_grasp_planner_fast import _assert_same_grasps, _memory_object_args, _synthetic_objects

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: torch.cuda.is_available() is False")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["box", "cylinder_with_base", "sphere", "mug", "rounded_brick"])
def test_device_checks_give_the_host_grasps_on_synthetic_objects(name, device):
    obj, scene, base, config = _synthetic_objects()[name]
    host = plan_grasps(obj, scene, GripperConfig(), ArmConfig(), base, replace(config, workers=1))
    assert host, "the host path finds grasps (else the comparison says little)"
    _assert_same_grasps(plan_grasps(obj, scene, GripperConfig(), ArmConfig(), base, replace(config, device=device)), host)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["duck", "teddy", "mug", "toy_brick"])
def test_device_checks_give_the_host_grasps_on_memory_objects(name, device):
    args = _memory_object_args(name)
    host = plan_grasps(*args[:5], replace(args[5], workers=1))
    assert host, "the host path finds grasps (else the comparison says little)"
    _assert_same_grasps(plan_grasps(*args[:5], replace(args[5], device=device)), host)


@pytest.mark.parametrize("chunk", [1024, 40])
@pytest.mark.parametrize("name", ["mug", "rounded_brick"])
def test_device_checks_stop_where_the_host_path_stops(name, chunk):
    # An early stop after a few small batches: the device checks every candidate, so the cut must
    # drop exactly the feasible grasps of the batches the host path never reached (in any chunking).
    obj, scene, base, config = _synthetic_objects()[name]
    config = replace(config, batch_size=8, enough_feasible=3, workers=1)
    host = plan_grasps(obj, scene, GripperConfig(), ArmConfig(), base, config)
    every = plan_grasps(obj, scene, GripperConfig(), ArmConfig(), base, replace(config, enough_feasible=10_000))
    assert host and [g.quality for g in host] != [g.quality for g in every], "the early stop changes the grasps"
    _assert_same_grasps(plan_grasps(obj, scene, GripperConfig(), ArmConfig(), base,
                                    replace(config, device="cpu", device_chunk=chunk)), host)


def test_a_point_at_the_fingertips_is_between_the_fingers_whatever_the_rounding():
    # The top-down sampler puts the fingertips at a surface point's height; whether that point is
    # between the fingers must not depend on the last bit of its grasp-frame height (host numpy
    # and a GPU round it differently).
    g = GripperConfig()
    tip = g.finger_length_m - g.tcp_depth_m
    for z in (tip - 1e-15, tip, tip + 1e-15, -g.tcp_depth_m - 1e-15):
        assert filters._along_fingers(np.array([z]), g)[0]
        assert device_filters._along_fingers(torch.tensor([z], dtype=torch.float64), g)[0]
    assert not filters._along_fingers(np.array([tip + 1e-6]), g)[0]


@pytest.mark.parametrize("device", DEVICES)
def test_device_measures_match_the_host_filters(device):
    # The dense counterparts, field by field, on one memory object's candidates.
    from m3_core.grasp import planner  # local: the planner's private stages give the candidates

    obj, scene, gripper, arm, base, config = _memory_object_args("mug")
    rng = np.random.default_rng(config.seed)
    prepared = planner._prepare(obj, scene, base, rng, gripper, config)
    poses = planner._candidates(prepared, rng, gripper, base, arm, config)[0][: config.max_evaluated]
    local = filters.grasp_frame_points(poses, prepared.points)
    host = filters.measure_closing(poses, local, prepared.normals, gripper, config)
    on = lambda a: device_filters.to_device(a, torch.device(device))  # noqa: E731
    dev = device_filters.measure_closing(on(poses), device_filters.grasp_frame_points(on(poses), on(prepared.points)),
                                         on(prepared.normals), gripper, config)
    for key, value in host.items():
        np.testing.assert_allclose(dev[key].cpu().numpy().astype(np.float64), np.asarray(value, dtype=np.float64),
                                   rtol=0, atol=1e-9, err_msg=key)
    width = host["width"]
    ok, clearance = filters.scene_collisions(poses, width, prepared.obstacles, prepared.obstacle_tree, gripper, config)
    dev_ok, dev_clearance = device_filters.scene_collisions(on(poses), on(width), on(prepared.obstacles), gripper, config)
    np.testing.assert_array_equal(dev_ok.cpu().numpy(), ok)
    np.testing.assert_allclose(dev_clearance.cpu().numpy(), clearance, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(device_filters.object_collisions(on(local), on(width), gripper, config).cpu().numpy(),
                                  filters.object_collisions(local, width, gripper, config))


def test_query_planner_device_is_checked():
    assert QueryConfig(planner_device="cuda:1").planner_device == "cuda:1"
    with pytest.raises(ValueError, match="planner_device"):
        QueryConfig(planner_device="gpu")
