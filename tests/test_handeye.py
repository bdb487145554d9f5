"""Hand-eye calibration from a scan: the solver on synthetic chains, the robot YAML it writes, and the
whole path on a small simulated scan whose published hand-eye is off by 1 cm and 2 deg."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from m3_core.capture.calibrate import robot_yaml_text, write_robot_yaml
from m3_core.capture.handeye import ChainSamples, HandEyeConfig, HandEyeError, correction, solve_hand_eye
from m3_core.config import config_dir
from m3_core.geometry.se3 import transform_from_rt
from m3_core.robot import load_robot_config
from m3_core.scene import SceneError, load_scene
from m3_ros.cli import main as m3_main

ROBOT_YAML = config_dir() / "robot_b1z1.yaml"
X_TRUE = load_robot_config(ROBOT_YAML).extrinsics.ee_from_camera.matrix()
Y_TRUE = load_robot_config(ROBOT_YAML).extrinsics.lidar_from_armbase.matrix()


def _T(rotvec, t) -> np.ndarray:
    return transform_from_rt(Rotation.from_rotvec(rotvec).as_matrix(), np.asarray(t, float))


def _off(dx_m=(0.006, -0.008, 0.0), deg=2.0) -> np.ndarray:
    """camera_from_wrong_camera: 1 cm and 2 deg (about the (1,1,1) axis) by default."""
    return _T(np.radians(deg) * np.ones(3) / np.sqrt(3), dx_m)


def _scan(n=50, seed=0, tilt_deg=0.0, outliers=0.2, scale=0.37, noise_m=5e-4, noise_deg=0.05):
    """Synthetic scan: the body walks an arc (yaw only, or also tilted), the arm moves the wrist about;
    'SfM' poses are the true camera poses in another world at another scale, noisy, some garbage."""
    rng = np.random.default_rng(seed)
    yaw = np.radians(np.linspace(-125, -55, n))
    L = np.stack(
        [
            _T(
                np.radians(tilt_deg) * rng.normal(size=3) * [1, 1, 0] + [0, 0, a],
                [np.cos(a), np.sin(a), 0.72],
            )
            for a in yaw
        ]
    )
    E = np.stack([_T(rng.normal(0, 0.4, 3), [0.4, 0.0, 0.2] + rng.normal(0, 0.08, 3)) for _ in range(n)])
    P = L @ Y_TRUE @ E @ X_TRUE
    R_w = Rotation.from_rotvec([0.3, -0.5, 1.0]).as_matrix()
    C = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        dR = Rotation.from_rotvec(rng.normal(0, np.radians(noise_deg), 3)).as_matrix()
        C[i, :3, :3] = R_w @ dR @ P[i, :3, :3]
        C[i, :3, 3] = scale * (R_w @ (P[i, :3, 3] + rng.normal(0, noise_m, 3))) + [1.0, -2.0, 0.5]
    bad = rng.choice(n, int(round(outliers * n)), replace=False)
    for i in bad:  # a mis-registered image: decimetres and tens of degrees off
        C[i] = C[i] @ _T(rng.normal(0, 0.5, 3), rng.normal(0, 0.2, 3))
    return ChainSamples([f"frame_{i:06d}" for i in range(n)], L, E, C), set(bad.tolist())


def test_recovers_known_hand_eye_with_noise_and_20_percent_outliers():
    samples, bad = _scan()
    res = solve_hand_eye(samples, X_TRUE @ _off(), Y_TRUE, HandEyeConfig(bootstrap=5))
    dt, angle = correction(X_TRUE, res.ee_from_camera)
    assert np.linalg.norm(dt) < 1e-3 and angle < 0.1, (dt, angle)
    assert {n for n, ok in zip(res.names, res.inliers) if not ok} == {samples.names[i] for i in bad}
    assert res.robot_from_other.scale == pytest.approx(1 / 0.37, rel=1e-3)
    std = res.std()
    # the stated 1-sigma is the right order of magnitude for 0.5 mm / 0.05 deg pose noise
    assert 1e-5 < std[3:6].max() < 1e-3 and 1e-3 < std[0:3].max() < 0.1
    assert np.all(np.isfinite(res.bootstrap_std[:6]))


def test_start_far_off_is_found_by_the_closed_form():
    """A hand-eye with a wrong axis convention (90 deg off) still converges."""
    samples, _ = _scan(outliers=0.0, seed=1)
    res = solve_hand_eye(samples, X_TRUE @ _T([np.pi / 2, 0, 0], [0.05, 0, 0]), Y_TRUE)
    dt, angle = correction(X_TRUE, res.ee_from_camera)
    assert np.linalg.norm(dt) < 1e-3 and angle < 0.1


def test_level_body_leaves_mount_yaw_and_height_to_the_yaml():
    """A body that only turns about the vertical cannot show the mount's yaw and height (and on an
    arc around one point, its sideways offset); the solver says so and keeps the YAML's values."""
    samples, _ = _scan(outliers=0.0, seed=2)
    y_wrong = Y_TRUE @ _T([0, 0, np.radians(1.0)], [0.004, 0.0, 0.01])
    res = solve_hand_eye(samples, X_TRUE, y_wrong)
    rot_z, trans_z = res.mount_constrained[2], res.mount_constrained[5]
    assert res.mount_constrained[[0, 1, 3]].all() and not rot_z and not trans_z
    # what the scan does show of the mount is corrected; the rest stays at the given value
    assert res.lidar_from_armbase[0, 3] == pytest.approx(Y_TRUE[0, 3], abs=1e-3)
    assert res.lidar_from_armbase[2, 3] == pytest.approx(y_wrong[2, 3], abs=1e-9)


