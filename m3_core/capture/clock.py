"""Backwards clock jumps across several input streams (a looping bag, a restarted sim clock).

Shared by the capture session and the pose chain, which both buffer stamped data that must not mix
across a jump. Streams are tracked separately because under load they lag each other (images queue
up behind /tf) and that is no jump. After a jump, a message from the previous pass may still be in
flight on a stream that has not jumped yet; it is "stale": taking it would put a sample seconds in
the future of the new pass into a buffer and interpolate new poses towards it.

A jump must be confirmed: one message stamped far in the past (a driver hiccup, a mis-stamped
image) is an outlier to drop alone, not a reason to clear every buffer. The first message behind
its stream's newest by more than `jump_ns` is only a suspect (dropped); the jump is taken when a
second message agrees with it (the same stream again, or another stream jumping back to near the
same time), and the suspect is forgotten when its stream carries on in the old time line.
"""

from __future__ import annotations

import enum


class Clock(enum.Enum):
    OK = "ok"  # take the message
    JUMP = "jump"  # take it, after clearing everything stamped
    STALE = "stale"  # drop it: it is from the pass before the last jump
    SUSPECT = "suspect"  # drop it: far behind its stream, not (yet) confirmed as a jump


class ClockJumpDetector:
    def __init__(self, jump_ns: int) -> None:
        if jump_ns <= 0:
            raise ValueError(f"jump_ns must be > 0, got {jump_ns}")
        self.jump_ns = int(jump_ns)
        self.jumps = 0
        self.outliers = 0  # suspects that turned out to be single outliers
        self._newest: dict[str, int] = {}
        self._previous_pass_newest: int | None = None
        self._suspect: tuple[str, int] | None = None  # (stream, stamp) of an unconfirmed jump

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
            return self._behind(stream, stamp_ns)
        if self._suspect is not None and self._suspect[0] == stream:
            self._suspect = None  # its stream carried on in the old time line: it was an outlier
            self.outliers += 1
        self._newest[stream] = stamp_ns if newest is None else max(newest, stamp_ns)
        return Clock.OK

    def _behind(self, stream: str, stamp_ns: int) -> Clock:
        """A message far behind its stream's newest: a suspect, or the confirmation of one."""
        suspect = self._suspect
        if suspect is None or abs(stamp_ns - suspect[1]) > self.jump_ns:
            self._suspect = (stream, stamp_ns)
            return Clock.SUSPECT
        self._suspect = None
        self.jumps += 1
        self._previous_pass_newest = max(self._newest.values())
        self._newest = {stream: stamp_ns}
        if suspect[0] != stream:
            self._newest[suspect[0]] = suspect[1]
        return Clock.JUMP
