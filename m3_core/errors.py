"""The project's error type for domain failures (bad scene, missing transform, bad memory file).

Wrong arguments from a caller raise ValueError/TypeError; failures of the world (a transform that
is not there, a file that is corrupt) raise M3Error subclasses so nodes can report them cleanly.
"""


class M3Error(Exception):
    """A domain failure that a caller can report to a user (nodes answer success=false)."""


class TransformError(M3Error):
    """A transform lookup failed."""


class UnknownFrameError(TransformError):
    """A frame id that the buffer has never seen."""


class DisconnectedFramesError(TransformError):
    """Two frames that are both known but not in the same tree."""


class ExtrapolationError(TransformError):
    """A lookup at a time outside what the buffer holds (past the tolerance)."""


class StaleStampError(M3Error):
    """A message stamped before a backwards clock jump that arrived after it (looping bag)."""
