"""The two threads that touch the sound card: capture into the ring, playback from it.

:class:`CaptureLoop` reads one period at a time from the hardware's capture stream into
the ring buffer and marks the sample clock; it waits on nothing but the stream (on a Pi,
ALSA; the simulated line paces its own stream). :class:`PlaybackLoop` keeps the playback
stream ``lead`` frames ahead of capture with what the announcer renders (announcement,
beeps, test tones), so playback frame *p* goes out with capture sample *p*. Both are
the bodies of the daemon's ``capture`` and ``playback`` threads.
"""

from __future__ import annotations

import threading
import time

from recorder.capture.ring import RingBuffer


class CaptureLoop:
    """Sound card -> ring. ``stream`` has ``read() -> int16 block or None (ended)``,
    ``frames`` (the sample clock, dropped frames included), ``lost_before`` (frames the
    card dropped just before the block read returned: skipped in the ring as a gap),
    ``xruns`` and ``close()``; ``clock`` may have ``mark(frames)`` (a Pi's capture
    clock)."""

    def __init__(self, stream, ring: RingBuffer, clock, stop: threading.Event, *,
                 done: threading.Event | None = None):
        self.stream, self.ring, self.stop = stream, ring, stop
        self._mark = getattr(clock, "mark", None)
        #: Set once the stream has ended or the daemon stops: nothing more will come.
        self.done = done or threading.Event()
        self._last = time.monotonic()

    def run(self) -> None:
        stream, ring, mark = self.stream, self.ring, self._mark
        try:
            while not self.stop.is_set():
                block = stream.read()
                if block is None:
                    break
                if stream.lost_before:
                    ring.skip(stream.lost_before)
                ring.write(block)
                self._last = time.monotonic()
                if mark is not None:
                    mark(stream.frames)
        finally:
            self.done.set()
            with ring.cond:
                ring.cond.notify_all()

    def age_s(self) -> float:
        """Seconds since audio last arrived (0 once the stream has ended on purpose)."""
        return 0.0 if self.done.is_set() else time.monotonic() - self._last

    @property
    def xruns(self) -> int:
        return self.stream.xruns

    def close(self) -> None:
        self.stream.close()


class PlaybackLoop:
    """Announcer -> sound card, ``lead`` frames ahead of capture (``lead`` >= 6 periods
    on a Pi, so a busy moment never underruns the card). ``announcer.render(start, n)``
    gives the ``n`` frames (all lines) from frame ``start``."""

    def __init__(self, stream, ring: RingBuffer, announcer, lead: int,
                 capture_done: threading.Event, stop: threading.Event):
        self.stream, self.ring, self.announcer = stream, ring, announcer
        self.lead, self.capture_done, self.stop = lead, capture_done, stop
        self.played = 0                  # frames handed to the card so far

    def run(self) -> None:
        ring, pb, period = self.ring, self.stream, self.stream.period
        try:
            while not self.stop.is_set():
                with ring.cond:
                    ring.cond.wait_for(lambda: ring.written + self.lead > self.played
                                       or self.capture_done.is_set()
                                       or self.stop.is_set(), timeout=0.5)
                if self.capture_done.is_set():
                    break
                want = ring.written + self.lead - self.played
                while want > 0 and not self.stop.is_set():
                    n = min(period, want)
                    pb.write(self.announcer.render(self.played, n))
                    self.played += n
                    want -= n
        finally:
            pb.close()
