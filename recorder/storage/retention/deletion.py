"""Crash-safe deletion on the box: markers first, so a power cut is finished at start-up.

A deletion frees space before it commits (on a disk full to the last byte SQLite cannot
commit until files are gone), so a power cut between the two would leave rows naming
files that are gone. The intent is made durable first by a rename, which needs no data
blocks (at most a directory block, and if even that fails the files go unmarked): a
whole call's folder becomes ``.<call>.<reason>.del``; an evicted segment file becomes
``.<name>.<reason>.del`` and is truncated to free its space. A marker goes only after
the rows are gone and the audit entry is written, and :func:`resume_deletions` finishes
any marker it finds at start-up (docs/retention.md, "Why the order").
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from recorder.evidence import audit
from recorder.fsutil import crash_point, fsync_dir
from recorder.storage.retention.policy import Reason
from recorder.storage.store import SEGMENTS

log = logging.getLogger(__name__)

BATCH = 500                  # segment rows deleted per transaction


@dataclass
class Deletion:
    """One deletion whose files are gone (or marked) and whose rows may still be owed.

    ``kind`` is ``"call"`` (the whole call, leaving a tombstone) or ``"segments"``
    (eviction of ``seqs``, keeping the call row and manifest). ``unsynced`` counts the
    segments that never reached the upstream; ``segments`` (whole calls) how many went.
    ``marks`` are the marker paths to remove once committed; ``dirs`` unmarked folders
    to prune; ``audited`` skips the audit entry (written before a power cut).
    """

    kind: str
    reason: str
    detail: dict = field(default_factory=dict)
    marks: list[Path] = field(default_factory=list)
    segments: int | None = None
    unsynced: int = 0
    seqs: set[int] = field(default_factory=set)
    dirs: set[Path] = field(default_factory=set)
    audited: bool = False

    @property
    def whole_call(self) -> bool:
        return self.kind == "call"


def _action(reason: str) -> str:
    try:
        return Reason(reason).audit_action
    except ValueError:          # a marker's reason from an older or unknown build
        return "delete"


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


def mark_call_dirs(files: list[Path], call_id: str, reason: str) -> list[Path]:
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


def mark_files(files: list[Path], reason: str) -> list[Path]:
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


def empty_marked(marks: list[Path]) -> None:
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


def finish_deletion(store, data_dir, call_id: str, u: Deletion, now: float) -> None:
    """The database part of a deletion whose files are gone, its audit entry, then its
    markers (``u`` says which; see :class:`Deletion`). Raises while the database refuses
    the commit (a full disk); the deletion is then owed and finished later."""
    C, S = store.m.Call, store.m.Segment
    if u.whole_call:
        ids = [s.id for s in store.segments_of(call_id)]
    else:
        ids = [s.id for s in store.segments_of(call_id) if s.seq in u.seqs]
    with store.db.atomic():
        for i in range(0, len(ids), BATCH):
            S.delete().where(S.id.in_(ids[i:i + BATCH])).execute()
        if u.whole_call:
            C.update(state="deleted", deleted_time=now, delete_reason=u.reason,
                     personal=None, party_masked=None, meta={},
                     manifest=None).where((C.id == call_id) & (C.state != "deleted")) \
                .execute()
    crash_point("delete_committed")
    root = store.root / SEGMENTS
    detail = dict(u.detail)
    if u.whole_call:
        if not u.audited:
            if u.segments is not None:
                detail.update(segments=u.segments, unsynced_segments=u.unsynced)
            audit.record(data_dir, _action(u.reason), call=call_id,
                         reason=u.reason, **detail)
        crash_point("delete_audited")
        for m in u.marks:    # emptied before the commit; if not, the next
            _prune(root, m)             # start-up finds the marker and finishes it
        for d in u.dirs:
            _prune(root, d)
    else:
        if not u.audited:
            audit.record(data_dir, _action(u.reason), call=call_id,
                         reason=u.reason, segments=len(u.seqs),
                         seqs=sorted(u.seqs), unsynced_segments=u.unsynced,
                         whole_call=False, **detail)
        crash_point("delete_audited")
        for m in u.marks:
            m.unlink(missing_ok=True)


def _audited(data_dir, call_id: str, seqs: set[int] | None) -> bool:
    """Does the end of the audit log hold this deletion (of these ``seqs``, or of the
    whole call for None)? A power cut between the entry and the marker's removal is
    the only way a finished deletion keeps its marker, so the entry, if any, is near
    the end."""
    actions = {r.audit_action for r in Reason}
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
    empty_marked([m])
    u = Deletion("call", reason, detail={"resumed": True}, marks=[m])
    row = store.call(call_id)
    if row.state != "deleted":
        segs = store.segments_of(call_id)
        files = [store.abs(s.path) for s in segs]
        if row.manifest:
            files.append(store.abs(row.manifest))
        for p in files:             # any left in a folder the cut left unmarked
            p.unlink(missing_ok=True)
        u.segments, u.unsynced = len(segs), sum(1 for s in segs if not s.acked)
        u.dirs = {p.parent for p in files}
    else:
        u.audited = _audited(data_dir, call_id, None)
    finish_deletion(store, data_dir, call_id, u, now)


def _resume_segments(store, data_dir, call_id: str, items: list[tuple[Path, str, str]],
                     now: float) -> None:
    log.warning("call %s: finishing the eviction of %d segment(s) cut short by a restart",
                call_id, len(items))
    S = store.m.Segment
    rels = [store.rel(m.parent / orig) for m, orig, _r in items]
    rows = list(S.select().where((S.call == call_id) & S.path.in_(rels)))
    u = Deletion("segments", items[0][2], detail={"resumed": True},
                 marks=[m for m, _o, _r in items], seqs={r.seq for r in rows},
                 unsynced=sum(1 for r in rows if not r.acked))
    if not rows:
        named = {int(o.split(".")[0]) for _m, o, _r in items if o.split(".")[0].isdigit()}
        u.seqs, u.audited = named, _audited(data_dir, call_id, named)
    for m, _o, _r in items:     # the cut may have come before the space was freed
        os.truncate(m, 0)
    finish_deletion(store, data_dir, call_id, u, now)
