"""Backwards clock jumps across several input streams (a looping bag, a restarted sim clock).

Shared by the capture session and the pose chain, which both buffer stamped data that must not mix
across a jump. Streams are tracked separately because under load they lag each other (images queue
up behind /tf) and that is no jump. After a jump, a message from the previous pass may still be in
flight on a stream that has not jumped yet; it is "stale": taking it would put a sample seconds in
the future of the new pass into a buffer and interpolate new poses towards it.
"""

from __future__ import annotations

import enum


class Clock(enum.Enum):
    OK = "ok"  # take the message
    JUMP = "jump"  # take it, after clearing everything stamped
    STALE = "stale"  # drop it: it is from the pass before the last jump


class ClockJumpDetector:
    def __init__(self, jump_ns: int) -> None:
        if jump_ns <= 0:
            raise ValueError(f"jump_ns must be > 0, got {jump_ns}")
        self.jump_ns = int(jump_ns)
        self.jumps = 0
        self._newest: dict[str, int] = {}
        self._previous_pass_newest: int | None = None

    def check(self, stream: str, stamp_ns: int) -> Clock:
        newest = self._newest.get(stream)
        if newest is None and self._previous_pass_newest is not None and self._newest:
            # a stream silent since the jump whose message is well ahead of the new pass. Only so far
            # ahead: a message in flight may lead the old pass's newest a little, but far beyond it
            # is a real forward gap (a new recording), which must not be refused forever.
            current = max(self._newest.values())
            if current + self.jump_ns < stamp_ns <= self._previous_pass_newest + self.jump_ns:
                return Clock.STALE
        if newest is not None and stamp_ns < newest - self.jump_ns:
            self.jumps += 1
            self._previous_pass_newest = max(self._newest.values())
            self._newest = {stream: stamp_ns}
            return Clock.JUMP
        self._newest[stream] = stamp_ns if newest is None else max(newest, stamp_ns)
        return Clock.OK
