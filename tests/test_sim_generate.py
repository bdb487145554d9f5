"""`m3 sim`: determinism, the bag's standard types and contract, bad specs, CLI, realism, and
write_scene_masks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from m3_core.geometry.camera import PinholeCamera
from m3_core.scene import Frame, Scene, SceneError, atomic_write_png, save_scene
from m3_core.sim import (
    config_dir,
    generate,
    gt_dir_for,
    load_spec,
    read_cameras,
    read_mask,
    write_scene_masks,
)
from m3_core.sim.cli import add_arguments, run
from m3_core.sim.spec import ObjectSpec
from tests.conftest_sim import ROBOT, image_array, make_tiny, read_bag, stamp_ns

DEFAULT = config_dir() / "sim_default.yaml"


@pytest.fixture(scope="module")
def tiny_bag(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim_gen") / "bag"
    make_tiny(out)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_scene(tiny_bag, tmp_path):
    again = tmp_path / "again"
    make_tiny(again)
    assert _files(tiny_bag) == _files(again)
    assert _files(gt_dir_for(tiny_bag)) == _files(gt_dir_for(again))
    # the default spec fixes object poses, so another seed only changes random parts: use a spec
    # with random placement to see the seed act
    spec, spec_dir = load_spec(DEFAULT)
    spec = replace(spec, objects=tuple(replace(o, xy_m=None, yaw_deg=None) for o in spec.objects))
    spec = replace(spec, objects=tuple(o for o in spec.objects if o.name != "tray"))
    from m3_core.sim import with_overrides

    a = generate(with_overrides(spec, frames=2, size=(64, 48), seed=1), spec_dir, tmp_path / "s1")
    b = generate(with_overrides(spec, frames=2, size=(64, 48), seed=2), spec_dir, tmp_path / "s2")
    ca = json.loads((a.gt_dir / "objects.json").read_text())["objects"][0]["box_center_world"]
    cb = json.loads((b.gt_dir / "objects.json").read_text())["objects"][0]["box_center_world"]
    assert ca != cb


def test_bag_topics_types_frames_and_encodings(tiny_bag):
    robot = yaml.safe_load(ROBOT.read_text())
    topics, frames = robot["topics"], robot["frames"]
    meta = yaml.safe_load((tiny_bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap" and meta["version"] == 8
    msgs = read_bag(tiny_bag)
    assert set(msgs) == {
        "/tf_static",
        topics["odometry"],
        topics["ee_pose"],
        topics["camera_info"],
        topics["color"],
        topics["depth"],
    }
    assert "/tf" not in msgs  # odom->lidar and arm_base->ee come from the pose-chain node
    ((_, tf_static),) = msgs["/tf_static"]
    pairs = {(t.header.frame_id, t.child_frame_id) for t in tf_static.transforms}
    assert pairs == {(frames["lidar"], frames["arm_base"]), (frames["ee"], frames["camera"])}
    color = [m for _, m in msgs[topics["color"]]]
    depth = [m for _, m in msgs[topics["depth"]]]
    assert [c.encoding for c in color] == ["rgb8"] * 8 and [d.encoding for d in depth] == ["16UC1"] * 8
    assert all(c.header.frame_id == frames["camera"] for c in color + depth)
    assert [stamp_ns(c.header) for c in color] == [stamp_ns(d.header) for d in depth]
    d0 = image_array(depth[0])
    assert d0.shape == (120, 160) and (d0 > 0).mean() > 0.5 and 100 < np.median(d0[d0 > 0]) < 2000
    rgb = image_array(color[0])
    assert rgb.shape == (120, 160, 3) and rgb.std() > 10
    odom = [m for _, m in msgs[topics["odometry"]]]
    assert odom[0].header.frame_id == frames["world"] and odom[0].child_frame_id == frames["lidar"]
    ee = [m for _, m in msgs[topics["ee_pose"]]]
    assert ee[0].header.frame_id == frames["arm_base"]
    # 15 Hz camera, 30 Hz poses over the same span; log times in order
    assert len(odom) == len(ee) == 16
    for records in msgs.values():
        times = [t for t, _ in records]
        assert times == sorted(times)


def test_gt_masks_match_frames_and_name_objects(tiny_bag):
    gt = gt_dir_for(tiny_bag)
    cams = read_cameras(gt)
    objects = json.loads((gt / "objects.json").read_text())["objects"]
    assert [o["id"] for o in objects] == list(range(1, len(objects) + 1))
    by_name = {o["name"]: o for o in objects}
    assert (
        by_name["duck"]["caption"] == "a yellow rubber duck" and "rubber ducky" in by_name["duck"]["synonyms"]
    )
    seen = set()
    for fr in cams["frames"]:
        ids = read_mask(gt, fr["stamp_ns"])
        assert ids.dtype == np.uint16 and ids.shape == (120, 160)
        seen |= set(np.unique(ids).tolist())
    assert seen >= {1, 2, 3, 4, 5, 6}


def _scene_from_gt(tiny_bag: Path, root: Path, size: tuple[int, int], extra_stamp: int = 0) -> Path:
    """A scene dir with three of the bag's frames (what capture/bag2scene would write)."""
    msgs = read_bag(tiny_bag)
    robot = yaml.safe_load(ROBOT.read_text())
    cams = {fr["stamp_ns"]: fr for fr in read_cameras(gt_dir_for(tiny_bag))["frames"]}
    frames = []
    for k, (_, msg) in enumerate(msgs[robot["topics"]["color"]][:6:2]):
        s = stamp_ns(msg.header)
        rgb = cv2.resize(image_array(msg), size, interpolation=cv2.INTER_AREA)
        name = f"frame_{k:06d}"
        atomic_write_png(root / "images" / f"{name}.png", rgb)
        cam = PinholeCamera(385.0 / 4, 385.0 / 4, 79.5, 59.5, 160, 120).scaled(*size)
        frames.append(
            Frame(
                name,
                s + extra_stamp,
                cam,
                np.asarray(cams[s]["world_from_camera"]),
                root / "images" / f"{name}.png",
                None,
            )
        )
    save_scene(Scene(root=root, frames=frames, source="sim"))
    return root


