"""Hand-eye (and mount) calibration from a scan: camera poses from any source vs. the robot's chain.

The robot computes every keyframe's camera pose with the paper's eq. 3,

    world_from_camera(t) = world_from_lidar(t) @ Y @ armbase_from_ee(t) @ X,

Y = lidar_from_armbase (mount) and X = ee_from_camera (hand-eye). An independent estimate of the same
camera poses (SfM on the scan's images, or a simulator's exact poses) lives in its own world frame W
(for SfM also at its own scale). This module estimates X, Y and W together:

1. A closed-form start for X (the classic AX = XB over pairs of keyframes): the end effector's motion B
   (from odometry, the mount and the arm) and the camera's motion A (from the other source) satisfy
   B X = X A. Rotation axes give R_X (Park and Martin), RANSAC over pairs rejects bad poses, then
   (R_B - I) t_X - lambda R_X t_A = -t_B is linear in t_X and the other source's metric scale lambda.
2. A joint robust least-squares refinement of X, Y and W over per-keyframe pose residuals (Cauchy
   loss, residuals normalised by robust noise scales), then an outlier test and a final fit on the
   inliers whose Jacobian gives the covariance of the result.

The mount is not always determined by a scan: when the body only walks on a level floor (rotates about
the vertical), the mount's rotation about the LiDAR's z axis and its height are indistinguishable
from a change of W. A weak prior keeps such directions at their starting values, and the result says
per axis whether the scan constrained it (its posterior spread is well below the prior's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from m3_core.geometry.se3 import invert
from m3_core.geometry.sim3 import Sim3, umeyama_sim3_robust

log = logging.getLogger(__name__)

# parameter layout of the refinement: X (rot, trans), Y (rot, trans), W (rot, trans, log scale)
_X, _Y, _W = slice(0, 6), slice(6, 12), slice(12, 19)
AXES = ("x", "y", "z")


class HandEyeError(ValueError):
    """The scan cannot determine the hand-eye (too few poses, too little rotation, no consensus)."""


@dataclass(frozen=True)
class HandEyeConfig:
    """Options of the hand-eye solver."""

    solve_mount: bool = True
    """Also estimate lidar_from_armbase (the directions the scan constrains)."""
    metric: bool = False
    """The other poses are metric (simulator, motion capture): W has scale 1. False for SfM."""
    min_pair_rotation_deg: float = 5.0
    """Keyframe pairs whose camera turned less than this carry no rotation-axis information."""
    max_pairs: int = 3000
    """Keyframe pairs used by the closed-form start (a random subset beyond this)."""
    ransac_iterations: int = 400
    """RANSAC draws of two pairs for R_X."""
    ransac_rotation_deg: float = 1.0
    """A pair agrees with R_X when its rotation vectors differ by less than this, degrees."""
    mount_prior_m: float = 0.05
    """Prior spread of the mount's position around the YAML value, metres (pins what the scan cannot see)."""
    mount_prior_deg: float = 5.0
    """Prior spread of the mount's rotation around the YAML value, degrees."""
    min_noise_m: float = 1e-4
    """Floor of the translation noise scale (exact simulated poses have ~0 residual), metres."""
    min_noise_deg: float = 0.01
    """Floor of the rotation noise scale, degrees."""
    outlier_probability: float = 0.999
    """A keyframe is an outlier when its normalised residual is past this chi-square quantile (6 dof)."""
    bootstrap: int = 0
    """Bootstrap resamplings of the inlier keyframes for a second uncertainty estimate (0: off)."""
    seed: int = 0
    """Random seed (pair subset, RANSAC, bootstrap)."""


@dataclass(frozen=True)
class ChainSamples:
    """What each keyframe gives: the robot's chain links and the camera pose from another source."""

    names: list[str]
    world_from_lidar: np.ndarray  # [N,4,4] odometry
    armbase_from_ee: np.ndarray  # [N,4,4] arm forward kinematics
    other_from_camera: np.ndarray  # [N,4,4] camera pose in the other source's world (SfM or simulator)

    def __post_init__(self) -> None:
        n = len(self.names)
        for name in ("world_from_lidar", "armbase_from_ee", "other_from_camera"):
            arr = getattr(self, name)
            if arr.shape != (n, 4, 4):
                raise ValueError(f"{name} must be [{n},4,4] (one per name), got {arr.shape}")


