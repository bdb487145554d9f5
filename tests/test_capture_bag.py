"""Offline capture: `m3 bag2scene` on a synthetic bag and on the simulator's bag; `m3 colmap-align`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from m3_core.capture import KeyframeConfig
from m3_core.capture.bag2scene import bag_to_scene
from m3_core.capture.colmap_align import align_camera_poses
from m3_core.capture.keyframes import rotation_angle_deg
from m3_core.geometry.sim3 import Sim3
from m3_core.robot import load_robot_config
from m3_core.scene import Frame, load_scene, read_colmap_poses, write_colmap_model
from m3_ros.cli import main as m3_main
from tests.conftest_capture import (
    SyntheticBagSpec,
    armbase_from_ee,
    small_sim_bag_path,
    world_from_lidar,
    write_synthetic_bag,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_bag(tmp_path_factory) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp("capture_bag") / "bag")


@pytest.fixture(scope="session")
def synthetic_scene(synthetic_bag, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("capture_scene") / "scene"
    session = bag_to_scene(synthetic_bag, out)
    return out, session


def true_world_from_camera(stamp_ns: int) -> np.ndarray:
    """Eq. 3 from the synthetic trajectory's closed form (odometry and ee stamps are offset in the bag)."""
    spec, robot = SyntheticBagSpec(), load_robot_config()
    e = robot.extrinsics.chain()
    t_s = (stamp_ns - spec.start_ns) * 1e-9
    return (
        world_from_lidar(t_s, spec) @ e.lidar_from_armbase @ armbase_from_ee(t_s - 0.003) @ e.ee_from_camera
    )


def test_bag2scene_keeps_sharp_frames_with_depth_and_correct_poses(synthetic_scene):
    out, session = synthetic_scene
    spec = SyntheticBagSpec()
    stats = session.stats
    assert stats.received_color == stats.received_depth == stats.paired == spec.frames
    assert stats.dropped["blurred"] >= 1 and stats.dropped["depth_invalid"] == 1
    assert 5 <= stats.kept <= 15
    scene = load_scene(out)
    assert len(scene) == stats.kept and scene.source == "bag"
    frame_stamps = [spec.start_ns + 10_000_000 + round(i / spec.fps * 1e9) for i in range(spec.frames)]
    kept_idx = [frame_stamps.index(f.stamp_ns) for f in scene.frames]
    assert not set(kept_idx) & (set(spec.blurred) | set(spec.no_depth))
    # poses: interpolated chain vs. the closed form (odometry 20 Hz, ee 50 Hz): mm / sub-degree
    for f in scene.frames:
        true = true_world_from_camera(f.stamp_ns)
        assert np.linalg.norm(f.world_from_camera[:3, 3] - true[:3, 3]) < 0.004
        assert rotation_angle_deg(f.world_from_camera, true) < 0.5
    # consecutive keyframes satisfy the motion gate
    kf = KeyframeConfig()
    for a, b in zip(scene.frames, scene.frames[1:]):
        moved = np.linalg.norm(a.world_from_camera[:3, 3] - b.world_from_camera[:3, 3])
        turned = rotation_angle_deg(a.world_from_camera, b.world_from_camera)
        dt_s = (b.stamp_ns - a.stamp_ns) * 1e-9
        assert moved >= kf.min_translation_m or turned >= kf.min_rotation_deg or dt_s >= kf.max_interval_s
    # depth kept bit-exact (16UC1 mm in, 16-bit PNG mm out)
    i = kept_idx[1]
    rows = np.arange(spec.height, dtype=np.float64)[:, None]
    expected_mm = np.broadcast_to(800 + 3 * rows + i, (spec.height, spec.width))
    np.testing.assert_allclose(scene.read_depth_m(1) * 1000, expected_mm, atol=1e-3)


def test_scene_sparse_model_opens_in_pycolmap(synthetic_scene):
    import pycolmap

    out, _ = synthetic_scene
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    scene = load_scene(out)
    assert rec.num_images() == len(scene) and rec.num_cameras() == 1
    cam = next(iter(rec.cameras.values()))
    assert str(cam.model).endswith("PINHOLE") and (cam.width, cam.height) == (160, 120)
    by_name = {img.name: img for img in rec.images.values()}
    for f in scene.frames:
        centre = by_name[f.image_path.name].projection_center()
        np.testing.assert_allclose(centre, f.world_from_camera[:3, 3], atol=1e-9)