def test_write_scene_masks_copies_gt_masks_and_captions(tiny_bag, tmp_path):
    from m3_core.scene import load_scene

    root = _scene_from_gt(tiny_bag, tmp_path / "scene", (160, 120))
    assert write_scene_masks(root, gt_dir_for(tiny_bag)) == 3
    scene = load_scene(root)
    for i, fr in enumerate(scene.frames):
        ids, captions = scene.read_mask(i)
        np.testing.assert_array_equal(ids, read_mask(gt_dir_for(tiny_bag), fr.stamp_ns))
        assert set(captions) == set(np.unique(ids).tolist()) - {0}
        assert "a yellow rubber duck" in captions.values()


def test_write_scene_masks_resizes_and_rejects_foreign_frames(tiny_bag, tmp_path):
    from m3_core.scene import load_scene

    root = _scene_from_gt(tiny_bag, tmp_path / "small", (80, 60))
    write_scene_masks(root, gt_dir_for(tiny_bag))
    ids, _ = load_scene(root).read_mask(0)
    assert ids.shape == (60, 80)
    other = _scene_from_gt(tiny_bag, tmp_path / "other", (160, 120), extra_stamp=20_000_000)
    with pytest.raises(SceneError, match="no ground-truth mask"):
        write_scene_masks(other, gt_dir_for(tiny_bag))
    assert not (other / "masks").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: replace(s, objects=(*s.objects, ObjectSpec(name="unicorn", caption="a unicorn"))),
            "unknown object",
        ),
        (
            lambda s: replace(s, objects=(replace(s.objects[0], xy_m=(0.74, 0.0)), *s.objects[1:])),
            "off the table",
        ),
        (lambda s: replace(s, trajectory=replace(s.trajectory, body_radius_m=1.6)), "unreachable"),
        (
            lambda s: replace(s, trajectory=replace(s.trajectory, target_xyz_m=(0.0, 3.0, 0.0))),
            "looks at nothing",
        ),
        (lambda s: replace(s, objects=()), "no objects"),
        (
            lambda s: replace(s, objects=(replace(s.objects[0], xy_m=s.objects[2].xy_m), *s.objects[1:])),
            "overlap",
        ),
    ],
)
def test_bad_specs_fail_before_writing(tmp_path, change, message):
    spec, spec_dir = load_spec(DEFAULT)
    from m3_core.sim import with_overrides

    spec = change(with_overrides(spec, frames=4, size=(64, 48)))
    with pytest.raises(ValueError, match=message):
        generate(spec, spec_dir, tmp_path / "bag")
    assert list(tmp_path.iterdir()) == []


