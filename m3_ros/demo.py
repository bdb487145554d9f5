"""`m3 demo`: the README's main command, the whole chain on the built-in simulated robot scene.

  1. m3 sim            simulated B1+Z1 scan -> ROS 2 bag (+ ground truth kept aside), and a short
                       bag of the robot standing at the table to grasp (`m3 sim --stance`)
  2. capture (ROS)     replay node -> pose-chain node -> capture node, three processes -> scene dir
  3. m3 sim masks      the simulator's instance masks + captions for the language-mask model
  4. m3 train          M3 memory (language-mask features + RGB)
  5. query (ROS)       query node + pose chain + looping replay of the stance bag (live TF);
                       call /m3/query
  6. report            grasp target in the arm-base frame, its error against ground truth, pictures

Each stage prints the equivalent command a user would type; node output goes to OUT/logs/.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rosbags.rosbag2 import Reader

from m3_core.robot import load_robot_config
from m3_core.scene import load_scene
from m3_core.sim import gt_dir_for, read_objects, write_scene_masks
from m3_ros.conversions import matrix_from_pose_msg
from m3_ros.demo_client import DemoClient
from m3_ros.demo_report import write_pictures
from m3_ros.graph import SAFE_PATH_FLAGS, load_group
from m3_ros.ros_demo import NodeProcesses

log = logging.getLogger(__name__)


class Stage:
    """Times a stage and prints it as a headline."""

    def __init__(self, timings: dict[str, float], name: str, command: str | None = None) -> None:
        self.timings, self.name, self.command = timings, name, command

    def __enter__(self) -> Stage:
        print(f"\n== {self.name}" + (f"\n   $ {self.command}" if self.command else ""), flush=True)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.t0, 1)
        if exc[0] is None:
            print(f"   done in {self.timings[self.name]:.1f} s", flush=True)


def _answer_report(answer_arm, answer_odom, truth: np.ndarray) -> dict[str, Any]:
    """The answer's numbers for summary.json: object centre and error, the best grasp in odom."""

    c, a = answer_odom.target.object_centre, answer_arm.target.object_centre
    target_world = np.array([c.x, c.y, c.z])
    out: dict[str, Any] = {
        "target_arm_base": [a.x, a.y, a.z],
        "target_world": target_world.tolist(),
        "truth_world": truth.tolist(),
        "error_m": float(np.linalg.norm(target_world - truth)),
        "label": answer_arm.target.label,
        "score": answer_arm.target.score,
        "latency_ms": {"first_call": answer_arm.total_ms, "second_call": answer_odom.total_ms},
        "grasp_world": None,
    }
    target = answer_odom.target
    if len(target.grasps):
        out["grasp_world"] = {
            "world_from_grasp": matrix_from_pose_msg(target.pose).tolist(),
            "world_from_pregrasp": matrix_from_pose_msg(target.pregrasp_pose).tolist(),
            "width_m": float(target.width),
            "quality": float(target.quality),
        }
    return out


def _physics_check(out: Path, gt_dir: Path, grasp: dict | None, target: str, timeout: float) -> dict | None:
    """Execute the best grasp on the simulator's ground truth (`m3 sim grasp`): did it hold?"""
    if grasp is None:
        return None
    grasp_file = out / "grasp.json"
    grasp_file.write_text(json.dumps(grasp, indent=1) + "\n")
    cmd = [sys.executable, *SAFE_PATH_FLAGS, "-m", "m3_ros.cli", "sim", "grasp", str(grasp_file), "--gt", str(gt_dir),
           "--target", target, "--json", "--picture", str(out / "grasp_physics.png")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"success": False, "error": (result.stderr or result.stdout).strip()[-300:]}


def bag_message_counts(bag: Path) -> dict[str, int]:
    """Messages per topic in a ROS 2 bag (what a full replay sends)."""
    counts: Counter[str] = Counter()
    with Reader(bag) as reader:
        for connection in reader.connections:
            counts[connection.topic] += connection.msgcount
    return dict(counts)


def image_counts(counts: dict[str, int]) -> dict[str, int]:
    """The image streams of a bag's per-topic counts: what the capture must have taken in before its
    scene is saved. Camera info repeats with every frame and only its first matters; a loaded
    capture node that lost one of 300 (a full reliable KEEP_LAST queue) made the demo wait its whole
    stall timeout (60 s) for it."""
    topics = load_robot_config().topics
    return {t: n for t, n in counts.items() if t in (topics.color, topics.depth)}


