"""Sensor and estimation imperfections for the simulated bag (all off in the default scene).

- depth: D405-like noise, sigma = k z^2 (stereo depth error grows with the square of range), and
  dropouts at depth discontinuities, where stereo matching fails (flying pixels are dropped by the
  driver, leaving holes along object edges);
- odometry: a random walk of the reported body pose away from the truth (LiDAR odometry drift);
- stamps: Gaussian jitter of camera header stamps around the true capture time.
"""

from __future__ import annotations

import numpy as np

from m3_core.sim.spec import RealismSpec


def noisy_depth(depth_m: np.ndarray, cfg: RealismSpec, rng: np.random.Generator) -> np.ndarray:
    """depth_m [H,W] (0 = invalid) with D405-like noise and edge dropouts; invalid stays 0."""
    valid = depth_m > 0
    out = depth_m + rng.normal(0.0, 1.0, depth_m.shape).astype(np.float32) * (cfg.depth_noise_k * depth_m**2)
    # a discontinuity: any 4-neighbour more than 2 cm away (or invalid next to valid)
    pad = np.pad(depth_m, 1, mode="edge")
    jump = np.zeros(depth_m.shape, bool)
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nb = pad[dr : dr + depth_m.shape[0], dc : dc + depth_m.shape[1]]
        jump |= np.abs(nb - depth_m) > 0.02
    drop = jump & (rng.random(depth_m.shape) < cfg.edge_dropout)
    return np.where(valid & ~drop, out, 0.0).astype(np.float32)


def drift_transforms(t_s: np.ndarray, cfg: RealismSpec, rng: np.random.Generator) -> np.ndarray:
    """[N,4,4] odom_reported_from_odom_true at sorted times t_s: a random walk in x, y and yaw."""
    t_s = np.asarray(t_s, np.float64)
    dt = np.diff(t_s, prepend=t_s[0])
    steps = rng.normal(0.0, 1.0, (len(t_s), 3)) * np.sqrt(dt)[:, None]
    walk = np.cumsum(steps, axis=0)
    xy = walk[:, :2] * cfg.drift_m_per_sqrt_s
    yaw = np.radians(walk[:, 2] * cfg.drift_deg_per_sqrt_s)
    out = np.tile(np.eye(4), (len(t_s), 1, 1))
    c, s = np.cos(yaw), np.sin(yaw)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, :2, 3] = xy
    return out


def jittered_stamps_ns(stamps_ns: np.ndarray, cfg: RealismSpec, rng: np.random.Generator) -> np.ndarray:
    """Stamps with Gaussian jitter (kept strictly increasing)."""
    j = np.round(rng.normal(0.0, cfg.stamp_jitter_ms * 1e6, len(stamps_ns))).astype(np.int64)
    out = np.asarray(stamps_ns, np.int64) + j
    return np.maximum.accumulate(out + np.arange(len(out))) - np.arange(len(out))