@dataclass(frozen=True)
class HandEyeResult:
    """The calibrated links, how well every keyframe fits, and the uncertainty."""

    ee_from_camera: np.ndarray  # [4,4]
    lidar_from_armbase: np.ndarray  # [4,4]
    robot_from_other: Sim3  # the other source's world in the robot's world
    names: list[str]
    inliers: np.ndarray  # [N] bool
    rotation_residuals_deg: np.ndarray  # [N]
    translation_residuals_m: np.ndarray  # [N]
    covariance: np.ndarray  # [12,12]: X rot (rad), X trans (m), Y rot, Y trans; left perturbations
    mount_constrained: np.ndarray  # [6] bool: Y rot x,y,z and trans x,y,z determined by the scan
    bootstrap_std: np.ndarray | None = None  # [12] spread of the same 12 numbers over resamplings

    def std(self) -> np.ndarray:
        """[12] standard deviations: X rot (deg) x3, X trans (m) x3, Y rot (deg) x3, Y trans (m) x3;
        NaN for mount axes the scan did not determine."""
        s = np.sqrt(np.clip(np.diag(self.covariance), 0, None))
        s[6:12][~self.mount_constrained] = np.nan  # the prior, not the scan, held these
        return s * np.repeat([np.degrees(1.0), 1.0, np.degrees(1.0), 1.0], 3)


# -- small SE(3)/Sim(3) helpers -------------------------------------------------------------------


