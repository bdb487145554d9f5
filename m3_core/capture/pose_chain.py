"""Body odometry + arm end-effector pose -> transforms and world<-camera (paper eq. 3).

For robots without a URDF / robot_state_publisher: the pose-chain node turns each odometry message
into world->lidar, each end-effector pose into arm_base->ee, and composes
world_from_camera = world_from_lidar(t) @ lidar_from_armbase @ armbase_from_ee(t) @ ee_from_camera
at each end-effector stamp, once odometry has reached that stamp (interpolated, never extrapolated).
bag2scene uses the same class to read the bag's odometry and ee poses as transforms.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from m3_core.capture.clock import Clock, ClockJumpDetector
from m3_core.errors import StaleStampError, TransformError
from m3_core.geometry.transform_buffer import TransformBuffer
from m3_core.robot import RobotConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StampedTransform:
    parent: str
    child: str
    parent_from_child: np.ndarray  # [4,4]
    stamp_ns: int


class PoseChain:
    """Stateful converter; not thread-safe (one node callback group or one bag loop drives it)."""

    def __init__(self, robot: RobotConfig, max_pending: int = 200, clock_jump_s: float = 1.0) -> None:
        self.robot = robot
        self.chain = robot.extrinsics.chain()
        self.buffer = TransformBuffer()
        self.max_pending = int(max_pending)
        self.clock = ClockJumpDetector(int(clock_jump_s * 1e9))
        self._pending_ee: list[int] = []
        self._newest_odom_ns: int | None = None
        self._warned: set[str] = set()
        # messages refused by the clock check: "stamp_outlier" (one far behind its stream or far
        # ahead of both, unconfirmed), "clock_jump" (from the pass before a jump back, in flight)
        self.dropped: Counter[str] = Counter()

    def odometry_transform(
        self, parent: str, child: str, world_from_lidar: np.ndarray, stamp_ns: int
    ) -> StampedTransform:
        """world->lidar from an Odometry's header/child frame ids (empty ids take the config's)."""
        f = self.robot.frames
        parent, child = parent or f.world, child or f.lidar
        if (parent, child) != (f.world, f.lidar):
            self._warn(
                "odom_frames",
                f"odometry is {parent}->{child} but the robot config expects {f.world}->{f.lidar}; "
                "camera poses need the config's frames (fix frames: in the YAML)",
            )
        return StampedTransform(parent, child, np.asarray(world_from_lidar, np.float64), int(stamp_ns))

    def ee_transform(self, parent: str, armbase_from_ee: np.ndarray, stamp_ns: int) -> StampedTransform:
        """arm_base->ee from an end-effector PoseStamped (its header frame; empty takes the config's)."""
        f = self.robot.frames
        parent = parent or f.arm_base
        if parent != f.arm_base:
            self._warn(
                "ee_frames", f"ee pose is given in {parent!r}, the robot config expects {f.arm_base!r}"
            )
        return StampedTransform(parent, f.ee, np.asarray(armbase_from_ee, np.float64), int(stamp_ns))

    def add_odometry(self, tf: StampedTransform) -> list[tuple[int, np.ndarray]]:
        """Insert world->lidar; returns the camera poses [(stamp_ns, world_from_camera)] now computable.

        Raises StaleStampError for a message from before a clock jump (a looping bag's previous pass)
        or a single outlier stamp (see capture.clock); either is counted in `dropped`."""
        self._check_clock("odometry", tf.stamp_ns)
        self.buffer.set_transform(tf.parent, tf.child, tf.parent_from_child, tf.stamp_ns)
        self._newest_odom_ns = max(tf.stamp_ns, self._newest_odom_ns or tf.stamp_ns)
        return self._resolve()

    def add_ee(self, tf: StampedTransform) -> list[tuple[int, np.ndarray]]:
        """Insert arm_base->ee; returns the camera poses now computable (raises StaleStampError)."""
        self._check_clock("ee", tf.stamp_ns)
        self.buffer.set_transform(tf.parent, tf.child, tf.parent_from_child, tf.stamp_ns)
        self._pending_ee.append(tf.stamp_ns)
        if len(self._pending_ee) > self.max_pending:  # odometry stopped: forget the oldest
            del self._pending_ee[: len(self._pending_ee) - self.max_pending]
        return self._resolve()

    def world_from_camera(self, stamp_ns: int) -> np.ndarray:
        """Eq. 3 at stamp_ns from the buffered odometry and ee poses (raises TransformError)."""
        f = self.robot.frames
        world_from_lidar = self.buffer.lookup(f.world, f.lidar, stamp_ns)
        armbase_from_ee = self.buffer.lookup(f.arm_base, f.ee, stamp_ns)
        return self.chain.world_from_camera(world_from_lidar, armbase_from_ee)

    def _resolve(self) -> list[tuple[int, np.ndarray]]:
        out, keep = [], []
        for stamp in sorted(self._pending_ee):
            if self._newest_odom_ns is None or self._newest_odom_ns < stamp:
                keep.append(stamp)  # odometry has not reached this stamp yet
                continue
            try:
                out.append((stamp, self.world_from_camera(stamp)))
            except TransformError as err:
                self._warn("lookup", f"no camera pose at {stamp * 1e-9:.3f}s: {err}")
        self._pending_ee = keep
        return out

    def _check_clock(self, stream: str, stamp_ns: int) -> None:
        verdict = self.clock.check(stream, stamp_ns)
        if verdict is Clock.STALE:
            self.dropped["clock_jump"] += 1
            raise StaleStampError(
                f"{stream} stamp {stamp_ns * 1e-9:.3f}s is from before the clock jumped back (still in flight)"
            )
        if verdict is Clock.SUSPECT:
            self.dropped["stamp_outlier"] += 1
            raise StaleStampError(
                f"{stream} stamp {stamp_ns * 1e-9:.3f}s is far behind the stream's newest or far ahead of "
                "every stream; dropped unless the next message confirms a clock jump"
            )
        if verdict is Clock.JUMP:
            log.warning("clock jumped back on %s (looping bag?): clearing the pose buffer", stream)
            self.buffer.clear()
            self._pending_ee.clear()
            self._newest_odom_ns = None

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
