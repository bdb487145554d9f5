"""Clock jumps across several input streams (a looping bag, a restarted sim clock, a paused driver).

Shared by the capture session and the pose chain, which both buffer stamped data that must not mix
across a jump. Streams are tracked separately because under load they lag each other (images queue
up behind /tf) and that is no jump. After a backwards jump, a message from the previous pass may
still be in flight on a stream that has not jumped yet; it is "stale": taking it would put a sample
seconds in the future of the new pass into a buffer and interpolate new poses towards it.

A jump must be confirmed, in either direction: one message stamped far in the past or far in the
future (a driver hiccup, a mis-stamped image) is an outlier to drop alone. Taking a future one as
progress is as bad as taking a past one for a bag loop: the transform cache evicts everything older
than the outlier minus its span, and the next good messages then look like a jump back that clears
every buffer. So the first message more than `jump_ns` behind its stream's newest, or more than
`jump_ns` ahead of every stream's newest, is only a suspect (dropped); the jump is taken when a
second message agrees with it (the same stream again, or another stream jumping to near the same
time), and the suspect is forgotten when its stream carries on in the old time line.

Ahead is measured against every stream, not the message's own one: a stream may be sparse (a /tf
edge published on change) and step far ahead of its own last stamp while staying level with the
others. The cost of a real forward gap (a recording resumed after a pause) is one message.
"""

from __future__ import annotations

import enum


class Clock(enum.Enum):
    OK = "ok"  # take the message
    JUMP = "jump"  # take it, after clearing everything stamped (the clock went back)
    STALE = "stale"  # drop it: it is from the pass before the last jump
    SUSPECT = "suspect"  # drop it: far behind its stream (or ahead of all), not (yet) confirmed


class ClockJumpDetector:
    def __init__(self, jump_ns: int) -> None:
        if jump_ns <= 0:
            raise ValueError(f"jump_ns must be > 0, got {jump_ns}")
        self.jump_ns = int(jump_ns)
        self.jumps = 0  # confirmed jumps back
        self.leaps = 0  # confirmed jumps forward (taken as progress; nothing to clear)
        self.outliers = 0  # suspects that turned out to be single outliers
        self._newest: dict[str, int] = {}
        self._previous_pass_newest: int | None = None
        self._suspect: tuple[str, int] | None = None  # (stream, stamp) of an unconfirmed jump

    def check(self, stream: str, stamp_ns: int) -> Clock:
        newest = self._newest.get(stream)
        current = max(self._newest.values()) if self._newest else None
        # a stream silent since the jump whose message is well ahead of the new pass. Only so far
        # ahead: a message in flight may lead the old pass's newest a little, but far beyond it is a
        # forward gap (a new recording), which is a suspect like any other (below).
        if (
            newest is None
            and self._previous_pass_newest is not None
            and current is not None
            and current + self.jump_ns < stamp_ns <= self._previous_pass_newest + self.jump_ns
        ):
            return Clock.STALE
        if newest is not None and stamp_ns < newest - self.jump_ns:
            return self._behind(stream, stamp_ns)
        if newest is not None and current is not None and stamp_ns > current + self.jump_ns:
            return self._ahead(stream, stamp_ns)
        if self._suspect is not None and self._suspect[0] == stream:
            self._suspect = None  # its stream carried on in the old time line: it was an outlier
            self.outliers += 1
        self._newest[stream] = stamp_ns if newest is None else max(newest, stamp_ns)
        return Clock.OK

    def _confirms(self, stamp_ns: int) -> tuple[str, int] | None:
        """The suspect this message agrees with (then forgotten), or None (this one is the suspect)."""
        suspect = self._suspect
        if suspect is None or abs(stamp_ns - suspect[1]) > self.jump_ns:
            return None
        self._suspect = None
        return suspect

    def _behind(self, stream: str, stamp_ns: int) -> Clock:
        """A message far behind its stream's newest: a suspect, or the confirmation of one."""
        suspect = self._confirms(stamp_ns)
        if suspect is None:
            self._suspect = (stream, stamp_ns)
            return Clock.SUSPECT
        self.jumps += 1
        self._previous_pass_newest = max(self._newest.values())
        self._newest = {stream: stamp_ns}
        if suspect[0] != stream:
            self._newest[suspect[0]] = suspect[1]
        return Clock.JUMP

    def _ahead(self, stream: str, stamp_ns: int) -> Clock:
        """A message far ahead of every stream: a suspect, or the confirmation of one (then progress:
        streams that have not caught up yet are behind, which is lag, not a jump)."""
        suspect = self._confirms(stamp_ns)
        if suspect is None:
            self._suspect = (stream, stamp_ns)
            return Clock.SUSPECT
        self.leaps += 1
        self._newest[stream] = stamp_ns
        self._newest[suspect[0]] = max(self._newest.get(suspect[0], suspect[1]), suspect[1])
        return Clock.OK
