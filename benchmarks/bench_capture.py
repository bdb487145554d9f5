"""Capture benchmark: keyframes kept by `m3 bag2scene` vs. live replay through ROS at 1x and 3x.

    .venv/bin/python benchmarks/bench_capture.py [--bag BAG] [--rates 1 3] [--work DIR]

Without --bag the default simulated bag is generated first (`m3 sim`, 300 frames 640x480 at 15 Hz).
For each rate: replay -> m3_pose_chain_node -> m3_capture_node (separate processes, real DDS), then
compare with the offline scene: keyframes missed / extra, largest pose difference, frames received.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3_core.capture.bag2scene import bag_to_scene  # noqa: E402
from m3_core.capture.keyframes import KeyframeConfig, rotation_angle_deg  # noqa: E402
from m3_core.scene import load_scene  # noqa: E402
from tests.conftest_capture import run_live_capture  # noqa: E402


def compare(offline: Path, live: Path) -> dict:
    a, b = load_scene(offline), load_scene(live)
    sa, sb = {f.stamp_ns: f for f in a.frames}, {f.stamp_ns: f for f in b.frames}
    common = sorted(set(sa) & set(sb))
    diff = max(
        (float(np.abs(sa[s].world_from_camera - sb[s].world_from_camera).max()) for s in common), default=0.0
    )
    stats = json.loads((live / "scene.json").read_text())["extra"].get("capture_stats", {})
    # an offline keyframe is "covered" when the live scene has a view within the keyframe gate of it
    # (frames lost in transport shift which frame is kept, not what is seen)
    kf = KeyframeConfig()
    covered = sum(
        any(
            np.linalg.norm(fa.world_from_camera[:3, 3] - fb.world_from_camera[:3, 3]) < kf.min_translation_m
            and rotation_angle_deg(fa.world_from_camera, fb.world_from_camera) < kf.min_rotation_deg
            for fb in b.frames
        )
        for fa in a.frames
    )
    return {
        "kept_offline": len(a),
        "covered": covered,
        "kept_live": len(b),
        "missed": len(set(sa) - set(sb)),
        "extra": len(set(sb) - set(sa)),
        "max_pose_diff": diff,
        "received_color": stats.get("received_color"),
        "received_depth": stats.get("received_depth"),
        "dropped": stats.get("dropped"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bag", type=Path, default=None, help="bag to use (default: generate the default sim bag)"
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/m3_bench_capture"))
    parser.add_argument("--reliable", action="store_true", help="capture node subscribes the camera RELIABLE")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bag = args.bag
    if bag is None:
        bag = args.work / "sim_default"
        if not (bag / "metadata.yaml").exists():
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "m3_ros.cli", "sim", "--out", str(bag), "--force", "--no-progress"]
            subprocess.run(cmd, cwd=REPO, check=True)
            print(f"generated {bag} in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    offline = args.work / "offline"
    session = bag_to_scene(bag, offline, overwrite=True)
    print(
        f"bag2scene: {session.stats.kept} keyframes in {time.perf_counter() - t0:.1f} s; {session.stats.line()}"
    )
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(20 + os.getpid() % 200))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    results = {}
    for rate in args.rates:
        live = args.work / f"live_{rate:g}x"
        shutil.rmtree(live, ignore_errors=True)
        logs = args.work / f"logs_{rate:g}x"
        logs.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        params = ("camera_reliable:=true",) if args.reliable else ()
        run_live_capture(bag, live, rate, env, logs, timeout_s=600, capture_params=params)
        r = compare(offline, live)
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        results[f"{rate:g}x"] = r
        print(f"replay {rate:g}x: {json.dumps(r)}")
    print(json.dumps({"bag": str(bag), "offline_kept": session.stats.kept, "live": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