def _m3(args: list[str], timeout: float) -> None:
    """Run an `m3` subcommand as a child process (what a user would type), failing loudly."""
    cmd = [sys.executable, *SAFE_PATH_FLAGS, "-m", "m3_ros.cli", *args]
    result = subprocess.run(cmd, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"`m3 {' '.join(args)}` failed with exit code {result.returncode}")


@dataclass(frozen=True)
class DemoPaths:
    """Where each stage writes: all under the demo's --out folder."""

    out: Path
    bag: Path
    scene_dir: Path
    memory_dir: Path
    logs: Path
    gt_dir: Path
    stance_bag: Path
    texts: Path

    @classmethod
    def under(cls, out: Path) -> DemoPaths:
        return cls(out, out / "bag", out / "scene", out / "memory", out / "logs", gt_dir_for(out / "bag"),
                   out / "stance_bag", out / "texts.safetensors")  # fmt: skip


@dataclass
class DemoRun:
    """What the stages hand on to the report: timings, node exit codes, capture counts, answers."""

    paths: DemoPaths
    values: dict[str, str]
    """Launch values of the node groups (config/graph.yaml)."""
    timings: dict[str, float] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    capture_stats: dict[str, Any] = field(default_factory=dict)
    answer_arm: Any = None
    answer_odom: Any = None
    overlay: Any = None
    t_start: float = field(default_factory=time.perf_counter)


def _launch_values(args: argparse.Namespace, paths: DemoPaths) -> dict[str, str]:
    return {"bag": str(paths.bag), "rate": str(args.rate), "scene_dir": str(paths.scene_dir),
            "memory": str(paths.memory_dir), "device": args.device, "camera_reliable": "true",
            "text_embeddings": "",
            # A short CPU training can leave a memory on which the planner finds no grasp of the
            # object (1 of 3 fresh-clone CI runs): the demo still reports the located object and
            # says "no feasible grasp" rather than failing. On a robot the node refuses instead.
            "require_grasp": "false"}  # fmt: skip


# Where the robot stands to grasp after its scan: the scan walks an arc 1 m from the table's centre,
# which puts the arm base ~0.8 m from the objects, beyond the Z1's reach; a robot steps closer before
# it asks. Azimuth (table frame) and distance of the body from the look-at point, and the frames of
# that short bag (3 s at the camera's 15 Hz: what the query stage replays in a loop).
STANCE_AZIMUTH_DEG = -90.0
STANCE_DISTANCE_M = 0.8
STANCE_FRAMES = 45


def _simulate(args: argparse.Namespace, run: DemoRun) -> None:
    bag = run.paths.bag
    with Stage(
        run.timings,
        "1/6 simulate the robot scan",
        f"m3 sim --out {bag} --frames {args.frames} --size {args.size}",
    ):
        _m3(
            ["sim", "--out", str(bag), "--frames", str(args.frames), "--size", args.size, "--force"],
            args.timeout,
        )


def _beside_capture(args: argparse.Namespace, run: DemoRun) -> dict[str, subprocess.Popen]:
    """Work for the query stage that needs no ROS, run while the capture stage (which mostly waits for
    the replay's pace) leaves the CPU half idle: the short bag of the robot standing at the table
    (one render process), and the query's text embeddings (the query node then starts without
    loading the sentence model). _query waits for them."""
    stance = ["sim", "--out", str(run.paths.stance_bag), "--frames", str(STANCE_FRAMES), "--size", args.size,
              "--force", "--workers", "1", "--stance", str(STANCE_AZIMUTH_DEG), str(STANCE_DISTANCE_M)]  # fmt: skip
    jobs = {"stance_sim": stance}
    if args.models == "language":
        jobs["text_embeddings"] = ["text-embeddings", args.query, "--model", "language", "--out", str(run.paths.texts)]
    procs = {}
    for name, m3_args in jobs.items():
        print(f"   (beside it) $ m3 {' '.join(a for a in m3_args if a != '--force')}", flush=True)
        log = (run.paths.logs / f"{name}.log").open("w")
        cmd = [sys.executable, *SAFE_PATH_FLAGS, "-m", "m3_ros.cli", *m3_args]
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return procs


