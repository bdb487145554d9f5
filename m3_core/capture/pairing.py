"""Pair color and depth images by stamp (what message_filters' ApproximateTime does for two streams).

Each stream is assumed to arrive in stamp order, but the two streams may lag each other by any
amount (on a loaded host one stream's callbacks can run in a burst before the other's). So an image
waits for its partner until the *other* stream has moved past it, not for a fixed time: a color
image pairs with the depth image of the same stamp at once, otherwise with the nearest depth within
`slop_ns`, decided as soon as the depth stream has reached the color stamp (a nearer one cannot come
any more); it is dropped only once the depth stream is more than `slop_ns` past it with no partner,
and likewise for depth. The wait is bounded by `max_queue` images per stream (a memory bound for a
stream whose partner stopped): beyond it the oldest is dropped. Dropped images are counted.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any


@dataclass
class Pair:
    stamp_ns: int  # the color stamp: the pose is looked up there
    color: Any
    depth: Any
    depth_stamp_ns: int


class _Stream:
    """Images of one stream waiting for a partner, sorted by stamp; the newest stamp ever seen."""

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.items: list[Any] = []
        self.newest: int | None = None
        self.dropped = 0

    def insert(self, stamp_ns: int, item: Any) -> None:
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:  # a repeated stamp replaces
            self.items[i] = item
            self.dropped += 1
        else:
            self.stamps.insert(i, stamp_ns)
            self.items.insert(i, item)
        self.newest = stamp_ns if self.newest is None else max(self.newest, stamp_ns)

    def pop(self, i: int) -> tuple[int, Any]:
        return self.stamps.pop(i), self.items.pop(i)

    def nearest(self, stamp_ns: int, slop_ns: int) -> int | None:
        """Index of the waiting stamp nearest to stamp_ns within slop_ns (earlier on a tie)."""
        i = bisect.bisect_left(self.stamps, stamp_ns)
        near = [j for j in (i - 1, i) if 0 <= j < len(self.stamps)]
        near = [j for j in near if abs(self.stamps[j] - stamp_ns) <= slop_ns]
        return min(near, key=lambda j: abs(self.stamps[j] - stamp_ns), default=None)

    def clear(self) -> None:
        self.stamps.clear()
        self.items.clear()
        self.newest = None


class StampPairer:
    """Two stamp-sorted queues and a matching rule; holds arbitrary payloads."""

    def __init__(self, slop_ns: int = 15_000_000, max_queue: int = 150) -> None:
        if slop_ns < 0 or max_queue < 1:
            raise ValueError(f"need slop_ns >= 0 and max_queue >= 1, got {slop_ns}, {max_queue}")
        self.slop_ns = int(slop_ns)
        self.max_queue = int(max_queue)
        self._color = _Stream()
        self._depth = _Stream()

    @property
    def unpaired_color(self) -> int:
        return self._color.dropped

    @unpaired_color.setter
    def unpaired_color(self, value: int) -> None:
        self._color.dropped = value

    @property
    def unpaired_depth(self) -> int:
        return self._depth.dropped

    @unpaired_depth.setter
    def unpaired_depth(self, value: int) -> None:
        self._depth.dropped = value

    @property
    def waiting(self) -> int:
        return len(self._color.stamps) + len(self._depth.stamps)

    def clear(self) -> None:
        self._color.clear()
        self._depth.clear()

    def drain(self) -> int:
        """At the end of a stream: drop (and count) what is still waiting; returns how many."""
        n = self.waiting
        self._color.dropped += len(self._color.stamps)
        self._depth.dropped += len(self._depth.stamps)
        self.clear()
        return n

    def add_color(self, stamp_ns: int, item: Any) -> list[Pair]:
        self._color.insert(int(stamp_ns), item)
        return self._match()

    def add_depth(self, stamp_ns: int, item: Any) -> list[Pair]:
        self._depth.insert(int(stamp_ns), item)
        return self._match()

    def _match(self) -> list[Pair]:
        pairs = []
        color, depth = self._color, self._depth
        i = 0
        while i < len(color.stamps):
            c_stamp = color.stamps[i]
            if depth.newest is None or depth.newest < c_stamp:
                break  # depth may still bring this stamp or a nearer one (and for later colors too)
            j = depth.nearest(c_stamp, self.slop_ns)
            if j is not None:
                _, c_item = color.pop(i)
                d_stamp, d_item = depth.pop(j)
                pairs.append(Pair(c_stamp, c_item, d_item, d_stamp))
            elif depth.newest > c_stamp + self.slop_ns:
                color.pop(i)  # depth has passed it: its partner is lost
                color.dropped += 1
            else:
                i += 1
        self._drop_passed(depth, color)
        for stream in (color, depth):
            while len(stream.stamps) > self.max_queue:  # the partner stream stopped: bound the wait
                stream.pop(0)
                stream.dropped += 1
        return pairs

    def _drop_passed(self, stream: _Stream, other: _Stream) -> None:
        """Drop images of `stream` the other stream has passed by more than the slop: no partner
        within the slop is waiting, and none can come any more."""
        if other.newest is None:
            return
        limit = other.newest - self.slop_ns
        i = 0
        while i < len(stream.stamps) and stream.stamps[i] < limit:
            if other.nearest(stream.stamps[i], self.slop_ns) is None:
                stream.pop(i)
                stream.dropped += 1
            else:
                i += 1
