"""Benchmark `m3 calibrate` on a simulated scan whose published hand-eye is 10 mm and 2 deg off.

    .venv/bin/python benchmarks/bench_calibrate.py --out /tmp/calib [--frames 80] [--size 640x480]
        [--source sfm|poses] [--scale depth|free] [--json FILE]

Renders the default scene with the true extrinsics of config/robot_b1z1.yaml, while the bag's
/tf_static carries a hand-eye 1 cm and 2 deg off (spec field published_robot_config). It runs
`m3 bag2scene` (every frame a keyframe) and `m3 calibrate --apply`, then prints:
- how far the calibrated hand-eye and mount are from the truth;
- the object placement error before and after: where each keyframe's pose puts every object's
  centre, against where it is (mean over keyframes x objects, mm).
An existing bag under OUT is reused (delete OUT to render again).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from m3_core.capture.bag2scene import bag_to_scene
from m3_core.capture.calibrate import calibrate_scene, write_robot_yaml
from m3_core.capture.handeye import correction
from m3_core.capture.keyframes import KeyframeConfig
from m3_core.capture.session import CaptureConfig
from m3_core.geometry.se3 import invert, transform_from_rt, transform_points
from m3_core.robot import load_robot_config
from m3_core.scene import load_scene
from m3_core.sim import config_dir, generate, load_spec, with_overrides

ROBOT_YAML = config_dir() / "robot_b1z1.yaml"


def object_error_mm(scene_dir: Path, gt_dir: Path) -> tuple[float, float]:
    """(mean, max) distance between where keyframe poses put each object's centre and where it is."""
    truth = {
        f["stamp_ns"]: np.asarray(f["world_from_camera"]) for f in _json(gt_dir / "cameras.json")["frames"]
    }
    centres = np.array(
        [o["box_center_world"] for o in _json(gt_dir / "objects.json")["objects"] if not o["support"]]
    )
    errs = []
    for f in load_scene(scene_dir).frames:
        in_camera = transform_points(invert(truth[f.stamp_ns]), centres)
        errs.append(np.linalg.norm(transform_points(f.world_from_camera, in_camera) - centres, axis=1))
    e = np.concatenate(errs) * 1e3
    return float(e.mean()), float(e.max())


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_off_yaml(path: Path) -> Path:
    """The robot YAML with its hand-eye 10 mm ([+6, -8, 0] mm, camera frame) and 2 deg off: what a
    robot records before it is calibrated."""
    x_true = load_robot_config(ROBOT_YAML).extrinsics.ee_from_camera.matrix()
    axis = np.ones(3) / np.sqrt(3)
    x_off = x_true @ transform_from_rt(
        Rotation.from_rotvec(np.radians(2.0) * axis).as_matrix(), np.array([0.006, -0.008, 0.0])
    )
    write_robot_yaml(ROBOT_YAML, path, {"ee_from_camera": x_off}, "hand-eye 10 mm and 2 deg off")
    return path


def make_scan(out: Path, frames: int, size: tuple[int, int]) -> np.ndarray:
    """Render (unless OUT/bag exists) and turn into OUT/scene; returns the true ee_from_camera."""
    x_true = load_robot_config(ROBOT_YAML).extrinsics.ee_from_camera.matrix()
    wrong = write_off_yaml(out / "robot_wrong.yaml")
    if not (out / "bag").exists():
        spec, spec_dir = load_spec(config_dir() / "sim_default.yaml")
        spec = replace(with_overrides(spec, frames=frames, size=size), published_robot_config=str(wrong))
        generate(spec, spec_dir, out / "bag")
    every = KeyframeConfig(min_translation_m=0.0, min_rotation_deg=0.0, min_interval_s=0.0, min_sharpness=0.0)
    bag_to_scene(
        out / "bag",
        out / "scene",
        load_robot_config(ROBOT_YAML),
        CaptureConfig(keyframes=every),
        overwrite=True,
    )
    return x_true


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder (bag, scene, SfM)")
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--source", choices=("sfm", "poses"), default="sfm")
    ap.add_argument("--scale", choices=("depth", "free"), default="depth")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in a.size.split("x"))
    t0 = time.perf_counter()
    x_true = make_scan(a.out, a.frames, (w, h))
    before = object_error_mm(a.out / "scene", a.out / "bag_gt")
    t1 = time.perf_counter()
    args = argparse.Namespace(
        scene=a.out / "scene", poses=a.out / "bag_gt" if a.source == "poses" else None,
        sfm=a.out / "sfm" if a.source == "sfm" else None, recon=None, config=ROBOT_YAML,
        out=a.out / "robot_calibrated.yaml", hand_eye_only=False, bootstrap=20, ransac_deg=1.0,
        json=True, apply=True, scale=a.scale,
    )  # fmt: skip
    summary, yaml_path = calibrate_scene(args)
    t2 = time.perf_counter()
    cal = load_robot_config(yaml_path).extrinsics
    dx, ax = correction(x_true, cal.ee_from_camera.matrix())
    dy, ay = correction(
        load_robot_config(ROBOT_YAML).extrinsics.lidar_from_armbase.matrix(), cal.lidar_from_armbase.matrix()
    )
    after = object_error_mm(a.out / "scene", a.out / "bag_gt")
    result = {
        "frames": a.frames, "size": a.size, "source": a.source, "scale": a.scale,
        "scan_s": round(t1 - t0, 1), "calibrate_s": round(t2 - t1, 1), "load_average": os.getloadavg(),
        "hand_eye_error_mm": round(float(np.linalg.norm(dx)) * 1e3, 3), "hand_eye_error_deg": round(ax, 4),
        "mount_error_mm": round(float(np.linalg.norm(dy)) * 1e3, 3), "mount_error_deg": round(ay, 4),
        "object_error_before_mm": [round(v, 2) for v in before], "object_error_after_mm": [round(v, 2) for v in after],
        "calibrate": summary,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
