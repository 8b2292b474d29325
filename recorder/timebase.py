"""Mapping sample indexes to UTC, and formatting times for metadata."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path


class Timebase:
    """``epoch(sample)``: UTC seconds of a capture sample.

    In simulation the anchor is the scenario start, so times are exactly
    ``start + line time``. On a Pi the anchor is taken from the system clock when
    capture starts; ``synchronised`` records whether that clock was NTP-synchronised,
    and is written into every call's metadata.
    """

    def __init__(self, rate: int, epoch0: float, synchronised: bool = True):
        self.rate, self.epoch0, self.synchronised = rate, float(epoch0), synchronised

    @classmethod
    def from_system(cls, rate: int, frames_now: int = 0) -> Timebase:
        return cls(rate, time.time() - frames_now / rate, clock_synchronised())

    def epoch(self, sample: int) -> float:
        return self.epoch0 + sample / self.rate

    def resync(self, frames_now: int, wall_now: float) -> float:
        """The system clock has just become synchronised: re-anchor so that capture
        sample ``frames_now`` is ``wall_now``. Returns the step applied, in seconds.

        Call boundaries never move (they are sample indexes); only the UTC labels of
        samples from now on change. Calls already started keep ``clock_synchronised``
        false in their metadata.
        """
        step = self.step_to(frames_now, wall_now)
        self.epoch0, self.synchronised = self.epoch0 + step, True
        return step

    def step_to(self, frames_now: int, wall_now: float) -> float:
        """The step (s) :meth:`resync` would apply, without applying it."""
        return wall_now - frames_now / self.rate - self.epoch0


TIME_ERROR = 5    # adjtimex(): the kernel's clock is not synchronised (STA_UNSYNC)
# systemd-timesyncd creates this when it has synchronised the clock (systemd >= 249);
# it is in /run, so it is gone after a reboot until the next sync.
TIMESYNCD_SYNCED = Path("/run/systemd/timesync/synchronized")
# The provisioning agent creates this after setting the clock from the engineer's laptop
# (set_clock over USB): the clock is right for this boot, though no NTP server said so.
USB_CLOCK_SET = Path("/run/linetap-agent/clock-set")


def clock_synchronised(adjtimex=None, markers=(TIMESYNCD_SYNCED, USB_CLOCK_SET)) -> bool:
    """True when the system clock is known good: timesyncd has synchronised it, the
    provisioning agent has set it over USB this boot, or the kernel says it is
    NTP-synchronised.

    The marker files come first because the recorder's unit denies ``adjtimex``
    altogether (``ProtectClock=yes`` filters the whole @clock group, read-only calls
    too), so there the kernel check always fails and would mark every call
    unsynchronised. ``adjtimex`` (modes 0, read only) remains for other NTP clients
    (chrony, ntpd) outside the sandbox: it returns TIME_ERROR while unsynchronised. A Pi
    without an RTC boots with the last saved time, which looks plausible but is not
    synchronised, so the year alone proves nothing.
    """
    for marker in markers:
        try:
            if Path(marker).exists():
                return True
        except OSError:
            pass
    if adjtimex is None:
        adjtimex = _adjtimex
    try:
        state = adjtimex()
    except OSError:
        return False
    return state >= 0 and state != TIME_ERROR


def _adjtimex() -> int:
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(512)      # struct timex, modes = 0: read only
    state = libc.adjtimex(buf)
    if state < 0:
        raise OSError(ctypes.get_errno(), "adjtimex failed")
    return state


def iso(epoch: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a Z, or None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def parse_iso(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
