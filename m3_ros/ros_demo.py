"""`m3 ros-demo`: start the demo's nodes as separate processes, like `ros2 launch m3_grasp ...`.

`launch`/`launch_ros` are not installable from the registries this project uses, so this starts the
same NodeSpecs (config/demo_graph.yaml via m3_ros.graph) with `python -m`. Ctrl-C stops them all with
SIGINT, as launch does; the exit code is non-zero if any node did not exit cleanly.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from m3_ros.graph import NodeSpec
from m3_ros.spin import DRAIN_TIMEOUT_S, DUMP_SIGNAL

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = DRAIN_TIMEOUT_S + 30.0
"""How long `stop` waits after SIGINT before it kills (s): longer than a node's own drain of running
callbacks (m3_ros.spin.DRAIN_TIMEOUT_S) plus its final save, so a node still saving is never killed."""
DUMP_WAIT_S = 2.0
"""How long a node that did not stop gets to print its threads' stacks (SIGUSR1) before the kill (s)."""
LOG_TAIL_CHARS = 8000


def interrupt_on_termination() -> None:
    """End this process on SIGTERM and SIGHUP (systemd, docker, a closed terminal) the way Ctrl-C
    does, with KeyboardInterrupt, so that `with NodeProcesses()` stops its nodes on the way out: the
    default action killed the launcher alone and left its nodes running, unowned."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


class NodeProcesses:
    """A set of running node processes; `stop()` ends them like launch does (SIGINT, then kill).

    As a context manager it stops whatever still runs when the block ends, also on an error or an
    interrupt, so that no node outlives the command that started it."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    def __enter__(self) -> NodeProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        running = [name for name, proc in self.procs.items() if proc.poll() is None]
        if running:
            log.info("stopping %s", ", ".join(running))
            self.stop(running)
        for fh in self._logs:
            fh.close()

    def start(self, specs: list[NodeSpec]) -> None:
        for spec in specs:
            if spec.name in self.procs and self.procs[spec.name].poll() is None:
                continue  # already running (e.g. the pose chain shared by two groups)
            out = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = open(self.log_dir / f"{spec.name}.log", "a")  # noqa: SIM115 - closed in stop()
                self._logs.append(out)
            log.info("starting %s: %s", spec.name, " ".join(spec.command()[1:]))
            self.procs[spec.name] = subprocess.Popen(
                spec.command(), stdout=out, stderr=subprocess.STDOUT if out else None
            )

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def wait(self, name: str, timeout: float | None = None) -> int:
        return self.procs[name].wait(timeout)

    def stop(self, names: list[str] | None = None, timeout: float = STOP_TIMEOUT_S) -> dict[str, int]:
        """SIGINT the named (default: all) processes, kill after timeout; returns exit codes.

        A node that has not exited by then is asked for its threads' stacks (SIGUSR1) first, and its
        output (with the stacks) is printed when it went to a log file, so a hang says where it is."""
        names = list(self.procs) if names is None else names
        for name in names:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGINT)
        codes = {}
        deadline = time.monotonic() + timeout
        for name in names:
            proc = self.procs[name]
            try:
                codes[name] = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "%s did not stop within %.0f s after SIGINT; dumping its stacks, killing it",
                    name,
                    timeout,
                )
                codes[name] = kill_with_stack_dump(proc)
                if self.log_dir is not None:
                    text = (self.log_dir / f"{name}.log").read_text(errors="replace")
                    print(
                        f"--- {name} output (last {LOG_TAIL_CHARS} chars) ---\n{text[-LOG_TAIL_CHARS:]}",
                        file=sys.stderr,
                    )
        if names == list(self.procs):
            for fh in self._logs:
                fh.close()
        return codes


def kill_with_stack_dump(proc: subprocess.Popen, dump_wait_s: float = DUMP_WAIT_S) -> int:
    """SIGUSR1 (the node prints every thread's stack, see m3_ros.spin), then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(DUMP_SIGNAL)
        try:  # the dump does not end the node: this only gives it time to write
            proc.wait(dump_wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
