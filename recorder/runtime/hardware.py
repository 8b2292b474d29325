"""What the daemon records from: the hardware interface, and the Pi's implementation.

The daemon asks a :class:`Hardware` for everything that differs between a Pi and the
simulated line: the capture and playback streams, the pin factory, the sample clock,
the timebase, the wall clock that retention deadlines are judged by, the free-space
probe of the data disk, and whether the system clock is synchronised. The Pi's answers
are here; the simulated line's (:class:`recorder.runtime.simulate.SimHardware`) sit beside
them, as gpiozero keeps ``MockFactory`` beside its real pin factories, so the daemon
itself has no "are we simulated?" branch.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hw.audio import AlsaCapture, AlsaPlayback
from hw.clock import CaptureClock, SampleClock
from hw.gpio import make_factory
from recorder.timebase import Timebase, clock_synchronised


@dataclass(frozen=True)
class Reader:
    """How far the daemon's call processor has read the ring, for a capture that paces
    itself on its reader (the simulated line). ``position()`` is a sample index; it
    moves under ``cond``; ``stop`` ends any wait; ``store_behind()`` is True while the
    writer has more queued than it keeps up with (a line that has no clock of its own
    waits for it; a real sound card never does)."""

    position: Callable[[], int]
    cond: threading.Condition
    stop: threading.Event
    store_behind: Callable[[], bool] = lambda: False


class Hardware:
    """A Pi's hardware: ALSA devices by name, a gpiozero pin factory by name
    (``""`` = gpiozero's choice), and the system clock.

    A real sound card never waits for its reader: frames the daemon does not take in
    time are an ALSA xrun, counted by :class:`~hw.audio.AlsaCapture`, which recovers
    the stream and keeps the lost frames on the sample clock (a gap in the call).
    """

    def __init__(self, capture_device: str, playback_device: str, *, pin_factory: str = ""):
        self.capture_device, self.playback_device = capture_device, playback_device
        self.pin_factory_name = pin_factory
        #: CPU seconds this hardware spent on the capture thread doing work a Pi's sound
        #: card does not (pacing a simulated line); benches leave it out. 0 on a Pi.
        self.pacing_cpu_s = 0.0

    def pin_factory(self):
        return make_factory(self.pin_factory_name)

    def sample_clock(self, rate: int) -> SampleClock:
        return CaptureClock(rate)

    def timebase(self, rate: int) -> Timebase:
        """Sample index -> UTC, anchored on the system clock now."""
        return Timebase.from_system(rate)

    def open_capture(self, lines: int, rate: int, period: int, reader: Reader) -> AlsaCapture:
        return AlsaCapture(self.capture_device, lines, rate, period)

    def open_playback(self, lines: int, rate: int, period: int) -> AlsaPlayback:
        return AlsaPlayback(self.playback_device, lines, rate, period)

    def now(self) -> float:
        """Epoch seconds that retention deadlines are judged against."""
        return time.time()

    def free_bytes(self, data_dir: Path) -> Callable[[], int]:
        """A probe of the data disk's free space in bytes."""
        return lambda: shutil.disk_usage(data_dir).free

    def reserve_bytes(self, configured: int) -> int:
        """Bytes of disk reserve to keep (``retention.reserve_mb``): all of it on a box."""
        return configured

    def system_clock_synchronised(self) -> bool:
        """True once NTP has synchronised the system clock (see :func:`clock_synchronised`)."""
        return clock_synchronised()
