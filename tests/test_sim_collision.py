"""Collision geometry of the simulated objects (m3_core.sim.collision): the mug is a hollow cup in
physics as it is in the renders, so a grasp on its rim (one finger inside) can hold."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet", reason="the physics check needs pybullet")

from m3_core.geometry.se3 import invert, matrix_from_pose  # noqa: E402
from m3_core.robot import load_robot_config  # noqa: E402
from m3_core.sim.collision import mass_properties  # noqa: E402
from m3_core.sim.grasp_check import GraspSim  # noqa: E402
from m3_core.sim.grasp_truth import grasp_from_pose, top_down_pose  # noqa: E402
from m3_core.sim.spec import ObjectSpec, SimSpec  # noqa: E402

MUG = ObjectSpec(name="mug", caption="a red coffee mug", xy_m=(0.0, 0.0), yaw_deg=30.0)
MUG_HEIGHT_M = 0.10
MUG_RADIUS_M = 0.041


@pytest.fixture(scope="module")
def gripper():
    return load_robot_config().gripper


@pytest.fixture(scope="module")
def mug_sim(gripper):
    with GraspSim(SimSpec(objects=(MUG,)), gripper) as sim:
        sim.world_from_mug = _world_from_mug(sim)  # at rest: each check moves the mug
        yield sim


def _world_from_mug(sim) -> np.ndarray:
    """The mug's mesh frame in the world now (origin on its axis at its bottom, handle towards +y)."""
    p, body = sim._p, sim.world.bodies[0].body_id
    pos, orn = p.getBasePositionAndOrientation(body, physicsClientId=sim.client)
    dyn = p.getDynamicsInfo(body, -1, physicsClientId=sim.client)
    return matrix_from_pose(np.asarray(pos), np.asarray(orn)) @ invert(matrix_from_pose(dyn[3], dyn[4]))


def test_a_ray_down_the_mug_reaches_its_floor_not_its_rim(mug_sim):
    mug = mug_sim.world_from_mug
    axis, bottom = mug[:3, 3], float(mug[2, 3])
    hit = mug_sim._p.rayTest(
        [axis[0], axis[1], bottom + 0.2], [axis[0], axis[1], bottom - 0.01], physicsClientId=mug_sim.client
    )[0]
    assert hit[0] == mug_sim.world.bodies[0].body_id
    # the floor's top is 9-10 mm up (a solid mug answers at its 10 cm rim)
    assert hit[3][2] - bottom == pytest.approx(0.0095, abs=0.002)


def test_mug_mass_centre_is_inside_its_walls(mug_sim):
    """The URDF's centre of mass is the bottom and its inertia 1 kg m^2; the hollow mug's are its shape's."""
    p, body = mug_sim._p, mug_sim.world.bodies[0].body_id
    info = p.getDynamicsInfo(body, -1, physicsClientId=mug_sim.client)
    mass, inertia, com = info[0], np.asarray(info[2]), np.asarray(info[3])
    assert mass == pytest.approx(1.0)
    assert 0.02 < com[2] < 0.05  # above the floor, below the rim's middle
    assert np.all(inertia < 0.01) and np.all(inertia > 1e-4)


@pytest.mark.parametrize("side_deg", [0.0, 180.0])
def test_top_down_rim_grasp_holds_the_mug(mug_sim, gripper, side_deg):
    """One finger inside the cup, one outside, across the 2 mm wall away from the handle (+y)."""
    mug = mug_sim.world_from_mug
    a = np.radians(side_deg)
    radial = mug[:3, :3] @ np.array([np.cos(a), np.sin(a), 0.0])
    tips_below_origin = gripper.finger_length_m - gripper.tcp_depth_m
    origin = mug[:3, 3] + (MUG_RADIUS_M - 0.001) * radial
    origin[2] = mug[2, 3] + MUG_HEIGHT_M - 0.045 + tips_below_origin  # fingertips 4.5 cm below the rim
    grasp = grasp_from_pose(top_down_pose(origin, radial[:2]), 0.022, gripper.approach_distance_m)
    out = mug_sim.check(grasp, target="mug")
    assert out.success, out.message
    assert out.lift_m >= 0.05


def test_mass_properties_of_a_cube():
    cube = np.array([[x, y, z] for x in (0, 0.1) for y in (0, 0.1) for z in (0, 0.1)])
    com, inertia = mass_properties([cube, cube + [0.05, 0, 0]], 2.0, voxel_m=0.005)
    # the union is a 0.15 x 0.1 x 0.1 box (the overlap counts once)
    np.testing.assert_allclose(com, [0.075, 0.05, 0.05], atol=1e-9)
    expected = 2.0 / 12 * np.array([0.1**2 + 0.1**2, 0.15**2 + 0.1**2, 0.15**2 + 0.1**2])
    np.testing.assert_allclose(np.diag(inertia), expected, rtol=0.03)


def test_off_balance_teddy_is_placed_at_rest():
    """The scale-2 teddy stands off balance as the catalogue uprights it and tipped over in the
    physics check (its surface moved up to 8 cm): the renders then showed a teddy where the physics
    had none. Placed in the rotation it settles in, gravity leaves it (nearly) where it is drawn."""
    teddy = ObjectSpec(name="teddy", caption="a brown teddy bear", scale=2.0, xy_m=(0.0, 0.0), yaw_deg=-100.0)
    with GraspSim(SimSpec(objects=(teddy,))) as sim:
        body = sim.world.bodies[0]
        moved = np.linalg.norm(sim.rest_vertices["teddy"] - body.vertices, axis=1)
    assert moved.max() < 0.015, f"the teddy's surface moved up to {moved.max() * 100:.1f} cm while settling"


def test_generated_collision_files_stay_in_the_users_cache(tmp_path, monkeypatch):
    """Regression: the hollow mug's URDF was written under the shared system temp dir, where another
    user could plant a file under its predictable content-addressed name before us."""
    import tempfile

    from m3_core.sim.spec import CATALOG
    from m3_core.sim.world import ObjectSpec as _ObjectSpec
    from m3_core.sim.world import resolve_urdf

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "shared_tmp"))
    (tmp_path / "shared_tmp").mkdir()
    name = next(k for k, v in CATALOG.items() if "hollow" in v)
    urdf = resolve_urdf(_ObjectSpec(name=name))
    assert urdf.startswith(str(tmp_path / "cache" / "m3_grasp" / "sim_collision"))
    assert not any((tmp_path / "shared_tmp").iterdir())