def test_tilting_body_determines_the_whole_mount():
    samples, _ = _scan(outliers=0.0, seed=3, tilt_deg=8.0)
    y_wrong = Y_TRUE @ _T([0.01, -0.02, 0.03], [0.01, -0.01, 0.02])
    res = solve_hand_eye(samples, X_TRUE @ _off(), y_wrong)
    assert res.mount_constrained.all()
    dt, angle = correction(Y_TRUE, res.lidar_from_armbase)
    assert np.linalg.norm(dt) < 3e-3 and angle < 0.2
    dt, angle = correction(X_TRUE, res.ee_from_camera)
    assert np.linalg.norm(dt) < 1e-3 and angle < 0.1


def test_wrist_that_never_turns_is_a_clear_error():
    samples, _ = _scan(outliers=0.0)
    still = np.tile(samples.armbase_from_ee[:1], (len(samples.names), 1, 1))
    still[:, :3, 3] = samples.armbase_from_ee[:, :3, 3]  # moves, never rotates
    cam = samples.world_from_lidar @ Y_TRUE @ still @ X_TRUE
    cam[:, :3, :3] = cam[:1, :3, :3]  # and the body does not turn either
    flat = ChainSamples(samples.names, np.tile(np.eye(4), (len(cam), 1, 1)), still, cam)
    with pytest.raises(HandEyeError, match="turn"):
        solve_hand_eye(flat, X_TRUE, Y_TRUE)


def test_written_yaml_round_trips_and_keeps_the_rest(tmp_path):
    X_new, Y_new = X_TRUE @ _off(), Y_TRUE @ _T([0.01, 0.0, -0.02], [0.003, 0.0, 0.0])
    out = tmp_path / "robot.yaml"
    write_robot_yaml(ROBOT_YAML, out, {"ee_from_camera": X_new, "lidar_from_armbase": Y_new}, "test")
    back, orig = load_robot_config(out), load_robot_config(ROBOT_YAML)
    for name, T in (("ee_from_camera", X_new), ("lidar_from_armbase", Y_new)):
        dt, angle = correction(T, getattr(back.extrinsics, name).matrix())
        assert np.linalg.norm(dt) < 1e-6 and angle < 1e-6
    assert (back.topics, back.frames, back.gripper, back.arm) == (
        orig.topics,
        orig.frames,
        orig.gripper,
        orig.arm,
    )
    text = out.read_text()
    assert text.startswith("# test\n") and "CALIBRATE ME" in text  # comments survive
    # a YAML written in block style is re-emitted whole, and still reads back
    block = "extrinsics:\n  ee_from_camera:\n    position:\n    - 0.0\n    - 0.0\n    - 0.0\n"
    again = robot_yaml_text(block, {"ee_from_camera": X_new}, "n")
    (tmp_path / "b.yaml").write_text(again)
    dt, angle = correction(X_new, load_robot_config(tmp_path / "b.yaml").extrinsics.ee_from_camera.matrix())
    assert np.linalg.norm(dt) < 1e-6 and angle < 1e-6


