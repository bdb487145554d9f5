"""One `main` for every long-running node: logging, init, clean exit on Ctrl-C or shutdown.

A node whose constructor rejects its parameters (ValueError, or a missing file) exits with code 2
and one line on stderr instead of a traceback; the others spin until SIGINT / external shutdown,
then `finalize` (if the node has one: the capture node saves its scene) runs before teardown.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
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
        # The node's work is saved by now. The multi-threaded executor's teardown has been seen to
        # hang on a loaded host (a callback that never returns); rather than wait for launch's
        # SIGKILL, leave after TEARDOWN_TIMEOUT_S with a clear line.
        watchdog = threading.Timer(TEARDOWN_TIMEOUT_S, _exit_after_hung_teardown, args=(prog,))
        watchdog.daemon = True
        watchdog.start()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        watchdog.cancel()
    return 0


TEARDOWN_TIMEOUT_S = 10.0


def _exit_after_hung_teardown(prog: str) -> None:
    print(
        f"{prog}: ROS teardown did not finish {TEARDOWN_TIMEOUT_S:.0f} s after the final save; exiting",
        file=sys.stderr,
        flush=True,
    )
    logging.shutdown()
    os._exit(0)