def _rotvec(R: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(R).as_rotvec()


def _rotm(rotvec: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(rotvec).as_matrix()


def _perturb(T: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Left perturbation in T's parent frame: rotation exp(delta[:3]) R, translation t + delta[3:]."""
    out = np.eye(4)
    out[:3, :3] = _rotm(delta[:3]) @ T[:3, :3]
    out[:3, 3] = T[:3, 3] + delta[3:6]
    return out


def correction(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, float]:
    """(translation change [3] in the parent frame, metres; rotation angle between them, degrees)."""
    angle = np.degrees(np.linalg.norm(_rotvec(old[:3, :3].T @ new[:3, :3])))
    return new[:3, 3] - old[:3, 3], float(angle)


# -- 1. closed-form start: B X = X A over keyframe pairs ----------------------------------------


def _pairs(rot: np.ndarray, min_deg: float, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """[P,2] keyframe pairs (i < j) whose camera rotated by at least min_deg."""
    n = len(rot)
    i, j = np.triu_indices(n, 1)
    if len(i) > 20 * max_pairs:  # do not form all N^2 relative rotations of a long scan
        keep = rng.choice(len(i), 20 * max_pairs, replace=False)
        i, j = i[keep], j[keep]
    rel = np.einsum("nji,njk->nik", rot[i], rot[j])  # R_i^T R_j
    angle = np.degrees(np.linalg.norm(Rotation.from_matrix(rel).as_rotvec(), axis=1))
    ok = (angle >= min_deg) & (angle <= 150.0)  # near 180 deg the axis is ill-defined
    i, j = i[ok], j[ok]
    if len(i) > max_pairs:
        keep = rng.choice(len(i), max_pairs, replace=False)
        i, j = i[keep], j[keep]
    return np.stack([i, j], 1)


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """R minimising sum |dst - R src|^2 (src, dst [K,3])."""
    U, _, Vt = np.linalg.svd(dst.T @ src)
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ S @ Vt


def _ransac_rotation(a: np.ndarray, b: np.ndarray, cfg: HandEyeConfig, rng: np.random.Generator):
    """R_X with b ≈ R_X a for rotation vectors a (camera) and b (ee) of pairs; (R_X, inlier mask)."""
    thresh = np.radians(cfg.ransac_rotation_deg)
    best = np.zeros(len(a), bool)
    for _ in range(cfg.ransac_iterations):
        k = rng.choice(len(a), 2, replace=False)
        u, v = a[k[0]], a[k[1]]
        if np.linalg.norm(np.cross(u, v)) < 1e-3 * np.linalg.norm(u) * np.linalg.norm(v):
            continue  # parallel axes: no unique rotation
        R = _kabsch(a[k], b[k])
        inl = np.linalg.norm(b - a @ R.T, axis=1) < thresh
        if inl.sum() > best.sum():
            best = inl
    if best.sum() < 3:
        raise HandEyeError(
            "no consistent hand-eye rotation: the end effector must turn about at least two "
            "different axes during the scan, and the camera poses must match the keyframes"
        )
    R = _kabsch(a[best], b[best])
    inl = np.linalg.norm(b - a @ R.T, axis=1) < thresh
    return (_kabsch(a[inl], b[inl]) if inl.sum() >= 3 else R), inl


def closed_form_hand_eye(
    world_from_ee: np.ndarray, other_from_camera: np.ndarray, cfg: HandEyeConfig
) -> tuple[np.ndarray, float]:
    """(ee_from_camera [4,4], metres per unit of the other source) from B X = X A over keyframe pairs."""
    rng = np.random.default_rng(cfg.seed)
    pairs = _pairs(other_from_camera[:, :3, :3], cfg.min_pair_rotation_deg, cfg.max_pairs, rng)
    if len(pairs) < 3:
        raise HandEyeError(
            f"only {len(pairs)} keyframe pairs differ by >= {cfg.min_pair_rotation_deg} deg of camera "
            "rotation; the hand-eye needs a scan in which the wrist turns"
        )
    i, j = pairs.T
    A = np.einsum("nij,njk->nik", invert(other_from_camera[i]), other_from_camera[j])
    B = np.einsum("nij,njk->nik", invert(world_from_ee[i]), world_from_ee[j])
    R_x, inl = _ransac_rotation(_rotvec(A[:, :3, :3]), _rotvec(B[:, :3, :3]), cfg, rng)
    A, B = A[inl], B[inl]
    # B X = X A with t_A in the other source's units: (R_B - I) t_X - lambda R_X t_A = -t_B
    rt_a = A[:, :3, 3] @ R_x.T
    if cfg.metric:  # lambda = 1
        M, rhs = B[:, :3, :3] - np.eye(3), rt_a - B[:, :3, 3]
    else:
        M, rhs = np.concatenate([B[:, :3, :3] - np.eye(3), -rt_a[:, :, None]], axis=2), -B[:, :3, 3]
    keep = np.ones(len(M), bool)
    for _ in range(3):  # least squares, drop pairs past 3 robust sigmas, again
        sol = np.linalg.lstsq(M[keep].reshape(-1, M.shape[2]), rhs[keep].reshape(-1), rcond=None)[0]
        err = np.linalg.norm(np.einsum("nij,j->ni", M, sol) - rhs, axis=1)
        scale = 1.4826 * np.median(err[keep]) + 1e-9
        keep = err < max(3 * scale, 1e-6)
        if keep.sum() < 3:
            raise HandEyeError("no consistent hand-eye translation from the keyframe pairs")
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = R_x, sol[:3]
    lam = 1.0 if cfg.metric else float(sol[3])
    if not lam > 0:
        raise HandEyeError(f"the camera poses' scale came out as {lam:.3g} (must be > 0); are they garbage?")
    return X, lam


# -- 2. joint refinement ---------------------------------------------------------------------------


@dataclass
class _Problem:
    L: np.ndarray  # [N,4,4] world_from_lidar
    E: np.ndarray  # [N,4,4] armbase_from_ee
    C: np.ndarray  # [N,4,4] other_from_camera
    X0: np.ndarray
    Y0: np.ndarray
    W0: Sim3
    cfg: HandEyeConfig
    sigma_rad: float = 1.0
    sigma_m: float = 1.0

    def unpack(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, Sim3]:
        X, Y = _perturb(self.X0, p[_X]), _perturb(self.Y0, p[_Y])
        w = p[_W]
        W = Sim3(
            self.W0.scale * (1.0 if self.cfg.metric else float(np.exp(w[6]))),
            _rotm(w[:3]) @ self.W0.rotation,
            self.W0.translation + w[3:6],
        )
        return X, Y, W

    def frame_residuals(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per keyframe: rotation residual [N,3] (rad) and position residual [N,3] (m, robot world)."""
        X, Y, W = self.unpack(p)
        pred = self.L @ Y @ self.E @ X  # world_from_camera by the chain
        rot_obs = np.einsum("ij,njk->nik", W.rotation, self.C[:, :3, :3])
        r_rot = Rotation.from_matrix(np.einsum("nji,njk->nik", rot_obs, pred[:, :3, :3])).as_rotvec()
        r_pos = pred[:, :3, 3] - W.apply(self.C[:, :3, 3])
        return r_rot, r_pos

    def residuals(self, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
        r_rot, r_pos = self.frame_residuals(p)
        data = np.concatenate([r_rot[idx] / self.sigma_rad, r_pos[idx] / self.sigma_m], axis=1).ravel()
        prior = np.concatenate(
            [p[6:9] / np.radians(self.cfg.mount_prior_deg), p[9:12] / self.cfg.mount_prior_m]
        )
        return np.concatenate([data, prior])

    def solve(self, p0: np.ndarray, idx: np.ndarray, loss: str) -> np.ndarray:
        free = self._free()

        def fun(q: np.ndarray) -> np.ndarray:
            p = np.zeros(19)
            p[free] = q
            return self.residuals(p, idx)

        sol = least_squares(fun, p0[free], loss=loss, f_scale=1.0, x_scale="jac", method="trf")
        p = np.zeros(19)
        p[free] = sol.x
        return p

    def covariance(self, p: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([12,12] covariance of the X and Y perturbations, [6] the mount's posterior/prior variance).

        Gauss-Newton on residuals normalised by the noise scales, inflated by the residual variance
        when that is above 1 (the floors keep exact data from claiming zero uncertainty). The ratio
        does not depend on the residual level: near 1 means the prior, not the scan, fixed that axis.
        """
        free = self._free()

        def fun(q: np.ndarray) -> np.ndarray:
            full = p.copy()
            full[free] = q
            return self.residuals(full, idx)

        r0 = fun(p[free])
        J = np.empty((len(r0), int(free.sum())))
        for k in range(J.shape[1]):  # central differences: the residuals are smooth here
            step = np.zeros(J.shape[1])
            step[k] = 1e-6
            J[:, k] = (fun(p[free] + step) - fun(p[free] - step)) / 2e-6
        dof = max(len(r0) - J.shape[1], 1)
        info_inv = np.linalg.pinv(J.T @ J)
        full = np.zeros((19, 19))
        full[np.ix_(free, free)] = info_inv
        prior = np.repeat([np.radians(self.cfg.mount_prior_deg), self.cfg.mount_prior_m], 3)
        ratio = np.diag(full)[6:12] / prior**2 if self.cfg.solve_mount else np.ones(6)
        full *= max(float(r0 @ r0) / dof, 1.0)
        return full[:12, :12], ratio

    def _free(self) -> np.ndarray:
        free = np.ones(19, bool)
        if not self.cfg.solve_mount:
            free[_Y] = False
        if self.cfg.metric:
            free[18] = False
        return free


def _robust_scales(r_rot: np.ndarray, r_pos: np.ndarray, cfg: HandEyeConfig) -> tuple[float, float]:
    """Noise scales (rad, m) from the median absolute residual components, with floors."""
    s_rot = 1.4826 * float(np.median(np.abs(r_rot)))
    s_pos = 1.4826 * float(np.median(np.abs(r_pos)))
    return max(s_rot, np.radians(cfg.min_noise_deg)), max(s_pos, cfg.min_noise_m)


def _initial_world(pred: np.ndarray, other: np.ndarray, cfg: HandEyeConfig) -> Sim3:
    """robot_from_other from camera centres (robust Umeyama) given the chain's predicted poses."""
    spread = float(np.linalg.norm(pred[:, :3, 3] - pred[:, :3, 3].mean(0), axis=1).max())
    if spread < 1e-3:
        raise HandEyeError("the camera barely moved during the scan (< 1 mm); nothing to calibrate from")
    sim, _ = umeyama_sim3_robust(
        other[:, :3, 3], pred[:, :3, 3], max(0.05 * spread, 0.01), iterations=300, seed=cfg.seed,
        with_scale=not cfg.metric,
    )  # fmt: skip
    return sim


def solve_hand_eye(
    samples: ChainSamples,
    ee_from_camera: np.ndarray,
    lidar_from_armbase: np.ndarray,
    cfg: HandEyeConfig | None = None,
) -> HandEyeResult:
    """Estimate ee_from_camera (and the constrained part of lidar_from_armbase) from a scan.

    ee_from_camera, lidar_from_armbase: the current values (the YAML's); the mount is the starting
    point and the prior of the refinement, the hand-eye only a fallback start (a closed-form estimate
    from the data is tried first, so a hand-eye that is far off, even by a wrong axis, is fine).
    Raises HandEyeError when the scan cannot determine the hand-eye.
    """
    cfg = cfg or HandEyeConfig()
    n = len(samples.names)
    if n < 6:
        raise HandEyeError(f"need at least 6 keyframes with both poses, got {n}")
    L, E, C = samples.world_from_lidar, samples.armbase_from_ee, samples.other_from_camera
    world_from_ee = L @ lidar_from_armbase @ E
    X0, _scale = closed_form_hand_eye(world_from_ee, C, cfg)
    log.info("closed-form hand-eye start: %s from the YAML's", _describe(ee_from_camera, X0))
    W0 = _initial_world(world_from_ee @ X0, C, cfg)
    prob = _Problem(L, E, C, X0, np.asarray(lidar_from_armbase, float), W0, cfg)
    everyone = np.arange(n)
    p = np.zeros(19)
    for _ in range(2):  # robust fits, re-estimating the noise scales from the residuals each time
        prob.sigma_rad, prob.sigma_m = _robust_scales(*prob.frame_residuals(p), cfg)
        p = prob.solve(p, everyone, loss="cauchy")
    prob.sigma_rad, prob.sigma_m = _robust_scales(*prob.frame_residuals(p), cfg)
    inliers = _inliers(prob, p, cfg)
    if inliers.sum() < 6:
        raise HandEyeError(f"only {int(inliers.sum())} of {n} keyframes agree with one hand-eye")
    idx = np.flatnonzero(inliers)
    p = prob.solve(p, idx, loss="linear")
    cov, ratio = prob.covariance(p, idx)
    constrained = ratio < 0.3**2 if cfg.solve_mount else np.zeros(6, bool)  # std < 0.3 x prior
    if cfg.solve_mount and not constrained.all():
        # keep the YAML's value along what the scan cannot see, and refit the rest with that mount
        prob.Y0 = _perturb(prob.Y0, np.where(constrained, p[_Y], 0.0))
        prob.cfg = replace(cfg, solve_mount=False)
        p[_Y] = 0.0
        p = prob.solve(p, idx, loss="linear")
        cov[:6, :6] = prob.covariance(p, idx)[0][:6, :6]
    X, Y, W = prob.unpack(p)
    r_rot, r_pos = prob.frame_residuals(p)
    boot = _bootstrap(prob, p, idx, cfg) if cfg.bootstrap > 0 else None
    return HandEyeResult(
        ee_from_camera=X,
        lidar_from_armbase=Y,
        robot_from_other=W,
        names=list(samples.names),
        inliers=inliers,
        rotation_residuals_deg=np.degrees(np.linalg.norm(r_rot, axis=1)),
        translation_residuals_m=np.linalg.norm(r_pos, axis=1),
        covariance=cov,
        mount_constrained=constrained,
        bootstrap_std=boot,
    )


def _inliers(prob: _Problem, p: np.ndarray, cfg: HandEyeConfig) -> np.ndarray:
    r_rot, r_pos = prob.frame_residuals(p)
    d2 = (r_rot**2).sum(1) / prob.sigma_rad**2 + (r_pos**2).sum(1) / prob.sigma_m**2
    return d2 < chi2.ppf(cfg.outlier_probability, 6)


def _bootstrap(prob: _Problem, p: np.ndarray, idx: np.ndarray, cfg: HandEyeConfig) -> np.ndarray:
    """[12] std of the X/Y perturbations over resamplings (with replacement) of the inlier keyframes."""
    rng = np.random.default_rng([cfg.seed, 7])
    draws = [
        prob.solve(p, rng.choice(idx, len(idx), replace=True), loss="linear")[:12]
        for _ in range(cfg.bootstrap)
    ]
    std = np.std(np.stack(draws), axis=0)
    if not prob.cfg.solve_mount:
        std[6:] = np.nan  # the mount was held fixed in these fits
    return std * np.repeat([np.degrees(1.0), 1.0, np.degrees(1.0), 1.0], 3)


def _describe(old: np.ndarray, new: np.ndarray) -> str:
    dt, angle = correction(old, new)
    return f"{np.linalg.norm(dt) * 1e3:.1f} mm, {angle:.2f} deg"
