"""`m3 calibrate SCENE`: the command line of m3_core.capture.calibrate (hand-eye and mount from a scan)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from m3_core.capture.calibrate import calibrate_scene, report_lines
from m3_core.capture.handeye import (
    HandEyeConfig,
)
from m3_core.errors import M3Error
from m3_core.robot import DEFAULT_ROBOT_YAML


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = HandEyeConfig()
    parser.add_argument("scene", type=Path, help="scene directory captured by m3 (scene.json + sparse/0)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--sfm", type=Path, metavar="WORKDIR", help="run pycolmap SfM on SCENE/images in WORKDIR"
    )
    src.add_argument("--recon", type=Path, metavar="DIR", help="an existing COLMAP model of SCENE/images")
    src.add_argument(
        "--poses", type=Path, metavar="JSON",
        help='metric camera poses {"frames": [{"stamp_ns", "world_from_camera"}]} matched by stamp '
        "(e.g. a simulated bag's <bag>_gt/cameras.json)",
    )  # fmt: skip
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_ROBOT_YAML, help="robot YAML to correct (default: B1+Z1)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="corrected robot YAML (default: SCENE/robot_calibrated.yaml)"
    )
    parser.add_argument(
        "--scale",
        choices=("depth", "free"),
        default="depth",
        help="SfM's scale: from the scene's depth images (default) or fitted with the hand-eye",
    )
    parser.add_argument("--hand-eye-only", action="store_true", help="keep the mount from the scene")
    parser.add_argument("--bootstrap", type=int, default=20, help="bootstrap resamplings (0: Jacobian only)")
    parser.add_argument(
        "--ransac-deg", type=float, default=d.ransac_rotation_deg, help="pair rotation inlier threshold, deg"
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help="also recompute SCENE's keyframe poses with the calibrated extrinsics (retrain afterwards)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        s, out = calibrate_scene(args)
    except (
        ValueError,
        OSError,
        RuntimeError,
        M3Error,
    ) as err:  # HandEyeError is a ValueError; pycolmap raises RuntimeError
        print(f"m3 calibrate: {err}")
        return 2
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        print("\n".join(report_lines(s)))
        print(f"wrote {out}")
    return 0

