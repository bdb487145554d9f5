"""CaptureSession: the one implementation of capture, shared by the live node and bag2scene.

Inputs, in any interleaving: color and depth images (raw arrays + encoding), camera intrinsics,
transforms (static and stamped). A paired frame waits in a small queue until the transform buffer
holds every dynamic edge of world <- camera up to `stamp + tf_wait` (so the pose is interpolated
between real samples, identically online and offline), or until a wall-clock timeout (live only),
then is decided: pose lookup, keyframe gate, blur and depth checks, write. Nothing here raises on bad
input: it is counted by reason and logged, and the session keeps going.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from m3_core.capture.clock import Clock, ClockJumpDetector
from m3_core.capture.images import (
    ImageEncodingError,
    array_from_image_fields,
    depth_mm_from_array,
    rgb_from_array,
)
from m3_core.capture.keyframes import KeyframeConfig, KeyframeSelector, sharpness, valid_depth_fraction
from m3_core.capture.pairing import Pair, StampPairer
from m3_core.capture.writer import SceneWriteError, SceneWriter
from m3_core.errors import TransformError
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.transform_buffer import TransformBuffer
from m3_core.robot import FramesConfig

log = logging.getLogger(__name__)

# scene.json "extra" key of the per-keyframe pose-chain links (read by `m3 calibrate`)
POSE_CHAIN_KEY = "pose_chain"
# (name in the record, parent frame field, child frame field) of the chain's four links
CHAIN_LINKS = (
    ("world_from_lidar", "world", "lidar"),
    ("lidar_from_armbase", "lidar", "arm_base"),
    ("armbase_from_ee", "arm_base", "ee"),
    ("ee_from_camera", "ee", "camera"),
)

DROP_REASONS = (
    "bad_encoding",
    "size_mismatch",
    "unpaired",
    "no_camera_info",
    "no_transform",
    "not_keyframe",
    "blurred",
    "depth_invalid",
    "write_error",
    "clock_jump",
    "stamp_outlier",
    "tf_clock_jump",
    "tf_stamp_outlier",
    "malformed",
    "queue_full",
)


@dataclass(frozen=True)
class CaptureConfig:
    """Capture parameters (thresholds and timing); frames and paths come from the robot config."""

    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    """Motion/time/blur/depth gates."""
    pair_slop_s: float = 0.015
    """Largest color/depth stamp difference that still pairs (s); about half a frame period."""
    tf_wait_s: float = 0.1
    """Decide a frame once transforms up to its stamp + this are in (s of stamp time)."""
    tf_timeout_s: float = 1.0
    """Live only: decide anyway once /tf has not advanced for this long in wall time (s) since the
    frame arrived; then a missing pose drops it. A /tf that keeps arriving late (a starved pose
    publisher on a loaded host) is waited for, up to max_pending frames."""
    max_pending: int = 30
    """Frames waiting for transforms at most (a memory bound: ~1.5 MB a 640x480 frame); beyond it the
    oldest is decided at once, and dropped as queue_full when its pose has not arrived yet."""
    pair_queue: int = 150
    """Images of one stream waiting for their color/depth partner at most (a memory bound for a
    stream whose partner stopped, ~5 s at 30 Hz); a partner that is merely late is waited for."""
    max_extrapolation_s: float = 0.0
    """How far a frame's stamp may lie outside the transforms held (s; the nearest sample is taken).
    0: keyframe poses are interpolated only. A frame decided on timeout past the newest odometry
    would otherwise get a pose up to this stale (0.05 s at 0.3 m/s is 1.5 cm): better dropped."""
    clock_jump_s: float = 1.0
    """A stamp this far behind its stream's newest (s) means the clock jumped back (looping bag):
    reset, once a second message confirms it; this far ahead of every stream, a forward jump, taken
    once confirmed. An unconfirmed one is a single outlier, dropped alone (see capture.clock)."""
    save_every: int = 10
    """Rewrite scene.json and sparse/0 every this many keyframes."""
    depth_scale_m: float = 0.001
    """Metres per unit of 16UC1 depth (RealSense: 0.001)."""

    def __post_init__(self) -> None:
        if self.pair_slop_s < 0 or self.tf_wait_s < 0 or self.tf_timeout_s <= 0:
            raise ValueError("pair_slop_s and tf_wait_s must be >= 0 and tf_timeout_s > 0")
        if self.max_extrapolation_s < 0:
            raise ValueError(f"max_extrapolation_s must be >= 0, got {self.max_extrapolation_s}")
        if self.max_pending < 1 or self.pair_queue < 1 or self.save_every < 1 or self.clock_jump_s <= 0:
            raise ValueError("max_pending, pair_queue and save_every must be >= 1, clock_jump_s > 0")


@dataclass
class _Pending:
    stamp_ns: int
    rgb: np.ndarray
    depth_mm: np.ndarray
    arrival_s: float


@dataclass
class CaptureStats:
    """Counters for the diagnostics line."""

    received_color: int = 0
    received_depth: int = 0
    paired: int = 0
    kept: int = 0
    clock_jumps: int = 0
    save_errors: int = 0
    dropped: Counter = field(default_factory=Counter)

    def line(self) -> str:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"received color={self.received_color} depth={self.received_depth}, paired={self.paired}, "
            f"kept={self.kept}, dropped: {drops}"
        )

    def as_dict(self) -> dict:
        return {
            "received_color": self.received_color,
            "received_depth": self.received_depth,
            "paired": self.paired,
            "kept": self.kept,
            "clock_jumps": self.clock_jumps,
            "save_errors": self.save_errors,
            "dropped": dict(self.dropped),
        }


class CaptureSession:
    """Decides and writes keyframes from streamed images and transforms (thread-safe inputs)."""

    def __init__(
        self,
        config: CaptureConfig,
        writer: SceneWriter,
        world_frame: str,
        camera_frame: str,
        buffer: TransformBuffer | None = None,
        chain_frames: FramesConfig | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """chain_frames: when given, each keyframe also records the four links of the pose chain
        (world<-lidar<-arm base<-ee<-camera) in scene.json, so the hand-eye can be calibrated from
        the scan later (`m3 calibrate`)."""
        self.config = config
        self.writer = writer
        self.world_frame = world_frame
        self.camera_frame = camera_frame
        self.buffer = buffer or TransformBuffer(tolerance_ns=int(config.max_extrapolation_s * 1e9))
        self.chain_frames = chain_frames
        self.stats = CaptureStats()
        self.selector = KeyframeSelector(config.keyframes)
        self._pairer = StampPairer(int(config.pair_slop_s * 1e9), max_queue=config.pair_queue)
        self._pending: list[_Pending] = []
        self._camera: PinholeCamera | None = None
        self._parents: dict[str, str] = {}  # child -> parent of every edge seen
        self._newest_edge_ns: dict[str, int] = {}  # child -> newest stamp of a dynamic edge
        self._monotonic = monotonic  # wall clock of arrivals; poll(now_s=...) must use the same one
        self._horizon_ns = -1  # newest stamp every dynamic edge between world and camera has reached
        self._tf_advanced_s = float("-inf")  # when that horizon last moved forward
        self._clock = ClockJumpDetector(int(config.clock_jump_s * 1e9))
        self._lock = threading.Lock()  # inputs vs. poll; poll itself runs in one thread at a time
        self._decide_lock = threading.Lock()
        self._logged: set[str] = set()

    # -- inputs (any thread) ---------------------------------------------------------------
    def set_camera(self, camera: PinholeCamera) -> None:
        self._camera = camera

    def add_transform(
        self, parent: str, child: str, parent_from_child: np.ndarray, stamp_ns: int, static: bool = False
    ) -> None:
        with self._lock:
            refused = None if static else self._check_clock(f"tf:{child}", stamp_ns)
            if refused is not None:
                self._drop(
                    f"tf_{refused}",
                    f"transform {parent}->{child} at {stamp_ns * 1e-9:.3f}s dropped ({refused})",
                )
                return
            try:
                self.buffer.set_transform(parent, child, parent_from_child, stamp_ns, static)
            except ValueError as err:
                self._drop("malformed", f"ignoring transform {parent}->{child}: {err}")
                return
            self._parents[child] = parent
            if static:
                self._newest_edge_ns.pop(child, None)
            elif stamp_ns > self._newest_edge_ns.get(child, -1):
                self._newest_edge_ns[child] = stamp_ns
                # the poses advance when the slowest edge of the chain does (one stream that stopped
                # while another goes on is missing, not late)
                horizon = self._tf_horizon_ns()
                if horizon is not None and horizon > self._horizon_ns:
                    self._horizon_ns = horizon
                    self._tf_advanced_s = self._monotonic()

    def add_color(self, stamp_ns: int, array: np.ndarray, encoding: str) -> None:
        with self._lock:
            self.stats.received_color += 1
            refused = self._check_clock("color", stamp_ns)
            if refused is not None:
                self._drop(refused, f"color image at {stamp_ns * 1e-9:.3f}s dropped ({refused})")
                return
            try:
                rgb = rgb_from_array(array, encoding)
            except ImageEncodingError as err:
                self._drop("bad_encoding", f"color image dropped: {err}")
                return
            self._add_pairs(self._pairer.add_color(stamp_ns, rgb))

    def add_depth(self, stamp_ns: int, array: np.ndarray, encoding: str) -> None:
        with self._lock:
            self.stats.received_depth += 1
            refused = self._check_clock("depth", stamp_ns)
            if refused is not None:
                self._drop(refused, f"depth image at {stamp_ns * 1e-9:.3f}s dropped ({refused})")
                return
            try:
                depth_mm = depth_mm_from_array(array, encoding, self.config.depth_scale_m)
            except ImageEncodingError as err:
                self._drop("bad_encoding", f"depth image dropped: {err}")
                return
            self._add_pairs(self._pairer.add_depth(stamp_ns, depth_mm))

    def add_image_msg(self, kind: str, msg: Any, stamp_ns: int, topic: str = "") -> None:
        """A sensor_msgs/Image as any object with its fields (an rclpy message or a rosbags one):
        kind "color" or "depth"; an undecodable one is counted and logged, never raised."""
        if kind not in ("color", "depth"):
            raise ValueError(f'kind must be "color" or "depth", got {kind!r}')
        try:
            arr = array_from_image_fields(
                msg.data, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian
            )
        except ImageEncodingError as err:
            self.drop_input("bad_encoding", f"{kind} image{f' on {topic}' if topic else ''} dropped: {err}")
            return
        (self.add_color if kind == "color" else self.add_depth)(stamp_ns, arr, msg.encoding)

    def drop_input(self, reason: str, message: str) -> None:
        """Count an input that could not even be converted (e.g. a malformed message)."""
        with self._lock:
            self._drop(reason, message)

    def count_malformed(self) -> None:
        """Count a message its node could not convert (drop reason 'malformed'); the node logs it."""
        with self._lock:
            self.stats.dropped["malformed"] += 1

    # -- deciding (one thread) ---------------------------------------------------------------
    def poll(self, now_s: float | None = None, flush: bool = False) -> int:
        """Decide every pending frame that is ready; returns how many were kept.

        now_s: monotonic wall time (live) for the timeout; None offline. flush: decide all (end of bag).
        """
        kept = 0
        if flush:
            with self._lock:  # images whose partner never came are dropped now, and counted
                self._pairer.drain()
                self._add_pairs([])
        with self._decide_lock:
            while True:
                with self._lock:
                    item = self._next_ready(now_s, flush)
                if item is None:
                    break
                kept += self._decide(*item)
        return kept

    def save(self) -> int:
        """Write scene.json + sparse/0 now; returns the number of frames saved (raises SceneWriteError)."""
        with self._decide_lock:
            self.writer.scene.extra["capture_stats"] = self.stats.as_dict()
            return self.writer.save()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # -- internals -----------------------------------------------------------------------------
    def _add_pairs(self, pairs: list[Pair]) -> None:
        dropped = self._pairer.unpaired_color + self._pairer.unpaired_depth
        if dropped:
            self.stats.dropped["unpaired"] += dropped
            self._pairer.unpaired_color = self._pairer.unpaired_depth = 0
        now = self._monotonic()
        for p in pairs:
            self.stats.paired += 1
            self._pending.append(_Pending(p.stamp_ns, p.color, p.depth, now))
        if pairs:
            self._pending.sort(key=lambda x: x.stamp_ns)

    def _tf_horizon_ns(self) -> int | None:
        """Oldest 'newest stamp' among the dynamic edges between world and camera (None: unknown)."""
        stamps = []
        for start in (self.camera_frame, self.world_frame):
            frame, seen = start, set()
            while frame in self._parents and frame not in seen:
                seen.add(frame)
                if frame in self._newest_edge_ns:
                    stamps.append(self._newest_edge_ns[frame])
                frame = self._parents[frame]
        return min(stamps) if stamps else None

    def _next_ready(self, now_s: float | None, flush: bool) -> tuple[_Pending, bool] | None:
        """The oldest pending frame when it can be decided, and whether it is decided only because
        the queue is full; None while it waits."""
        if not self._pending:
            return None
        head = self._pending[0]
        horizon = self._tf_horizon_ns()
        overflow = len(self._pending) > self.config.max_pending
        # /tf that still moves forward is late, not missing: the timeout counts from its last advance
        waited_s = None if now_s is None else now_s - max(head.arrival_s, self._tf_advanced_s)
        ready = (
            flush
            or overflow
            # camera_info is waited for like /tf: it may come later than the first images
            or (
                self._camera is not None
                and horizon is not None
                and horizon >= head.stamp_ns + int(self.config.tf_wait_s * 1e9)
            )
            or (waited_s is not None and waited_s >= self.config.tf_timeout_s)
        )
        return (self._pending.pop(0), overflow and not flush) if ready else None

    def _decide(self, item: _Pending, overflow: bool = False) -> int:
        try:
            world_from_camera = self.buffer.lookup(self.world_frame, self.camera_frame, item.stamp_ns)
        except TransformError as err:
            if overflow:  # /tf was still coming: a bigger queue would have kept this frame
                self._drop(
                    "queue_full",
                    f"frame at {item.stamp_ns * 1e-9:.3f}s dropped before its pose arrived: "
                    f"{self.config.max_pending} frames were already waiting for /tf (max_pending); "
                    f"/tf lags the images ({err})",
                )
            else:
                self._drop("no_transform", f"frame at {item.stamp_ns * 1e-9:.3f}s skipped, no pose: {err}")
            return 0
        camera = self._camera
        if camera is None:
            self._drop("no_camera_info", "frame skipped: no camera_info received yet")
            return 0
        h, w = item.rgb.shape[:2]
        if item.depth_mm.shape != (h, w) or (camera.width, camera.height) != (w, h):
            self._drop(
                "size_mismatch",
                f"frame skipped: color {w}x{h}, depth {item.depth_mm.shape[1]}x{item.depth_mm.shape[0]}, "
                f"camera_info {camera.width}x{camera.height}; is depth aligned to color "
                "(realsense2_camera align_depth.enable:=true)?",
            )
            return 0
        candidate, _why = self.selector.check(world_from_camera, item.stamp_ns)
        if not candidate:
            self.stats.dropped["not_keyframe"] += 1
            return 0
        kf = self.config.keyframes
        if kf.min_sharpness > 0 and sharpness(item.rgb) < kf.min_sharpness:
            self._drop(
                "blurred", f"frame at {item.stamp_ns * 1e-9:.3f}s rejected as blurred", level=logging.DEBUG
            )
            return 0
        if valid_depth_fraction(item.depth_mm) < kf.min_valid_depth_fraction:
            self._drop("depth_invalid", f"frame at {item.stamp_ns * 1e-9:.3f}s has almost no valid depth")
            return 0
        try:
            frame = self.writer.add(item.rgb, item.depth_mm, camera, world_from_camera, item.stamp_ns)
        except SceneWriteError as err:
            self._drop("write_error", str(err), level=logging.ERROR)
            return 0
        self._record_chain(frame.name, item.stamp_ns)
        self.selector.accept(world_from_camera, item.stamp_ns)
        self.stats.kept += 1
        if self.writer.save_due:
            try:
                self.writer.scene.extra["capture_stats"] = self.stats.as_dict()
                self.writer.save()
            except SceneWriteError as err:
                self.stats.save_errors += 1
                log.error("%s (will retry at the next save)", err)
        return 1

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning("%s", message)

    def _record_chain(self, name: str, stamp_ns: int) -> None:
        """Store the chain's links at this keyframe in scene.json's extra (4x4 lists), if asked."""
        f = self.chain_frames
        if f is None:
            return
        try:
            links = {
                key: self.buffer.lookup(getattr(f, parent), getattr(f, child), stamp_ns).tolist()
                for key, parent, child in CHAIN_LINKS
            }
        except TransformError as err:  # e.g. a robot with a URDF whose tree skips a frame
            self._warn_once("chain_links", f"keyframes are saved without their pose-chain links: {err}")
            return
        record = self.writer.scene.extra.setdefault(POSE_CHAIN_KEY, {"frames": {}, "keyframes": {}})
        record["frames"] = {k: getattr(f, k) for k in ("world", "lidar", "arm_base", "ee", "camera")}
        record["keyframes"][name] = links

    def _check_clock(self, stream: str, stamp_ns: int) -> str | None:
        """Reset on a confirmed backwards jump of the input streams (a looping bag); caller holds the
        lock. Returns the drop reason for a message not to take: 'clock_jump' for one from before a
        jump that arrives after it, 'stamp_outlier' for one far behind its stream or far ahead of
        every stream that no other message confirms (yet) as a jump (see capture.clock); None to
        take it."""
        verdict = self._clock.check(stream, stamp_ns)
        if verdict is Clock.STALE:
            return "clock_jump"
        if verdict is Clock.SUSPECT:
            return "stamp_outlier"
        if verdict is Clock.JUMP:
            log.warning(
                "clock jumped back on %s (to %.3fs; looping bag?): clearing transforms and queues",
                stream,
                stamp_ns * 1e-9,
            )
            self.stats.clock_jumps += 1
            if self._pending:
                self.stats.dropped["clock_jump"] += len(self._pending)
            self._pending.clear()
            self._pairer.clear()
            self.buffer.clear()
            self._newest_edge_ns.clear()
            self.selector.reset_time()
        return None

    def _drop(self, reason: str, message: str, level: int = logging.WARNING) -> None:
        self.stats.dropped[reason] += 1
        # the first of each reason is logged in full, the rest show up in the diagnostics line
        if reason not in self._logged:
            self._logged.add(reason)
            log.log(level, "%s (reason %r; further ones are counted in the diagnostics)", message, reason)
        else:
            log.debug("%s", message)
