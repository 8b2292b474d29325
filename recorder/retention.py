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
3. ``eviction``: free space is below ``min_free_bytes``; eviction works per segment:
   first whole calls that are fully synced (oldest first), then the synced segments of
   calls not fully synced (oldest call first, in order), and only then unsynced
   segments (oldest first), with the ``low_storage`` alarm raised. A call that is not
   fully synced keeps its row and manifest (the manifest still goes upstream).

Active calls are never deleted here (the writer still owns them).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peewee as pw

from recorder import audit
from recorder.errors import CommandRejected
from recorder.fsutil import crash_point, fsync_dir
from recorder.store import SEGMENTS

log = logging.getLogger(__name__)

BATCH = 500                  # segment rows deleted per transaction
LOW_STORAGE_HOLD_S = 3600.0  # low_storage stays up this long after unsynced data is lost
AUDIT_ACTION = {"retention_expiry": "retention_expiry", "synced": "delete",
                "upstream_delete": "delete", "eviction": "eviction"}


@dataclass(frozen=True)
class SegView:
    """One segment file still on disk."""

    seq: int
    bytes: int
    synced: bool                     # acked upstream


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
    # Per-segment detail for eviction; empty means "evict this call as one unit".
    segments: tuple[SegView, ...] = ()


def decide(calls: list[CallView], now: float, free_bytes: int, min_free_bytes: int, *,
           keep_synced_s: float = 7 * 86400) -> list[tuple]:
    """What to delete now, and why, in execution order.

    Returns ``(call_id, reason)`` for a whole call and ``(call_id, "eviction", seqs)``
    (a sorted tuple of segment numbers) when only some segments of a call are evicted.
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
        out += _evict([c for c in live if c.id not in chosen], free_bytes, min_free_bytes)
    return out


def _evict(calls: list[CallView], free_bytes: int, min_free_bytes: int) -> list[tuple]:
    """Disk-full eviction (rule 3), per segment. Pure."""
    by_age = sorted(calls, key=lambda c: (c.start, c.id))
    units = {c.id: c.segments or ((SegView(-1, c.bytes, c.synced),) if c.bytes > 0 else ())
             for c in by_age}
    picked: dict[str, list[int]] = {}

    def take(c, segs, whole=False) -> bool:
        """Pick ``segs`` of ``c`` in order until enough is free (all of them if
        ``whole``); True once enough is free."""
        nonlocal free_bytes
        for sv in sorted(segs, key=lambda sv: sv.seq):
            if free_bytes >= min_free_bytes and not whole:
                return True
            if sv.bytes <= 0:
                continue
            picked.setdefault(c.id, []).append(sv.seq)
            free_bytes += sv.bytes
        return free_bytes >= min_free_bytes

    # 1. Whole calls already safe upstream, oldest first (a whole call, even if that
    #    frees more than needed: no half-deleted synced calls).
    done = False
    for c in by_age:
        if c.synced and units[c.id] and take(c, units[c.id], whole=True):
            done = True
            break
    # 2. Synced segments of calls that are not fully synced yet.
    if not done:
        for c in by_age:
            if not c.synced and take(c, [sv for sv in units[c.id] if sv.synced]):
                done = True
                break
    # 3. Unsynced segments, oldest first: data lost, so the caller raises low_storage.
    if not done:
        for c in by_age:
            if not c.synced and take(c, [sv for sv in units[c.id] if not sv.synced]):
                break
    out: list[tuple] = []
    for cid, seqs in picked.items():
        c = next(x for x in calls if x.id == cid)
        if seqs == [-1] or (c.synced and len(seqs) == len(units[cid])):
            out.append((cid, "eviction"))
        else:
            out.append((cid, "eviction", tuple(sorted(seqs))))
    return out


SIM_DISK_BYTES = 32 * 2**30   # simulated data disk: a 32 GB SD card


class SimDisk:
    """Free-space probe for simulation: a virtual disk of ``capacity`` bytes that holds
    only the recordings under ``root``. Free space follows what is written and deleted,
    and the host's real disk never decides what a simulated box evicts."""

    def __init__(self, root, capacity: int = SIM_DISK_BYTES):
        self.root, self.capacity = Path(root), int(capacity)

    def __call__(self) -> int:
        """Free bytes (may be negative when the recordings exceed ``capacity``)."""
        used = 0
        if self.root.is_dir():
            used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return self.capacity - used


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
        # recorder.reserve.Reserve or None: released when a commit is refused, counted
        # in the eviction target while released, re-created once there is room.
        self.reserve = reserve
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.data_dir).free)
        self.clock = clock
        self.deleted = 0
        self.last_unsynced_eviction: float | None = None   # monotonic s
        self.evicted_unsynced_total = 0
        # Deletions whose files are gone but whose rows the database refused to change
        # (a full disk): finished first thing on the next tick (finding 15).
        self._unfinished: dict[str, dict] = {}
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
    def tick(self) -> list[tuple]:
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
            call_id, reason = d[0], d[1]
            try:
                if len(d) == 3:
                    evicted_unsynced += len(unsynced_seqs.get(call_id, set()) & set(d[2]))
                    self.evict_segments(call_id, d[2])
                    continue
                row = self.store.call(call_id)
                if reason == "eviction" and row is not None and not self._synced(row):
                    evicted_unsynced += max(1, len(unsynced_seqs.get(call_id, ())))
                self.delete_call(call_id, reason)
            except Exception as exc:
                if not self._refused(exc, call_id):
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
        marks = _mark_call_dirs(files, call_id, reason)
        crash_point("delete_marked")
        _empty(marks)
        for p in files:                 # any file outside a marked folder
            p.unlink(missing_ok=True)
        crash_point("delete_unlinked")
        unsynced = sum(1 for s in segs if not s.acked)
        self._unfinished[call_id] = {
            "kind": "call", "reason": reason, "detail": detail, "segments": len(segs),
            "unsynced": unsynced, "marks": marks,
            "dirs": {p.parent for p in files} - {m.with_name(call_id) for m in marks}}
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
        from recorder.writer import disk_full
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
        return owed["kind"] == "call"

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
        marks = _mark_files([store.abs(s.path) for s in segs], reason)
        crash_point("evict_marked")
        for m in marks:
            os.truncate(m, 0)
        self._unfinished[call_id] = {"kind": "segments", "reason": reason,
                                     "seqs": {s.seq for s in segs},
                                     "unsynced": len(unsynced), "marks": marks}
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
            ok = self.delete_call(body["call"], "upstream_delete", nonce=body["nonce"])
            return "deleted" if ok else "absent"
        if kind == "hold":
            self.set_hold(body["call"], body["on"])
            return "hold on" if body["on"] else "hold off"
        if kind == "retention":
            n = self.set_retention(float(body["days"]))
            return f"retention {body['days']} days on {n} call(s)"
        raise CommandRejected(f"unknown command kind {kind!r}")


