"""`m3 ros-demo GROUP...`: start node groups of config/demo_graph.yaml as processes (m3_ros.ros_demo)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from m3_ros.graph import NodeSpec, graph_argument_specs, graph_arguments, load_group
from m3_ros.ros_demo import NodeProcesses, interrupt_on_termination


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "groups",
        nargs="+",
        help="node groups of config/demo_graph.yaml to start, e.g. `replay capture` or `query`",
    )
    for key, arg in graph_argument_specs().items():
        default = "required by its groups" if arg.required else f"default {arg.default!r}"
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            dest=key,
            default=arg.default or "",
            help=f"{arg.description} ({default})",
        )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="write each node's output to DIR/<node>.log"
    )


def run(args: argparse.Namespace) -> int:
    values = {k: getattr(args, k) for k in graph_arguments()}
    specs: list[NodeSpec] = []
    try:
        for group in args.groups:
            specs += load_group(group, values)
    except ValueError as err:  # a missing required argument, a value of the wrong type
        print(f"m3 ros-demo: {err}", file=sys.stderr)
        return 2
    interrupt_on_termination()  # SIGTERM / SIGHUP stop the nodes like Ctrl-C
    codes: dict[str, int] = {}
    with NodeProcesses(args.log_dir) as nodes:
        try:
            nodes.start(specs)
            print(f"m3 ros-demo: started {', '.join(nodes.procs)}; Ctrl-C to stop", flush=True)
            while True:
                done = nodes.exited()
                if done:
                    codes.update(done)
                    bad = {n: c for n, c in done.items() if c != 0}
                    if bad or len(done) == len(nodes.procs):
                        break
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        codes.update(nodes.stop())
    for name, code in codes.items():
        print(f"  {name}: exit {code}")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="m3 ros-demo")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))

