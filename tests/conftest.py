"""Shared pytest fixtures: ROS isolation (one DDS domain per test session, loopback only) and
helpers to start real nodes as separate processes."""

from __future__ import annotations

import os
import signal
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


def stop_timeout_s() -> float:
    """How long to wait for a node after SIGINT: its callback drain plus a final save and margin."""
    try:
        from m3_ros.ros_demo import STOP_TIMEOUT_S
    except ImportError:  # no rclpy: nothing of ours can be running as a node
        return 90.0
    return STOP_TIMEOUT_S


def stop_process(popen: subprocess.Popen, name: str, output, timeout: float | None = None) -> int:
    """Wait for a process already asked to stop; past `timeout` dump its stacks, kill it and print
    its output (`output()`: the text so far) to stderr, which pytest shows with the failure."""
    timeout = stop_timeout_s() if timeout is None else timeout
    try:
        return popen.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    from m3_ros.ros_demo import kill_with_stack_dump

    code = kill_with_stack_dump(popen)
    print(f"--- {name} did not exit {timeout:.0f} s after the stop signal; killed. Its output: ---\n"
          f"{output()}", file=sys.stderr)  # fmt: skip
    return code


class Process:
    """A child process running a real node; output captured to a log file for failure messages."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float | None = None) -> int:
        """SIGINT (like Ctrl-C / ros2 launch), then wait; returns the exit code. A node still running
        after `timeout` (default: longer than its own drain and final save) is asked for its stacks
        (SIGUSR1), killed, and its output printed, so that the test log shows where it hung."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            stop_process(self.popen, self.log_path.stem, self.output, timeout)
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
