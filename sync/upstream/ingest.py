"""``linetap ingest``: a stateless upstream ingest worker.

Run N of them: each joins the MQTT v5 shared subscription ``$share/<group>/...`` so the
broker spreads the boxes' messages across workers. A worker keeps no state of its
own: partial chunks go to the (shared) object store under ``partial/``, so any worker
can finish a segment another started, and a restarted worker loses nothing.

A box's audit entries (``audit``) are stored and checked by
:mod:`sync.upstream.boxaudit` in the same batch transaction, acked after it commits.

For each segment: reassemble, check size and sha256, check that the header names the
topic's device/call/seq and that the device is registered to the topic's site, write
the blob durably, commit the row, and only then publish the ack. Idempotent on
(device, call, seq, sha256): the same key again is acked without a second copy; the
same (device, call, seq) with another hash is kept aside as a conflict, alarmed, and
never overwrites the first. Manifests are checked with
:func:`recorder.evidence.chain.check_manifest` against the device's registered key.

The broker's own PUBACK is sent only after the message is handled (``manual_ack``).
Workers connect with a clean, non-persistent session so a dead worker drops out of the
shared group at once instead of soaking up messages; anything it held is resent by the
box after its ack timeout (the box's outbox, not the broker, is the durable queue).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt
import peewee as pw
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from recorder.errors import LinetapError, ProtocolError, SegmentFormatError
from recorder.evidence import chain as evidence
from recorder.evidence import segfile
from recorder.fsutil import crash_point
from recorder.timebase import parse_iso
from sync import linkstate, protocol
from sync.upstream import boxaudit, fleet, tracking, updates
from sync.upstream import config as upstream_config
from sync.upstream import ops as upstream_ops
from sync.upstream.objectstore import TEMP_MAX_AGE_S, open_objects
from sync.upstream.store import (
    Command,
    Health,
    ManifestHistory,
    Problem,
    UCall,
    audit,
    db,
    open_db,
)

log = logging.getLogger(__name__)

BATCH = 64                # messages per database transaction
CHUNK_WAIT_S = 0.005      # how long a batch waits for the next chunk of its last file
# A call in these states takes no more uploads: late copies are acked, never stored.
GONE = ("deleted", "deleting")


class Ingest:
    """Message handling, independent of MQTT (so it is testable with plain calls).

    :meth:`handle` returns ``(ack_topic, ack_payload)`` to publish, or None.
    """

    def __init__(self, ucfg, objects=None):
        self.ucfg = ucfg
        self.objects = objects or open_objects(ucfg)
        self.stored = self.duplicates = self.conflicts = self.dropped = 0
        self._writes = 0
        self._writes_hooked = 0     # writes already counted by the crash hook
        self._dirs: set | None = None      # folders to fsync before the batch commits
        self._calls: dict | None = None    # call rows seen in this batch
        self._futs: list = []              # blob writes in flight in this batch
        self._whole: bytes | None = None   # the file of the message in hand, if joined
        # fsync releases the GIL: a batch's blobs are written in parallel, and the
        # rows commit only after every one of them (and its folder) is durable.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ingest-io")

    # -- dispatch ----------------------------------------------------------------------------
    def handle_batch(self, msgs: list[tuple[str, bytes]]) -> list:
        """Handle several messages in one database transaction (group commit).

        Blobs are fsynced in parallel, their folders once, then the rows commit; only
        after that may the returned acks be published. Returns one result per message:
        ``(ack_topic, payload)``, None, or the exception that message raised. Every
        chunk of a file that is whole within the batch is joined in memory (no
        ``partial/`` round trip) and gets the result of the file.
        """
        self._dirs, self._calls, self._futs = set(), {}, []
        counts = (self.stored, self.duplicates, self.conflicts, self.dropped, self._writes)
        # One lock order for every worker (PostgreSQL would otherwise find deadlocks
        # between two batches holding the same keys in opposite orders).
        order = sorted(range(len(msgs)), key=lambda i: msgs[i][0])
        whole, member_of = _whole_files(msgs, order)
        res: dict[int, object] = {}
        try:
            with db.atomic(**_write_lock()):
                for n, i in enumerate(order):
                    if i in member_of:
                        continue               # joined into a later chunk of its file
                    topic, payload = msgs[i]
                    self._whole = whole.get(i)
                    one = (self.stored, self.duplicates, self.conflicts, self.dropped,
                           self._writes)
                    try:
                        with _Savepoint(n):
                            res[i] = self.handle(topic, payload)
                    except (ProtocolError, LinetapError) as exc:
                        res[i] = exc
                    except pw.DatabaseError as exc:
                        # This message's savepoint is rolled back; the rest commit. No
                        # ack for it: the box resends. Its counts go with it (two workers
                        # racing on one segment: the loser's insert fails after it
                        # counted the segment as stored).
                        (self.stored, self.duplicates, self.conflicts, self.dropped,
                         self._writes) = one
                        log.warning("message on %s not stored: %s", topic, exc)
                        res[i] = exc
                    finally:
                        self._whole = None
                for f in self._futs:
                    f.result()           # every blob fsynced (raises if a write failed)
                # The folders' fsyncs in parallel too (a batch often spans calls).
                for f in [self._pool.submit(self.objects.sync_dirs, {d})
                          for d in self._dirs]:
                    f.result()
                self._dirs.clear()
        except BaseException:
            (self.stored, self.duplicates, self.conflicts, self.dropped,
             self._writes) = counts
            raise
        finally:
            for f in self._futs:
                f.cancel()
            self._dirs = self._calls = None
            self._futs = []
        # Fault injection, LINETAP_CRASH_AT=ingest_before_ack:N: die once N writes are
        # durable, before their acks (one hit per write, so N counts writes).
        for _ in range(self._writes - self._writes_hooked):
            crash_point("ingest_before_ack")
        self._writes_hooked = self._writes
        for i, last in member_of.items():
            res[i] = res[last]
        return [res[i] for i in range(len(msgs))]

    def handle(self, topic: str, payload: bytes):
        t = protocol.parse_topic(topic)
        if t.prefix != self.ucfg.topic_prefix:
            raise ProtocolError(f"topic prefix {t.prefix!r}")
        site = self.ucfg.site_of(t.device)
        if site is None or site.name != t.site:
            self.dropped += 1
            log.warning("message from unregistered device %s (site %s) dropped", t.device,
                        t.site)
            return None
        if t.kind == "seg":
            return self._segment(t, site, protocol.parse_chunk(payload))
        if t.kind == "man":
            return self._manifest(t, site, protocol.parse_chunk(payload))
        if t.kind == "audit":
            return self._box_audit(t, site, payload)
        if t.kind == "report":
            self._report(t, payload)
        elif t.kind == "health":
            self._health(t, payload)
        return None

    def _ack_topic(self, t) -> str:
        return f"{protocol.base(t.prefix, t.site, t.device)}/ack"

    # -- reassembly --------------------------------------------------------------------------
    def _assemble(self, t, ch: protocol.Chunk, name: str) -> bytes | None:
        """The whole file once every chunk is in; None while chunks are missing."""
        if ch.count == 1:
            blob = ch.data
        elif self._whole is not None:
            # Every chunk came in this batch (see handle_batch): joined in memory. A
            # scratch folder left by an earlier, incomplete attempt goes now.
            blob = self._whole
            for p in self.objects.list(f"partial/{t.device}/{t.call}/{name}.{ch.sha256}"):
                self.objects.delete(p)
        else:
            pdir = f"partial/{t.device}/{t.call}/{name}.{ch.sha256}"
            # Scratch: if it is lost the box resends, so it is not fsynced.
            self.objects.put(f"{pdir}/{ch.index:05d}", ch.data, durable=False)
            parts = self.objects.list(pdir)
            if len(parts) < ch.count:
                return None
            blob = b"".join(self.objects.get(f"{pdir}/{i:05d}") for i in range(ch.count))
            for p in parts:
                self.objects.delete(p)
        if len(blob) != ch.total or hashlib.sha256(blob).hexdigest() != ch.sha256:
            self.dropped += 1
            log.warning("%s/%s %s: size or sha256 mismatch; dropped (the box resends)",
                        t.device, t.call, name)
            return None
        return blob

    def _put(self, key: str, blob: bytes) -> None:
        if self._dirs is None:
            self.objects.put(key, blob)
        else:
            self._futs.append(self._pool.submit(self.objects.put, key, blob,
                                                dirs=self._dirs))

    # -- segments ----------------------------------------------------------------------------
    def _call_state(self, t) -> str | None:
        """The call row's state (``live``/``deleting``/``deleted``), None if there is no row yet;
        cached for one batch (a batch mostly holds one call)."""
        k = (t.device, t.call)
        if self._calls is not None and k in self._calls:
            return self._calls[k]
        row = db.execute_sql(_sql("call_state"), (t.device, t.call)).fetchone()
        state = row[0] if row else None
        if self._calls is not None and state is not None:
            self._calls[k] = state
        return state

    def _deleted(self, t, ch, **ack):
        # A late copy of a call already deleted upstream (retention or the practice):
        # ack it so the box stops sending, but never store it again.
        self.duplicates += 1
        return self._ack_topic(t), protocol.ack_payload(**ack)

    def _segment(self, t, site, ch):
        key = (t.device, t.call, t.seq)
        state = self._call_state(t)
        if state in GONE:
            return self._deleted(t, ch, segs=[(t.call, t.seq, ch.sha256)])
        old = self._stored_sha(t)
        if old == ch.sha256:
            self.duplicates += 1
            return self._ack_topic(t), protocol.ack_payload(segs=[(t.call, t.seq, ch.sha256)])
        blob = self._assemble(t, ch, f"{t.seq:05d}")
        if blob is None:
            return None
        try:
            p = segfile.parse(blob, signed=False)
            h = p.header
        except SegmentFormatError as exc:
            self.dropped += 1
            log.warning("%s/%s/%d is not a segment file: %s", *key, exc)
            return None
        if (h.get("device"), h.get("call"), h.get("seq")) != key or p.kind != 1:
            self.dropped += 1
            log.warning("%s/%s/%d: header names another segment; dropped", *key)
            return None
        okey = f"seg/{t.device}/{t.call}/{t.seq:05d}.{ch.sha256}"
        if old is not None:
            return self._conflict(t, ch, okey, blob)
        self._put(okey, blob)
        start = _epoch(h.get("start")) if t.seq == 0 else None
        # INSERT ... ON CONFLICT DO NOTHING (SQLite and PostgreSQL): a row another
        # worker stored first leaves rowcount 0 instead of aborting the transaction.
        cur = db.execute_sql(_sql("seg_put"), (t.device, t.call, t.seq, ch.sha256, len(blob),
                                                okey, time.time()))
        if cur.rowcount != 1:
            # Another worker stored this key first: duplicate or conflict.
            if self._stored_sha(t) != ch.sha256:
                return self._conflict(t, ch, okey, blob)
            self.duplicates += 1
        else:
            if state is None or start is not None:
                self._touch_call(t, site, start)
            self.stored += 1
            self._writes += 1
        return self._ack_topic(t), protocol.ack_payload(segs=[(t.call, t.seq, ch.sha256)])

    def _stored_sha(self, t) -> str | None:
        """sha256 of the stored (device, call, seq), or None (one indexed lookup; peewee's
        query building cost more than the rest of a segment's handling)."""
        row = db.execute_sql(_sql("seg_get"), (t.device, t.call, t.seq)).fetchone()
        return row[0] if row else None

    def _conflict(self, t, ch, okey, blob):
        ckey = "conflict/" + okey
        self._put(ckey, blob)
        Problem.insert(kind="conflict", device=t.device, call=t.call, seq=t.seq,
                       sha256=ch.sha256, key=ckey,
                       detail="same (device, call, seq), different sha256") \
            .on_conflict_ignore().execute()
        self.conflicts += 1
        log.error("ALARM sync_conflict: %s/%s/%d arrived with another hash; kept aside",
                  t.device, t.call, t.seq)
        return self._ack_topic(t), protocol.ack_payload(conflicts=[(t.call, t.seq, ch.sha256)])

    def _touch_call(self, t, site, start: float | None, **fields) -> None:
        if not fields:
            # A segment's call row, in plain SQL (peewee's insert, get and update cost
            # about 1 ms a call): created if missing, its start (and with it the
            # retention deadline) only ever moved earlier.
            db.execute_sql(_sql("call_put"), (t.device, t.call, site.name, False, "live",
                                              time.time()))
            if start is not None:
                db.execute_sql(_sql("call_start"), (start, start + site.retention_days * 86400,
                                                    t.device, t.call, start))
            if self._calls is not None:
                self._calls.pop((t.device, t.call), None)
            return
        UCall.insert(device=t.device, call=t.call, site=site.name, created=time.time()) \
            .on_conflict_ignore().execute()
        row = UCall.get(UCall.device == t.device, UCall.call == t.call)
        upd = dict(fields)
        if start is not None and (row.start_time is None or start < row.start_time):
            upd["start_time"] = start
            upd["deadline"] = start + site.retention_days * 86400
        if upd:
            UCall.update(**upd).where(UCall.id == row.id).execute()
        if self._calls is not None:
            self._calls.pop((t.device, t.call), None)

    # -- manifests ---------------------------------------------------------------------------
    def _manifest(self, t, site, ch):
        row = UCall.get_or_none(UCall.device == t.device, UCall.call == t.call)
        if row is not None and row.state in GONE:
            return self._deleted(t, ch, mans=[(t.call, ch.sha256)])
        if row is not None and row.manifest_sha256 == ch.sha256:
            self.duplicates += 1
            return self._ack_topic(t), protocol.ack_payload(mans=[(t.call, ch.sha256)])
        if row is not None and ManifestHistory.select().where(
                (ManifestHistory.device == t.device) & (ManifestHistory.call == t.call)
                & (ManifestHistory.sha256 == ch.sha256)).exists():
            # A late copy of a version a newer one already replaced: nothing to store.
            self.duplicates += 1
            return self._ack_topic(t), protocol.ack_payload(mans=[(t.call, ch.sha256)])
        blob = self._assemble(t, ch, "manifest")
        if blob is None:
            return None
        header, problems = evidence.check_manifest(blob, t.call, t.device,
                                                   site.devices[t.device])
        if problems:
            return self._manifest_refused(t, ch, "rejected", tracking.explain_rejection(
                problems, t.device, site.name, site.devices[t.device]))
        okey = f"man/{t.device}/{t.call}.{ch.sha256}.ltm"
        if row is not None and row.manifest_sha256 is not None:
            return self._manifest_resigned(t, site, ch, row, header, blob, okey)
        self._put(okey, blob)
        with db.atomic():
            self._touch_call(t, site, _epoch(header.get("created")))
            # Conditional: two workers may each hold a copy of one manifest (a box's
            # resend after its ack timeout goes to any member of the shared group).
            # PostgreSQL makes the second UPDATE wait for the first to commit and then
            # find the column set, so only one stores; the other acks a duplicate.
            won = UCall.update(manifest_key=okey, manifest_sha256=ch.sha256,
                               expected=header.get("segments", [])).where(
                (UCall.device == t.device) & (UCall.call == t.call)
                & UCall.manifest_sha256.is_null()).execute()
            if not won:
                if UCall.get(UCall.device == t.device, UCall.call == t.call) \
                        .manifest_sha256 == ch.sha256:
                    self.duplicates += 1
                    return self._ack_topic(t), protocol.ack_payload(mans=[(t.call,
                                                                           ch.sha256)])
                row = UCall.get(UCall.device == t.device, UCall.call == t.call)
                return self._manifest_resigned(t, site, ch, row, header, blob, okey)
            tracking.manifest_accepted(t.device, t.call)
        self.stored += 1
        self._writes += 1
        return self._ack_topic(t), protocol.ack_payload(mans=[(t.call, ch.sha256)])

    def _manifest_refused(self, t, ch, kind: str, detail: str, blob: bytes | None = None):
        key = None
        if blob is not None:
            key = f"conflict/man/{t.device}/{t.call}.{ch.sha256}.ltm"
            self._put(key, blob)
        # One problem per refused manifest version: the box offers it again (after an
        # hour, or after a failed batch), and a NULL seq never meets the unique index.
        seen = Problem.select().where(
            (Problem.kind == kind) & (Problem.device == t.device) & (Problem.call == t.call)
            & Problem.seq.is_null() & (Problem.sha256 == ch.sha256)).exists()
        if not seen:
            Problem.insert(kind=kind, device=t.device, call=t.call, seq=None,
                           sha256=ch.sha256, key=key, detail=detail).execute()
        log.error("ALARM manifest_%s: %s/%s: %s", kind, t.device, t.call, detail)
        return self._ack_topic(t), protocol.ack_payload(rejected=[(t.call, detail)])

    def _manifest_resigned(self, t, site, ch, row, header, blob, okey):
        """A second, validly signed manifest for a stored call (the box re-signed it,
        e.g. after crash recovery). Accepted if :func:`supersedes` says so; the old
        version is kept as history. Anything else is a conflict, kept aside."""
        try:
            old_h = segfile.parse(self.objects.get(row.manifest_key)).header
        except (SegmentFormatError, LinetapError) as exc:
            old_h = {"segments": row.expected or [], "created": None}
            log.warning("%s/%s: stored manifest unreadable (%s); using its row", t.device,
                        t.call, exc)
        why = supersedes(old_h, header)
        if why is not None:
            return self._manifest_refused(t, ch, "conflict", why, blob)
        self._put(okey, blob)
        n = UCall.update(manifest_key=okey, manifest_sha256=ch.sha256,
                         expected=header.get("segments", [])).where(
            (UCall.id == row.id) & (UCall.manifest_sha256 == row.manifest_sha256)).execute()
        if n != 1:
            # Another worker replaced it meanwhile: no ack, the box resends and the next
            # attempt compares against the winner.
            raise pw.IntegrityError(f"manifest of {t.device}/{t.call} changed under us")
        ManifestHistory.insert(device=t.device, call=t.call, sha256=row.manifest_sha256,
                               key=row.manifest_key, segments=len(old_h.get("segments") or []),
                               created=old_h.get("created"), replaced_by=ch.sha256) \
            .on_conflict_ignore().execute()
        audit("manifest_superseded", device=t.device, call=t.call,
              old_sha256=row.manifest_sha256, new_sha256=ch.sha256,
              old_segments=len(old_h.get("segments") or []),
              new_segments=len(header.get("segments") or []))
        self.stored += 1
        self._writes += 1
        log.info("%s/%s: re-signed manifest accepted (%d -> %d segments); old one kept",
                 t.device, t.call, len(old_h.get("segments") or []),
                 len(header.get("segments") or []))
        return self._ack_topic(t), protocol.ack_payload(mans=[(t.call, ch.sha256)])

    # -- the box's audit log ------------------------------------------------------------------
    def _box_audit(self, t, site, payload: bytes):
        """Store a box's audit entries (:mod:`sync.upstream.boxaudit`); the ack names
        every entry held, and the first refused one with its reason."""
        entries = protocol.parse_audit(payload)
        acked, refused = boxaudit.receive(t.device, entries, site.devices[t.device])
        return self._ack_topic(t), protocol.ack_payload(audit=acked, audit_refused=refused)

    # -- reports and health ------------------------------------------------------------------
    def _report(self, t, payload: bytes) -> None:
        try:
            r = json.loads(payload)
            nonce, status = r.get("nonce"), r.get("status")
        except (ValueError, AttributeError):
            return
        if r.get("kind") == "update" and "stage" in r:
            # A stage of an offered update (docs/updates.md, "Stage reports"). The
            # update command's own applied/rejected report has a "status" instead and
            # goes on below, like any command's.
            updates.on_stage(t.device, r)
            return
        if r.get("kind") == "notice":
            # A box announcing an act before it happens (factory reset): keep it in
            # the upstream audit trail, whatever the box does next.
            audit("box_notice", device=t.device, site=t.site, event=str(r.get("event")),
                  detail=r.get("detail") if isinstance(r.get("detail"), dict) else {})
            return
        if not nonce:
            return
        reason = r.get("reason") or r.get("result") or ""
        if status == "rejected" and "replayed" in reason:
            # A resend of a command the box already applied.
            Command.update(status="applied").where((Command.nonce == nonce)
                                                   & (Command.status == "pending")).execute()
            return
        Command.update(status=status, result=reason).where(
            (Command.nonce == nonce) & (Command.device == t.device)).execute()
        tracking.on_report(nonce, status)
        log.log(logging.WARNING if status == "rejected" else logging.INFO,
                "box %s %s command %s: %s", t.device, status, nonce[:8], reason)

    def _health(self, t, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            log.warning("health from %s is not a JSON object: ignored", t.device)
            return
        now = time.time()
        prev = Health.get_or_none(Health.device == t.device)
        tracking.box_back(t.device, prev.time if prev else None, now)
        fleet.record_health(t.device, t.site, body, now)
        head = body.get("audit")
        if isinstance(head, dict):
            # The box's log must never end before what the upstream already holds.
            boxaudit.check_head(t.device, head.get("seq"), head.get("hash"),
                                body.get("time"))


_SQL = {
    "call_state": 'SELECT state FROM ucall WHERE device = {p} AND "call" = {p}',
    "seg_get": 'SELECT sha256 FROM usegment WHERE device = {p} AND "call" = {p} AND seq = {p}',
    "call_put": 'INSERT INTO ucall (device, "call", site, legal_hold, state, created) '
                "VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
    "call_start": "UPDATE ucall SET start_time = {p}, deadline = {p} "
                  'WHERE device = {p} AND "call" = {p} '
                  "AND (start_time IS NULL OR start_time > {p})",
    "seg_put": 'INSERT INTO usegment (device, "call", seq, sha256, size, "key", created) '
               "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
}


def _write_lock() -> dict:
    """SQLite: take the write lock when the batch starts (``BEGIN IMMEDIATE``). A
    deferred transaction reads first and then fails at once with "database is locked"
    when another worker committed in between (the busy timeout does not apply to that
    upgrade), so with two workers on one SQLite file segments were refused and waited
    for the box's ack timeout."""
    return {"lock_type": "IMMEDIATE"} if isinstance(db.obj, pw.SqliteDatabase) else {}


def _sql(name: str) -> str:
    """A hot-path statement in the open database's parameter style (``?`` or ``%s``)."""
    return _SQL[name].format(p=db.obj.param)


class _Savepoint:
    """A savepoint with a plain counter name (peewee names each one with uuid4, which
    reads /dev/urandom: measurable at hundreds of messages per second)."""

    def __init__(self, n: int):
        self.name = f"m{n}"

    def __enter__(self):
        db.execute_sql(f'SAVEPOINT "{self.name}"')
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            db.execute_sql(f'RELEASE SAVEPOINT "{self.name}"')
        else:
            db.execute_sql(f'ROLLBACK TO SAVEPOINT "{self.name}"')
            db.execute_sql(f'RELEASE SAVEPOINT "{self.name}"')
        return False


def _more_chunks(payload: bytes) -> bool:
    """True if ``payload`` is a chunk with more chunks after it."""
    if len(payload) < protocol.HEADER_LEN or payload[:4] != protocol.CHUNK_MAGIC:
        return False
    _m, idx, count, _total, _sha = protocol.HEADER.unpack_from(payload)
    return idx + 1 < count


def _whole_files(msgs, order) -> tuple[dict[int, bytes], dict[int, int]]:
    """Files of several chunks that are whole within one batch.

    Returns ``whole`` (index of the file's last message in ``order`` -> the joined file)
    and ``member_of`` (index of every other message of that file, duplicates included
    -> that last index). Malformed messages are left out (``handle`` reports them).
    """
    groups: dict[tuple, dict] = {}
    for i in order:
        topic, payload = msgs[i]
        kind = topic.split("/", 4)[3:4]
        if kind not in (["seg"], ["man"]) or len(payload) < protocol.HEADER_LEN:
            continue
        # len(payload) >= HEADER_LEN was checked above, so the header always unpacks.
        magic, idx, count, total, sha = protocol.HEADER.unpack_from(payload)
        if magic != protocol.CHUNK_MAGIC or count < 2 or idx >= count:
            continue
        g = groups.setdefault((topic, sha, count, total), {"parts": {}, "msgs": []})
        g["parts"].setdefault(idx, i)
        g["msgs"].append(i)
    whole: dict[int, bytes] = {}
    member_of: dict[int, int] = {}
    for (_t, _sha, count, _total), g in groups.items():
        if len(g["parts"]) != count:
            continue
        last = g["msgs"][-1]
        whole[last] = b"".join(memoryview(msgs[g["parts"][k]][1])[protocol.HEADER_LEN:]
                               for k in range(count))
        for i in g["msgs"][:-1]:
            member_of[i] = last
    return whole, member_of


def supersedes(old: dict, new: dict) -> str | None:
    """May manifest header ``new`` replace ``old`` for the same call? None if yes, else
    the reason it is a conflict. Pure.

    Both must already have passed :func:`recorder.evidence.chain.check_manifest` against the
    same registered device key (the caller checks ``new``; ``old`` was checked when it
    was stored). ``new`` must list every segment ``old`` lists, in the same place with
    the same sha256 and size (it may add more: a recovered call signed again once its
    later segments were found), and must not be older (``created``).
    """
    def key(s):
        return (int(s["seq"]), str(s["sha256"]), int(s["size"]))
    try:
        o = [key(s) for s in old.get("segments") or []]
        n = [key(s) for s in new.get("segments") or []]
    except (KeyError, TypeError, ValueError):
        return "conflict: a segment list is malformed"
    if n[:len(o)] != o:
        return (f"conflict: new manifest ({len(n)} segment(s)) does not extend the stored "
                f"one ({len(o)} segment(s))")
    to, tn = _epoch(old.get("created")), _epoch(new.get("created"))
    if to is not None and (tn is None or tn < to):
        return "conflict: new manifest is older than the stored one"
    return None


def _epoch(iso_s) -> float | None:
    try:
        return parse_iso(iso_s) if iso_s else None
    except (ValueError, TypeError):
        return None


class Worker:
    """An :class:`Ingest` on an MQTT v5 shared subscription, plus the retention and
    command-delivery ticks."""

    def __init__(self, ucfg, *, client_id: str | None = None, reconnect_s=(0.5, 30.0)):
        self.ucfg = ucfg
        self.ingest = Ingest(ucfg)
        self.client_id = client_id or ucfg.client_id or \
            f"ingest-{socket.gethostname()}-{os.getpid()}"
        self.reconnect_s = reconnect_s
        self.fleet = fleet.Fleet(ucfg.fleet, ucfg.enrolled(), holder=self.client_id)
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self.q: queue.Queue = queue.Queue(maxsize=10000)
        self.handler = threading.Thread(target=self.run_handler, name="ingest-handler",
                                        daemon=True)

    def filters(self) -> list[str]:
        g, p = self.ucfg.share_group, self.ucfg.topic_prefix
        return [f"$share/{g}/{p}/+/+/{k}" for k in ("seg/#", "man/#", "report", "health",
                                                    "audit")]

    def presence_topic(self) -> str:
        return f"{self.ucfg.topic_prefix}/_ingest/{self.client_id}/status"

    def start(self) -> None:
        u = self.ucfg
        c = linkstate.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if u.ca:
            c.tls_set(ca_certs=u.ca, certfile=u.cert or None, keyfile=u.key or None,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.reconnect_delay_set(*self.reconnect_s)
        c.max_inflight_messages_set(100)
        c.on_connect, c.on_message = self._on_connect, self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_socket_open = protocol.tcp_nodelay
        # A retained "online" under <prefix>/_ingest/<client id>/status while connected,
        # cleared by the will or by close(): `linetap upstream check` counts the workers
        # that are really subscribed, not just a broker that answers.
        c.will_set(self.presence_topic(), b"", qos=1, retain=True)
        # No persistent session for a worker: a dead worker's session would stay in the
        # shared group and keep being handed messages (mosquitto queues for offline
        # members). What was in flight is resent by the box after its ack timeout.
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        c.connect_async(u.host, u.port, keepalive=30, clean_start=True, properties=props)
        self.client = c
        self.handler.start()
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("broker refused ingest connection: %s", reason_code)
            return
        client.subscribe([(f, 1) for f in self.filters()])
        client.publish(self.presence_topic(), b"online", qos=1, retain=True)
        self.connected.set()
        log.info("ingest %s connected", self.client_id)

    def _on_connect_fail(self, client, userdata):
        # Logged at once, with the cause: an unreachable broker used to be silent.
        exc = getattr(client, "last_error", None)
        log.warning("ingest %s cannot connect to broker %s:%d: %s; retrying (backoff "
                    "%g-%g s)", self.client_id, self.ucfg.host, self.ucfg.port,
                    linkstate.describe_error(exc, self.ucfg.host, self.ucfg.port)
                    if exc is not None else "connection failed", *self.reconnect_s)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self.connected.is_set()
        self.connected.clear()
        if was and not self.stop.is_set():
            log.warning("ingest %s lost the broker: %s; reconnecting", self.client_id,
                        reason_code)

    def _on_message(self, client, userdata, msg):
        # paho's thread only queues; the handler thread batches (group commit).
        self.q.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    def run_handler(self) -> None:
        """Handler loop: take up to ``BATCH`` queued messages, store them in one
        transaction, then publish the acks and release the broker PUBACKs."""
        while not self.stop.is_set():
            try:
                first = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            msgs = [first]
            while len(msgs) < BATCH:
                try:
                    msgs.append(self.q.get_nowait())
                except queue.Empty:
                    # The last message is a chunk of a file whose next chunk is on its
                    # way: wait a moment for it rather than going through partial/.
                    if not _more_chunks(msgs[-1][1]):
                        break
                    try:
                        msgs.append(self.q.get(timeout=CHUNK_WAIT_S))
                    except queue.Empty:
                        break
            try:
                with self._lock:
                    results = self.ingest.handle_batch([(t, p) for t, p, _m, _q in msgs])
            except Exception:
                # Database or object store down: no acks, so the box resends after its
                # ack timeout (its outbox is the durable queue). The broker PUBACKs are
                # still released: held back, each would keep one of this worker's
                # in-flight slots until it reconnects (MQTT v5 redelivers only on a new
                # connection), and after max_inflight_messages failed messages the
                # broker would send this worker nothing more.
                log.exception("batch of %d message(s) failed", len(msgs))
                client = self.client
                if client is not None:
                    for _t, _p, mid, qos in msgs:
                        client.ack(mid, qos)
                continue
            client = self.client
            if client is None:
                continue
            merged: dict[str, dict] = {}
            for (topic, _p, _mid, _qos), res in zip(msgs, results, strict=True):
                if isinstance(res, Exception):
                    log.warning("message on %s refused: %s", topic, res)
                elif res is not None:
                    acc = merged.setdefault(res[0], {k: [] for k in protocol.ACK_KEYS})
                    for k, v in protocol.parse_ack(res[1]).items():
                        acc[k] += v
            # One ack message per device per batch, then the broker PUBACKs.
            for topic, acc in merged.items():
                client.publish(topic, protocol.ack_payload(**acc), qos=1)
            for _t, _p, mid, qos in msgs:
                client.ack(mid, qos)

    def tick(self) -> None:
        """Retention, command delivery, the fleet's alerts and update rollouts
        (idempotent, or leased to one worker, so every worker may run it).

        The fleet's alerts and the rollouts run outside the handler's lock: they touch
        only their own tables, and at 2,000 sites one fleet pass takes seconds, during
        which the handler would otherwise take no messages (a stall longer than the
        acks' p99 goal)."""
        try:
            self.fleet.tick()
        except Exception:
            # The fleet view must never stop retention or command delivery.
            log.exception("fleet alerts failed")
        if self.ucfg.command_key:
            try:
                updates.tick(self.ucfg)
            except Exception:
                # A rollout must never stop retention or command delivery.
                log.exception("update rollouts failed")
        with self._lock:
            upstream_ops.refresh_deadlines(self.ucfg)
            upstream_ops.expire(self.ingest.objects)
            upstream_ops.clean_partials(self.ingest.objects, self.ucfg.partial_max_age_s)
            self.ingest.objects.clean_temp(TEMP_MAX_AGE_S)
            if self.ucfg.command_key:
                upstream_ops.queue_retention(self.ucfg)
            if self.connected.is_set():
                self.send_commands()

    def send_commands(self) -> int:
        now, n = time.time(), 0
        for cmd in Command.select().where((Command.status == "pending")
                                          & (Command.expires > now)):
            if cmd.sent_time is not None and now - cmd.sent_time < self.ucfg.command_resend_s:
                continue
            site = self.ucfg.site_of(cmd.device)
            if site is None:
                continue
            topic = f"{protocol.base(self.ucfg.topic_prefix, site.name, cmd.device)}/cmd"
            self.client.publish(topic, cmd.envelope.encode(), qos=1)
            Command.update(sent_time=now).where(Command.nonce == cmd.nonce).execute()
            n += 1
        return n

    def close(self) -> None:
        self.stop.set()
        if self.handler.is_alive():
            self.handler.join(10)
        if self.client is not None:
            if self.connected.is_set():
                try:
                    self.client.publish(self.presence_topic(), b"", qos=1,
                                        retain=True).wait_for_publish(2.0)
                except (RuntimeError, ValueError):
                    log.debug("presence not cleared", exc_info=True)
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


def run_worker(ucfg, stop: threading.Event, *, interval_s: float = 1.0,
               config_path: str | None = None) -> Worker:
    """Run a worker until ``stop`` is set (the body of ``linetap ingest``). With
    ``config_path``, sites and devices follow the file as it changes."""
    open_db(ucfg.db_url, ucfg.audit_key)
    w = Worker(ucfg)
    w.start()
    watch = upstream_config.ConfigWatch(config_path, ucfg) if config_path else None
    next_tick = 0.0
    try:
        while not stop.wait(interval_s):
            new = watch.changed() if watch is not None else None
            if new is not None:
                with w._lock:
                    w.ucfg = w.ingest.ucfg = ucfg = new
                log.info("ingest %s: %s reloaded (%d device(s))", w.client_id,
                         config_path, sum(len(s.devices) for s in new.sites.values()))
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + ucfg.retention_interval_s
                try:
                    w.tick()
                except Exception:
                    log.exception("ingest tick failed")
            elif w.connected.is_set():
                try:
                    with w._lock:
                        w.send_commands()
                except Exception:
                    log.exception("command delivery failed")
    finally:
        w.close()
    return w


def cli_main(argv: list[str]) -> int:
    import signal
    ap = argparse.ArgumentParser(prog="linetap ingest", description="upstream ingest worker")
    ap.add_argument("--config", required=True, help="upstream TOML (see docs/sync.md)")
    args = ap.parse_args(argv)
    ucfg = upstream_config.load(args.config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_worker(ucfg, stop, config_path=args.config)
    return 0


if __name__ == "__main__":
    import sys

    from recorder.logsetup import setup_logging
    setup_logging()
    sys.exit(cli_main(sys.argv[1:]))
