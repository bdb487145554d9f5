"""`m3 demo`: the command line of m3_ros.demo (the whole chain on the built-in scene)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from m3_core.errors import M3Error
from m3_ros.demo import run_demo
from m3_ros.ros_demo import interrupt_on_termination


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (default %(default)s)"
    )
    parser.add_argument("--query", default="yellow bath duck", help="text to ask (default %(default)r)")
    parser.add_argument("--object", default="duck", help="ground-truth object the query should find")
    parser.add_argument("--frames", type=int, default=300, help="camera frames in the simulated scan")
    parser.add_argument("--size", default="640x480", help="camera image size WxH")
    parser.add_argument("--rate", type=float, default=2.0, help="replay speed factor for capture")
    parser.add_argument("--iters", type=int, default=None, help="training iterations (default: trainer's)")
    parser.add_argument("--models", default="language", help="feature models to train (comma list)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training and query node)")
    parser.add_argument("--max-error-m", type=float, default=0.03, help="fail if the target is further off")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-stage timeout, seconds")


def run(args: argparse.Namespace) -> int:
    interrupt_on_termination()  # SIGTERM / SIGHUP stop the stage's nodes like Ctrl-C
    try:
        return run_demo(args)
    except (RuntimeError, TimeoutError, M3Error, ValueError, subprocess.TimeoutExpired) as err:
        print(f"\nm3 demo failed: {err}\n   node logs: {args.out.absolute() / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: the stage's nodes were stopped on the way out
        print(f"\nm3 demo interrupted\n   node logs: {args.out.absolute() / 'logs'}", file=sys.stderr)
        return 130

