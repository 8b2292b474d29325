"""The box's audit log, shipped upstream: which entries to send next, and what an ack
means.

The outbox is the log itself plus one pointer in the store, ``meta.audit_acked`` =
``{"seq", "hash", "offset"}``: the last entry the upstream acked (it acks only after a
durable commit) and the byte offset of its line. Nothing is held only in memory: after
a reconnect or a restart the entries after the pointer are simply sent again, and the
upstream, idempotent on (device, hash), acks them again.

If the log no longer holds the acked entry where the pointer says, or anywhere (the log
was deleted, truncated or rewritten), the box sends its log from the first line: the
upstream, which holds every entry it acked, then sees a chain that restarts or goes
backwards and raises it as a problem (:mod:`sync.upstream.boxaudit`). The box never
decides that for itself: deleting its own copy must be evident somewhere else.

Entries go one message at a time (``<prefix>/<site>/<device>/audit``, QoS 1), oldest
first, at most ``MAX_BATCH_BYTES`` of JSON; torn lines (power cuts) are skipped, as the
log's own writer skips them. The next message leaves when the last one is acked, or
again after the ack timeout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from recorder.evidence import audit

log = logging.getLogger(__name__)

META_KEY = "audit_acked"
MAX_BATCH_BYTES = 96 * 1024        # JSON bytes of entries per message (limit 128 KiB)


@dataclass(frozen=True)
class Pointer:
    """The last acked entry: its seq, hash and the byte offset of its line."""

    seq: int
    hash: str
    offset: int


@dataclass(frozen=True)
class Pending:
    """Entries to send, as ``(offset, entry)``, and whether the log no longer holds the
    acked entry (it restarted: everything is offered again from the first line)."""

    rows: list
    restarted: bool


def after(rows: list, acked: Pointer | None) -> Pending:
    """The whole entries of ``rows`` (``(offset, entry or None)`` in log order, from the
    start of the log or from ``acked.offset``) that come after ``acked``. Pure.

    ``acked`` None: every entry. The acked entry not among ``rows``: every entry, and
    ``restarted`` (the caller passes rows from the start of the log in that case)."""
    whole = [(off, e) for off, e in rows if isinstance(e, dict)]
    if acked is None:
        return Pending(whole, False)
    for i, (_off, e) in enumerate(whole):
        if e.get("seq") == acked.seq and e.get("hash") == acked.hash:
            return Pending(whole[i + 1:], False)
    return Pending(whole, True)


def _is_acked(row, ptr: Pointer) -> bool:
    """Is ``row`` (``(offset, entry)`` or None) the entry ``ptr`` names?"""
    return row is not None and isinstance(row[1], dict) and \
        (row[1].get("seq"), row[1].get("hash")) == (ptr.seq, ptr.hash)


def _whole(rows):
    """The rows (an iterable, read lazily) whose entry parsed."""
    return ((off, e) for off, e in rows if isinstance(e, dict))


def batch(rows, max_bytes: int = MAX_BATCH_BYTES) -> list:
    """The first rows (an iterable, read no further than needed) whose JSON fits in
    ``max_bytes`` (always at least one). Pure."""
    out, size = [], 0
    for off, e in rows:
        n = len(json.dumps(e, separators=(",", ":"))) + 1
        if out and size + n > max_bytes:
            break
        out.append((off, e))
        size += n
    return out


def advance(sent: list, acks: list, current: Pointer | None) -> Pointer | None:
    """The new pointer after ``acks`` ((seq, hash) pairs) for the ``sent`` rows: the
    furthest sent entry acked with its own hash; ``current`` if none is. Pure."""
    acked = {(int(s), str(h)) for s, h in acks}
    best = current
    for off, e in sent:
        if (e.get("seq"), e.get("hash")) in acked:
            best = Pointer(int(e["seq"]), str(e["hash"]), off)
    return best


class AuditShipper:
    """The box's audit outbox (used by :class:`sync.uploader.Uploader` on its thread).

    :meth:`next_batch` reads the log from the pointer; :meth:`on_ack` moves the pointer
    and stores it. ``store`` is the box's store (meta table), ``data_dir`` holds the log.
    """

    def __init__(self, store, data_dir):
        self.store, self.data_dir = store, data_dir
        self.sent: list = []              # rows of the message in flight
        self.restarted = False            # the last read found the acked entry gone
        self.acked_entries = 0            # entries acked since start (status)
        self._idle_size = -1              # log size when nothing was left to send

    def pointer(self) -> Pointer | None:
        p = self.store.get_meta(META_KEY)
        try:
            return Pointer(int(p["seq"]), str(p["hash"]), int(p["offset"])) if p else None
        except (KeyError, TypeError, ValueError):
            log.warning("audit shipping pointer unreadable (%r): sending the log again", p)
            return None

    def next_batch(self) -> list[dict]:
        """The entries of the next message ([] if nothing is unacked); remembers them as
        in flight. Cheap when nothing changed: the log's size is compared first."""
        size = audit.size(self.data_dir)
        if size == self._idle_size:
            return []
        ptr = self.pointer()
        rows = ((off, e) for off, e, _n in audit.lines_from(self.data_dir,
                                                            ptr.offset if ptr else 0))
        first = next(rows, None) if ptr is not None else None
        if ptr is None or _is_acked(first, ptr):
            # The usual case: the acked entry is where the pointer says (or nothing is
            # acked yet). Read on only as far as one message needs.
            pend = Pending(_whole(rows), False)
        else:
            # Not where the pointer says: read the whole log to decide.
            pend = after([(off, e) for off, e, _n in audit.lines_from(self.data_dir)], ptr)
        if pend.restarted and not self.restarted:
            log.error("the audit log no longer holds entry %d that the upstream acked "
                      "(deleted, truncated or rewritten): sending it from its first line; "
                      "the upstream will flag the break", ptr.seq if ptr else 0)
        self.restarted = pend.restarted
        self.sent = batch(pend.rows)
        self._idle_size = size if not self.sent else -1
        return [e for _off, e in self.sent]

    def on_ack(self, acks: list) -> int:
        """Apply the upstream's (seq, hash) acks; returns how many sent entries they
        covered. The pointer is stored in the store's meta table."""
        if not acks or not self.sent:
            return 0
        old = self.pointer()
        new = advance(self.sent, acks, None)
        if new is None:
            return 0
        done = sum(1 for off, _e in self.sent if off <= new.offset)
        if old is None or new != old:
            self.store.set_meta(META_KEY, {"seq": new.seq, "hash": new.hash,
                                           "offset": new.offset})
        self.sent = [(off, e) for off, e in self.sent if off > new.offset]
        self.restarted = False
        self.acked_entries += done
        self._idle_size = -1
        return done

    def forget(self) -> None:
        """Nothing is in flight any more (a reconnect, or the ack timed out)."""
        self.sent = []
        self._idle_size = -1