# -- the whole path on a simulated scan -------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_scene(tmp_path_factory):
    """A 24-frame 128x96 scan rendered with the true extrinsics, whose bag (and so the scene's poses)
    carries a hand-eye 1 cm and 2 deg off."""
    pytest.importorskip("pybullet", reason="the simulator needs pybullet")
    pytest.importorskip("rosbags", reason="bag2scene needs rosbags")
    from m3_core.capture.bag2scene import bag_to_scene
    from m3_core.capture.keyframes import KeyframeConfig
    from m3_core.capture.session import CaptureConfig
    from m3_core.sim import generate, load_spec, with_overrides

    root = tmp_path_factory.mktemp("calib")
    wrong = root / "robot_wrong.yaml"
    write_robot_yaml(ROBOT_YAML, wrong, {"ee_from_camera": X_TRUE @ _off()}, "hand-eye off")
    spec, spec_dir = load_spec(config_dir() / "sim_default.yaml")
    spec = replace(with_overrides(spec, frames=24, size=(128, 96)), published_robot_config=str(wrong))
    generate(spec, spec_dir, root / "bag")
    every = KeyframeConfig(min_translation_m=0.0, min_rotation_deg=0.0, min_interval_s=0.0, min_sharpness=0.0)
    bag_to_scene(root / "bag", root / "scene", load_robot_config(ROBOT_YAML), CaptureConfig(keyframes=every))
    return root


def test_capture_records_the_chain_the_poses_were_made_with(sim_scene):
    meta = json.loads((sim_scene / "scene" / "scene.json").read_text())
    chain = meta["extra"]["pose_chain"]
    assert chain["frames"]["ee"] == "ee_link" and len(chain["keyframes"]) == len(meta["frames"]) == 24
    first = chain["keyframes"]["frame_000000"]
    dt, angle = correction(X_TRUE @ _off(), np.asarray(first["ee_from_camera"]))  # the bag's, not the truth
    assert np.linalg.norm(dt) < 1e-6 and angle < 1e-4
    gt = json.loads((sim_scene / "bag_gt" / "cameras.json").read_text())["frames"][0]
    assert np.allclose(first["armbase_from_ee"], gt["armbase_from_ee"], atol=1e-9)


