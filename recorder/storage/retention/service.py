"""The retention service on the box: applies the policy on a tick, and the upstream's orders.

:class:`Retention` gathers a snapshot of the calls from the store, asks the pure policy
(:func:`~recorder.storage.retention.policy.decide`) what must go, and deletes it
crash-safely (:mod:`recorder.storage.retention.deletion`): files first, then rows in
batches, leaving a tombstone row ``state = "deleted"`` with personal fields nulled, and
an audit entry for every deletion. It also applies the upstream's signed commands
(delete, legal hold, retention) once :mod:`sync.signed_commands` has verified them.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import peewee as pw

from recorder.errors import CommandRejected
from recorder.evidence import audit
from recorder.fsutil import crash_point
from recorder.storage.retention.deletion import (
    Deletion,
    empty_marked,
    finish_deletion,
    mark_call_dirs,
    mark_files,
)
from recorder.storage.retention.policy import CallView, Decision, Reason, SegView, decide
from recorder.storage.store import disk_full

log = logging.getLogger(__name__)

LOW_STORAGE_HOLD_S = 3600.0  # low_storage stays up this long after unsynced data is lost


def _locked(method):
    @functools.wraps(method)
    def run(self, *args, **kw):
        with self._lock:
            return method(self, *args, **kw)
    return run


class Retention:
    """Applies :func:`decide` to a store (one tick per ``retention.interval_s``).

    ``free_bytes`` returns the free space of the data disk in bytes (injected so tests
    can fill a disk without filling one); ``alarms`` is the daemon's alarm set or None.
    """

    def __init__(self, store, data_dir, cfg, *, alarms=None,
                 free_bytes: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.time, reserve=None):
        self.store, self.data_dir, self.cfg = store, Path(data_dir), cfg
        self.alarms = alarms
        # recorder.storage.reserve.Reserve or None: released when a commit is refused,
        # counted in the eviction target while released, re-created once there is room.
        self.reserve = reserve
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.data_dir).free)
        self.clock = clock
        self.deleted = 0
        self.last_unsynced_eviction: float | None = None   # monotonic s
        self.evicted_unsynced_total = 0
        # Deletions whose files are gone but whose rows the database refused to change
        # (a full disk): finished first thing on the next tick (finding 15).
        self._unfinished: dict[str, Deletion] = {}
        # The retention thread, the writer (making room on a full disk) and the uploader
        # (upstream commands) all delete: one at a time.
        self._lock = threading.RLock()

    # -- snapshot -------------------------------------------------------------------------
    def views(self, segments: bool = False) -> list[CallView]:
        """Snapshot of every call not deleted; with ``segments``, per-segment detail
        too (only needed when the disk is low, so the common tick stays cheap)."""
        C, S = self.store.m.Call, self.store.m.Segment
        per: dict[str, list[SegView]] = {}
        if segments:
            for sr in S.select(S.call, S.seq, S.size, S.acked).order_by(S.call, S.seq) \
                    .tuples():
                per.setdefault(sr[0], []).append(SegView(int(sr[1]), int(sr[2] or 0),
                                                         bool(sr[3])))
        agg = {r.call_id: r for r in S.select(
            S.call, pw.fn.COUNT(S.id).alias("n"), pw.fn.SUM(S.size).alias("size"),
            pw.fn.SUM(S.acked.cast("integer")).alias("acked"),
            pw.fn.MAX(S.acked_time).alias("t")).group_by(S.call)}
        out = []
        for c in C.select().where(C.state != "deleted"):
            a = agg.get(c.id)
            n = a.n if a else 0
            acked = (a.acked or 0) if a else 0
            size = (a.size or 0) if a else 0
            synced = n == acked and bool(c.manifest_acked) if c.state != "missed" else False
            st = a.t if a and a.t else None
            meta = c.meta or {}
            # A call stamped from an unsynchronised clock (a Pi without an RTC boots in
            # 1970) has no trustworthy deadline until it is re-stamped: never expire it.
            deadline = c.deadline
            if meta.get("clock_synchronised") is False and meta.get("clock_corrected_s") \
                    is None:
                deadline = None
            out.append(CallView(c.id, c.start_time or c.created, deadline, c.state,
                                bool(c.legal_hold), synced, st, int(size),
                                tuple(per.get(c.id, ()))))
        return out

    # -- tick -----------------------------------------------------------------------------
    @_locked
    def tick(self) -> list[Decision]:
        """One retention pass; returns :func:`decide`'s decisions as executed."""
        r = self.cfg.retention
        now = self.clock()
        # A deletion the full disk refused is retried first, but never allowed to stop
        # this tick: its files are gone already, and only more eviction can free what
        # its commit needs (issue 22: every tick raising here kept the disk full).
        self._finish_unfinished()
        self._pushed_deadlines()
        min_free = int(r.min_free_mb * 1024 * 1024)
        if self.reserve is not None:
            min_free += self.reserve.shortfall()    # room to put the reserve back
        free = self.free_bytes()
        views = [v for v in self.views(segments=free < min_free)
                 if v.id not in self._unfinished]   # their space is already freed
        todo = decide(views, now, free, min_free, keep_synced_s=r.keep_synced_days * 86400)
        unsynced_seqs = {v.id: {sv.seq for sv in v.segments if not sv.synced} for v in views}
        evicted_unsynced = 0
        for d in todo:
            try:
                if not d.whole_call:
                    evicted_unsynced += len(unsynced_seqs.get(d.call_id, set()) & set(d.seqs))
                    self.evict_segments(d.call_id, d.seqs)
                    continue
                row = self.store.call(d.call_id)
                if d.reason is Reason.EVICTION and row is not None and not self._synced(row):
                    evicted_unsynced += max(1, len(unsynced_seqs.get(d.call_id, ())))
                self.delete_call(d.call_id, d.reason)
            except Exception as exc:
                if not self._refused(exc, d.call_id):
                    raise
        if self._unfinished:
            self._finish_unfinished()   # with the space this tick freed
        if self.reserve is not None:
            self.reserve.ensure(self.free_bytes(), int(r.min_free_mb * 1024 * 1024))
        if self.alarms is not None:
            left = self.free_bytes()
            now = time.monotonic()
            if evicted_unsynced:
                self.last_unsynced_eviction = now
                self.evicted_unsynced_total += evicted_unsynced
            # Unsynced recordings were discarded: keep the alarm up for a while, so it
            # does not flicker off on the next tick while the box is still losing data.
            recent = self.last_unsynced_eviction is not None and \
                now - self.last_unsynced_eviction < LOW_STORAGE_HOLD_S
            released = self.reserve is not None and not self.reserve.held
            low = left < min_free or recent or released
            extra = {"reserve_released": True} if released else {}
            self.alarms.set("low_storage", low, free_mb=round(left / 2**20, 1),
                            evicted_unsynced=evicted_unsynced,
                            evicted_unsynced_total=self.evicted_unsynced_total, **extra)
        return todo

    def _pushed_deadlines(self) -> None:
        # The writer stamps new calls with the configured retention; a value pushed by
        # the upstream overrides it, so calls opened since the push are corrected here.
        days = self.store.get_meta("retention_days")
        if days is None:
            return
        C = self.store.m.Call
        C.update(deadline=pw.fn.COALESCE(C.start_time, C.created) + float(days) * 86400) \
            .where(C.state != "deleted").execute()

    def _synced(self, row) -> bool:
        S = self.store.m.Segment
        return bool(row.manifest_acked) and not S.select().where(
            (S.call == row.id) & (S.acked == False)).exists()  # noqa: E712

    # -- deletion -------------------------------------------------------------------------
    @_locked
    def delete_call(self, call_id: str, reason: str, **detail) -> bool:
        """Delete a call's files and rows, leave a tombstone, audit it. False if unknown.

        The call's folder is first renamed to a deletion marker (durable intent that
        needs no free space), then its files go (on a disk full to the last byte the
        database cannot commit until they are gone), then the rows. If the database
        still refuses, the row change is owed and finished at the start of the next
        tick; after a power cut, :func:`resume_deletions` finishes it at start-up. So a
        call never stays ``closed`` while pointing at files that are gone."""
        store = self.store
        row = store.call(call_id)
        if row is None or row.state == "deleted":
            return False
        if row.legal_hold:
            raise CommandRejected(f"call {call_id} is on legal hold")
        if row.state == "active":
            # The writer still owns it; deleting under it would leave a half call.
            raise CommandRejected(f"call {call_id} is in progress")
        if self._finish_owed(call_id):
            return False            # it was a whole-call deletion, now finished
        segs = store.segments_of(call_id)
        files = [store.abs(s.path) for s in segs]
        if row.manifest:
            files.append(store.abs(row.manifest))
        marks = mark_call_dirs(files, call_id, reason)
        crash_point("delete_marked")
        empty_marked(marks)
        for p in files:                 # any file outside a marked folder
            p.unlink(missing_ok=True)
        crash_point("delete_unlinked")
        unsynced = sum(1 for s in segs if not s.acked)
        self._unfinished[call_id] = Deletion(
            "call", str(reason), detail=detail, segments=len(segs), unsynced=unsynced,
            marks=marks,
            dirs={p.parent for p in files} - {m.with_name(call_id) for m in marks})
        self._finish(call_id)
        self.deleted += 1
        log.info("deleted call %s (%s): %d segment(s), %d unsynced", call_id, reason,
                 len(segs), unsynced)
        return True

    def _finish(self, call_id: str) -> None:
        """The database part of a deletion whose files are already gone, then the audit
        entry, then the markers. Raises (and stays owed) while the database refuses it."""
        finish_deletion(self.store, self.data_dir, call_id, self._unfinished[call_id],
                        self.clock())
        del self._unfinished[call_id]

    def _finish_unfinished(self) -> None:
        """Retry every owed deletion; one the full disk still refuses stays owed (and
        releases the reserve), anything else raises."""
        for call_id in list(self._unfinished):
            try:
                self._finish_owed(call_id)
            except Exception as exc:
                if not self._refused(exc, call_id):
                    raise

    def _refused(self, exc: BaseException, call_id: str) -> bool:
        """Was ``exc`` the full disk refusing a write (then release the reserve, log,
        and let the tick go on)? The deletion, if its files went, is owed."""
        if not disk_full(exc):
            return False
        log.error("call %s: the full disk refused a deletion's commit (%s); it is owed, "
                  "and retention goes on freeing space", call_id, exc)
        if self.reserve is not None:
            self.reserve.release("a deletion's commit was refused")
        return True

    def _finish_owed(self, call_id: str) -> bool:
        """Finish the call's owed deletion, if any, before anything else touches it (its
        markers are in hand). True if that deleted the whole call. Raises while the
        database still refuses."""
        owed = self._unfinished.get(call_id)
        if owed is None:
            return False
        log.warning("call %s: finishing a deletion the database refused earlier", call_id)
        self._finish(call_id)
        return owed.whole_call

    @_locked
    def evict_segments(self, call_id: str, seqs, reason: str = "eviction") -> int:
        """Disk full: delete some segments of a call (files, then rows), keeping the call
        row and its manifest; audit it. Returns how many segments went.

        Each file is renamed to a deletion marker and truncated (freeing its space while
        the marker keeps the intent), so a power cut before the commit is finished by
        :func:`resume_deletions`."""
        store = self.store
        row = store.call(call_id)
        if row is None or row.state == "deleted":
            return 0
        if row.legal_hold:
            raise CommandRejected(f"call {call_id} is on legal hold")
        if row.state == "active":
            raise CommandRejected(f"call {call_id} is in progress")
        if self._finish_owed(call_id):
            return 0
        want = {int(q) for q in seqs}
        segs = [s for s in store.segments_of(call_id) if s.seq in want]
        if not segs:
            return 0
        unsynced = [s.seq for s in segs if not s.acked]
        marks = mark_files([store.abs(s.path) for s in segs], reason)
        crash_point("evict_marked")
        for m in marks:
            os.truncate(m, 0)
        self._unfinished[call_id] = Deletion("segments", str(reason),
                                             seqs={s.seq for s in segs},
                                             unsynced=len(unsynced), marks=marks)
        self._finish(call_id)
        self.deleted += 1
        log.warning("evicted %d segment(s) of call %s (%d unsynced): disk low", len(segs),
                    call_id, len(unsynced))
        return len(segs)

    # -- commands -------------------------------------------------------------------------
    def set_hold(self, call_id: str, on: bool) -> None:
        C = self.store.m.Call
        row = self.store.call(call_id)
        if row is None or row.state == "deleted":
            raise CommandRejected(f"no such call {call_id}")
        C.update(legal_hold=bool(on)).where(C.id == call_id).execute()
        audit.record(self.data_dir, "legal_hold", call=call_id, on=bool(on))

    def set_retention(self, days: float) -> int:
        """New retention for every call not yet deleted: deadline = start + days."""
        C = self.store.m.Call
        self.store.set_meta("retention_days", float(days))
        n = C.select().where(C.state != "deleted").count()
        self._pushed_deadlines()
        audit.record(self.data_dir, "config_change", key="retention.days", value=days,
                     calls=n)
        return n

    @_locked
    def apply(self, body: dict) -> str:
        """Apply a verified command body; return a short result."""
        kind = body["kind"]
        if kind == "delete":
            ok = self.delete_call(body["call"], Reason.UPSTREAM_DELETE, nonce=body["nonce"])
            return "deleted" if ok else "absent"
        if kind == "hold":
            self.set_hold(body["call"], body["on"])
            return "hold on" if body["on"] else "hold off"
        if kind == "retention":
            n = self.set_retention(float(body["days"]))
            return f"retention {body['days']} days on {n} call(s)"
        raise CommandRejected(f"unknown command kind {kind!r}")
