"""After a capture xrun: how many frames the sound card dropped.

A card whose reader is late overruns its ring; ALSA then reports ``-EPIPE`` (or, on some
drivers, the read fails with ``EIO`` and the device must be reopened), throws away what
it held, and starts again *now*. ALSA does not say how many frames were lost, but the
card's crystal kept counting: the sample clock owes the frames of the time that passed.
So the frames lost are the frames the monotonic clock says should have arrived since
sample 0, less the frames that did. The daemon adds them to its sample clock (so later
timestamps do not drift) and records them as a gap in the call (docs/formats.md).

Sample 0's place on the monotonic clock (the *origin*) is estimated from recent reads: a
read that returns at time ``t`` with ``F`` frames delivered puts the origin at
``t - F / rate`` or later (the read returns after its last frame was captured, never
before), so the earliest such value over the last reads is the tightest. A read that
had to wait for its period returns within a fraction of a period of capture, so the
estimate is good to well under one period.
"""

from __future__ import annotations

from collections import deque

ORIGIN_READS = 64       # reads the origin is estimated over (1.3 s at 20 ms periods)


class ReadTimes:
    """Where sample 0 falls on the monotonic clock, from the last :data:`ORIGIN_READS`
    reads.

    :param rate: frames per second of the sample clock (8000 or 16000).
    """

    def __init__(self, rate: int, reads: int = ORIGIN_READS):
        self.rate = rate
        self._origins: deque[float] = deque(maxlen=reads)

    def note(self, t_s: float, frames_end: int) -> None:
        """A read returned at monotonic time ``t_s`` (seconds) with the sample clock at
        ``frames_end`` (frames, lost ones included)."""
        self._origins.append(t_s - frames_end / self.rate)

    def origin(self) -> float | None:
        """Monotonic time (s) of sample 0, or None before the first read."""
        return min(self._origins) if self._origins else None


def lost_frames(origin_s: float | None, now_s: float, frames: int, block: int,
                rate: int) -> int:
    """Frames the card dropped before a block of ``block`` frames that a read returned
    at monotonic time ``now_s`` (s), the first read after an xrun.

    ``frames`` is the sample clock before the block (frames delivered plus frames
    already known lost); ``origin_s`` is :meth:`ReadTimes.origin` (None: nothing is
    known yet, so nothing is counted). The block's last frame was captured just before
    ``now_s``, so the clock at its end should read ``(now_s - origin_s) * rate``.
    Never negative: a card cannot deliver frames from the future. Pure.
    """
    if origin_s is None:
        return 0
    expected_end = round((now_s - origin_s) * rate)
    return max(0, expected_end - block - frames)
