"""Capture logic without ROS: keyframes, blur, pairing, image decoding, the session's bad-input paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from m3_core.capture import (
    CaptureConfig,
    CaptureSession,
    ImageEncodingError,
    KeyframeConfig,
    KeyframeSelector,
    PoseChain,
    SceneWriter,
    StampPairer,
    array_from_image_fields,
    depth_mm_from_array,
    rgb_from_array,
    sharpness,
)
from m3_core.capture.clock import Clock, ClockJumpDetector
from m3_core.errors import StaleStampError
from m3_core.geometry.se3 import matrix_from_pose
from m3_core.robot import load_robot_config
from m3_core.scene import load_scene, read_depth_png, read_rgb
from tests.conftest_capture import textured_rgb

S = 1_000_000_000
CAM = "camera_color_optical_frame"


def pose(x: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    h = np.radians(yaw_deg) / 2
    return matrix_from_pose(np.array([x, 0.0, 0.0]), np.array([0.0, 0.0, np.sin(h), np.cos(h)]))


# -- keyframes and blur ----------------------------------------------------------------------


def test_keyframe_selector_thresholds():
    sel = KeyframeSelector(
        KeyframeConfig(min_translation_m=0.1, min_rotation_deg=10, max_interval_s=2, min_interval_s=0.2)
    )
    assert sel.check(pose(), 0) == (True, "first")
    sel.accept(pose(), 0)
    assert sel.check(pose(0.5), S // 10) == (False, "too_soon")
    assert sel.check(pose(0.05), S) == (False, "no_motion")
    assert sel.check(pose(0.1), S) == (True, "translation")
    assert sel.check(pose(0.0, 9.0), S) == (False, "no_motion")
    assert sel.check(pose(0.0, 11.0), S) == (True, "rotation")
    assert sel.check(pose(), 2 * S) == (True, "interval")
    # a candidate that is not accepted (e.g. blurred) leaves the reference where it was
    assert sel.check(pose(0.15), S)[0] and sel.check(pose(0.15), S)[0]
    sel.accept(pose(0.15), S)
    assert sel.check(pose(0.2), S + S // 2) == (False, "no_motion")
    sel.reset_time()  # clock jump: no time-based keyframe until motion
    assert sel.check(pose(0.15), 0) == (False, "no_motion")
    assert sel.check(pose(0.3), 0) == (True, "translation")


def test_keyframe_config_rejects_negative():
    with pytest.raises(ValueError, match="min_translation_m"):
        KeyframeConfig(min_translation_m=-1)


def test_blur_score_separates_sharp_and_blurred():
    sharp = textured_rgb(120, 160, 0)
    blurred = textured_rgb(120, 160, 0, blur_sigma=3.0)
    assert sharpness(sharp) > 10 * sharpness(blurred)
    assert sharpness(blurred) < KeyframeConfig().min_sharpness < sharpness(sharp)
    assert sharpness(np.full((50, 50, 3), 128, np.uint8)) == 0.0


# -- pairing ---------------------------------------------------------------------------------


def test_pairer_exact_and_nearest():
    p = StampPairer(slop_ns=10)
    assert p.add_color(100, "c100") == []
    assert [(x.stamp_ns, x.color, x.depth) for x in p.add_depth(100, "d100")] == [(100, "c100", "d100")]
    # approximate: color 200 waits until depth has moved past it, then takes the nearest within slop
    assert p.add_depth(195, "d195") == []
    assert p.add_color(200, "c200") == []
    pairs = p.add_depth(204, "d204")
    assert [(x.stamp_ns, x.depth, x.depth_stamp_ns) for x in pairs] == [(200, "d204", 204)]
    # d195 can no longer pair with anything once colors move on
    p.add_color(300, "c300")
    assert p.unpaired_depth == 1
    # a color without any depth within slop is dropped once depth passes it
    p.add_depth(330, "d330")
    assert p.unpaired_color == 1


def test_pairer_out_of_order_and_bounded():
    p = StampPairer(slop_ns=0, max_queue=3)
    p.add_color(20, "c20")
    p.add_color(10, "c10")
    assert [x.stamp_ns for x in p.add_depth(10, "d10")] == [10]
    for s in range(100, 106):
        p.add_color(s, s)
    assert p.unpaired_color >= 3  # bounded queue: old colors are dropped and counted


def test_pairer_waits_for_a_late_stream_whatever_the_burst():
    """On a loaded host one stream's callbacks can run in a burst before the other's: 100 colors, then
    100 depths. Every frame must still pair (the old pairer kept 30 and dropped the rest)."""
    p = StampPairer(slop_ns=15_000_000)
    stamps = [1_000_000_000 + i * 33_333_333 for i in range(100)]
    pairs = []
    for s in stamps:
        pairs += p.add_color(s, f"c{s}")
    for s in stamps:
        pairs += p.add_depth(s + 1_000_000, f"d{s}")  # depth stamped 1 ms later
    assert [x.stamp_ns for x in pairs] == stamps
    assert all(x.depth == f"d{x.stamp_ns}" for x in pairs)
    assert p.unpaired_color == p.unpaired_depth == 0 and p.waiting == 0
    # and the other way round, in bursts of 7 and 13
    p = StampPairer(slop_ns=15_000_000)
    pairs, c, d = [], list(stamps), list(stamps)
    while c or d:
        pairs += [x for s in d[:13] for x in p.add_depth(s, s)]
        pairs += [x for s in c[:7] for x in p.add_color(s, s)]
        d, c = d[13:], c[7:]
    assert sorted(x.stamp_ns for x in pairs) == stamps and p.unpaired_color == p.unpaired_depth == 0


def test_session_pairs_every_frame_of_a_burst(tmp_path):
    session = make_session(tmp_path)
    for i in range(60):
        session.add_color(S + i * S // 30, textured_rgb(120, 160, i), "rgb8")
    for i in range(60):
        session.add_depth(S + i * S // 30, np.full((120, 160), 900, np.uint16), "16UC1")
    assert session.stats.paired == 60 and session.stats.dropped["unpaired"] == 0


# -- image decoding --------------------------------------------------------------------------


def test_image_fields_step_padding_and_channel_order():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), np.uint8)
    padded[:, :9] = rgb.reshape(2, 9)
    arr = array_from_image_fields(padded.tobytes(), "rgb8", 2, 3, 12)
    np.testing.assert_array_equal(rgb_from_array(arr, "rgb8"), rgb)
    bgr = array_from_image_fields(np.ascontiguousarray(rgb[..., ::-1]).tobytes(), "bgr8", 2, 3, 9)
    np.testing.assert_array_equal(rgb_from_array(bgr, "bgr8"), rgb)
    depth = np.array([[1000, 2000]], np.uint16)
    big = array_from_image_fields(depth.astype(">u2").tobytes(), "16UC1", 1, 2, 4, is_bigendian=True)
    np.testing.assert_array_equal(depth_mm_from_array(big, "16UC1"), depth)


def test_depth_float_metres_and_invalid_values():
    d = np.array([[1.0, np.nan, -1.0, np.inf, 0.0004]], np.float32)
    arr = array_from_image_fields(d.tobytes(), "32FC1", 1, 5, 20)
    np.testing.assert_array_equal(depth_mm_from_array(arr, "32FC1"), [[1000, 0, 0, 0, 0]])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: array_from_image_fields(b"\0" * 12, "yuv422", 2, 3, 6), "unsupported image encoding"),
        (lambda: array_from_image_fields(b"\0" * 5, "rgb8", 2, 3, 9), "bytes of data"),
        (lambda: array_from_image_fields(b"\0" * 18, "rgb8", 2, 3, 6), "step"),
        (lambda: rgb_from_array(np.zeros((2, 2), np.uint16), "16UC1"), "swapped"),
        (lambda: depth_mm_from_array(np.zeros((2, 2, 3), np.uint8), "rgb8"), "swapped"),
    ],
)
def test_bad_images_raise_clear_errors(call, match):
    with pytest.raises(ImageEncodingError, match=match):
        call()


# -- the session -----------------------------------------------------------------------------


def make_session(tmp_path: Path, monotonic=time.monotonic, **overrides) -> CaptureSession:
    kf = KeyframeConfig(min_translation_m=0.05, min_rotation_deg=10, max_interval_s=0, min_interval_s=0)
    config = CaptureConfig(keyframes=kf, **{"save_every": 2, "tf_wait_s": 0.1, **overrides})
    writer = SceneWriter(tmp_path / "scene", save_every=config.save_every)
    session = CaptureSession(config, writer, "odom", CAM, monotonic=monotonic)
    session.set_camera(load_cam())
    session.add_transform("lidar_link", CAM, np.eye(4), 0, static=True)
    return session


def load_cam():
    from m3_core.geometry.camera import PinholeCamera

    return PinholeCamera(120.0, 120.0, 79.5, 59.5, 160, 120)


def add_track(session: CaptureSession, x0: float, x1: float, t0_ns: int, t1_ns: int) -> None:
    """odom->lidar moving along x from x0 at t0 to x1 at t1, sampled every 0.5 s as odometry is
    (one sample seconds ahead of every other input is an outlier stamp to the session)."""
    for t in range(t0_ns, t1_ns + 1, S // 2):
        session.add_transform("odom", "lidar_link", pose(x0 + (x1 - x0) * (t - t0_ns) / (t1_ns - t0_ns)), t)


def feed_frame(session: CaptureSession, stamp_ns: int, i: int = 0, depth_value: int = 900) -> None:
    session.add_color(stamp_ns, textured_rgb(120, 160, 7 * i), "rgb8")
    session.add_depth(stamp_ns, np.full((120, 160), depth_value, np.uint16), "16UC1")


def test_session_waits_for_transforms_then_interpolates(tmp_path):
    session = make_session(tmp_path)
    session.add_transform("odom", "lidar_link", pose(0.0), 0)
    feed_frame(session, S)
    assert session.poll() == 0 and session.pending == 1  # /tf has not reached stamp + wait yet
    session.add_transform("odom", "lidar_link", pose(2.0), 2 * S)
    assert session.poll() == 1 and session.pending == 0
    np.testing.assert_allclose(session.writer.frames[0].world_from_camera[:3, 3], [1.0, 0, 0], atol=1e-12)


def test_session_missing_transform_is_skipped_and_counted(tmp_path):
    session = make_session(tmp_path)
    feed_frame(session, S)  # no odom -> camera at all
    assert session.poll(now_s=None) == 0 and session.pending == 1
    assert session.poll(now_s=1e9) == 0  # wall-clock timeout (live) gives up
    assert session.stats.dropped["no_transform"] == 1 and session.pending == 0
    # a late transform after the stamp's window: extrapolation is refused too
    session.add_transform("odom", "lidar_link", pose(0.0), 10 * S)
    feed_frame(session, 5 * S)
    session.poll(flush=True)
    assert session.stats.dropped["no_transform"] == 2


def test_a_late_tf_that_keeps_coming_is_waited_for_past_the_timeout(tmp_path):
    """A starved pose publisher on a loaded host delivered /tf seconds behind the images: frames
    timed out 1-5 s after they arrived and were dropped as no_transform while /tf was still coming
    (the README demo kept 16 keyframes of 26). The timeout counts from /tf's last advance."""
    clock = [100.0]
    session = make_session(tmp_path, monotonic=lambda: clock[0], tf_timeout_s=1.0)
    session.add_transform("odom", "lidar_link", pose(0.0), 0)
    feed_frame(session, S)  # arrives at t=100
    for k in range(1, 5):  # /tf creeps forward every 0.8 s of wall time, still short of the frame
        clock[0] += 0.8
        session.add_transform("odom", "lidar_link", pose(0.1 * k), k * S // 5)
        assert session.poll(now_s=clock[0]) == 0 and session.pending == 1
    assert session.stats.dropped["no_transform"] == 0  # 3.2 s after arrival: still waiting
    session.add_transform("odom", "lidar_link", pose(2.0), 2 * S)
    assert session.poll(now_s=clock[0]) == 1 and session.stats.kept == 1
    # /tf that stops is given up on tf_timeout_s after its last advance
    feed_frame(session, 3 * S)
    assert session.poll(now_s=clock[0] + 0.9) == 0 and session.pending == 1
    assert session.poll(now_s=clock[0] + 1.0) == 0 and session.stats.dropped["no_transform"] == 1


def test_a_stopped_tf_stream_times_out_although_another_goes_on(tmp_path):
    """Odometry keeps coming while the arm's stream stopped: the poses do not advance, so frames
    are given up tf_timeout_s after they arrived (not kept until the queue overflows)."""
    clock = [100.0]
    session = make_session(tmp_path, monotonic=lambda: clock[0], tf_timeout_s=1.0)
    session.add_transform("arm", CAM, np.eye(4), 0, static=True)
    session.add_transform("lidar_link", "arm", np.eye(4), 0)  # the arm's stream: one sample, then silence
    session.add_transform("odom", "lidar_link", pose(0.0), 0)
    feed_frame(session, S)
    for k in range(1, 4):
        clock[0] += 0.5
        session.add_transform("odom", "lidar_link", pose(0.1 * k), k * S)
        session.poll(now_s=clock[0])
    assert session.stats.dropped["no_transform"] == 1 and session.pending == 0


def test_a_full_pending_queue_drops_as_queue_full_and_says_why(tmp_path):
    session = make_session(tmp_path, max_pending=2)
    session.add_transform("odom", "lidar_link", pose(0.0), 0)
    for k in range(1, 4):
        feed_frame(session, k * S)
    assert session.poll(now_s=None) == 0 and session.pending == 2
    assert session.stats.dropped["queue_full"] == 1 and session.stats.dropped["no_transform"] == 0


def test_frame_past_the_newest_transform_is_dropped_not_given_a_stale_pose(tmp_path):
    """Decided on the wall-clock timeout 30 ms past the newest odometry (a lagging /tf): the nearest
    sample would be a pose 30 ms old (9 mm at 0.3 m/s). Interpolated poses only, by default."""
    session = make_session(tmp_path)
    session.add_transform("odom", "lidar_link", pose(0.0), 0)
    session.add_transform("odom", "lidar_link", pose(0.3), S)
    feed_frame(session, S + 30_000_000)
    assert session.poll(now_s=1e9) == 0 and session.stats.dropped["no_transform"] == 1
    lenient = make_session(tmp_path / "lenient", max_extrapolation_s=0.05)
    lenient.add_transform("odom", "lidar_link", pose(0.3), S)
    feed_frame(lenient, S + 30_000_000)
    assert lenient.poll(now_s=1e9) == 1  # the caller asked for nearest-sample poses


def test_session_bad_inputs_are_counted_and_it_keeps_going(tmp_path):
    session = make_session(tmp_path)
    add_track(session, 0.0, 1.0, 0, 10 * S)
    session.add_color(S, np.zeros((120, 160), np.uint16), "16UC1")  # depth on the color topic
    session.add_depth(S, np.zeros((120, 160, 3), np.uint8), "rgb8")
    session.add_color(2 * S, textured_rgb(120, 160, 0), "rgb8")  # size mismatch
    session.add_depth(2 * S, np.full((60, 80), 900, np.uint16), "16UC1")
    feed_frame(session, 3 * S, depth_value=0)  # no valid depth
    session.add_color(4 * S, textured_rgb(120, 160, 0), "rgb8")  # NaN depth in metres
    session.add_depth(4 * S, np.full((120, 160), np.nan, np.float32), "32FC1")
    feed_frame(session, 5 * S, i=1)  # a good one
    session.poll(flush=True)
    d = session.stats.dropped
    assert d["bad_encoding"] == 2 and d["size_mismatch"] == 1 and d["depth_invalid"] == 2
    assert session.stats.kept == 1


def test_session_clock_jump_clears_and_continues(tmp_path):
    session = make_session(tmp_path)
    for k in range(4):
        session.add_transform("odom", "lidar_link", pose(0.1 * k), 100 * S + k * S // 10)
    feed_frame(session, 100 * S + S // 10, 0)
    session.poll(flush=True)
    assert session.stats.kept == 1
    # the bag loops: stamps go back 100 s; old dynamic transforms must not be used any more. The
    # first message back in time is only a suspect; the second one confirms the jump.
    session.add_transform("odom", "lidar_link", pose(5.0), 1 * S - S // 10)
    assert session.stats.clock_jumps == 0
    session.add_transform("odom", "lidar_link", pose(5.0), 1 * S)
    assert session.stats.clock_jumps == 1
    assert "lidar_link" in session.buffer.frames  # statics stay
    # a depth image from the previous pass, still in flight, is not taken for the new one
    session.add_depth(100 * S + S // 2, np.full((120, 160), 900, np.uint16), "16UC1")
    assert session.stats.dropped["clock_jump"] == 1 and session.stats.clock_jumps == 1
    session.add_transform("odom", "lidar_link", pose(5.0), 2 * S)
    session.add_transform("odom", "lidar_link", pose(5.0), 3 * S)
    feed_frame(session, 2 * S, 1)
    session.poll()
    assert session.stats.kept == 2
    np.testing.assert_allclose(session.writer.frames[-1].world_from_camera[:3, 3], [5.0, 0, 0])


def test_images_lagging_transforms_is_not_a_clock_jump(tmp_path):
    session = make_session(tmp_path)
    for k in range(60):  # /tf runs 5 s ahead of the (queued) images: no reset
        session.add_transform("odom", "lidar_link", pose(0.01 * k), k * S // 10)
    feed_frame(session, S)
    session.poll()
    assert session.stats.clock_jumps == 0 and session.stats.kept == 1


def test_session_writes_incrementally_and_consistently(tmp_path):
    session = make_session(tmp_path)
    add_track(session, 0.0, 10.0, 0, 10 * S)
    for i in range(1, 4):
        feed_frame(session, i * S, i)
    session.poll()
    # save_every=2: after 3 keyframes the scene on disk lists 2, complete with pixels and poses
    scene = load_scene(tmp_path / "scene")
    assert len(scene) == 2
    np.testing.assert_array_equal(scene.read_rgb(1), textured_rgb(120, 160, 14))
    np.testing.assert_allclose(scene.read_depth_m(1), 0.9, atol=1e-6)
    np.testing.assert_allclose(scene.frames[1].world_from_camera, pose(2.0), atol=1e-9)
    assert session.save() == 3 and len(load_scene(tmp_path / "scene")) == 3
    assert read_rgb(scene.frames[0].image_path).shape == (120, 160, 3)
    assert read_depth_png(scene.frames[0].depth_path).dtype == np.float32


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: directory permissions are not enforced")
def test_unwritable_output_dir_counts_and_keeps_running(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _check_unwritable(tmp_path, locked / "scene")
    finally:
        locked.chmod(0o700)


def test_output_dir_that_is_a_file_counts_and_keeps_running(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    _check_unwritable(tmp_path, blocker / "scene")


def _check_unwritable(tmp_path: Path, root: Path) -> None:
    config = CaptureConfig(keyframes=KeyframeConfig(min_interval_s=0), save_every=1)
    session = CaptureSession(config, SceneWriter(root, save_every=1), "odom", CAM)
    session.set_camera(load_cam())
    session.add_transform("odom", CAM, np.eye(4), 0, static=True)
    feed_frame(session, S)
    feed_frame(session, 2 * S, 1)
    session.poll(flush=True)
    assert session.stats.dropped["write_error"] == 2 and session.stats.kept == 0
    assert not (root / "scene.json").exists()


def test_existing_scene_is_not_overwritten_by_accident(tmp_path):
    session = make_session(tmp_path)
    session.add_transform("odom", "lidar_link", pose(0.0), 0)
    feed_frame(session, 0)
    session.poll(flush=True)
    session.save()
    with pytest.raises(ValueError, match="already holds a scene"):
        SceneWriter(tmp_path / "scene")
    SceneWriter(tmp_path / "scene", overwrite=True).add(
        textured_rgb(120, 160, 0), None, load_cam(), np.eye(4), 0
    )
    assert not (tmp_path / "scene" / "scene.json").exists()  # old listing removed, new one not saved yet


# -- the pose chain --------------------------------------------------------------------------


def test_pose_chain_composes_eq3_after_odometry_reaches_the_stamp():
    robot = load_robot_config()
    chain = PoseChain(robot)
    e = robot.extrinsics.chain()
    odom0 = chain.odometry_transform("", "", pose(0.0, 0.0), 0)
    assert (odom0.parent, odom0.child) == (robot.frames.world, robot.frames.lidar)
    assert chain.add_odometry(odom0) == []
    ee = matrix_from_pose(np.array([0.3, 0.1, 0.2]), np.array([0.0, 0.1, 0.0, 1.0]))
    assert chain.add_ee(chain.ee_transform("", ee, S // 2)) == []  # odometry not at 0.5 s yet
    out = chain.add_odometry(chain.odometry_transform("", "", pose(1.0, 20.0), S))
    assert [s for s, _ in out] == [S // 2]
    expected = pose(0.5, 10.0) @ e.lidar_from_armbase @ ee @ e.ee_from_camera
    np.testing.assert_allclose(out[0][1], expected, atol=1e-12)


def test_clock_detector_jump_and_stale_messages_of_the_previous_pass():
    clock = ClockJumpDetector(S)
    assert clock.check("odom", 100 * S) is Clock.OK
    assert clock.check("ee", 99 * S) is Clock.OK  # lagging another stream is no jump
    assert clock.check("odom", 1 * S) is Clock.SUSPECT  # far back: an outlier, or the bag looped
    assert clock.check("odom", 1 * S + 1) is Clock.JUMP  # the next one confirms: the bag looped
    # still in flight on the other stream from the previous pass: must not enter the new pass
    assert clock.check("ee", 100 * S) is Clock.STALE
    assert clock.check("ee", 101 * S - 1) is Clock.STALE  # in flight, ahead of the old pass's newest
    assert clock.check("ee", 1 * S) is Clock.OK  # the new pass on that stream is no second jump
    assert clock.check("ee", 1 * S + S // 2) is Clock.OK  # a stream's own steps forward are never stale
    assert clock.jumps == 1
    # a forward gap past the old pass is real data, taken once a second message confirms it
    assert clock.check("odom", 200 * S) is Clock.SUSPECT
    assert clock.check("ee", 200 * S + S // 10) is Clock.OK
    with pytest.raises(ValueError):
        ClockJumpDetector(0)


def test_clock_detector_drops_a_single_outlier_stamp_alone():
    clock = ClockJumpDetector(S)
    for k in range(5):
        assert clock.check("tf", 100 * S + k * S // 10) is Clock.OK
        assert clock.check("color", 100 * S + k * S // 10) is Clock.OK
    assert clock.check("color", 90 * S) is Clock.SUSPECT  # one image stamped 10 s in the past
    assert clock.check("tf", 100 * S + S // 2) is Clock.OK  # other streams carry on: no jump
    assert clock.check("color", 100 * S + S // 2) is Clock.OK  # so does its own: it was an outlier
    assert clock.jumps == 0 and clock.outliers == 1
    # two outliers far apart do not confirm each other
    assert clock.check("color", 50 * S) is Clock.SUSPECT
    assert clock.check("tf", 80 * S) is Clock.SUSPECT
    assert clock.jumps == 0
    # a jump confirmed by another stream going back to the same time
    assert clock.check("tf", 1 * S) is Clock.SUSPECT
    assert clock.check("color", 1 * S + S // 30) is Clock.JUMP
    assert clock.jumps == 1


def test_session_drops_one_image_stamped_in_the_past_alone(tmp_path):
    """One colour image 10 s in the past used to be taken for a bag loop: the transform buffer was
    cleared and the next good frames had no pose."""
    session = make_session(tmp_path)
    for k in range(31):
        session.add_transform("odom", "lidar_link", pose(0.1 * k), 100 * S + k * S // 10)
    feed_frame(session, 100 * S + S // 10, 0)
    session.add_color(90 * S, textured_rgb(120, 160, 7), "rgb8")  # the outlier
    for i, t in enumerate((1, 2), start=1):
        feed_frame(session, 100 * S + t * S, i)
    session.poll(flush=True)
    assert session.stats.clock_jumps == 0 and session.stats.dropped["stamp_outlier"] == 1
    assert session.stats.kept == 3 and session.stats.dropped["no_transform"] == 0


def test_clock_detector_drops_a_single_future_stamp_alone():
    """Regression: one message stamped 10 s in the future was taken as progress, so the next good
    messages were 10 s behind it: a suspect, then a confirmed jump back that cleared every buffer."""
    clock = ClockJumpDetector(S)
    for k in range(5):
        assert clock.check("tf", 100 * S + k * S // 10) is Clock.OK
        assert clock.check("color", 100 * S + k * S // 10) is Clock.OK
    assert clock.check("color", 110 * S) is Clock.SUSPECT  # one image stamped 10 s in the future
    assert clock.check("tf", 100 * S + S // 2) is Clock.OK
    assert clock.check("color", 100 * S + S // 2) is Clock.OK  # its stream carries on: an outlier
    assert clock.check("color", 100 * S + S // 2 + S // 30) is Clock.OK
    assert clock.check("tf", 110 * S) is Clock.SUSPECT  # the same on another stream
    assert clock.check("tf", 100 * S + S // 2 + S // 10) is Clock.OK
    assert clock.jumps == 0 and clock.leaps == 0 and clock.outliers == 2


def test_clock_detector_forward_jump_is_taken_once_confirmed():
    clock = ClockJumpDetector(S)
    for k in range(5):
        assert clock.check("tf", k * S // 10) is Clock.OK
        assert clock.check("color", k * S // 10) is Clock.OK
    # every stream resumes 5 s later (a driver paused): one message is the price of the check
    assert clock.check("tf", 5 * S) is Clock.SUSPECT
    assert clock.check("color", 5 * S + S // 30) is Clock.OK  # another stream agrees: progress
    assert clock.check("tf", 5 * S + S // 10) is Clock.OK
    assert clock.check("color", 5 * S + S // 15) is Clock.OK
    assert clock.leaps == 1 and clock.jumps == 0 and clock.outliers == 0
    # a sparse stream (a /tf edge published on change) steps far ahead of its own last stamp but
    # stays level with the others: no suspect
    assert clock.check("tf:gripper", 5 * S + S // 10) is Clock.OK  # the first sample of that edge
    for k in range(1, 4):
        for j in range(30):
            assert clock.check("color", 5 * S + (k - 1) * 3 * S + j * S // 10) is Clock.OK
        assert clock.check("tf:gripper", 5 * S + k * 3 * S) is Clock.OK
    assert clock.leaps == 1 and clock.jumps == 0


def test_session_drops_one_image_stamped_in_the_future_alone(tmp_path):
    """One colour image 10 s in the future used to be taken as progress: the next good images were
    then 'behind', a confirmed clock jump cleared the transforms, and the frames after it were lost."""
    session = make_session(tmp_path)
    for k in range(31):
        session.add_transform("odom", "lidar_link", pose(0.1 * k), 100 * S + k * S // 10)
    feed_frame(session, 100 * S + S // 10, 0)
    session.add_color(110 * S, textured_rgb(120, 160, 7), "rgb8")  # the outlier
    for i, t in enumerate((1, 2), start=1):
        feed_frame(session, 100 * S + t * S, i)
    session.poll(flush=True)
    assert session.stats.clock_jumps == 0 and session.stats.dropped["stamp_outlier"] == 1
    assert session.stats.kept == 3 and session.stats.dropped["no_transform"] == 0
    assert session.stats.dropped["unpaired"] == 0  # the outlier never reached the pairing


def test_session_drops_one_transform_stamped_in_the_future_alone(tmp_path):
    """A /tf sample 10 s ahead evicted the whole transform history (the buffer keeps 10 s behind
    its newest) and made the next good samples look like a jump back: frames without a pose."""
    session = make_session(tmp_path)
    for k in range(11):
        session.add_transform("odom", "lidar_link", pose(0.1 * k), 100 * S + k * S // 10)
    feed_frame(session, 100 * S + S // 10, 0)
    session.add_transform("odom", "lidar_link", pose(50.0), 111 * S)  # the outlier
    for k in range(11, 31):
        session.add_transform("odom", "lidar_link", pose(0.1 * k), 100 * S + k * S // 10)
    for i, t in enumerate((1, 2), start=1):
        feed_frame(session, 100 * S + t * S, i)
    session.poll(flush=True)
    d = session.stats.dropped
    assert session.stats.clock_jumps == 0 and d["tf_stamp_outlier"] == 1 and d["tf_clock_jump"] == 0
    assert session.stats.kept == 3 and d["no_transform"] == 0
    np.testing.assert_allclose(session.writer.frames[-1].world_from_camera[:3, 3], [2.0, 0, 0], atol=1e-9)


def test_session_counts_transforms_from_the_previous_pass(tmp_path):
    session = make_session(tmp_path)
    for k in range(11):
        session.add_transform("odom", "lidar_link", pose(0.1 * k), 100 * S + k * S // 10)
        session.add_transform("lidar_link", "arm", np.eye(4), 100 * S + k * S // 10)
    session.add_transform("odom", "lidar_link", pose(0.0), 1 * S)  # the bag loops
    session.add_transform("odom", "lidar_link", pose(0.0), 1 * S + S // 10)
    session.add_transform("lidar_link", "arm", np.eye(4), 101 * S + S // 10)  # in flight
    d = session.stats.dropped
    assert session.stats.clock_jumps == 1 and d["tf_stamp_outlier"] == 1 and d["tf_clock_jump"] == 1


def test_pose_chain_drops_one_odometry_stamped_in_the_future_alone():
    """A future odometry sample made every pending ee pose computable (interpolated towards the
    outlier) and the good odometry after it a clock jump that cleared the chain."""
    robot = load_robot_config()
    chain = PoseChain(robot)
    ee = matrix_from_pose(np.array([0.3, 0.1, 0.2]), np.array([0.0, 0.0, 0.0, 1.0]))
    for k in range(10):
        chain.add_odometry(chain.odometry_transform("", "", pose(0.1 * k), 100 * S + k * S // 10))
    chain.add_ee(chain.ee_transform("", ee, 100 * S + S))
    with pytest.raises(StaleStampError):
        chain.add_odometry(chain.odometry_transform("", "", pose(9.0), 110 * S))
    out = chain.add_odometry(chain.odometry_transform("", "", pose(1.0), 100 * S + S))
    e = robot.extrinsics.chain()
    assert [s for s, _ in out] == [100 * S + S]
    np.testing.assert_allclose(out[0][1], pose(1.0) @ e.lidar_from_armbase @ ee @ e.ee_from_camera, atol=1e-9)
    assert chain.dropped == {"stamp_outlier": 1} and chain.clock.jumps == 0


def test_pose_chain_ignores_previous_pass_after_a_clock_jump():
    """The looping-bag race: an ee pose from the old pass arriving after odometry jumped back would
    be interpolated towards (wrong camera poses by centimetres); it is refused instead."""
    robot = load_robot_config()
    chain = PoseChain(robot)
    ee = matrix_from_pose(np.array([0.3, 0.1, 0.2]), np.array([0.0, 0.0, 0.0, 1.0]))
    for k in range(10):
        chain.add_odometry(chain.odometry_transform("", "", pose(0.1 * k), 100 * S + k * S // 10))
    chain.add_ee(chain.ee_transform("", ee, 100 * S + S // 2))
    with pytest.raises(StaleStampError):  # far back: a suspect until the next message confirms
        chain.add_odometry(chain.odometry_transform("", "", pose(0.0), 1 * S - S // 20))
    chain.add_odometry(chain.odometry_transform("", "", pose(0.0), 1 * S))  # loop: jump back
    with pytest.raises(StaleStampError):
        chain.add_ee(chain.ee_transform("", ee, 100 * S + S // 2 + S // 10))
    chain.add_ee(chain.ee_transform("", ee, 1 * S + S // 10))
    out = chain.add_odometry(chain.odometry_transform("", "", pose(0.2), 1 * S + S // 5))
    e = robot.extrinsics.chain()
    expected = pose(0.1) @ e.lidar_from_armbase @ ee @ e.ee_from_camera
    assert [s for s, _ in out] == [1 * S + S // 10]
    np.testing.assert_allclose(out[0][1], expected, atol=1e-9)


def test_frames_wait_for_camera_info_like_transforms(tmp_path):
    session = make_session(tmp_path)
    session._camera = None  # as a node that has not received camera_info yet
    add_track(session, 0.0, 1.0, 0, 2 * S)
    feed_frame(session, S)
    assert session.poll() == 0 and session.pending == 1
    session.set_camera(load_cam())
    assert session.poll() == 1
    feed_frame(session, S + S // 2, 1)
    session._camera = None
    session.poll(now_s=1e9)  # live timeout without any camera_info: skipped and counted
    assert session.stats.dropped["no_camera_info"] == 1


def test_flush_counts_images_left_without_partner(tmp_path):
    session = make_session(tmp_path)
    session.add_color(S, textured_rgb(120, 160, 0), "rgb8")  # its depth never arrives
    session.poll(flush=True)
    assert session.stats.dropped["unpaired"] == 1 and session.stats.paired == 0
