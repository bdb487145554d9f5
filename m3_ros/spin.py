"""One `main` for every long-running node: logging, init, clean exit on Ctrl-C or shutdown.

A node whose constructor rejects its parameters (ValueError, or a missing file) exits with code 2
and one line on stderr instead of a traceback; the others spin until SIGINT / external shutdown,
then `finalize` (if the node has one: the capture node saves its scene) runs before teardown.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node


def spin_node(
    make_node: Callable[[], Node], prog: str, args: list[str] | None = None, threads: int = 1
) -> int:
    """Run the node that `make_node` builds; returns the process exit code.

    threads > 1: a MultiThreadedExecutor (nodes with callback groups that must not block each
    other, e.g. a service that renders while /tf keeps arriving).
    """
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    rclpy.init(args=args)
    try:
        node = make_node()
    except (ValueError, FileNotFoundError) as err:  # bad parameters / robot YAML / paths
        print(f"{prog}: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        finalize = getattr(node, "finalize", None)
        if finalize is not None:
            finalize()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
