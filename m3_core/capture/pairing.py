"""Pair color and depth images by stamp (what message_filters' ApproximateTime does for two streams).

Each stream is assumed to arrive in stamp order. A color image pairs with the depth image of the
same stamp at once; otherwise with the nearest depth within `slop_ns`, decided as soon as the depth
stream has moved past the color stamp (a better match cannot come any more). Images that can no
longer pair are dropped and counted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class Pair:
    stamp_ns: int  # the color stamp: the pose is looked up there
    color: Any
    depth: Any
    depth_stamp_ns: int


class StampPairer:
    """Two small stamp-keyed queues and a matching rule; holds arbitrary payloads."""

    def __init__(self, slop_ns: int = 15_000_000, max_queue: int = 30) -> None:
        if slop_ns < 0 or max_queue < 1:
            raise ValueError(f"need slop_ns >= 0 and max_queue >= 1, got {slop_ns}, {max_queue}")
        self.slop_ns = int(slop_ns)
        self.max_queue = int(max_queue)
        self._color: OrderedDict[int, Any] = OrderedDict()
        self._depth: OrderedDict[int, Any] = OrderedDict()
        self.unpaired_color = 0
        self.unpaired_depth = 0

    def clear(self) -> None:
        self._color.clear()
        self._depth.clear()

    def drain(self) -> int:
        """At the end of a stream: drop (and count) what is still waiting; returns how many."""
        n = len(self._color) + len(self._depth)
        self.unpaired_color += len(self._color)
        self.unpaired_depth += len(self._depth)
        self.clear()
        return n

    def add_color(self, stamp_ns: int, item: Any) -> list[Pair]:
        self._insert(self._color, stamp_ns, item)
        return self._match()

    def add_depth(self, stamp_ns: int, item: Any) -> list[Pair]:
        self._insert(self._depth, stamp_ns, item)
        return self._match()

    def _insert(self, queue: OrderedDict[int, Any], stamp_ns: int, item: Any) -> None:
        newest = next(reversed(queue), None)
        queue[int(stamp_ns)] = item
        if newest is not None and stamp_ns < newest:  # out of order: keep the queue sorted
            items = sorted(queue.items())
            queue.clear()
            queue.update(items)

    def _match(self) -> list[Pair]:
        pairs = []
        newest_depth = next(reversed(self._depth), None)
        newest_color = next(reversed(self._color), None)
        for c_stamp in list(self._color):
            if c_stamp in self._depth:
                pairs.append(self._take(c_stamp, c_stamp))
                continue
            if newest_depth is None or newest_depth < c_stamp:
                break  # depth may still bring this stamp (or a nearer one)
            near = [d for d in self._depth if abs(d - c_stamp) <= self.slop_ns]
            if near:
                pairs.append(self._take(c_stamp, min(near, key=lambda d: (abs(d - c_stamp), d))))
            elif newest_depth > c_stamp + self.slop_ns:
                del self._color[c_stamp]
                self.unpaired_color += 1
        # depth older than every color that can still come (colors arrive in order) never pairs
        if newest_color is not None:
            for d_stamp in [d for d in self._depth if d < newest_color - self.slop_ns]:
                if not any(abs(c - d_stamp) <= self.slop_ns for c in self._color):
                    del self._depth[d_stamp]
                    self.unpaired_depth += 1
        for queue, name in ((self._color, "color"), (self._depth, "depth")):
            while len(queue) > self.max_queue:
                queue.popitem(last=False)
                setattr(self, f"unpaired_{name}", getattr(self, f"unpaired_{name}") + 1)
        return pairs

    def _take(self, c_stamp: int, d_stamp: int) -> Pair:
        return Pair(c_stamp, self._color.pop(c_stamp), self._depth.pop(d_stamp), d_stamp)
