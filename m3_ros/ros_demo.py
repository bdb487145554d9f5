"""`m3 ros-demo`: start the demo's nodes as separate processes, like `ros2 launch m3_grasp ...`.

`launch`/`launch_ros` are not installable from the registries this project uses, so this starts the
same NodeSpecs (config/demo_graph.yaml via m3_ros.graph) with `python -m`. Ctrl-C stops them all with
SIGINT, as launch does; the exit code is non-zero if any node did not exit cleanly.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from pathlib import Path

from m3_ros.graph import NodeSpec

log = logging.getLogger(__name__)


class NodeProcesses:
    """A set of running node processes; `stop()` ends them like launch does (SIGINT, then kill)."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []

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

    def stop(self, names: list[str] | None = None, timeout: float = 15.0) -> dict[str, int]:
        """SIGINT the named (default: all) processes, kill after timeout; returns exit codes."""
        names = list(self.procs) if names is None else names
        for name in names:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGINT)
        codes = {}
        for name in names:
            try:
                codes[name] = self.procs[name].wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0f s after SIGINT; killing it", name, timeout)
                self.procs[name].kill()
                codes[name] = self.procs[name].wait()
        if names == list(self.procs):
            for fh in self._logs:
                fh.close()
        return codes
