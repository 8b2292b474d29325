"""Retention policy on the box: what must go now, and why. Pure, table-tested.

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

from dataclasses import dataclass
from enum import StrEnum


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


class Reason(StrEnum):
    """Why a recording goes; the value is what the audit log and the tombstone say."""

    RETENTION_EXPIRY = "retention_expiry"   # its deadline passed (synced or not)
    SYNCED = "synced"                       # safe upstream for longer than keep_synced
    EVICTION = "eviction"                   # the disk is low
    UPSTREAM_DELETE = "upstream_delete"     # a signed command from the practice

    @property
    def audit_action(self) -> str:
        """The audit log's action for a deletion of this kind."""
        return {"retention_expiry": "retention_expiry",
                "eviction": "eviction"}.get(self.value, "delete")


@dataclass(frozen=True)
class Decision:
    """Delete ``call_id`` for ``reason``: the whole call, or only segments ``seqs``."""

    call_id: str
    reason: Reason
    seqs: tuple[int, ...] | None = None     # sorted segment numbers; None = whole call

    @property
    def whole_call(self) -> bool:
        return self.seqs is None


def decide(calls: list[CallView], now: float, free_bytes: int, min_free_bytes: int, *,
           keep_synced_s: float = 7 * 86400) -> list[Decision]:
    """What to delete now, and why, in execution order.

    ``free_bytes`` and ``min_free_bytes`` are bytes; ``now`` epoch seconds;
    ``keep_synced_s`` seconds. Only eviction ever takes part of a call. Pure.
    """
    out: list[Decision] = []
    chosen: set[str] = set()
    live = [c for c in calls if c.state not in ("deleted", "active") and not c.legal_hold]
    for c in sorted(live, key=lambda c: c.start):
        if c.deadline is not None and c.deadline <= now:
            out.append(Decision(c.id, Reason.RETENTION_EXPIRY))
            chosen.add(c.id)
            free_bytes += c.bytes
    for c in sorted(live, key=lambda c: c.start):
        if c.id in chosen or not c.synced:
            continue
        if c.synced_time is not None and c.synced_time + keep_synced_s <= now:
            out.append(Decision(c.id, Reason.SYNCED))
            chosen.add(c.id)
            free_bytes += c.bytes
    if free_bytes < min_free_bytes:
        out += _evict([c for c in live if c.id not in chosen], free_bytes, min_free_bytes)
    return out


def _evict(calls: list[CallView], free_bytes: int, min_free_bytes: int) -> list[Decision]:
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
    out: list[Decision] = []
    for cid, seqs in picked.items():
        c = next(x for x in calls if x.id == cid)
        if seqs == [-1] or (c.synced and len(seqs) == len(units[cid])):
            out.append(Decision(cid, Reason.EVICTION))
        else:
            out.append(Decision(cid, Reason.EVICTION, tuple(sorted(seqs))))
    return out
