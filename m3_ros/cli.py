"""The `m3` command line: one table of subcommands, each in its package's command-line module.

Command-line code lives in a package's `cli.py` or in a `<name>_cli.py` next to the logic it drives
(`capture/bag2scene_cli.py` for `capture/bag2scene.py`), never inside logic modules or node files
(tests/test_layers.py checks it). A subcommand module provides `add_arguments(parser)` and `run(args) -> int`. Modules are imported
only when their subcommand runs, so `m3 sim` never loads rclpy and `m3 --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name: (module, one-line help). Core commands live in m3_core, ROS ones in m3_ros.
COMMANDS: dict[str, tuple[str, str]] = {
    "sim": (
        "m3_core.sim.cli",
        "generate the simulated B1+Z1 tabletop scan as a ROS 2 bag (m3 sim grasp: a grasp in physics)",
    ),
    "replay": ("m3_ros.replay_cli", "publish a bag on ROS 2 topics with its timing"),
    "bag2scene": ("m3_core.capture.bag2scene_cli", "turn a bag into a keyframed scene directory"),
    "colmap-align": ("m3_core.capture.colmap_align_cli", "align a COLMAP reconstruction to the robot frame"),
    "calibrate": (
        "m3_core.capture.calibrate_cli",
        "hand-eye (and mount) from a scan; writes a corrected robot YAML",
    ),
    "features": ("m3_core.features.cli", "extract and cache foundation-model features of a scene"),
    "train": ("m3_core.training.cli", "train an M3 memory from a scene directory"),
    "eval": ("m3_core.training.eval_cli", "evaluate a memory on held-out views"),
    "query": ("m3_core.query.cli", "text query -> grasp target without ROS"),
    "text-embeddings": (
        "m3_core.query.text_table_cli",
        "precompute a memory's text embeddings for given queries (a query node without the encoder)",
    ),
    "view": ("m3_core.view.cli", "open a memory in the browser: orbit, render, query, see the grasp"),
    "demo": ("m3_ros.demo_cli", "the whole chain on the built-in scene (README main command)"),
    "ros-demo": ("m3_ros.ros_demo_cli", "start the demo's ROS nodes as processes (like demo.launch.py)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3", description="M3 memory for language-driven grasping")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        build_parser().print_usage(sys.stderr)
        print(f"m3: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="[%(levelname)s] %(name)s: %(message)s"
    )
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"m3 {name}: not built yet ({module_name} is missing)", file=sys.stderr)
            return 3
        raise
    sub = argparse.ArgumentParser(prog=f"m3 {name}", description=help_text)
    module.add_arguments(sub)
    return int(module.run(sub.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