def _wait_beside(procs: dict[str, subprocess.Popen], run: DemoRun, timeout: float) -> None:
    for name, proc in procs.items():
        code = proc.wait(timeout)
        if code != 0:
            raise RuntimeError(f"{name} failed with exit code {code}; see {run.paths.logs / (name + '.log')}")
    if "text_embeddings" in procs:
        run.values["text_embeddings"] = str(run.paths.texts)


def _capture(args: argparse.Namespace, run: DemoRun, client: Any) -> None:
    p = run.paths
    with NodeProcesses(p.logs) as nodes:  # stopped on the way out, also on an error
        nodes.start(load_group("capture", run.values))
        client.wait_for_capture(timeout=60.0)
        nodes.start(load_group("replay", run.values))
        code = nodes.wait("m3_replay", timeout=args.timeout)
        if code != 0:
            raise RuntimeError(f"replay exited with {code}; see {p.logs / 'm3_replay.log'}")
        # the replay has handed every message over; a loaded capture may still be decoding them
        missing = client.wait_capture_received(image_counts(bag_message_counts(p.bag)), timeout=args.timeout)
        if missing:
            print(f"   WARNING: the capture never received {missing} (messages per topic)")
        saved = client.finish_scene(timeout=60.0)
        run.exit_codes.update(nodes.stop())
    # what the capture received, paired and kept (every frame sent should be received and paired)
    run.capture_stats = load_scene(p.scene_dir).extra.get("capture_stats", {})
    print(f"   capture: {saved.split(';')[0]}")
    print(
        "   capture counts: received color={received_color} depth={received_depth}, "
        "paired={paired}, kept={kept}, dropped={dropped}".format(**run.capture_stats)
    )


def _masks(run: DemoRun) -> None:
    with Stage(
        run.timings,
        "3/6 instance masks + captions for the language-mask model",
        f"m3 sim masks {run.paths.scene_dir} {run.paths.gt_dir}",
    ):
        n = write_scene_masks(run.paths.scene_dir, run.paths.gt_dir)
        print(f"   {n} keyframes got masks from {run.paths.gt_dir}")


def _train(args: argparse.Namespace, run: DemoRun) -> None:
    scene_dir, memory_dir = run.paths.scene_dir, run.paths.memory_dir
    with Stage(
        run.timings,
        "4/6 train the M3 memory",
        f"m3 train {scene_dir} --models {args.models} --out {memory_dir}",
    ):
        train_args = ["train", str(scene_dir), "--models", args.models, "--out", str(memory_dir)]
        train_args += ["--device", args.device]
        if args.iters is not None:
            train_args += ["--iters", str(args.iters)]
        _m3(train_args, args.timeout)


def _query(args: argparse.Namespace, run: DemoRun, client: Any) -> None:
    with Stage(run.timings, "5/6 query through ROS (query node at the live camera pose, robot at the table)",
               f"ros2 service call /m3/query m3_grasp/srv/Query \"{{text: '{args.query}'}}\""):  # fmt: skip
        run.values["rate"] = "1.0"
        run.values["bag"] = str(run.paths.stance_bag)
        with NodeProcesses(run.paths.logs) as nodes:
            nodes.start(load_group("query", run.values))
            nodes.start(load_group("replay_loop", run.values))
            run.answer_arm = client.query(args.query, "arm_base_link", timeout=args.timeout)
            run.answer_odom = client.query(args.query, "odom", timeout=60.0)
            run.overlay = client.latest_overlay()
            run.exit_codes.update(nodes.stop())


def _ros_stages(args: argparse.Namespace, run: DemoRun) -> None:
    """Stages 2-5: the ones that talk to ROS nodes through one client node."""

    rclpy.init()
    client = DemoClient()
    run.paths.logs.mkdir(parents=True, exist_ok=True)
    beside: dict[str, subprocess.Popen] = {}
    try:
        with Stage(run.timings, "2/6 capture through ROS (replay -> pose chain -> capture)",
                   f"m3 ros-demo replay capture --bag {run.paths.bag} --rate {args.rate} --scene-dir {run.paths.scene_dir}"):  # fmt: skip
            beside = _beside_capture(args, run)
            _capture(args, run, client)
        _masks(run)
        _train(args, run)
        _wait_beside(beside, run, args.timeout)
        _query(args, run, client)
    finally:
        for proc in beside.values():
            if proc.poll() is None:
                proc.kill()
        client.destroy_node()
        rclpy.try_shutdown()


