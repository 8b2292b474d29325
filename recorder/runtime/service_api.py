"""What the daemon lends its services and what it expects back (no ``sync`` import here).

The daemon knows services only through this interface; :mod:`recorder.runtime.assembly`
builds the real ones (retention and the uploader), so the daemon never imports ``sync``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from recorder.config import Config
from recorder.runtime.alarms import Alarms
from recorder.storage.retention.service import Retention
from recorder.storage.store import Store


@dataclass(frozen=True)
class ServiceContext:
    """What the daemon lends its services. ``now`` is epoch seconds for deadlines (line
    time in simulation); ``free_bytes`` probes the data disk; ``status`` is the daemon's
    status dict for health reports."""

    cfg: Config
    store: Store
    data_dir: Path
    device: str
    alarms: Alarms
    stop: threading.Event
    status: Callable[[], dict]
    now: Callable[[], float]
    free_bytes: Callable[[], int]


class ServicesLike(Protocol):
    """What a service builder returns."""

    retention: Retention        # the daemon asks it to make room on a full disk

    def start(self) -> list[threading.Thread]:
        """Start the service threads; the daemon joins them at shutdown."""

    def sync_status(self) -> dict | None:
        """The uploader's link and backlog for ``status``; None when sync is off."""