# -- crash-safe deletion ------------------------------------------------------------------
# A deletion frees space before it commits (on a disk full to the last byte SQLite cannot
# commit until files are gone), so a power cut between the two would leave rows naming
# files that are gone. The intent is made durable first by a rename, which needs no data
# blocks (at most a directory block, and if even that fails the files go unmarked): a
# whole call's folder becomes ".<call>.<reason>.del"; an evicted segment file
# becomes ".<name>.<reason>.del" and is truncated to free its space. A marker goes only
# after the rows are gone and the audit entry is written, and resume_deletions()
# finishes any marker it finds at start-up.
MARK = ".del"
_REASON = re.compile(r"[a-z_]+")


def _mark_name(name: str, reason: str) -> str:
    return f".{name}.{reason}{MARK}"


def _parse_mark(name: str) -> tuple[str, str] | None:
    """``.<name>.<reason>.del`` -> (name, reason); None for any other name."""
    if not (name.startswith(".") and name.endswith(MARK)):
        return None
    orig, _, reason = name[1:-len(MARK)].rpartition(".")
    if not orig or not _REASON.fullmatch(reason):
        return None
    return orig, reason


def _mark_call_dirs(files: list[Path], call_id: str, reason: str) -> list[Path]:
    """Rename each folder named for the call (a call re-stamped after an RTC-less boot
    can have two day folders) to its marker; fsync the parent. Returns the markers.

    A folder that cannot be renamed is left: its files are then unlinked unmarked, as
    before markers existed, rather than keeping the disk full."""
    marks = []
    for d in sorted({p.parent for p in files if p.parent.name == call_id}):
        m = d.with_name(_mark_name(call_id, reason))
        try:
            os.rename(d, m)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("call %s: cannot mark %s for deletion: %s", call_id, d, exc)
            continue
        marks.append(m)
    _sync_dirs({m.parent for m in marks})
    return marks