def _report(args: argparse.Namespace, run: DemoRun) -> dict[str, Any]:
    p = run.paths
    with Stage(run.timings, "6/6 report"):
        objects = {o["name"]: o for o in read_objects(p.gt_dir)}
        if args.object not in objects:
            raise ValueError(f"--object {args.object!r} is not in the scene; objects: {sorted(objects)}")
        truth = np.array(objects[args.object]["box_center_world"])
        report = {
            "query": args.query,
            "success": bool(run.answer_odom.success and run.answer_arm.success),
            "message": run.answer_arm.message,
            "exit_codes": run.exit_codes,
            "capture_stats": run.capture_stats,
            "timings_s": run.timings,
        }
        if report["success"]:
            report.update(_answer_report(run.answer_arm, run.answer_odom, truth))
            report["physics"] = _physics_check(
                p.out, p.gt_dir, report["grasp_world"], args.object, args.timeout
            )
        report["pictures"] = write_pictures(p.out, p.scene_dir, p.memory_dir, p.gt_dir, report, run.overlay)
        report["timings_s"]["total"] = round(time.perf_counter() - run.t_start, 1)
        (p.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _reach_hint(target_arm_base: list[float]) -> str:
    """Why there may be no grasp: the object beyond what the arm reaches from where the robot stands."""
    arm = load_robot_config().arm
    distance = float(np.linalg.norm(target_arm_base))
    if distance + arm.flange_from_grasp_m <= arm.reach_m:
        return ""
    return (
        f" (the object is {distance:.2f} m from the arm base; the arm reaches "
        f"{arm.reach_m:.2f} m to its flange, {arm.flange_from_grasp_m:.2f} m behind the grasp: a robot "
        "would step closer and ask again)"
    )


def _print_result(args: argparse.Namespace, report: dict[str, Any], out: Path) -> int:
    """The result block; 0 when the target is within --max-error-m and every node exited cleanly."""
    print("\n== result")
    if not report["success"]:
        print(f"   query failed: {report['message']}")
        return 1
    ta = report["target_arm_base"]
    print(
        f"   '{args.query}' -> grasp target in arm_base_link: x={ta[0]:+.3f} y={ta[1]:+.3f} z={ta[2]:+.3f} m"
    )
    print(f"   error against ground truth ({args.object} box centre): {report['error_m'] * 100:.1f} cm")
    grasp, physics = report.get("grasp_world"), report.get("physics") or {}
    if grasp:
        print(f"   best grasp: {100 * grasp['width_m']:.1f} cm wide, quality {grasp['quality']:.2f}; physics check "
              f"(pybullet, lift 10 cm, hold 1 s): {'HELD' if physics.get('success') else 'FAILED'} - "
              f"{physics.get('message', physics.get('error', ''))}")  # fmt: skip
    else:
        print(f"   no feasible grasp in the answer: nothing to execute{_reach_hint(ta)}")
    exit_codes = report["exit_codes"]
    print(f"   node exit codes: {exit_codes}")
    print(f"   pictures: {', '.join(report['pictures'])}")
    print(f"   total {report['timings_s']['total']:.0f} s; summary: {out / 'summary.json'}")
    ok = report["error_m"] <= args.max_error_m and all(c == 0 for c in exit_codes.values())
    return 0 if ok else 1


def run_demo(args: argparse.Namespace) -> int:
    """The six stages with `m3 demo`'s arguments (m3_ros.demo_cli); 0 when the target is found within
    --max-error-m and every node exited cleanly. Raises what a stage raises (demo_cli reports it)."""
    paths = DemoPaths.under(args.out.absolute())
    paths.out.mkdir(parents=True, exist_ok=True)
    run = DemoRun(paths, _launch_values(args, paths))
    _simulate(args, run)
    _ros_stages(args, run)
    report = _report(args, run)
    return _print_result(args, report, paths.out)
