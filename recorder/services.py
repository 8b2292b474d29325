"""Services started after recording is live: retention (always) and the uploader.

The daemon calls :func:`start_services` from ``Daemon._extra_services`` and joins the
returned threads on shutdown (in reverse order, after ``daemon.stop`` is set).
"""

from __future__ import annotations

import logging
import threading

from recorder.retention import Retention, SimDisk
from recorder.service import ServiceThread

log = logging.getLogger(__name__)


def make_retention(daemon) -> Retention:
    """The daemon's retention, with the right clock and free-space probe (see below)."""
    cfg = daemon.cfg
    clock = None
    if cfg.device.hardware == "sim":
        # In simulation calls carry line time (the scenario's start + t), so "now" for
        # deadlines is line time too; wall-clock now would expire a scenario dated in
        # the past the moment its calls were written.
        def clock():
            ring = getattr(daemon, "ring", None)    # absent while the daemon prepares
            return daemon.timebase.epoch(ring.written if ring is not None else 0)
    # Free-space probe (bytes): injected as ``daemon.free_bytes`` if the daemon has one
    # (tests, a simulation scenario filling the disk); in simulation a virtual disk
    # holding only the recordings, so the host's real free space never drives eviction;
    # on hardware the data partition's real free space.
    free_bytes = getattr(daemon, "free_bytes", None)
    if free_bytes is None and cfg.device.hardware == "sim":
        free_bytes = SimDisk(daemon.store.root / "segments")
    kw = {"clock": clock} if clock else {}
    return Retention(daemon.store, daemon.data_dir, cfg, alarms=daemon.alarms,
                     free_bytes=free_bytes, reserve=getattr(daemon, "reserve", None), **kw)


def start_services(daemon) -> list[threading.Thread]:
    """Start retention and (if ``sync.enabled``) the uploader; return their threads."""
    cfg = daemon.cfg
    retention = getattr(daemon, "retention", None) or make_retention(daemon)
    daemon.retention = retention
    threads: list[threading.Thread] = []
    t_ret = ServiceThread("retention", cfg.retention.interval_s, retention.tick, daemon.stop)
    t_ret.start()
    threads.append(t_ret)
    if cfg.sync.enabled:
        from sync.uploader import Uploader, UploaderThread
        try:
            up = Uploader(daemon.store, cfg, device=daemon.device, data_dir=daemon.data_dir,
                          status=daemon.status, alarms=daemon.alarms, retention=retention)
            up.start()
        except (OSError, ValueError) as exc:
            # Recording must never depend on sync: a bad certificate path or TLS file
            # is an alarm, and the outbox simply waits for a fixed config.
            log.exception("sync not started")
            why = str(exc)
            daemon.alarms.set("sync_config", True, detail=why)
            daemon.sync_status = lambda: {"link": "not started", "detail": why}
            return threads
        daemon.uploader = up
        daemon.sync_status = up.sync_status
        t_up = UploaderThread(up, daemon.stop)
        t_up.start()
        threads.append(t_up)
    return threads
