"""Benchmark `m3 sim`: seconds to generate the default scene (config/sim_default.yaml).

    .venv/bin/python benchmarks/bench_sim.py [--frames N] [--size WxH] [--workers K] [--repeat R]

Prints wall seconds, CPU seconds (this process and its render workers), frames, bag size, and
the single-thread render time of one 640x480 frame (median of 5), plus the machine's load
average, since the box is shared and wall time depends on it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from m3_core.sim import config_dir, generate, load_spec, with_overrides


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _render_one_s(spec, spec_dir) -> float:
    import numpy as np

    from m3_core.geometry.camera import PinholeCamera
    from m3_core.robot import load_robot_config
    from m3_core.sim.generate import _plan
    from m3_core.sim.plan import place_objects
    from m3_core.sim.spec import resolved
    from m3_core.sim.world import TabletopWorld

    robot = load_robot_config(spec_dir / spec.robot_config)
    c = spec.camera
    cam = PinholeCamera(c.fx, c.fy, c.cx, c.cy, c.width, c.height)
    with TabletopWorld(spec) as world:
        place_objects(spec, world, np.random.default_rng(spec.seed))
        poses = _plan(resolved(spec), robot, world).cam_poses.world_from_camera
        times = []
        for T in poses[:: max(1, len(poses) // 5)][:5]:
            t = time.perf_counter()
            world.render(T, cam)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--size", default=None, help="WxH")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    spec, spec_dir = load_spec(config_dir() / "sim_default.yaml")
    spec = with_overrides(spec, frames=args.frames, size=size)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(
        f"render one {spec.camera.width}x{spec.camera.height} frame (1 thread): {_render_one_s(spec, spec_dir):.3f} s"
    )
    for _ in range(args.repeat):
        tmp = Path(tempfile.mkdtemp(prefix="bench_sim_"))
        try:
            cpu0, t0 = _cpu_s(), time.perf_counter()
            result = generate(spec, spec_dir, tmp / "bag", workers=args.workers)
            wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
            size_mb = sum(p.stat().st_size for p in (tmp / "bag").rglob("*")) / 1e6
            n = result.frames
            print(
                f"default scene: {n} frames {result.size[0]}x{result.size[1]} in {wall:.1f} s wall "
                f"({wall / n:.3f} s/frame), {cpu:.1f} s CPU ({cpu / n:.3f} s/frame), bag {size_mb:.0f} MB, "
                f"load average {os.getloadavg()[0]:.2f} at end"
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
