"""Property-based tests of m3_core.geometry (SE3, quaternions, pinhole, Sim3, chain)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from m3_core.geometry import (
    PinholeCamera,
    invert,
    matrix_from_pose,
    points_from_depth,
    pose_from_matrix,
    quat_xyzw_from_matrix,
    transform_points,
    umeyama_sim3,
    umeyama_sim3_robust,
    world_from_camera_chain,
)

seeds = st.integers(0, 2**31 - 1)


def random_transform(rng: np.random.Generator, scale: float = 2.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    T[:3, 3] = rng.uniform(-scale, scale, 3)
    return T


@given(seeds)
def test_invert_is_inverse(seed):
    T = random_transform(np.random.default_rng(seed))
    np.testing.assert_allclose(invert(T) @ T, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(invert(T), np.linalg.inv(T), atol=1e-12)


@given(seeds)
def test_pose_round_trip_and_ros_quaternion_order(seed):
    rng = np.random.default_rng(seed)
    T = random_transform(rng)
    position, quat = pose_from_matrix(T)
    assert quat[3] >= 0  # canonical sign, w last (ROS order)
    np.testing.assert_allclose(matrix_from_pose(position, quat), T, atol=1e-12)
    # scipy agrees on the order: (x, y, z, w)
    np.testing.assert_allclose(Rotation.from_quat(quat).as_matrix(), T[:3, :3], atol=1e-12)


def test_quaternion_of_known_rotation():
    # 90 degrees about z: (0, 0, sin 45, cos 45) in (x, y, z, w)
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    np.testing.assert_allclose(quat_xyzw_from_matrix(R), [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)


def test_bad_quaternion_is_a_clear_error():
    with pytest.raises(ValueError, match="quaternion"):
        matrix_from_pose(np.zeros(3), np.zeros(4))


@given(seeds, st.integers(1, 50))
def test_transform_points_matches_homogeneous(seed, n):
    rng = np.random.default_rng(seed)
    T = random_transform(rng)
    pts = rng.normal(size=(n, 3))
    homo = (T @ np.c_[pts, np.ones(n)].T).T[:, :3]
    np.testing.assert_allclose(transform_points(T, pts), homo, atol=1e-12)


@settings(max_examples=50)
@given(seeds)
def test_back_projection_inverts_projection(seed):
    rng = np.random.default_rng(seed)
    cam = PinholeCamera(
        rng.uniform(200, 600), rng.uniform(200, 600), rng.uniform(10, 30), rng.uniform(8, 20), 40, 30
    )
    depth = rng.uniform(0.2, 3.0, (30, 40)).astype(np.float32)
    depth[rng.random((30, 40)) < 0.1] = 0  # invalid pixels are skipped
    world_from_camera = random_transform(rng)
    pts_world, pix = points_from_depth(depth, cam, world_from_camera)
    assert len(pts_world) == int((depth > 0).sum())
    uv, z = cam.project(transform_points(invert(world_from_camera), pts_world))
    np.testing.assert_allclose(uv[:, ::-1], pix, atol=1e-6)  # (u, v) = (col, row)
    np.testing.assert_allclose(z, depth[pix[:, 0], pix[:, 1]], rtol=1e-6)


def test_points_from_depth_size_mismatch_is_explained():
    cam = PinholeCamera(100, 100, 20, 15, 40, 30)
    with pytest.raises(ValueError, match="aligned"):
        points_from_depth(np.ones((31, 40)), cam)


def test_camera_scaling_keeps_pixel_centre_convention():
    cam = PinholeCamera(500, 500, 319.5, 239.5, 640, 480)
    half = cam.scaled(320, 240)
    assert (half.cx, half.cy) == (159.5, 119.5) and half.fx == 250


@settings(max_examples=40)
@given(seeds, st.floats(0.1, 10.0))
def test_umeyama_recovers_similarity(seed, scale):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(20, 3))
    R = Rotation.random(random_state=seed).as_matrix()
    t = rng.normal(size=3)
    dst = scale * src @ R.T + t
    sim = umeyama_sim3(src, dst)
    assert sim.scale == pytest.approx(scale, rel=1e-9)
    np.testing.assert_allclose(sim.rotation, R, atol=1e-9)
    np.testing.assert_allclose(sim.apply(src), dst, atol=1e-9)


def test_robust_umeyama_ignores_outliers():
    rng = np.random.default_rng(3)
    src = rng.uniform(-1, 1, (40, 3))
    R = Rotation.from_euler("xyz", [0.3, -0.2, 1.0]).as_matrix()
    dst = 2.5 * src @ R.T + np.array([1.0, 2.0, 0.5])
    dst_noisy = dst + rng.normal(scale=1e-3, size=dst.shape)
    dst_noisy[:8] += rng.uniform(1, 3, (8, 3))  # 20 % gross outliers
    sim, inliers = umeyama_sim3_robust(src, dst_noisy, inlier_threshold=0.02)
    assert not inliers[:8].any() and inliers[8:].all()
    assert sim.scale == pytest.approx(2.5, rel=1e-3)
    plain = umeyama_sim3(src, dst_noisy)
    assert abs(plain.scale - 2.5) > abs(sim.scale - 2.5)


def test_umeyama_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 3"):
        umeyama_sim3(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="one place"):
        umeyama_sim3(np.zeros((5, 3)), np.ones((5, 3)))


@given(seeds)
def test_chain_composes_left_to_right(seed):
    rng = np.random.default_rng(seed)
    a, b, c, d = (random_transform(rng) for _ in range(4))
    chain = world_from_camera_chain(a, b, c, d)
    p = rng.normal(size=(1, 3))
    # a point in the camera frame goes through hand-eye, arm, mount, odometry in that order
    step = transform_points(a, transform_points(b, transform_points(c, transform_points(d, p))))
    np.testing.assert_allclose(transform_points(chain, p), step, atol=1e-12)