def test_sim_scan_hand_eye_is_recovered(sim_scene, capsys):
    """`m3 calibrate` with the simulator's exact camera poses: the 1 cm / 2 deg error is found to
    <= 2 mm and <= 0.2 deg and the corrected YAML holds the true hand-eye."""
    out = sim_scene / "calibrated.yaml"
    rc = m3_main(
        [
            "calibrate",
            str(sim_scene / "scene"),
            "--poses",
            str(sim_scene / "bag_gt"),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ee_from_camera"]["rotation_change_deg"] == pytest.approx(2.0, abs=0.2)
    assert np.linalg.norm(summary["ee_from_camera"]["translation_change_mm"]) == pytest.approx(10.0, abs=2.0)
    dt, angle = correction(X_TRUE, load_robot_config(out).extrinsics.ee_from_camera.matrix())
    assert np.linalg.norm(dt) <= 2e-3 and angle <= 0.2, (dt, angle)


def test_scene_without_chain_links_is_a_one_line_error(sim_scene, tmp_path, capsys):
    scene = tmp_path / "old_scene"
    scene.mkdir()
    for sub in ("images", "sparse"):
        (scene / sub).symlink_to(sim_scene / "scene" / sub)
    meta = json.loads((sim_scene / "scene" / "scene.json").read_text())
    del meta["extra"]["pose_chain"]
    (scene / "scene.json").write_text(json.dumps(meta))
    rc = m3_main(
        ["calibrate", str(scene), "--poses", str(sim_scene / "bag_gt"), "--out", str(tmp_path / "y.yaml")]
    )
    out = capsys.readouterr().out
    assert rc == 2 and out.startswith("m3 calibrate:") and "bag2scene" in out and len(out.splitlines()) == 1
    assert not (tmp_path / "y.yaml").exists()


def test_apply_rewrites_the_scene_poses_to_the_truth(sim_scene, tmp_path):
    """--apply recomputes the keyframe poses with the calibrated hand-eye: before, every pose is off by
    the 1 cm / 2 deg error; after, they match the simulator's true poses."""
    scene = tmp_path / "scene"
    shutil.copytree(sim_scene / "scene", scene)
    gt = {
        f["stamp_ns"]: np.asarray(f["world_from_camera"])
        for f in json.loads((sim_scene / "bag_gt" / "cameras.json").read_text())["frames"]
    }

    def worst_error(root: Path) -> tuple[float, float]:
        errs = [correction(gt[f.stamp_ns], f.world_from_camera) for f in load_scene(root).frames]
        return max(np.linalg.norm(d) for d, _ in errs), max(a for _, a in errs)

    before = worst_error(scene)
    assert before[1] > 1.9  # the published hand-eye really was off
    rc = m3_main(
        ["calibrate", str(scene), "--poses", str(sim_scene / "bag_gt"), "--apply", "--bootstrap", "0"]
    )
    assert rc == 0
    after = worst_error(scene)
    assert after[0] < 2e-3 and after[1] < 0.2, (before, after)
    assert (scene / "robot_calibrated.yaml").exists()


def test_sfm_scale_from_depth_reads_metres_per_unit(tmp_path):
    """SfM points seen in a keyframe whose depth image is `scale` x their SfM depth give that scale."""
    pycolmap = pytest.importorskip("pycolmap", reason="SfM models are read with pycolmap")
    from m3_core.capture.calibrate import sfm_scale_from_depth
    from m3_core.geometry.camera import PinholeCamera
    from m3_core.scene import Frame, Scene, atomic_write_png, depth_png_from_m

    cam, scale = PinholeCamera(100.0, 100.0, 63.5, 47.5, 128, 96), 0.05
    rng = np.random.default_rng(0)
    uv = rng.uniform([8, 8], [120, 88], (300, 2)).astype(int) + 0.5  # COLMAP pixel centres
    z_sfm = rng.uniform(6.0, 12.0, 300)  # SfM units, camera at the SfM origin
    xyz = np.stack(
        [(uv[:, 0] - 0.5 - cam.cx) / cam.fx * z_sfm, (uv[:, 1] - 0.5 - cam.cy) / cam.fy * z_sfm, z_sfm], 1
    )
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(
        pycolmap.Camera(camera_id=1, model="PINHOLE", width=128, height=96, params=[100.0, 100.0, 64.0, 48.0])
    )
    image = pycolmap.Image(
        name="frame_000000.png", camera_id=1, image_id=1, points2D=[pycolmap.Point2D(p) for p in uv]
    )
    rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    for k, p in enumerate(xyz):
        track = pycolmap.Track()
        track.add_element(1, k)
        pid = rec.add_point3D(p, track, np.zeros(3, np.uint8))
        rec.image(1).set_point3D_for_point2D(k, pid)
    rec.write_binary(str(tmp_path))
    depth = np.zeros((96, 128))
    depth[(uv[:, 1] - 0.5).astype(int), (uv[:, 0] - 0.5).astype(int)] = scale * z_sfm
    atomic_write_png(tmp_path / "depth.png", depth_png_from_m(depth))
    frame = Frame("frame_000000", 0, cam, np.eye(4), tmp_path / "frame_000000.png", tmp_path / "depth.png")
    got = sfm_scale_from_depth(tmp_path, Scene(tmp_path, [frame]))
    assert got == pytest.approx(scale, rel=2e-3)  # depth PNGs hold millimetres
    with pytest.raises(SceneError, match="--scale free"):
        sfm_scale_from_depth(tmp_path, Scene(tmp_path, [replace(frame, depth_path=None)]))


def test_recording_again_with_the_calibrated_yaml_gives_the_true_poses(sim_scene, tmp_path):
    """The user's path after calibrating: the robot publishes the written YAML's extrinsics, the same
    scan is recorded again and `bag2scene` runs with that YAML; its keyframe poses are the true ones
    (<= 2 mm, 0.2 deg), where the scan recorded with the off YAML was more than 5 mm off."""
    from m3_core.capture.bag2scene import bag_to_scene
    from m3_core.capture.keyframes import KeyframeConfig
    from m3_core.capture.session import CaptureConfig
    from m3_core.sim import generate, load_spec, with_overrides

    calibrated = tmp_path / "robot_calibrated.yaml"
    rc = m3_main(
        [
            "calibrate",
            str(sim_scene / "scene"),
            "--poses",
            str(sim_scene / "bag_gt"),
            "--out",
            str(calibrated),
        ]
    )
    assert rc == 0
    spec, spec_dir = load_spec(config_dir() / "sim_default.yaml")
    spec = replace(with_overrides(spec, frames=24, size=(128, 96)), published_robot_config=str(calibrated))
    generate(spec, spec_dir, tmp_path / "bag")
    every = KeyframeConfig(min_translation_m=0.0, min_rotation_deg=0.0, min_interval_s=0.0, min_sharpness=0.0)
    bag_to_scene(
        tmp_path / "bag", tmp_path / "scene", load_robot_config(calibrated), CaptureConfig(keyframes=every)
    )

    def worst_error(scene_dir: Path, gt_dir: Path) -> tuple[float, float]:
        gt = {
            f["stamp_ns"]: np.asarray(f["world_from_camera"])
            for f in json.loads((gt_dir / "cameras.json").read_text())["frames"]
        }
        errs = [correction(gt[f.stamp_ns], f.world_from_camera) for f in load_scene(scene_dir).frames]
        assert len(errs) == 24
        return max(np.linalg.norm(d) for d, _ in errs), max(a for _, a in errs)

    off = worst_error(sim_scene / "scene", sim_scene / "bag_gt")
    again = worst_error(tmp_path / "scene", tmp_path / "bag_gt")
    assert off[0] > 5e-3, off  # the first recording really was off
    assert again[0] <= 2e-3 and again[1] <= 0.2, (off, again)
