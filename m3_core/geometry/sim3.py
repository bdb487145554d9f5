"""Similarity transforms and Umeyama alignment (e.g. COLMAP frame -> robot world frame)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sim3:
    """x_dst = scale * rotation @ x_src + translation."""

    scale: float
    rotation: np.ndarray  # [3,3]
    translation: np.ndarray  # [3]

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map points [N,3] from the source to the destination frame."""
        return self.scale * np.asarray(points, float) @ self.rotation.T + self.translation

    def apply_to_pose(self, src_from_camera: np.ndarray) -> np.ndarray:
        """Map a camera pose (rigid, 4x4) to the destination frame; scale acts on translation only."""
        out = np.eye(4)
        out[:3, :3] = self.rotation @ src_from_camera[:3, :3]
        out[:3, 3] = self.apply(src_from_camera[:3, 3][None])[0]
        return out

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix (scaled rotation block)."""
        M = np.eye(4)
        M[:3, :3] = self.scale * self.rotation
        M[:3, 3] = self.translation
        return M


def umeyama_sim3(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares similarity (Umeyama 1991) with dst ≈ s R src + t; src, dst [N,3], N >= 3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"src and dst must both be [N,3], got {src.shape} and {dst.shape}")
    if len(src) < 3:
        raise ValueError(f"need at least 3 point pairs for a Sim(3), got {len(src)}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var_s = (xs**2).sum() / len(src)
    if var_s < 1e-18:
        raise ValueError("source points are all at one place; a Sim(3) is not defined")
    scale = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    t = mu_d - scale * R @ mu_s
    return Sim3(scale, R, t)


def umeyama_sim3_robust(
    src: np.ndarray,
    dst: np.ndarray,
    inlier_threshold: float,
    iterations: int = 500,
    seed: int = 0,
    with_scale: bool = True,
) -> tuple[Sim3, np.ndarray]:
    """RANSAC over minimal 3-point Umeyama fits, refit on inliers.

    inlier_threshold: residual (destination units, e.g. metres) below which a pair is an inlier.
    Returns (sim3, inlier mask [N]).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = len(src)
    if n < 3:
        raise ValueError(f"need at least 3 point pairs, got {n}")
    rng = np.random.default_rng(seed)
    best = np.ones(n, bool) if n == 3 else None
    best_count = -1
    for _ in range(iterations if n > 3 else 0):
        idx = rng.choice(n, 3, replace=False)
        try:
            model = umeyama_sim3(src[idx], dst[idx], with_scale)
        except ValueError:
            continue
        inliers = np.linalg.norm(model.apply(src) - dst, axis=1) < inlier_threshold
        if inliers.sum() > best_count:
            best, best_count = inliers, int(inliers.sum())
    if best is None or best.sum() < 3:
        raise ValueError("robust alignment found fewer than 3 inliers; check the correspondences")
    model = umeyama_sim3(src[best], dst[best], with_scale)
    inliers = np.linalg.norm(model.apply(src) - dst, axis=1) < inlier_threshold
    if inliers.sum() >= 3:
        model = umeyama_sim3(src[inliers], dst[inliers], with_scale)
    return model, inliers
