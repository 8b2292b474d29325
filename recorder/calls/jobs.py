"""What the call processor hands the writer: one job per thing to store.

The processor puts these on the writer's queue through the ``put`` function it is given;
the storage room consumes them (:class:`recorder.storage.writer.Writer`). Sample indexes
are absolute (the ring's); ``pcm`` is int16, one line's audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CallInfo:
    """Everything known about one call; the processor fills it in, the writer stores it."""

    id: str
    line: int
    direction: str
    offhook_sample: int
    first_sample: int = 0
    ring_sample: int | None = None
    caller_number: str | None = None
    caller_name: str | None = None
    dialled_digits: str = ""
    announcement: dict | None = None
    pauses: list = field(default_factory=list)         # [[start_sample, end_sample]]
    masked_dtmf: list = field(default_factory=list)    # [[start_sample, end_sample]]
    flashes: list = field(default_factory=list)        # [[sample, length]]
    gaps: list = field(default_factory=list)           # overruns: [[start, end]]
    recording_ended: int | None = None
    open_pause: int | None = None                      # sample a pause began, if paused
    clock_ok: bool = True      # stamped from a synchronised clock (set by the writer)
    rollover_of: str | None = None
    end_sample: int | None = None
    end_reason: str | None = None
    recovered: bool = False


@dataclass
class OpenCall:
    info: CallInfo


@dataclass
class WriteSegment:
    call_id: str
    seq: int
    first_sample: int
    pcm: np.ndarray


@dataclass
class JournalAppend:
    """Audio of the segment in progress, ``first_sample`` on, cut since the last record."""

    call_id: str
    first_sample: int
    pcm: np.ndarray


@dataclass
class CloseCall:
    info: CallInfo


@dataclass
class UpdateCall:
    """A snapshot of a call's metadata, stored while it runs so a power cut keeps it."""

    info: CallInfo


@dataclass
class MissedCall:
    info: CallInfo
    ring_end: int
