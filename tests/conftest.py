"""Shared pytest fixtures: ROS isolation (one DDS domain per test session, loopback only) and
helpers to start real nodes as separate processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One DDS domain per pytest process so parallel runs (and other sessions) never see each other.
_DOMAIN_ID = str(20 + os.getpid() % 200)
os.environ["ROS_DOMAIN_ID"] = _DOMAIN_ID
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


def ros_available() -> bool:
    try:
        import rclpy  # noqa: F401

        return True
    except ImportError:
        return False


@pytest.fixture(scope="session")
def ros_domain_id() -> str:
    return _DOMAIN_ID


@pytest.fixture
def ros_env() -> dict[str, str]:
    """Environment for child processes: same domain, unbuffered output, repo importable."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture
def rclpy_node(request) -> Iterator[object]:
    """An initialised rclpy context and a node for the test process; shut down afterwards."""
    if not ros_available():
        pytest.skip("rclpy is not installed (run scripts/setup_env.sh)")
    import rclpy

    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=int(_DOMAIN_ID))
    node = rclpy.create_node(
        f"test_{request.node.name[:40].replace('[', '_').replace(']', '_')}", context=context
    )
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


class Process:
    """A child process running a real node; output captured to a log file for failure messages."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (like Ctrl-C / ros2 launch), then wait; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(2)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


@pytest.fixture
def start_process(ros_env, tmp_path) -> Iterator:
    """start_process([args...]) -> Process; every process is stopped at teardown."""
    procs: list[Process] = []

    def start(args: list[str], env: dict[str, str] | None = None, name: str | None = None) -> Process:
        name = name or Path(args[1] if len(args) > 1 else args[0]).stem
        proc = Process(args, env or ros_env, tmp_path / f"{name}.{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def wait_until(predicate, timeout: float, spin=None, what: str = "condition") -> None:
    """Spin (if given) until predicate() is true; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if spin is not None:
            spin()
        else:
            time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


PYTHON = sys.executable
