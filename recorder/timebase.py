"""Mapping sample indexes to UTC, and formatting times for metadata."""

from __future__ import annotations

import time
from datetime import UTC, datetime


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


def clock_synchronised() -> bool:
    """True if systemd-timesyncd (or chrony via the same flag file) reports sync."""
    import os
    return os.path.exists("/run/systemd/timesync/synchronized") or time.time() > 1.7e9


def iso(epoch: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a Z, or None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def parse_iso(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
