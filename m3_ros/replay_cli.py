"""`m3 replay BAG` and the `m3_replay_node` executable: the command line of m3_ros.replay_node."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args

from m3_ros.msg_types import BAG_READ_ERRORS
from m3_ros.replay_node import ReplayNode
from m3_ros.spin import install_stack_dump


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bag", type=Path, nargs="?", default=None, help="ROS 2 bag folder (e.g. from `m3 sim`; or -p bag:=)"
    )
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="play the bag again and again")
    parser.add_argument("--start-offset", type=float, default=0.0, help="skip the bag's first seconds")
    parser.add_argument("--topics", nargs="+", default=None, help="only these topics (default: all)")
    parser.add_argument(
        "--wait-for",
        nargs="*",
        default=None,
        help="topics that need a subscriber before playing (default: the camera, odometry and ee pose "
        "topics of the robot YAML, parameter robot_config; give none to start at once)",
    )
    parser.add_argument(
        "--wait-ready",
        nargs="*",
        default=[],
        metavar="NODE",
        help="nodes (e.g. m3_capture m3_pose_chain) that must report on /m3/node_status that they "
        "matched their inputs before playing",
    )
    parser.add_argument(
        "--wait-timeout", type=float, default=10.0, help="seconds to wait for subscribers / ready nodes"
    )
    parser.add_argument(
        "--clock",
        type=float,
        default=0.0,
        metavar="HZ",
        help="publish /clock with the bag's time at HZ (0 = off)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace, ros_args: list[str] | None = None) -> int:
    # our own SIGINT handling: rclpy's raises KeyboardInterrupt anywhere, e.g. between a publish and
    # its count, and the summary would then miss a message that was sent
    rclpy.init(args=ros_args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    summary = None
    try:
        node = ReplayNode(
            args.bag,
            rate=args.rate,
            loop=args.loop,
            start_offset_s=args.start_offset,
            topics=args.topics,
            wait_for=args.wait_for,
            wait_timeout_s=args.wait_timeout,
            clock_hz=args.clock,
            wait_ready=args.wait_ready,
        )
        signal.signal(signal.SIGINT, node.request_stop)
        install_stack_dump()  # SIGUSR1: where a replay that will not stop hangs
        summary = node.play()
    except (KeyboardInterrupt, ExternalShutdownException):
        if node is not None:
            summary = node.summary
            summary.interrupted = True
    except ValueError as err:
        print(f"m3 replay: {err}", file=sys.stderr)
        return 2
    except BAG_READ_ERRORS as err:  # a truncated or corrupt bag: one line, no traceback
        print(f"m3 replay: {args.bag} is not a readable ROS 2 bag ({err})", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if summary is not None:
        print(json.dumps(summary.to_json(), indent=1) if args.json else summary.text(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console script `m3_replay_node BAG [options] [--ros-args ...]`."""

    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog="m3_replay_node", description="publish a ROS 2 bag with its timing")
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    return run(parser.parse_args(remove_ros_args(argv)[1:]), ros_args=argv)


if __name__ == "__main__":
    sys.exit(main())

