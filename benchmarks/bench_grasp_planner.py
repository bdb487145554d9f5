"""Grasp planner timing: ~5k object points among ~50k scene points (table + two neighbours).

    .venv/bin/python benchmarks/bench_grasp_planner.py [--repeats 20]

BLAS is held to one thread so the time is one CPU core's. Prints per object: wall-clock median /
min / max planning time, the median CPU time of the process (closer to the unloaded time on a
shared machine), the number of grasps and the best grasp's quality and width.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3_core.grasp.planner import plan_grasps  # noqa: E402
from m3_core.robot import ArmConfig, GripperConfig  # noqa: E402


def _box(rng: np.random.Generator, size: tuple[float, float, float], centre: tuple[float, float, float],
         n: int) -> np.ndarray:
    size_a = np.asarray(size)
    areas = np.array([size_a[1] * size_a[2], size_a[0] * size_a[2], size_a[0] * size_a[1]])
    axis = rng.choice(3, size=n, p=areas / areas.sum())
    pts = rng.uniform(-0.5, 0.5, (n, 3)) * size_a
    pts[np.arange(n), axis] = rng.choice([-0.5, 0.5], size=n) * size_a[axis]
    return pts + np.asarray(centre)


def _cylinder(rng: np.random.Generator, radius: float, height: float, n: int) -> np.ndarray:
    """Side and top cap (without the cap it is an open tube, and its rim is what gets grasped)."""
    a = rng.uniform(0, 2 * np.pi, n)
    cap = rng.uniform(size=n) < radius / (radius + 2 * height)
    r = np.where(cap, radius * np.sqrt(rng.uniform(size=n)), radius)
    return np.c_[r * np.cos(a), r * np.sin(a), np.where(cap, height, rng.uniform(0, height, n))]


def _sphere(rng: np.random.Generator, radius: float, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True) + np.array([0, 0, radius])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    noise = 0.002                                                     # depth-like jitter, metres
    table = np.c_[rng.uniform(-0.5, 0.5, (44000, 2)), rng.normal(0.0, noise, 44000)]
    neighbours = np.concatenate([_box(rng, (0.06, 0.06, 0.10), (0.09, 0.0, 0.05), 3000),
                                 _box(rng, (0.08, 0.05, 0.04), (-0.05, 0.10, 0.02), 3000)])
    scene = np.concatenate([table, neighbours])
    objects = {
        "box 5x12x8 cm": _box(rng, (0.05, 0.12, 0.08), (0.0, 0.0, 0.04), 5000),
        "cylinder r2.5 h10 cm": _cylinder(rng, 0.025, 0.10, 5000),
        "sphere r3 cm": _sphere(rng, 0.03, 5000),
    }
    base = np.eye(4)
    base[:3, 3] = [-0.45, 0.0, 0.0]
    gripper, arm = GripperConfig(), ArmConfig()
    print(f"scene {len(scene)} points, {args.repeats} repeats, one BLAS thread")
    for name, obj in objects.items():
        obj = obj + rng.normal(0.0, noise, obj.shape)
        plan_grasps(obj, scene, gripper, arm, base)                   # warm-up (imports, caches)
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            grasps = plan_grasps(obj, scene, gripper, arm, base)
            times.append(1e3 * (time.perf_counter() - t0))
            cpu.append(1e3 * (time.process_time() - c0))
        best = f"best quality {grasps[0].quality:.3f} width {1e3 * grasps[0].width_m:.1f} mm" if grasps else "none"
        print(f"{name:22s} {len(obj)} pts: wall median {np.median(times):6.1f} ms (min {min(times):6.1f}, "
              f"max {max(times):6.1f}), CPU median {np.median(cpu):6.1f} ms; {len(grasps):2d} grasps, {best}")


if __name__ == "__main__":
    main()