def _sync_dirs(dirs) -> None:
    # A failed fsync is logged, not fatal: stopping the deletion here would keep the
    # disk full, and the commit that follows flushes the file-system journal anyway.
    for d in dirs:
        try:
            fsync_dir(d)
        except OSError as exc:
            log.warning("cannot fsync %s: %s", d, exc)


def _mark_files(files: list[Path], reason: str) -> list[Path]:
    """Rename each file to its marker and fsync the folders; returns the markers. A
    file that cannot be renamed is unlinked (freeing space matters more)."""
    marks = []
    for p in files:
        m = p.with_name(_mark_name(p.name, reason))
        try:
            os.rename(p, m)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot mark %s for eviction: %s", p.name, exc)
            p.unlink(missing_ok=True)
            continue
        marks.append(m)
    _sync_dirs({m.parent for m in marks})
    return marks


def _empty(marks: list[Path]) -> None:
    """Unlink the files in marked call folders (this is what frees the space)."""
    for m in marks:
        for p in m.iterdir():
            p.unlink(missing_ok=True)


def _prune(root: Path, d: Path) -> None:
    """Remove ``d`` and empty parents up to (not including) ``root``."""
    d = Path(d)
    while d != root and root in d.parents:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


def finish_deletion(store, data_dir, call_id: str, u: dict, now: float) -> None:
    """The database part of a deletion whose files are gone, its audit entry, then its
    markers. ``u`` describes it: ``kind`` ("call" or "segments"), ``reason``,
    ``detail`` (extra audit fields), ``marks``; for a call ``segments``, ``unsynced``
    and ``dirs`` (unmarked folders to prune); for segments ``seqs`` and ``unsynced``.
    ``audited`` skips the entry (it was written before a power cut)."""
    C, S = store.m.Call, store.m.Segment
    if u["kind"] == "call":
        ids = [s.id for s in store.segments_of(call_id)]
    else:
        ids = [s.id for s in store.segments_of(call_id) if s.seq in u["seqs"]]
    with store.db.atomic():
        for i in range(0, len(ids), BATCH):
            S.delete().where(S.id.in_(ids[i:i + BATCH])).execute()
        if u["kind"] == "call":
            C.update(state="deleted", deleted_time=now, delete_reason=u["reason"],
                     caller_number=None, caller_name=None, dialled_digits=None, meta={},
                     manifest=None).where((C.id == call_id) & (C.state != "deleted")) \
                .execute()
    crash_point("delete_committed")
    root = store.root / SEGMENTS
    detail = dict(u.get("detail") or {})
    if u["kind"] == "call":
        if not u.get("audited"):
            if u.get("segments") is not None:
                detail.update(segments=u["segments"], unsynced_segments=u["unsynced"])
            audit.record(data_dir, AUDIT_ACTION.get(u["reason"], "delete"), call=call_id,
                         reason=u["reason"], **detail)
        crash_point("delete_audited")
        for m in u.get("marks", ()):    # emptied before the commit; if not, the next
            _prune(root, m)             # start-up finds the marker and finishes it
        for d in u.get("dirs", ()):
            _prune(root, d)
    else:
        if not u.get("audited"):
            audit.record(data_dir, AUDIT_ACTION.get(u["reason"], "eviction"), call=call_id,
                         reason=u["reason"], segments=len(u["seqs"]),
                         seqs=sorted(u["seqs"]), unsynced_segments=u["unsynced"],
                         whole_call=False, **detail)
        crash_point("delete_audited")
        for m in u.get("marks", ()):
            m.unlink(missing_ok=True)


