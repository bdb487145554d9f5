"""`m3 sim`: generate the simulated B1+Z1 tabletop scan as a ROS 2 bag plus its ground truth.

`m3 sim grasp GRASP_JSON`: execute a grasp in pybullet physics on a simulated scene
(m3_core.sim.grasp_cli).

`m3 sim masks SCENE GT_DIR`: give a scene made from a simulated bag (`m3 bag2scene`, the capture
node) the simulator's ground-truth instance masks and captions, for the language-mask model. The
simulator owns its ground truth: the capture tools never read it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from m3_core.errors import M3Error
from m3_core.sim import grasp_cli
from m3_core.sim.generate import config_dir, generate, with_overrides
from m3_core.sim.gt import write_scene_masks
from m3_core.sim.spec import load_spec

log = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--size must look like 640x480, got {text!r}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spec",
        type=Path,
        default=config_dir() / "sim_default.yaml",
        help="scene spec YAML (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("sim_bag"), help="bag folder to write (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    parser.add_argument(
        "--frames", type=int, default=None, help="camera frames (same path, scan speed adapts)"
    )
    parser.add_argument("--size", type=_size, default=None, help="image size WxH (intrinsics rescaled)")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    parser.add_argument(
        "--depth-noise", action="store_true", default=None, help="D405-like depth noise + edge dropouts"
    )
    parser.add_argument(
        "--odometry-drift", action="store_true", default=None, help="random-walk odometry drift"
    )
    parser.add_argument("--stamp-jitter", action="store_true", default=None, help="camera timestamp jitter")
    parser.add_argument(
        "--stance",
        type=float,
        nargs=2,
        metavar=("AZIMUTH_DEG", "DISTANCE_M"),
        default=None,
        help="the body stands still at this azimuth (table frame, 0 = +x) and distance from the look-at "
        "point while the arm sweeps the camera: where the robot stands to grasp after its scan",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="rendering processes (default: 2, 1 for tiny scenes)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    grasp = actions.add_parser(
        "grasp",
        help="execute a grasp in pybullet physics on a simulated scene",
        description=grasp_cli.__doc__.split("\n\n")[0],
    )
    grasp_cli.add_arguments(grasp)
    masks = actions.add_parser(
        "masks",
        help="copy the simulator's ground-truth masks + captions into a scene made from its bag",
        description="Copy the ground-truth instance masks and captions of a simulated bag into a scene "
        "made from that bag (masks/ and masks/captions.json), for the language-mask model.",
    )
    masks.add_argument("scene", type=Path, help="scene directory made from the simulated bag")
    masks.add_argument("gt", type=Path, help="the bag's ground-truth folder (<bag>_gt, with objects.json)")


def run_masks(args: argparse.Namespace) -> int:
    """`m3 sim masks SCENE GT_DIR`; 2 with one line when GT_DIR is not a ground truth or does not fit."""
    if not (args.gt / "objects.json").is_file():
        print(f"m3 sim masks: {args.gt} is not a simulator ground-truth folder (no objects.json)")
        return 2
    try:
        n = write_scene_masks(args.scene, args.gt)
    except (ValueError, M3Error, OSError) as err:
        print(f"m3 sim masks: cannot copy the ground-truth masks from {args.gt}: {err}")
        return 2
    print(f"{args.scene}: {n} keyframes got masks and captions from {args.gt}")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "grasp":
        return grasp_cli.run(args)
    if getattr(args, "action", None) == "masks":
        return run_masks(args)

    try:
        spec, spec_dir = load_spec(args.spec)
        spec = with_overrides(
            spec,
            seed=args.seed,
            frames=args.frames,
            size=args.size,
            depth_noise=args.depth_noise,
            odometry_drift=args.odometry_drift,
            stamp_jitter=args.stamp_jitter,
            stance=args.stance,
        )
        result = generate(
            spec, spec_dir, args.out, force=args.force, progress=not args.no_progress and not args.json
        )
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"m3 sim: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(
            f"wrote {result.bag_dir} ({result.frames} frames {result.size[0]}x{result.size[1]}, "
            f"{result.seconds:.1f} s) and ground truth {result.gt_dir}"
        )
        for topic, info in result.topics.items():
            print(f"  {topic:55s} {info['type']:32s} {info['count']}")
    return 0
