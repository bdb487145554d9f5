"""Malformed messages: dropped, counted per topic, and logged at most once per period per topic.

rclpy's own `throttle_duration_sec` throttles per call site, so one helper called for several topics
would show only the first topic's warnings; this keeps one clock per topic.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any


class DropCounter:
    """Thread-safe counts of malformed messages by topic, with a throttled warning for each."""

    def __init__(self, logger: Any, period_s: float = 5.0) -> None:
        self.logger = logger
        self.period_s = float(period_s)
        self.counts: Counter = Counter()
        self._last_warned: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def drop(self, topic: str, error: object) -> int:
        """Count one malformed message on `topic`; returns how many that topic has had."""
        now = time.monotonic()
        with self._lock:
            self.counts[topic] += 1
            n = self.counts[topic]
            warn = now - self._last_warned.get(topic, -1e9) >= self.period_s
            if warn:
                self._last_warned[topic] = now
        if warn:
            self.logger.warning(f"malformed message on {topic} dropped ({n} so far): {error}")
        return n
