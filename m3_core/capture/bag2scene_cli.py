"""`m3 bag2scene BAG OUT`: the command line of m3_core.capture.bag2scene (a bag -> keyframed scene)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rosbags.rosbag2 import ReaderError

from m3_core.capture.bag2scene import bag_to_scene
from m3_core.capture.keyframes import KeyframeConfig
from m3_core.capture.session import CaptureConfig
from m3_core.errors import M3Error
from m3_core.robot import DEFAULT_ROBOT_YAML, load_robot_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, k = CaptureConfig(), KeyframeConfig()
    parser.add_argument("bag", type=Path, help="ROS 2 bag (directory, .mcap or .db3)")
    parser.add_argument("out", type=Path, help="output scene directory")
    parser.add_argument("--config", type=Path, default=DEFAULT_ROBOT_YAML, help="robot YAML (topics, frames)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing scene at OUT")
    parser.add_argument("--min-translation", type=float, default=k.min_translation_m, help="keyframe gate, m")
    parser.add_argument(
        "--min-rotation", type=float, default=k.min_rotation_deg, help="keyframe gate, degrees"
    )
    parser.add_argument(
        "--max-interval", type=float, default=k.max_interval_s, help="keyframe every N s (0: off)"
    )
    parser.add_argument(
        "--min-interval", type=float, default=k.min_interval_s, help="min s between keyframes"
    )
    parser.add_argument(
        "--min-sharpness", type=float, default=k.min_sharpness, help="Laplacian variance gate"
    )
    parser.add_argument(
        "--min-valid-depth", type=float, default=k.min_valid_depth_fraction, help="min valid depth fraction"
    )
    parser.add_argument(
        "--tf-wait", type=float, default=d.tf_wait_s, help="wait for transforms past a stamp, s"
    )
    parser.add_argument(
        "--save-every", type=int, default=d.save_every, help="rewrite metadata every N keyframes"
    )
    # ground-truth masks are the simulator's: say where the flag went
    parser.add_argument("--gt", type=Path, default=None, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> CaptureConfig:
    keyframes = KeyframeConfig(
        min_translation_m=args.min_translation,
        min_rotation_deg=args.min_rotation,
        max_interval_s=args.max_interval,
        min_interval_s=args.min_interval,
        min_sharpness=args.min_sharpness,
        min_valid_depth_fraction=args.min_valid_depth,
    )
    return CaptureConfig(keyframes=keyframes, tf_wait_s=args.tf_wait, save_every=args.save_every)


def run(args: argparse.Namespace) -> int:
    from rosbags.highlevel import AnyReaderError  # local: rosbags loads only for this command

    t0 = time.perf_counter()
    if args.gt is not None:
        print("m3 bag2scene: --gt moved to the simulator: run `m3 sim masks SCENE GT_DIR` after bag2scene")
        return 2
    try:
        robot = load_robot_config(args.config)
        session = bag_to_scene(args.bag, args.out, robot, config_from_args(args), overwrite=args.overwrite)
    except (AnyReaderError, ReaderError) as err:
        print(f"m3 bag2scene: {args.bag} is not a readable ROS 2 bag ({err})")
        return 2
    except (ValueError, M3Error, OSError) as err:  # a bad bag or config, an output that cannot be written
        print(f"m3 bag2scene: {err}")
        return 2
    lost = session.stats.dropped.get("write_error", 0) + session.stats.save_errors
    if lost:  # a keyframe or a save that did not reach the disk: the scene is not what the bag holds
        print(
            f"m3 bag2scene: {lost} keyframe write(s) failed in {args.out} (disk full?); {session.stats.line()}"
        )
        return 1
    print(
        f"{args.out}: {session.stats.kept} keyframes in {time.perf_counter() - t0:.1f}s; {session.stats.line()}"
    )
    return 0 if session.stats.kept else 1

