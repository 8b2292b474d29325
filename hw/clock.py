"""The sample clock: capture frame count is the only time the daemon trusts.

GPIO edges are stamped with a sample index at the moment they happen. On a Pi that
index is derived from ``time.monotonic_ns()`` through the capture stream's most recent
(frame count, monotonic time) mark. In simulation the simulator sets the index itself
before it moves a pin, so edges are sample-exact at any speed.
"""

from __future__ import annotations

import threading
import time


class SampleClock:
    """Interface: ``now()`` is the capture sample index (0-based, at ``rate`` Hz) of "now"."""

    rate: int

    def now(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError


class CaptureClock(SampleClock):
    """Maps monotonic time to sample index using marks made by the capture thread.

    ``mark(frames_total)`` is called after each ALSA read returns: the last captured
    frame was then at most one period old, so the estimate's error is below one period
    (20 ms at the default 160-frame period), well inside the 20-30 ms hook debounce.
    """

    def __init__(self, rate: int, monotonic_ns=time.monotonic_ns):
        self.rate = rate
        self._mono = monotonic_ns
        self._lock = threading.Lock()
        self._frames = 0
        self._t_ns = monotonic_ns()

    def mark(self, frames_total: int) -> None:
        t = self._mono()
        with self._lock:
            self._frames, self._t_ns = frames_total, t

    def now(self) -> int:
        t = self._mono()
        with self._lock:
            frames, t0 = self._frames, self._t_ns
        return frames + max(0, (t - t0) * self.rate // 1_000_000_000)


class SimClock(SampleClock):
    """A clock the simulator sets: ``position`` is the line sample being rendered."""

    def __init__(self, rate: int):
        self.rate = rate
        self.position = 0

    def now(self) -> int:
        return self.position
