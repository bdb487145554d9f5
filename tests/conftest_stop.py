"""Stopping a capture node while a replay keeps sending: shared by tests/test_capture_ros.py and
benchmarks/bench_stop.py.

Each call starts fresh processes (pose chain, capture saving every keyframe, looping replay that
waits until both nodes report ready), waits for the capture's first save on disk (traffic is flowing
and the writer is busy), sends SIGINT to the capture while the replay still runs, and measures how
long the node takes to drain, save and exit.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from m3_core.scene import SceneError, load_scene
from tests.conftest import Process, wait_until


@dataclass
class StopRun:
    """One stop of a capture node under traffic."""

    code: int
    """The capture node's exit code."""
    stop_s: float
    """Seconds from SIGINT to the node's exit."""
    traffic: bool
    """The replay was still sending when the SIGINT went out."""
    saved: int
    """Keyframes in the scene on disk after the exit."""
    kept: int
    """Keyframes the node says it kept (scene.json's capture_stats)."""
    final_save: bool
    """The node logged its final save."""
    others: dict[str, int]
    """Exit codes of the replay and the pose chain, stopped after it."""
    log: str
    """The capture node's output."""


def _saved_frames(out: Path) -> int:
    try:
        return len(load_scene(out))
    except (OSError, ValueError, SceneError):  # not written yet, or being replaced
        return 0


def stop_capture_under_traffic(
    bag: Path,
    out: Path,
    env: dict[str, str],
    log_dir: Path,
    rate: float = 1.0,
    extra_wait_s: float = 0.0,
    timeout_s: float = 180.0,
) -> StopRun:
    """Start pose chain + capture + looping replay of `bag`, SIGINT the capture after its first save
    (plus `extra_wait_s`, for a benchmark that spreads the stop over the run), stop the rest."""
    log_dir.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    procs: dict[str, Process] = {}

    def start(name: str, args: list[str]) -> Process:
        procs[name] = Process(args, env, log_dir / f"{name}.log")
        return procs[name]

    try:
        start("pose_chain", [py, "-m", "m3_ros.pose_chain_node"])
        capture = start(
            "capture",
            [py, "-m", "m3_ros.capture_node", "--ros-args", "-p", f"output_dir:={out}", "-p", "save_every:=1",
             "-p", "camera_reliable:=true", "-p", "tf_timeout_s:=5.0"],
        )  # fmt: skip
        replay = start(
            "replay",
            [py, "-m", "m3_ros.cli", "replay", str(bag), "--rate", str(rate), "--loop",
             "--wait-ready", "m3_capture", "m3_pose_chain", "--wait-timeout", "120"],
        )  # fmt: skip

        def saved_or_died() -> bool:
            return _saved_frames(out) >= 1 or any(p.popen.poll() is not None for p in procs.values())

        wait_until(saved_or_died, timeout_s, what="the capture's first save under replay traffic")
        if extra_wait_s > 0:  # benchmark only: stop at a spread of points in the run
            time.sleep(extra_wait_s)
        traffic = replay.popen.poll() is None
        t0 = time.monotonic()
        code = capture.stop()
        stop_s = time.monotonic() - t0
        others = {name: procs[name].stop() for name in ("replay", "pose_chain")}
    finally:
        for p in procs.values():  # a failure above: nothing is left running
            if p.popen.poll() is None:
                p.stop()
    log = capture.output()
    kept = -1  # no scene.json or no stats in it
    with contextlib.suppress(OSError, ValueError, KeyError, SceneError):
        kept = int(load_scene(out).extra["capture_stats"]["kept"])
    return StopRun(code, stop_s, traffic, _saved_frames(out), kept, "final scene" in log, others, log)