def test_bag2scene_is_deterministic(synthetic_bag, synthetic_scene, tmp_path):
    out, _ = synthetic_scene
    bag_to_scene(synthetic_bag, tmp_path / "again")
    a, b = load_scene(out), load_scene(tmp_path / "again")
    assert [f.stamp_ns for f in a.frames] == [f.stamp_ns for f in b.frames]
    for fa, fb in zip(a.frames, b.frames):
        np.testing.assert_array_equal(fa.world_from_camera, fb.world_from_camera)


def test_bag2scene_drops_future_stamped_image_and_odometry_alone(synthetic_scene, tmp_path):
    """A bag with one colour image and one odometry message stamped 10 s in the future (beside the
    good ones) keeps exactly the clean bag's keyframes. Before, each outlier was taken as progress
    and the next good messages as a clock jump back: 2 jumps, buffers cleared, 6 of 8 kept."""
    bag = write_synthetic_bag(tmp_path / "bag", SyntheticBagSpec(future_outlier_s=10.0))
    session = bag_to_scene(bag, tmp_path / "scene")
    d = session.stats.dropped
    assert session.stats.clock_jumps == 0 and d["stamp_outlier"] == 1 and d["tf_stamp_outlier"] == 1
    assert d["no_transform"] == 0 and d["unpaired"] == 0
    clean, outliers = load_scene(synthetic_scene[0]), load_scene(tmp_path / "scene")
    assert [f.stamp_ns for f in outliers.frames] == [f.stamp_ns for f in clean.frames]
    for fa, fb in zip(clean.frames, outliers.frames):
        np.testing.assert_array_equal(fa.world_from_camera, fb.world_from_camera)


def test_bag2scene_cli(synthetic_bag, tmp_path, capsys):
    out = tmp_path / "cli_scene"
    assert (
        m3_main(
            ["bag2scene", str(synthetic_bag), str(out), "--min-translation", "0.1", "--max-interval", "0"]
        )
        == 0
    )
    assert "keyframes" in capsys.readouterr().out
    few = len(load_scene(out))
    assert m3_main(["bag2scene", str(synthetic_bag), str(out)]) == 2  # exists, no --overwrite
    assert "already holds a scene" in capsys.readouterr().out
    assert m3_main(["bag2scene", str(synthetic_bag), str(out), "--overwrite"]) == 0
    assert len(load_scene(out)) > few  # default 5 cm gate keeps more than the 10 cm one


def test_bag2scene_reports_wrong_topics(synthetic_bag, tmp_path, capsys):
    robot_yaml = tmp_path / "robot.yaml"
    robot_yaml.write_text("topics:\n  color: /wrong/color\n")
    assert m3_main(["bag2scene", str(synthetic_bag), str(tmp_path / "s"), "--config", str(robot_yaml)]) == 2
    assert "/wrong/color" in capsys.readouterr().out


# -- the simulator's bag ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def sim_bag(tmp_path_factory) -> Path:
    return small_sim_bag_path(tmp_path_factory)


def test_bag2scene_on_sim_bag_matches_ground_truth_poses(sim_bag, tmp_path):
    from m3_core.sim import gt_dir_for, read_cameras

    out = tmp_path / "sim_scene"
    assert m3_main(["bag2scene", str(sim_bag), str(out)]) == 0
    assert not (out / "masks").exists()  # the capture tools never read the simulator's ground truth
    assert m3_main(["sim", "masks", str(out), str(gt_dir_for(sim_bag))]) == 0
    scene = load_scene(out)
    gt = {
        f["stamp_ns"]: np.array(f["world_from_camera"]) for f in read_cameras(gt_dir_for(sim_bag))["frames"]
    }
    assert len(scene) >= 5
    for f in scene.frames:
        assert f.stamp_ns in gt, "keyframe stamps are camera stamps of the bag"
        assert np.linalg.norm(f.world_from_camera[:3, 3] - gt[f.stamp_ns][:3, 3]) < 0.01
        assert rotation_angle_deg(f.world_from_camera, gt[f.stamp_ns]) < 1.0
    assert (out / "masks" / "captions.json").exists()
    assert scene.read_mask(0) is not None


# -- COLMAP alignment --------------------------------------------------------------------------


def robot_from_colmap_truth() -> Sim3:
    return Sim3(
        2.5, Rotation.from_euler("xyz", [20, -35, 110], degrees=True).as_matrix(), np.array([1.0, -2.0, 0.5])
    )


def colmap_poses_from(robot_poses: dict[str, np.ndarray], outliers: tuple[str, ...]) -> dict[str, np.ndarray]:
    """What a COLMAP reconstruction of the same images would hold: robot poses in another Sim(3) frame."""
    s = robot_from_colmap_truth()
    inverse = Sim3(1 / s.scale, s.rotation.T, -(s.rotation.T @ s.translation) / s.scale)
    out = {n: inverse.apply_to_pose(T) for n, T in robot_poses.items()}
    for n in outliers:  # e.g. a badly registered image
        out[n] = out[n].copy()
        out[n][:3, 3] += np.array([0.3, -0.2, 0.25])
    return out


