"""`m3 sim grasp GRASP_JSON`: execute a grasp in pybullet physics on a simulated scene.

The scene is the simulator's ground truth: a spec YAML (default: the built-in scene) or the
`<bag>_gt/` folder `m3 sim` wrote next to a bag (its spec.json). The grasp is JSON (file or `-` for
stdin): what `m3 query --json` prints, or a pose + width (m3_core.sim.grasp_json lists the forms).
Exit code 0: an object was lifted and held (the --target one if given); 1: the grasp failed;
2: bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from m3_core.config import config_dir
from m3_core.robot import RobotConfig, load_robot_config
from m3_core.scene import atomic_write_png
from m3_core.sim.grasp_check import GraspOutcome, GraspSim, grasp_picture, picture_camera
from m3_core.sim.grasp_json import grasp_from_json
from m3_core.sim.gt import read_objects
from m3_core.sim.spec import SimSpec, load_spec, spec_from_dict

SPEC_JSON = "spec.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "grasp", help="grasp JSON file, or - to read it from stdin (e.g. m3 query --json | ...)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--spec", type=Path, default=None, help="scene spec YAML (default: the built-in scene)"
    )
    where.add_argument(
        "--gt", type=Path, default=None, help="ground-truth folder of a simulated bag (<bag>_gt)"
    )
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed (random placements)")
    parser.add_argument(
        "--robot", type=Path, default=None, help="robot YAML with the gripper (default: the spec's)"
    )
    parser.add_argument(
        "--target", default=None, help="object the grasp is meant for (else any object counts)"
    )
    parser.add_argument("--index", type=int, default=0, help="which grasp of a query answer's ranked list")
    parser.add_argument("--picture", type=Path, default=None, help="write a PNG of the gripper (side views)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")


def scene_spec(spec_path: Path | None, gt_dir: Path | None, seed: int | None) -> tuple[SimSpec, Path]:
    """(spec, folder its relative paths start from) from a spec YAML or a ground-truth folder."""
    if gt_dir is not None:
        path = Path(gt_dir) / SPEC_JSON
        if not path.is_file():
            raise ValueError(f"{gt_dir} is not a simulator ground-truth folder: {SPEC_JSON} is missing")
        spec, folder = spec_from_dict(json.loads(path.read_text()), where=str(path)), Path(gt_dir)
    else:
        spec, folder = load_spec(spec_path or config_dir() / "sim_default.yaml")
    if seed is not None:
        spec = replace(spec, seed=int(seed))
    return spec, folder


def robot_for(spec: SimSpec, folder: Path, robot_path: Path | None) -> RobotConfig:
    """The robot YAML given, else the spec's (relative to its folder, else the package config)."""
    if robot_path is not None:
        return load_robot_config(robot_path)
    path = Path(spec.robot_config)
    if not path.is_absolute():
        path = folder / path if (folder / path).exists() else config_dir() / path
    return load_robot_config(path)


def check_against_ground_truth(sim: GraspSim, gt_dir: Path, tolerance_m: float = 0.002) -> None:
    """The rebuilt scene must place every object where the bag's objects.json says (same spec,
    same seed, same URDFs); a mismatch means the physics would judge another scene."""
    recorded = {
        o["name"]: np.asarray(o["box_center_world"]) for o in read_objects(gt_dir) if not o["support"]
    }
    for body in sim.world.bodies:
        if body.name not in recorded:
            raise ValueError(f"{gt_dir}: objects.json has no {body.name!r}; was it written by this spec?")
        off = float(np.linalg.norm(body.box_center - recorded[body.name]))
        if off > tolerance_m:
            raise ValueError(
                f"{body.name} is rebuilt {off * 100:.1f} cm from where {gt_dir}/objects.json has it; "
                "the pybullet_data models or the placement code changed since the bag was made"
            )


def _read_grasp_json(source: str) -> object:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as err:
        raise ValueError(f"cannot read the grasp JSON {source}: {err.strerror}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the grasp is not valid JSON ({source}): {err}") from err


def _report(outcome: GraspOutcome, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(outcome.to_json(), indent=1))
    elif outcome.success:
        print(f"held: {outcome.message}")
    else:
        print(f"failed ({outcome.reason}): {outcome.message}")


def run(args: argparse.Namespace) -> int:
    try:
        spec, folder = scene_spec(args.spec, args.gt, args.seed)
        robot = robot_for(spec, folder, args.robot)
        grasp = grasp_from_json(_read_grasp_json(args.grasp), robot.gripper.approach_distance_m, args.index)
        with GraspSim(spec, robot.gripper) as sim:
            if args.gt is not None:
                check_against_ground_truth(sim, args.gt)
            if args.target is not None and args.target not in sim.names():
                raise ValueError(f"--target {args.target!r} is not in the scene; objects: {sim.names()}")
            if args.picture is not None:
                sim.picture_camera = picture_camera()
            outcome = sim.check(grasp, target=args.target)
            if args.picture is not None:
                atomic_write_png(args.picture, grasp_picture(sim.snapshots, outcome))
    except (ValueError, FileNotFoundError) as err:
        print(f"m3 sim grasp: {err}", file=sys.stderr)
        return 2
    _report(outcome, args)
    return 0 if outcome.success else 1
