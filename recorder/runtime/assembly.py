"""The service wiring: what a run adds around recording, built and passed into the daemon.

``linetap run`` and ``linetap simulate`` hand :func:`build_services` to the daemon; the
daemon calls it once its store is open, with a
:class:`~recorder.runtime.service_api.ServiceContext` naming exactly what the services
may use, and gets a :class:`Services` back: retention (always; the
daemon also asks it to make room on a full disk), and the uploader and the updater
(when ``sync.enabled``). Nothing here sets anything on the daemon, and this is the only
module of the daemon's side that imports ``sync`` (and only when sync is on).
"""

from __future__ import annotations

import logging
import threading

from recorder.runtime.service_api import ServiceContext
from recorder.storage.retention.service import Retention
from recorder.threads import ServiceThread

log = logging.getLogger(__name__)


class Services:
    """Retention and the uploader for one run (a
    :class:`~recorder.runtime.service_api.ServicesLike`). :meth:`start` starts their
    threads."""

    def __init__(self, ctx: ServiceContext, *, retention: Retention | None = None):
        self.ctx = ctx
        self.retention = retention or Retention(ctx.store, ctx.data_dir, ctx.cfg,
                                                alarms=ctx.alarms, free_bytes=ctx.free_bytes,
                                                clock=ctx.now, reserve=ctx.reserve)
        self.uploader = None            # a sync.uploader.Uploader once started
        self.updater = None             # a sync.update.service.Updater, with sync
        self._sync_problem: str | None = None

    def start(self) -> list[threading.Thread]:
        """Start retention and (if ``sync.enabled``) the uploader; return their threads."""
        ctx = self.ctx
        threads: list[threading.Thread] = [
            ServiceThread("retention", ctx.cfg.retention.interval_s, self.retention.tick,
                          ctx.stop)]
        threads[0].start()
        if not ctx.cfg.sync.enabled:
            return threads
        # Imported only when sync is on: paho and the TLS stack cost a box that records
        # without sync 3.4 MB of its 60 MB budget (docs/benchmarks.md, peak RSS). Not a
        # circle being dodged: tests/test_architecture.py sees this import too.
        from sync.update.download import tls_context
        from sync.update.service import TICK_S, Updater
        from sync.uploader import Uploader, UploaderThread
        sc, uc = ctx.cfg.sync, ctx.cfg.update
        try:
            # Updates come over the same link (signed commands) and are fetched with
            # the same device certificate, so they run exactly when sync does.
            self.updater = Updater(ctx.data_dir / "update", status=ctx.status,
                                   report=self._report_update,
                                   tls=lambda: tls_context(sc.ca, sc.cert, sc.key),
                                   window=uc.window, countdown_s=uc.countdown_s,
                                   stop=ctx.stop)
            up = Uploader(ctx.store, ctx.cfg, device=ctx.device, data_dir=ctx.data_dir,
                          status=ctx.status, alarms=ctx.alarms, retention=self.retention,
                          updater=self.updater)
            up.start()
        except (OSError, ValueError) as exc:
            # Recording must never depend on sync: a bad certificate path or TLS file
            # is an alarm, and the outbox simply waits for a fixed config.
            log.exception("sync not started")
            self._sync_problem = str(exc)
            ctx.alarms.set("sync_config", True, detail=self._sync_problem)
            return threads
        self.uploader = up
        t_up = UploaderThread(up, ctx.stop)
        t_up.start()
        threads.append(t_up)
        t_update = ServiceThread("updater", TICK_S, self.updater.tick, ctx.stop)
        t_update.start()
        threads.append(t_update)
        return threads

    def _report_update(self, obj: dict) -> bool:
        """An update stage report, through the uploader once it runs."""
        return self.uploader is not None and self.uploader.report_update(obj)

    def sync_status(self) -> dict | None:
        """The uploader's link and backlog for ``status``; None when sync is off."""
        if self.uploader is not None:
            return self.uploader.sync_status()
        if self._sync_problem is not None:
            return {"link": "not started", "online": False, "detail": self._sync_problem}
        return None


def build_services(ctx: ServiceContext) -> Services:
    """The services of a run (``linetap run`` and ``simulate`` pass this to the daemon)."""
    return Services(ctx)
