"""TransformBuffer: interpolation checked against scipy, tree lookups, and clear failures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation, Slerp

from m3_core.errors import DisconnectedFramesError, ExtrapolationError, UnknownFrameError
from m3_core.geometry import TransformBuffer, invert, transform_from_rt

S = 1_000_000_000


def rand_T(rng):
    return transform_from_rt(
        Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(), rng.normal(size=3)
    )


@settings(max_examples=60)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_interpolation_matches_scipy_slerp_and_lerp(seed, alpha):
    rng = np.random.default_rng(seed)
    A, B = rand_T(rng), rand_T(rng)
    buf = TransformBuffer()
    buf.set_transform("odom", "base", A, 2 * S)
    buf.set_transform("odom", "base", B, 3 * S)
    stamp = 2 * S + int(round(alpha * S))
    got = buf.lookup("odom", "base", stamp)
    a = (stamp - 2 * S) / S
    ref_rot = Slerp([0, 1], Rotation.from_matrix(np.stack([A[:3, :3], B[:3, :3]])))([a]).as_matrix()[0]
    np.testing.assert_allclose(got[:3, :3], ref_rot, atol=1e-9)
    np.testing.assert_allclose(got[:3, 3], (1 - a) * A[:3, 3] + a * B[:3, 3], atol=1e-9)


def test_lookup_between_branches_of_a_tree():
    rng = np.random.default_rng(0)
    odom_base, base_arm, arm_ee, base_lidar = (rand_T(rng) for _ in range(4))
    buf = TransformBuffer()
    buf.set_transform("odom", "base", odom_base, 5 * S)
    buf.set_transform("base", "arm", base_arm, static=True)
    buf.set_transform("arm", "ee", arm_ee, 5 * S)
    buf.set_transform("base", "lidar", base_lidar, static=True)
    got = buf.lookup("lidar", "ee", 5 * S)
    np.testing.assert_allclose(got, invert(base_lidar) @ base_arm @ arm_ee, atol=1e-12)
    np.testing.assert_allclose(buf.lookup("odom", "ee", 5 * S), odom_base @ base_arm @ arm_ee, atol=1e-12)
    np.testing.assert_allclose(buf.lookup("ee", "ee", 5 * S), np.eye(4))


def test_out_of_order_inserts_and_cache_trimming():
    buf = TransformBuffer(cache_ns=2 * S)
    for t in [3, 1, 2, 5, 4]:
        T = np.eye(4)
        T[0, 3] = t
        buf.set_transform("odom", "base", T, t * S)
    assert buf.lookup("odom", "base", int(4.5 * S))[0, 3] == pytest.approx(4.5)
    with pytest.raises(ExtrapolationError, match="before the oldest"):
        buf.lookup("odom", "base", 1 * S)  # trimmed: only the last 2 s are kept


def test_errors_name_the_problem():
    buf = TransformBuffer(tolerance_ns=10_000_000)
    buf.set_transform("odom", "base", np.eye(4), 1 * S)
    buf.set_transform("odom", "base", np.eye(4), 2 * S)
    buf.set_transform("arm", "ee", np.eye(4), static=True)
    with pytest.raises(UnknownFrameError, match="camera"):
        buf.lookup("odom", "camera", S)
    with pytest.raises(DisconnectedFramesError, match="static transform"):
        buf.lookup("odom", "ee", S)
    with pytest.raises(ExtrapolationError, match="after the newest"):
        buf.lookup("odom", "base", 3 * S)
    # within tolerance: the nearest sample is used
    np.testing.assert_allclose(buf.lookup("odom", "base", 2 * S + 5_000_000), np.eye(4))
    assert not buf.can_transform("odom", "base", 5 * S)


def test_clear_keeps_statics_and_drops_history():
    buf = TransformBuffer()
    buf.set_transform("odom", "base", np.eye(4), 10 * S)
    buf.set_transform("base", "cam", np.eye(4), static=True)
    buf.clear()
    assert buf.frames == {"base", "cam"}


@pytest.mark.parametrize("bad", [np.eye(3), np.full((4, 4), np.nan)], ids=["not4x4", "nan"])
def test_bad_transforms_are_rejected(bad):
    with pytest.raises(ValueError, match="4x4"):
        TransformBuffer().set_transform("a", "b", bad, 0)
