"""Retention on the box: deadlines, synced-copy clean-up, disk-full eviction, commands.

The decision is a pure function (:func:`decide`) over a snapshot of the calls, so it
is table-tested without a disk. :class:`Retention` gathers the snapshot from the
store, applies the decisions (files first, then rows in batches, leaving a tombstone
row ``state = "deleted"`` with personal fields nulled), prunes empty folders and
audits every deletion.

Rules, in order (a call on legal hold is never deleted, whatever the reason):

1. ``retention_expiry``: the call's deadline (start + retention) has passed, whether
   or not it was synced; the box never waits for the upstream.
2. ``synced``: every segment and the manifest were acked by the upstream more than
   ``keep_synced_s`` ago.
3. ``eviction``: free space is below ``min_free_bytes``; synced calls go first (oldest
   first), then the oldest unsynced calls, with the ``low_storage`` alarm raised.

Active calls are never deleted here (the writer still owns them).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peewee as pw

from recorder import audit
from recorder.errors import CommandRejected

log = logging.getLogger(__name__)

BATCH = 500                  # segment rows deleted per transaction
AUDIT_ACTION = {"retention_expiry": "retention_expiry", "synced": "delete",
                "upstream_delete": "delete", "eviction": "eviction"}


@dataclass(frozen=True)
class CallView:
    """What retention needs to know about one call (times are epoch seconds)."""

    id: str
    start: float
    deadline: float | None
    state: str                       # active | closed | recovered | missed | deleted
    legal_hold: bool = False
    synced: bool = False             # every segment and the manifest acked upstream
    synced_time: float | None = None  # when the last ack arrived
    bytes: int = 0                   # bytes of files still on disk


def decide(calls: list[CallView], now: float, free_bytes: int, min_free_bytes: int, *,
           keep_synced_s: float = 7 * 86400) -> list[tuple[str, str]]:
    """Which calls to delete now, and why: ``[(call_id, reason)]`` in execution order.

    ``free_bytes`` and ``min_free_bytes`` are bytes; ``keep_synced_s`` seconds. Pure.
    """
    out: list[tuple[str, str]] = []
    chosen: set[str] = set()
    live = [c for c in calls if c.state not in ("deleted", "active") and not c.legal_hold]
    for c in sorted(live, key=lambda c: c.start):
        if c.deadline is not None and c.deadline <= now:
            out.append((c.id, "retention_expiry"))
            chosen.add(c.id)
            free_bytes += c.bytes
    for c in sorted(live, key=lambda c: c.start):
        if c.id in chosen or not c.synced:
            continue
        if c.synced_time is not None and c.synced_time + keep_synced_s <= now:
            out.append((c.id, "synced"))
            chosen.add(c.id)
            free_bytes += c.bytes
    if free_bytes < min_free_bytes:
        rest = [c for c in live if c.id not in chosen and c.bytes > 0]
        order = sorted(rest, key=lambda c: (not c.synced, c.start))
        for c in order:
            if free_bytes >= min_free_bytes:
                break
            out.append((c.id, "eviction"))
            chosen.add(c.id)
            free_bytes += c.bytes
    return out


class Retention:
    """Applies :func:`decide` to a store (one tick per ``retention.interval_s``).

    ``free_bytes`` returns the free space of the data disk in bytes (injected so tests
    can fill a disk without filling one); ``alarms`` is the daemon's alarm set or None.
    """

    def __init__(self, store, data_dir, cfg, *, alarms=None,
                 free_bytes: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.time):
        self.store, self.data_dir, self.cfg = store, Path(data_dir), cfg
        self.alarms = alarms
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.data_dir).free)
        self.clock = clock
        self.deleted = 0

    # -- snapshot -------------------------------------------------------------------------
    def views(self) -> list[CallView]:
        C, S = self.store.m.Call, self.store.m.Segment
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
            out.append(CallView(c.id, c.start_time or c.created, c.deadline, c.state,
                                bool(c.legal_hold), synced, st, int(size)))
        return out

    # -- tick -----------------------------------------------------------------------------
    def tick(self) -> list[tuple[str, str]]:
        r = self.cfg.retention
        now = self.clock()
        self._pushed_deadlines()
        min_free = int(r.min_free_mb * 1024 * 1024)
        free = self.free_bytes()
        todo = decide(self.views(), now, free, min_free,
                      keep_synced_s=r.keep_synced_days * 86400)
        evicted_unsynced = 0
        for call_id, reason in todo:
            row = self.store.call(call_id)
            if reason == "eviction" and row is not None and not self._synced(row):
                evicted_unsynced += 1
            self.delete_call(call_id, reason)
        if self.alarms is not None:
            low = self.free_bytes() < min_free or evicted_unsynced > 0
            self.alarms.set("low_storage", low, free_mb=round(self.free_bytes() / 2**20, 1),
                            evicted_unsynced=evicted_unsynced)
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
    def delete_call(self, call_id: str, reason: str, **detail) -> bool:
        """Delete a call's files and rows, leave a tombstone, audit it. False if unknown."""
        store = self.store
        C, S = store.m.Call, store.m.Segment
        row = store.call(call_id)
        if row is None or row.state == "deleted":
            return False
        if row.legal_hold:
            raise CommandRejected(f"call {call_id} is on legal hold")
        if row.state == "active":
            # The writer still owns it; deleting under it would leave a half call.
            raise CommandRejected(f"call {call_id} is in progress")
        segs = store.segments_of(call_id)
        dirs = set()
        unsynced = sum(1 for s in segs if not s.acked)
        for s in segs:
            p = store.abs(s.path)
            dirs.add(p.parent)
            p.unlink(missing_ok=True)
        if row.manifest:
            p = store.abs(row.manifest)
            dirs.add(p.parent)
            p.unlink(missing_ok=True)
        ids = [s.id for s in segs]
        for i in range(0, len(ids), BATCH):
            with store.db.atomic():
                S.delete().where(S.id.in_(ids[i:i + BATCH])).execute()
        C.update(state="deleted", deleted_time=self.clock(), delete_reason=reason,
                 caller_number=None, caller_name=None, dialled_digits=None, meta={},
                 manifest=None).where(C.id == call_id).execute()
        for d in dirs:
            self._prune(d)
        audit.record(self.data_dir, AUDIT_ACTION.get(reason, "delete"), call=call_id,
                     reason=reason, segments=len(segs), unsynced_segments=unsynced, **detail)
        self.deleted += 1
        log.info("deleted call %s (%s): %d segment(s), %d unsynced", call_id, reason,
                 len(segs), unsynced)
        return True

    def _prune(self, d: Path) -> None:
        """Remove ``d`` and empty parents up to (not including) the segments root."""
        root = self.store.root / "segments"
        d = Path(d)
        while d != root and root in d.parents:
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

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

    def apply(self, body: dict) -> str:
        """Apply a verified command body; return a short result."""
        kind = body["kind"]
        if kind == "delete":
            ok = self.delete_call(body["call"], "upstream_delete", nonce=body["nonce"])
            return "deleted" if ok else "absent"
        if kind == "hold":
            self.set_hold(body["call"], body["on"])
            return "hold on" if body["on"] else "hold off"
        if kind == "retention":
            n = self.set_retention(float(body["days"]))
            return f"retention {body['days']} days on {n} call(s)"
        raise CommandRejected(f"unknown command kind {kind!r}")