def test_yaml_spec_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"objects": [{"name": "duck", "caption": "a duck", "colour": [1, 0, 0, 1]}]})
    )
    with pytest.raises(ValueError, match="colour"):
        load_spec(bad)


def _cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


def test_cli_json_summary_and_overwrite_refusal(tmp_path, capsys):
    out = tmp_path / "bag"
    assert _cli(["--out", str(out), "--frames", "3", "--size", "64x48", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bag"] == str(out) and summary["frames"] == 3 and summary["size"] == "64x48"
    assert summary["topics"]["/camera/camera/color/image_raw"] == {
        "type": "sensor_msgs/msg/Image",
        "count": 3,
    }
    assert {o["name"] for o in summary["objects"]} >= {"duck", "teddy", "mug", "lego", "tray"}
    before = _files(out)
    assert _cli(["--out", str(out), "--frames", "2", "--size", "64x48", "--json"]) == 2
    assert "--force" in capsys.readouterr().err
    assert _files(out) == before
    assert _cli(["--out", str(out), "--frames", "2", "--size", "64x48", "--json", "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_realism_options_perturb_only_what_they_should(tiny_bag, tmp_path):
    robot = yaml.safe_load(ROBOT.read_text())
    topics = robot["topics"]
    noisy = tmp_path / "noisy"
    make_tiny(noisy, depth_noise=True, odometry_drift=True, stamp_jitter=True)
    clean_msgs, noisy_msgs = read_bag(tiny_bag), read_bag(noisy)
    d_clean = image_array(clean_msgs[topics["depth"]][3][1]).astype(float)
    d_noisy = image_array(noisy_msgs[topics["depth"]][3][1]).astype(float)
    both = (d_clean > 0) & (d_noisy > 0)
    assert (d_noisy == 0).sum() > (d_clean == 0).sum()  # edge dropouts
    assert 0 < np.abs(d_noisy - d_clean)[both].mean() < 5  # mm-level noise
    o_clean = [m.pose.pose.position.x for _, m in clean_msgs[topics["odometry"]]]
    o_noisy = [m.pose.pose.position.x for _, m in noisy_msgs[topics["odometry"]]]
    assert o_clean != o_noisy and max(abs(a - b) for a, b in zip(o_clean, o_noisy)) < 0.05
    s_clean = [stamp_ns(m.header) for _, m in clean_msgs[topics["color"]]]
    s_noisy = [stamp_ns(m.header) for _, m in noisy_msgs[topics["color"]]]
    assert s_clean != s_noisy and max(abs(a - b) for a, b in zip(s_clean, s_noisy)) < 20_000_000
    # ground truth stays true and masks follow the published stamps
    cams = read_cameras(gt_dir_for(noisy))["frames"]
    assert [c["stamp_ns"] for c in cams] == s_noisy
    assert [c["capture_ns"] for c in cams] == s_clean
    np.testing.assert_array_equal(
        read_mask(gt_dir_for(noisy), s_noisy[3]), read_mask(gt_dir_for(tiny_bag), s_clean[3])
    )


def test_mcap_is_standard_ros2_for_independent_readers(tiny_bag):
    """The mcap reference reader with its ROS 2 decoder (not rosbags) decodes every message from
    the schemas in the file: what `ros2 bag play`'s mcap storage plugin relies on."""
    mcap_reader = pytest.importorskip("mcap.reader", reason="mcap (PyPI) is not installed")
    decoder = pytest.importorskip("mcap_ros2.decoder", reason="mcap-ros2-support (PyPI) is not installed")

    (path,) = tiny_bag.glob("*.mcap")
    counts: dict[str, int] = {}
    with path.open("rb") as fh:
        reader = mcap_reader.make_reader(fh, decoder_factories=[decoder.DecoderFactory()])
        header = reader.get_header()
        assert header.profile == "ros2"
        for schema, channel, _message, decoded in reader.iter_decoded_messages():
            assert schema.encoding == "ros2msg" and channel.message_encoding == "cdr"
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            if channel.topic == "/camera/camera/color/image_raw":
                assert decoded.encoding == "rgb8" and len(decoded.data) == decoded.step * decoded.height
            if channel.topic == "/tf_static":
                assert len(decoded.transforms) == 2
                # latched: rmw durability 1 = TRANSIENT_LOCAL, as ros2 bag play re-offers it
                assert "durability: 1" in channel.metadata["offered_qos_profiles"]
    assert counts["/camera/camera/color/image_raw"] == 8 and counts["/tf_static"] == 1


def test_output_does_not_depend_on_render_workers(tmp_path):
    spec, spec_dir = load_spec(DEFAULT)
    from m3_core.sim import with_overrides

    spec = with_overrides(spec, frames=4, size=(64, 48))
    one = generate(spec, spec_dir, tmp_path / "one", workers=1)
    two = generate(spec, spec_dir, tmp_path / "two", workers=2)
    assert _files(one.bag_dir) == _files(two.bag_dir)
    assert _files(one.gt_dir) == _files(two.gt_dir)


def test_failure_mid_scan_leaves_nothing_behind(tmp_path, monkeypatch):
    from m3_core.sim.world import TabletopWorld

    spec, spec_dir = load_spec(DEFAULT)
    from m3_core.sim import with_overrides

    real_render = TabletopWorld.render
    calls = {"n": 0}

    def failing_render(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("renderer died")
        return real_render(self, *args, **kwargs)

    monkeypatch.setattr(TabletopWorld, "render", failing_render)
    with pytest.raises(RuntimeError, match="renderer died"):
        generate(with_overrides(spec, frames=5, size=(64, 48)), spec_dir, tmp_path / "bag", workers=1)
    assert list(tmp_path.iterdir()) == []


def test_frames_in_the_spec_file(tmp_path):
    data = yaml.safe_load(DEFAULT.read_text())
    data.update(frames=3, robot_config=str(ROBOT))
    data["camera"].update(width=64, height=48, fx=38.5, fy=38.5, cx=31.5, cy=23.5)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    spec, spec_dir = load_spec(path)
    result = generate(spec, spec_dir, tmp_path / "bag")
    assert result.frames == 3 and result.size == (64, 48)
    assert result.topics["/lidar_odometry"]["count"] == 6


def test_stance_bag_holds_the_body_still_within_reach_of_the_table(tmp_path):
    """`m3 sim --stance AZ DIST`: the robot standing at the table to grasp after its scan (what the
    demo's query stage replays). The scan's arc leaves the arm base ~0.8 m from the objects, beyond
    the Z1's 0.74 m reach; at the stance the body stands still 0.8 m from the look-at point, so the
    arm base is 0.6 m from it, while the arm still sweeps the camera. Same world, same odom frame."""
    from m3_core.sim import with_overrides

    spec, spec_dir = load_spec(DEFAULT)
    result = generate(with_overrides(spec, frames=4, size=(64, 48), stance=(-90.0, 0.8)), spec_dir, tmp_path / "st")
    frames = json.loads((result.gt_dir / "cameras.json").read_text())["frames"]
    lidar = np.array([np.asarray(f["world_from_lidar"], float) for f in frames])
    cams = np.array([np.asarray(json.loads(f["world_from_camera"]) if isinstance(f["world_from_camera"], str)
                                else f["world_from_camera"], float) for f in frames])  # fmt: skip
    np.testing.assert_allclose(lidar, np.broadcast_to(lidar[0], lidar.shape), atol=1e-9)
    target = np.asarray(spec.trajectory.target_xyz_m)  # the table frame is the world here (xy 0, yaw 0)
    assert np.hypot(*(lidar[0][:2, 3] - target[:2])) == pytest.approx(0.8, abs=1e-6)
    assert lidar[0][1, 3] < target[1], "azimuth -90 deg: on the table's -y side"
    from m3_core.robot import load_robot_config

    arm_base = lidar[0] @ load_robot_config(ROBOT).extrinsics.lidar_from_armbase.matrix()
    assert np.hypot(*(arm_base[:2, 3] - target[:2])) == pytest.approx(0.6, abs=1e-6)
    assert np.ptp(cams[:, :3, 3], axis=0).max() > 0.01, "the arm still sweeps the camera"
    with pytest.raises(ValueError, match="distance"):
        with_overrides(spec, stance=(-90.0, 0.0))