def _audited(data_dir, call_id: str, seqs: set[int] | None) -> bool:
    """Does the end of the audit log hold this deletion (of these ``seqs``, or of the
    whole call for None)? A power cut between the entry and the marker's removal is
    the only way a finished deletion keeps its marker, so the entry, if any, is near
    the end."""
    actions = set(AUDIT_ACTION.values()) | {"delete"}
    for e in reversed(audit.tail(data_dir)):
        d = e.get("detail") or {}
        if e.get("action") not in actions or d.get("call") != call_id:
            continue
        if seqs is None and d.get("whole_call", True):
            return True
        if seqs is not None and seqs <= set(d.get("seqs") or ()):
            return True
    return False


def resume_deletions(store, data_dir, now: float | None = None) -> int:
    """Finish every deletion a power cut interrupted (its markers are on disk): unlink
    what is left, delete the rows, audit it (``resumed: true``) unless it was audited,
    remove the markers. Run at start-up before recovery. Returns how many were
    finished.

    A marker naming a call the store does not know is left alone (it is not this box's
    work), and a file-system error on one marker is logged and skipped, so a stray
    folder can never keep the box from starting; database errors (a full disk) are
    raised to the caller, which makes room and retries."""
    root = store.root / SEGMENTS
    now = time.time() if now is None else now
    n = 0
    for m in sorted(root.glob(f"*/*/*/.*{MARK}")):          # whole calls
        parsed = _parse_mark(m.name)
        if parsed is not None and m.is_dir():
            n += _resume(_resume_call, store, data_dir, parsed[0], m, parsed[1], now)
    per: dict[str, list[tuple[Path, str, str]]] = {}
    for m in sorted(root.glob(f"*/*/*/*/.*{MARK}")):        # evicted segments
        parsed = _parse_mark(m.name)
        if parsed is not None and not m.parent.name.startswith("."):
            per.setdefault(m.parent.name, []).append((m, *parsed))
    for call_id, items in per.items():
        n += _resume(_resume_segments, store, data_dir, call_id, items, now)
    return n


def _resume(fn, store, data_dir, call_id: str, *args) -> int:
    if store.call(call_id) is None:
        log.warning("deletion marker for call %s, which this box does not know: left "
                    "alone", call_id)
        return 0
    try:
        fn(store, data_dir, call_id, *args)
    except OSError as exc:
        log.error("call %s: cannot finish a deletion cut short: %s", call_id, exc)
        return 0
    return 1


def _resume_call(store, data_dir, call_id: str, m: Path, reason: str, now: float) -> None:
    log.warning("call %s: finishing a deletion (%s) cut short by a restart", call_id,
                reason)
    _empty([m])
    u = {"kind": "call", "reason": reason, "detail": {"resumed": True}, "marks": [m],
         "dirs": set()}
    row = store.call(call_id)
    if row.state != "deleted":
        segs = store.segments_of(call_id)
        files = [store.abs(s.path) for s in segs]
        if row.manifest:
            files.append(store.abs(row.manifest))
        for p in files:             # any left in a folder the cut left unmarked
            p.unlink(missing_ok=True)
        u.update(segments=len(segs), unsynced=sum(1 for s in segs if not s.acked),
                 dirs={p.parent for p in files})
    else:
        u["audited"] = _audited(data_dir, call_id, None)
    finish_deletion(store, data_dir, call_id, u, now)


def _resume_segments(store, data_dir, call_id: str, items: list[tuple[Path, str, str]],
                     now: float) -> None:
    log.warning("call %s: finishing the eviction of %d segment(s) cut short by a restart",
                call_id, len(items))
    S = store.m.Segment
    rels = [store.rel(m.parent / orig) for m, orig, _r in items]
    rows = list(S.select().where((S.call == call_id) & S.path.in_(rels)))
    u = {"kind": "segments", "reason": items[0][2], "detail": {"resumed": True},
         "marks": [m for m, _o, _r in items], "seqs": {r.seq for r in rows},
         "unsynced": sum(1 for r in rows if not r.acked)}
    if not rows:
        named = {int(o.split(".")[0]) for _m, o, _r in items if o.split(".")[0].isdigit()}
        u["seqs"], u["audited"] = named, _audited(data_dir, call_id, named)
    for m, _o, _r in items:     # the cut may have come before the space was freed
        os.truncate(m, 0)
    finish_deletion(store, data_dir, call_id, u, now)
