"""The physics grasp check (m3_core.sim.grasp_check) on a small real pybullet scene, its grasp JSON
forms, and `m3 sim grasp`.

The scene: the duck and the lego brick on the table, far apart. Grasps come from the ground-truth
meshes (top-down across the narrow side), so a failure of the good grasp is the gripper model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pybullet", reason="the physics check needs pybullet")

from m3_core.geometry.se3 import matrix_from_pose  # noqa: E402
from m3_core.grasp.types import Grasp  # noqa: E402
from m3_core.robot import GripperConfig, load_robot_config  # noqa: E402
from m3_core.sim.grasp_check import GraspSim  # noqa: E402
from m3_core.sim.grasp_json import grasp_from_json, grasp_to_json  # noqa: E402
from m3_core.sim.grasp_truth import grasp_from_pose, top_down_grasp, top_down_pose  # noqa: E402
from m3_core.sim.spec import ObjectSpec, SimSpec  # noqa: E402

DUCK = ObjectSpec(name="duck", caption="a yellow rubber duck", xy_m=(0.0, 0.0), yaw_deg=-60.0)
LEGO = ObjectSpec(
    name="lego",
    caption="a blue lego brick",
    rgba=(0.1, 0.35, 0.85, 1.0),
    scale=1.5,
    xy_m=(0.3, 0.2),
    yaw_deg=20.0,
)
SPEC = SimSpec(objects=(DUCK, LEGO))


@pytest.fixture(scope="module")
def gripper() -> GripperConfig:
    return load_robot_config().gripper


@pytest.fixture(scope="module")
def sim(gripper):
    with GraspSim(SPEC, gripper) as s:
        yield s


def _duck_grasp(sim, gripper) -> Grasp:
    return top_down_grasp(sim.rest_vertices["duck"], sim.world.table_top_z, gripper)


def _shifted(grasp: Grasp, offset: np.ndarray) -> Grasp:
    g, pre = grasp.world_from_grasp.copy(), grasp.world_from_pregrasp.copy()
    g[:3, 3] += offset
    pre[:3, 3] += offset
    return Grasp(g, grasp.width_m, pre, grasp.quality)


def test_ground_truth_grasp_lifts_and_holds_the_duck(sim, gripper):
    grasp = _duck_grasp(sim, gripper)
    # closing across the duck's narrow side, which is not a world axis at yaw -60: the palm must
    # take the grasp's orientation, not the world's
    assert abs(grasp.world_from_grasp[0, 0]) < 0.99
    out = sim.check(grasp, target="duck")
    assert out.success, out.message
    assert out.held == "duck" and out.reason == ""
    assert out.lift_m >= 0.05
    assert 0.0 < out.finger_gap_m < grasp.width_m  # closed on the duck, not on air
    assert abs(out.lifts_m["lego"]) < 0.01


def test_grasp_10cm_beside_the_object_holds_nothing(sim, gripper):
    grasp = _duck_grasp(sim, gripper)
    beside = _shifted(grasp, 0.10 * grasp.world_from_grasp[:3, 1])  # along the fingers' width axis
    out = sim.check(beside, target="duck")
    assert not out.success
    assert out.held is None
    assert out.reason == "nothing_held", out.message
    assert out.lifts_m["duck"] < 0.01


def test_grasp_narrower_than_the_object_fails(sim, gripper):
    grasp = _duck_grasp(sim, gripper)
    narrow = Grasp(grasp.world_from_grasp, 0.03, grasp.world_from_pregrasp, grasp.quality)  # duck: ~5.8 cm
    out = sim.check(narrow, target="duck")
    assert not out.success
    assert out.reason in ("blocked", "nothing_held", "dropped"), out.message


def test_width_beyond_the_opening_is_refused_without_physics(sim, gripper):
    grasp = _duck_grasp(sim, gripper)
    wide = Grasp(grasp.world_from_grasp, gripper.max_opening_m + 0.01, grasp.world_from_pregrasp, 0.0)
    out = sim.check(wide, target="duck")
    assert (out.success, out.reason) == (False, "too_wide")
    assert "opens 8.0 cm" in out.message


def test_gripper_starting_in_collision_is_reported(sim, gripper):
    grasp = _duck_grasp(sim, gripper)
    # pre-grasp pose = the grasp pose itself: the fingers start around/inside the duck
    inside = Grasp(grasp.world_from_grasp, 0.03, grasp.world_from_grasp, 0.0)
    out = sim.check(inside, target="duck")
    assert (out.success, out.reason) == (False, "start_collision")
    assert "duck" in out.touching_at_start
    assert out.lifts_m["duck"] == pytest.approx(0.0, abs=1e-6)  # nothing was moved


def test_grasp_of_another_object_is_a_wrong_object(sim, gripper):
    out = sim.check(_duck_grasp(sim, gripper), target="lego")
    assert (out.success, out.held, out.reason) == (False, "duck", "wrong_object")


def test_checks_are_repeatable_from_the_settled_scene(sim, gripper):
    grasp = _duck_grasp(sim, gripper)
    first = sim.check(grasp, target="duck").lift_m
    sim.check(_shifted(grasp, np.array([0.0, 0.0, -0.2])), target="duck")  # disturbs the scene
    assert sim.check(grasp, target="duck").lift_m == pytest.approx(first, abs=1e-6)


def test_unknown_target_is_a_value_error(sim, gripper):
    with pytest.raises(ValueError, match="not in the scene.*duck"):
        sim.check(_duck_grasp(sim, gripper), target="banana")


def test_tray_tilted_up_by_its_rim_is_not_a_lift(gripper):
    # the tray (0.3 kg, 24 cm) held by one wall pivots on its far edge: its centre rises > 5 cm
    # while it still rests on the table, which must not count as held
    tray = ObjectSpec(name="tray", caption="a dark grey tray", scale=0.4, xy_m=(0.0, 0.0), yaw_deg=0.0)
    with GraspSim(SimSpec(objects=(tray,)), gripper) as s:
        v = s.rest_vertices["tray"]
        lo, hi = v.min(axis=0), v.max(axis=0)
        rim = np.array([lo[0] + 0.013, (lo[1] + hi[1]) / 2, hi[2] - 0.02])
        out = s.check(grasp_from_pose(top_down_pose(rim, np.array([1.0, 0.0])), 0.05, 0.1), target="tray")
    assert out.lifts_m["tray"] >= 0.05
    assert (out.success, out.reason) == (False, "not_clear"), out.message


# -- grasp JSON ------------------------------------------------------------------------------------


def _grasp() -> Grasp:
    pose = matrix_from_pose(np.array([0.1, -0.2, 0.7]), np.array([1.0, 0.0, 0.0, 0.0]))
    return grasp_from_pose(pose, 0.05, 0.1)


def test_grasp_json_round_trip_and_forms():
    g = _grasp()
    back = grasp_from_json(grasp_to_json(g), approach_distance_m=0.5)
    np.testing.assert_allclose(back.world_from_grasp, g.world_from_grasp, atol=1e-9)
    np.testing.assert_allclose(back.world_from_pregrasp, g.world_from_pregrasp, atol=1e-9)
    assert back.width_m == g.width_m
    # flat form
    pos, quat = g.world_from_grasp[:3, 3].tolist(), [1.0, 0.0, 0.0, 0.0]
    flat = grasp_from_json({"position": pos, "quat_xyzw": quat, "width_m": 0.05}, 0.1)
    np.testing.assert_allclose(flat.world_from_pregrasp, g.world_from_pregrasp, atol=1e-9)
    # matrix form, no pre-grasp: backed off along -z (top-down: up) by the approach distance
    m = grasp_from_json({"world_from_grasp": g.world_from_grasp.tolist(), "width_m": 0.04}, 0.1)
    np.testing.assert_allclose(m.world_from_pregrasp[:3, 3], [0.1, -0.2, 0.8], atol=1e-9)
    # a query answer with ranked grasps
    answer = {"found": True, "grasps": [grasp_to_json(g), {**grasp_to_json(g), "width_m": 0.07}]}
    assert grasp_from_json(answer, 0.1, index=1).width_m == 0.07
    # the older answer: pose + extent -> width along the closing axis (+x = world x here) + margin
    old = {
        "found": True,
        "grasp_position": [0.1, -0.2, 0.7],
        "grasp_quat_xyzw": [1, 0, 0, 0],
        "extent": [0.05, 0.2, 0.1],
    }
    assert grasp_from_json(old, 0.1).width_m == pytest.approx(0.065)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"found": False, "message": "nothing like 'banana'"}, "found nothing.*banana"),
        ({"found": True, "grasps": []}, "no feasible grasp"),
        ({"position": [0, 0, 1], "quat_xyzw": [0, 0, 0, 1]}, "width_m"),
        ({"position": [0, 0], "quat_xyzw": [0, 0, 0, 1], "width_m": 0.05}, "3 finite numbers"),
        ({"world_from_grasp": np.diag([2.0, 1, 1, 1]).tolist(), "width_m": 0.05}, "not a rigid transform"),
        ({"width_m": 0.05}, "no pose"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_grasp_json_says_what_is_wrong(data, match):
    with pytest.raises(ValueError, match=match):
        grasp_from_json(data, 0.1)


# -- m3 sim grasp ------------------------------------------------------------------------------------


def _write_spec(path: Path) -> Path:
    path.write_text(
        "objects:\n"
        "  - {name: duck, caption: a yellow rubber duck, xy_m: [0.0, 0.0], yaw_deg: -60}\n"
        "camera: {shadows: false}\n"
    )
    return path


def test_m3_sim_grasp_cli_holds_and_draws(tmp_path, sim, gripper, capsys):
    from m3_ros.cli import main

    grasp_file = tmp_path / "grasp.json"
    grasp_file.write_text(json.dumps(grasp_to_json(_duck_grasp(sim, gripper))))
    spec = _write_spec(tmp_path / "duck.yaml")
    picture = tmp_path / "grasp.png"
    rc = main(
        [
            "sim",
            "grasp",
            str(grasp_file),
            "--spec",
            str(spec),
            "--target",
            "duck",
            "--picture",
            str(picture),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["success"] and out["held"] == "duck"
    import cv2

    image = cv2.imread(str(picture))
    assert image is not None and image.shape[1] >= 3 * 400  # pre-grasp, closed, held side by side


def test_m3_sim_grasp_cli_bad_input_is_one_line(tmp_path, capsys):
    from m3_ros.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["sim", "grasp", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("m3 sim grasp: the grasp is not valid JSON") and "\n" not in err
    assert main(["sim", "grasp", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the grasp JSON" in capsys.readouterr().err


def test_m3_sim_grasp_on_a_bags_ground_truth_and_a_stale_one(tmp_path, sim, gripper, capsys):
    from m3_core.sim.generate import generate, gt_dir_for, with_overrides
    from m3_core.sim.spec import load_spec
    from m3_ros.cli import main

    spec, folder = load_spec(_write_spec(tmp_path / "duck.yaml"))
    bag = tmp_path / "bag"
    generate(with_overrides(spec, frames=2, size=(64, 48)), folder, bag, workers=1)
    gt = gt_dir_for(bag)
    grasp_file = tmp_path / "grasp.json"
    grasp_file.write_text(json.dumps(grasp_to_json(_duck_grasp(sim, gripper))))
    assert main(["sim", "grasp", str(grasp_file), "--gt", str(gt), "--target", "duck"]) == 0
    assert capsys.readouterr().out.startswith("held: duck lifted")
    # a ground truth that does not match the rebuilt scene is refused, not judged
    objects = json.loads((gt / "objects.json").read_text())
    objects["objects"][0]["box_center_world"][0] += 0.05
    (gt / "objects.json").write_text(json.dumps(objects))
    assert main(["sim", "grasp", str(grasp_file), "--gt", str(gt)]) == 2
    assert "duck is rebuilt 5.0 cm from where" in capsys.readouterr().err