def test_align_recovers_sim3_despite_outliers():
    rng = np.random.default_rng(0)
    robot = {}
    for i in range(20):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
        T[:3, 3] = rng.uniform(-1, 1, 3)
        robot[f"frame_{i:06d}.png"] = T
    colmap = colmap_poses_from(robot, outliers=("frame_000003.png", "frame_000011.png"))
    a = align_camera_poses(colmap, robot, inlier_threshold_m=0.05)
    truth = robot_from_colmap_truth()
    assert a.robot_from_colmap.scale == pytest.approx(truth.scale, rel=1e-9)
    np.testing.assert_allclose(a.robot_from_colmap.rotation, truth.rotation, atol=1e-9)
    np.testing.assert_allclose(a.robot_from_colmap.translation, truth.translation, atol=1e-9)
    assert [n for n, ok in zip(a.names, a.inliers) if not ok] == ["frame_000003.png", "frame_000011.png"]
    assert a.centre_residuals_m[a.inliers].max() < 1e-9 and a.rotation_residuals_deg[a.inliers].max() < 1e-6
    assert "outliers 2" in a.summary()
    with pytest.raises(ValueError, match="common"):
        align_camera_poses({"a.png": np.eye(4)}, robot)


def test_colmap_align_cli_rewrites_reconstruction_in_robot_frame(synthetic_scene, tmp_path, capsys):
    out, _ = synthetic_scene
    scene = load_scene(out)
    robot = {f.image_path.name: f.world_from_camera for f in scene.frames}
    names = sorted(robot)
    colmap = colmap_poses_from(robot, outliers=(names[2],))
    recon = tmp_path / "recon"
    write_colmap_model(
        recon,
        [
            Frame(f.name, f.stamp_ns, f.camera, colmap[f.image_path.name], f.image_path, None)
            for f in scene.frames
        ],
    )
    aligned = tmp_path / "aligned"
    assert m3_main(["colmap-align", str(out), str(recon), "--write", str(aligned)]) == 0
    printed = capsys.readouterr().out
    assert "scale 2.500000" in printed and "outliers 1" in printed and names[2] in printed
    back = read_colmap_poses(aligned)
    for n in names:
        if n != names[2]:
            np.testing.assert_allclose(back[n][1], robot[n], atol=1e-6)
    assert m3_main(["colmap-align", str(tmp_path / "nowhere"), str(recon)]) == 2


def test_scene_json_records_capture_stats(synthetic_scene):
    out, session = synthetic_scene
    meta = json.loads((out / "scene.json").read_text())
    assert meta["extra"]["capture_stats"]["kept"] == session.stats.kept
    assert meta["extra"]["capture_stats"]["dropped"]["depth_invalid"] == 1


@pytest.mark.slow
def test_colmap_align_on_a_real_pycolmap_sfm_of_sim_images(tmp_path_factory, capsys):
    """COLMAP_0 T_c0 end to end: pycolmap SfM of the scene's images, aligned to the chain's poses."""
    try:
        import pybullet  # noqa: F401

        import m3_core.sim  # noqa: F401
    except ImportError as err:
        pytest.skip(f"m3_core.sim / pybullet not importable ({err}); no sim images to reconstruct")
    work = tmp_path_factory.mktemp("capture_sfm")
    cmd = [sys.executable, "-m", "m3_ros.cli", "sim", "--out", str(work / "bag"), "--frames", "30"]
    proc = subprocess.run(
        cmd + ["--size", "320x240", "--no-progress"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert m3_main(["bag2scene", str(work / "bag"), str(work / "scene")]) == 0
    capsys.readouterr()
    code = m3_main(
        ["colmap-align", str(work / "scene"), "--run-sfm", str(work / "sfm"), "--write", str(work / "al")]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    matched = int(printed.split("cameras matched ")[1].split(",")[0])
    rms_m = float(printed.split("rms ")[1].split(" m")[0])
    assert matched >= 8 and rms_m < 0.02, printed
    # the rewritten reconstruction sits in the robot frame: its camera centres are the chain's
    robot = {f.image_path.name: f.world_from_camera for f in load_scene(work / "scene").frames}
    aligned = read_colmap_poses(work / "al")
    errors = [np.linalg.norm(T[:3, 3] - robot[n][:3, 3]) for n, (_c, T) in aligned.items()]
    assert np.median(errors) < 0.02
