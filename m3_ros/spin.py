"""One `main` for every long-running node: logging, init, clean exit on SIGINT, SIGTERM or shutdown.

A node whose constructor rejects its parameters (ValueError, or a missing file) exits with code 2
and one line on stderr instead of a traceback; the others spin until SIGINT / SIGTERM (what Ctrl-C,
`ros2 launch`, systemd and docker send) or an external shutdown, then stop their executor, run
`finalize` (if the node has one: the capture node saves its scene), and exit 0.

Why not rclpy's own signal handling: it turns SIGINT into a KeyboardInterrupt raised wherever the
main thread happens to be (inside the executor's wait, between a take and its callback, inside
finalize), and a library that installs its own SIGTERM handler on import (pycolmap's glog: a stack
dump and a kill) silently replaces it. Here the handlers only set an event, the main thread checks
it between short waits, and libraries named in `preload` are imported before the handlers are
installed. Teardown is ordered: callbacks already running finish, then the executor stops, then
`finalize`, then the node is destroyed (the old order ran finalize and the executor's shutdown
while callbacks were still running; that is where teardown was seen to hang). SIGUSR1 prints the
stack of every thread (faulthandler) without stopping the node, for a hang that still happens.
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DUMP_SIGNAL = signal.SIGUSR1
"""Prints every thread's Python stack to stderr and carries on: where a node that will not stop
hangs (test harnesses send it before they escalate to SIGKILL)."""
WAKE_PERIOD_S = 0.1
"""Longest wait of the main thread before it looks at the stop event again (s)."""
DRAIN_TIMEOUT_S = 60.0
"""Longest wait for callbacks already running when the node is asked to stop (s)."""
log = logging.getLogger(__name__)


def spin_node(
    make_node: Callable[[], Node],
    prog: str,
    args: list[str] | None = None,
    threads: int = 1,
    preload: tuple[str, ...] = (),
) -> int:
    """Run the node that `make_node` builds; returns the process exit code.

    threads > 1: a MultiThreadedExecutor (nodes with callback groups that must not block each
    other, e.g. a service that renders while /tf keeps arriving). preload: modules to import before
    the signal handlers are installed (ones that take signals over on import).
    """
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    for module in preload:
        importlib.import_module(module)
    stop = threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    install_stack_dump()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = make_node()
    except (ValueError, FileNotFoundError) as err:  # bad parameters / robot YAML / paths
        print(f"{prog}: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=WAKE_PERIOD_S)
    except ExternalShutdownException:
        pass
    finally:
        # No callback starts after the loop; the ones already handed to the thread pool finish
        # first. rclpy's Executor.shutdown (9.x) does not wait for them before destroying its guard
        # condition: a queued callback then took its message and died on the destroyed guard
        # ("cannot use Destroyable because destruction was requested"), the message lost. So drain
        # first; then finalize has the node to itself and nothing holds a handle at destroy time.
        _wait_for_callbacks(executor, DRAIN_TIMEOUT_S)
        executor.shutdown()
        finalize = getattr(node, "finalize", None)
        if finalize is not None:
            finalize()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def install_stack_dump() -> None:
    """On DUMP_SIGNAL, print every thread's stack to stderr and carry on. faulthandler writes from
    its C-level handler, so this works while the main thread is stuck in C code (a DDS wait, a lock),
    where a Python signal handler would never get to run."""
    faulthandler.register(DUMP_SIGNAL, file=sys.stderr, all_threads=True, chain=False)


def _wait_for_callbacks(executor: SingleThreadedExecutor | MultiThreadedExecutor, timeout_s: float) -> None:
    """Wait until the callbacks a MultiThreadedExecutor has handed to its threads are done."""
    pending = list(getattr(executor, "_futures", []))  # the handlers submitted to the pool
    deadline = time.monotonic() + timeout_s
    while any(not f.done() for f in pending):
        if time.monotonic() > deadline:
            log.error("callbacks still running %.0f s after the stop request; tearing down anyway", timeout_s)
            return
        time.sleep(0.01)
