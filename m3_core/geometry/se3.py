"""4x4 rigid transforms and ROS-order (x, y, z, w) quaternions, backed by scipy's Rotation."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def _check_matrix(T: np.ndarray, name: str = "transform") -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix (or [...,4,4]), got shape {T.shape}")
    return T


def transform_from_rt(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Build a 4x4 transform from a 3x3 rotation matrix and a translation (metres)."""
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    if rotation.shape != (3, 3) or translation.shape != (3,):
        raise ValueError(
            f"expected rotation [3,3] and translation [3], got {rotation.shape} and {translation.shape}"
        )
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = translation
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transform(s) [...,4,4] without a general matrix inverse."""
    T = _check_matrix(T)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply `b_from_a` to points [N,3] given in frame a; returns [N,3] in frame b."""
    T = _check_matrix(T)
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"points must be [...,3], got {points.shape}")
    return points @ T[:3, :3].T + T[:3, 3]


def matrix_from_quat_xyzw(quat_xyzw: np.ndarray) -> np.ndarray:
    """3x3 rotation from a ROS-order quaternion (x, y, z, w); it is normalised first."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    norm = np.linalg.norm(q)
    if q.shape != (4,) or not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"quaternion must be 4 finite numbers (x, y, z, w) with norm > 0, got {q}")
    return Rotation.from_quat(q / norm).as_matrix()


def quat_xyzw_from_matrix(rotation: np.ndarray) -> np.ndarray:
    """ROS-order quaternion (x, y, z, w) of a 3x3 rotation, with w >= 0 (canonical sign)."""
    q = Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)).as_quat()
    return q if q[3] >= 0 else -q


def matrix_from_pose(position: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    """4x4 `parent_from_child` from a position (metres) and a ROS-order quaternion."""
    return transform_from_rt(matrix_from_quat_xyzw(quat_xyzw), np.asarray(position, float))


def pose_from_matrix(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position [3], quat_xyzw [4]) of a 4x4 transform."""
    T = _check_matrix(T)
    return T[:3, 3].copy(), quat_xyzw_from_matrix(T[:3, :3])
