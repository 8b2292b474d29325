"""The box's uploader: SQLite outbox -> MQTT v5 -> application-level acks.

The outbox is the store itself: ``segment`` rows with ``acked = 0`` and ``call`` rows
with a manifest and ``manifest_acked = 0``; and the audit log after the entry the
upstream last acked (:mod:`sync.auditship`). Nothing is held only in paho's memory, so
a reboot, a broker restart (mosquitto keeps sessions in RAM) or days offline lose
nothing: whatever was not acked is simply sent again. A row is marked acked only when
the upstream says, on ``.../ack``, that it wrote that exact (call, seq, sha256)
durably; an item not acked within ``ack_timeout_s`` of the broker's PUBACK is sent
again (ingest is idempotent, so a duplicate costs bandwidth, never a second copy).

At most ``sync.window`` items (segments or manifests) are in flight. The next items
are chosen by :func:`plan`, which alternates between the oldest backlog and the newest
call so a live call is not starved behind days of backlog.

Threads: paho's network thread (``loop_start``) only queues incoming messages; one
uploader thread (a :class:`~recorder.threads.ServiceThread`) owns every database
write, publishing and command handling.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from recorder.errors import CommandRejected, KeyFileError, ProtocolError
from recorder.evidence import audit
from recorder.threads import ServiceThread, name_os_thread
from recorder.timebase import clock_synchronised
from sync import linkstate, protocol
from sync import signed_commands as commands
from sync.auditship import AuditShipper

log = logging.getLogger(__name__)

#: The link state while connected to the broker (``sync_status()["link"]``).
LINK_ONLINE = "online"

SESSION_EXPIRY_S = 7 * 86400     # broker keeps our session (and queued acks) this long
# An item the broker never PUBACKs is sent again after this many ack timeouts (a live
# connection that never PUBACKs; a dead one is re-planned on reconnect anyway).
SEND_CAP = 5
TICK_S = 0.25                    # uploader tick when nothing wakes it (seconds)
REFRESH_S = 1.0                  # candidate cache lifetime (seconds)
# A manifest version the upstream rejected is offered again after this long (seconds):
# the usual cause is on the upstream's side (a wrong identity pinned), and once that is
# fixed the rejection must clear without anyone restarting the box.
REJECTED_RETRY_S = 3600.0


@dataclass(frozen=True)
class Item:
    """One thing to upload: a segment (``seq`` set) or a manifest (``seq`` None)."""

    call: str
    seq: int | None
    sha256: str
    path: str                    # relative to the data dir

    @property
    def key(self) -> tuple:
        return (self.call, self.seq)


class UploaderThread(ServiceThread):
    """The uploader's service thread: ticks every ``TICK_S`` and also as soon as an ack
    arrives (an ack frees window room; waiting out a fixed period would cap throughput
    at ``window / period``). Disconnects cleanly when ``stop`` is set."""

    def __init__(self, uploader: Uploader, stop: threading.Event):
        super().__init__("uploader", TICK_S, uploader.tick, stop)
        self.uploader = uploader

    def run(self) -> None:
        name_os_thread(self.name)
        try:
            self._guarded()
            while not self.stop_event.is_set():
                self.uploader.wake.wait(self.interval)
                self.uploader.wake.clear()
                if self.stop_event.is_set():
                    break
                self._guarded()
        finally:
            self.uploader.close()


def overdue(sent: float, delivered: float | None, now: float, ack_timeout_s: float) -> bool:
    """Is an item in flight due to be sent again? Times in seconds (monotonic).

    ``sent`` is when it was published, ``delivered`` when the broker had PUBACKed every
    chunk of it (None: not yet). The ack timeout runs from ``delivered``: the time a
    slow uplink takes to carry a full window is not the upstream's delay, and counting
    it made a larger window resend what was merely queued. An item never delivered is
    due after ``SEND_CAP`` ack timeouts. Pure.
    """
    if delivered is not None:
        return now - delivered > ack_timeout_s
    return now - sent > SEND_CAP * ack_timeout_s


def plan(oldest: list, newest: list, inflight, room: int) -> list:
    """Choose up to ``room`` items: alternately the oldest backlog and the newest call.

    ``oldest`` and ``newest`` are candidate lists in their own order; items whose
    ``key`` is in ``inflight`` (a set of keys) are skipped; no item is chosen twice.
    Pure.
    """
    out, seen = [], set(inflight)
    lists = [list(oldest), list(newest)]
    pos = [0, 0]
    turn = 1 if newest else 0      # the live call goes first
    while len(out) < room and (pos[0] < len(lists[0]) or pos[1] < len(lists[1])):
        src = lists[turn]
        while pos[turn] < len(src) and src[pos[turn]].key in seen:
            pos[turn] += 1
        if pos[turn] < len(src):
            it = src[pos[turn]]
            pos[turn] += 1
            out.append(it)
            seen.add(it.key)
        turn ^= 1
    return out


class Uploader:
    """Uploads one box's outbox. Construct, :meth:`start`, then run :meth:`tick` on a
    service thread (:class:`UploaderThread`); :meth:`close` on shutdown.

    ``status`` returns the daemon status dict for health messages (or None);
    ``retention`` (a :class:`~recorder.storage.retention.service.Retention`) applies
    upstream commands;
    ``ack_timeout_s`` is how long an item the broker has PUBACKed waits for the upstream's
    ack before it is sent again (see :func:`overdue`);
    ``updater`` (a :class:`~sync.update.service.Updater`, or None when updates are off)
    takes ``update`` commands and adds the slot and update state to health messages.
    """

    def __init__(self, store, cfg, *, device: str, data_dir, status: Callable | None = None,
                 alarms=None, retention=None, ack_timeout_s: float = 60.0,
                 reconnect_s: tuple[float, float] = (1.0, 60.0), clock=time.time,
                 clock_synced: Callable[[], bool] | None = None, updater=None):
        self.store, self.cfg, self.sc = store, cfg, cfg.sync
        self.updater = updater
        self.device, self.site = device, cfg.device.site or "default"
        self.data_dir = data_dir
        self.status_fn, self.alarms, self.retention = status, alarms, retention
        self.ack_timeout_s, self.reconnect_s, self.clock = ack_timeout_s, reconnect_s, clock
        # whether the box's clock is NTP-synchronised (commands judge expiry by it)
        self.clock_synced = clock_synced or clock_synchronised
        self.base = protocol.base(self.sc.topic_prefix, self.site, device)
        self.inbox: queue.Queue = queue.Queue()
        self.inflight: dict[tuple, float] = {}       # item key -> monotonic send time
        # item key -> paho's MessageInfo of each chunk, until the broker PUBACKs them all;
        # then the key moves to _delivered (-> monotonic time that was seen)
        self._infos: dict[tuple, list] = {}
        self._delivered: dict[tuple, float] = {}
        self.parked: set[tuple] = set()              # refused upstream; alarmed
        # Manifests the upstream rejected, by call -> the sha256 it rejected: only that
        # version is held back, so a re-signed manifest goes out again.
        self.rejected_mans: dict[str, str] = {}
        self._rejected_at: dict[str, float] = {}     # call -> monotonic time of rejection
        self.link = "offline"
        self.link_detail = ""
        self.connected = threading.Event()
        self._reset = threading.Event()
        self.wake = threading.Event()        # set when an ack or command arrives
        self._cand: tuple | None = None       # cached (oldest, newest) candidates
        # Keys acked since the candidates were read: the cache still lists them as
        # unacked, so without this an acked item would be sent again.
        self._done: set[tuple] = set()
        self._cand_until = self._cand_at = 0.0
        self._relaxed = False
        self._next_health = 0.0
        self.sent = self.acked = self.resent = 0
        self.watch = linkstate.LinkWatch(*reconnect_s)
        self._socket_error = ""          # paho's last socket error text (TLS alerts)
        self.command_key = self._load_command_key()
        self.client: mqtt.Client | None = None
        # The audit log's outbox (sync/auditship.py): one message in flight at a time.
        self.auditship = AuditShipper(store, data_dir)
        self._audit_sent = self._audit_hold = 0.0
        self._audit_info = None
        self._audit_delivered: float | None = None

    def _load_command_key(self):
        from recorder.evidence.keys import load_ed25519_public
        try:
            return load_ed25519_public(self.sc.command_key)
        except KeyFileError as exc:
            log.warning("no upstream command key (%s): every command will be rejected", exc)
            return None

    # -- MQTT -------------------------------------------------------------------------------
    def start(self) -> None:
        sc = self.sc
        # Refused here, loudly, rather than connecting and having every upload dropped
        # by the broker's ACL (its user name is the certificate CN).
        linkstate.check_certificate_cn(sc.cert, self.device)
        c = linkstate.Client(CallbackAPIVersion.VERSION2, client_id=self.device,
                    protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=sc.ca, certfile=sc.cert, keyfile=sc.key,
                  tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if sc.password:
            c.username_pw_set(self.device, sc.password)
        c.will_set(f"{self.base}/status", b"offline", qos=1, retain=True)
        c.reconnect_delay_set(*self.reconnect_s)
        c.max_inflight_messages_set(max(20, 4 * sc.window))
        c.max_queued_messages_set(0)
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.on_connect_fail, c.on_log = self._on_connect_fail, self._on_log
        c.on_message = self._on_message
        c.on_socket_open = protocol.tcp_nodelay
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.link = "connecting"
        c.connect_async(sc.host, sc.port, keepalive=30, clean_start=False, properties=props)
        c.loop_start()
        self.client = c

    def _failed(self, why: str) -> None:
        delay = self.watch.failed(why)
        self.link_detail = why
        log.warning("broker %s:%d: %s; attempt %d failed, next in %.3g s", self.sc.host,
                    self.sc.port, why, self.watch.attempts, delay)

    def _on_connect_fail(self, client, userdata):
        exc = getattr(client, "last_error", None)
        self.link = "offline"
        self._failed(linkstate.describe_error(exc, self.sc.host, self.sc.port)
                     if exc is not None else "connection failed")

    def _on_log(self, client, userdata, level, buf):
        if level == mqtt.MQTT_LOG_ERR:
            # e.g. "failed to receive on socket: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]":
            # a TLS 1.3 alert arrives after the handshake, as a read error.
            self._socket_error = buf

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.link = "refused"
            self._failed(linkstate.describe_refusal(reason_code))
            return
        self.watch.connected()
        client.subscribe([(f"{self.base}/ack", 1), (f"{self.base}/cmd", 1)])
        client.publish(f"{self.base}/status", b"online", qos=1, retain=True)
        self.link, self.link_detail = LINK_ONLINE, ""
        self._reset.set()
        self.connected.set()
        self.wake.set()
        log.info("connected to broker %s:%d", self.sc.host, self.sc.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was_up = self.connected.is_set()
        self.connected.clear()
        self.link, self.link_detail = "offline", str(reason_code)
        if self.client is None:                # close(): our own disconnect
            log.info("disconnected from broker: %s", reason_code)
            return
        err, self._socket_error = self._socket_error, ""
        if "alert" in err.lower() or "ssl" in err.lower():
            why = "TLS alert from the broker: " + err.split(": ", 1)[-1] + \
                " (is this box's certificate revoked or from another CA?)"
        elif reason_code.is_failure:
            why = linkstate.describe_refusal(reason_code)
        else:
            why = f"connection lost ({reason_code}{': ' + err if err else ''})"
        if was_up:
            log.warning("broker %s:%d: %s; reconnecting", self.sc.host, self.sc.port, why)
            self.watch.failed(why)
            self.link_detail = why
        else:
            self._failed(why)

    def _on_message(self, client, userdata, msg):
        self.inbox.put((msg.topic, bytes(msg.payload)))
        self.wake.set()

    def close(self) -> None:
        """Say offline (retained) and disconnect."""
        c, self.client = self.client, None
        if c is None:
            return
        try:
            if self.connected.is_set():
                c.publish(f"{self.base}/status", b"offline", qos=1, retain=True) \
                    .wait_for_publish(2.0)
        except (RuntimeError, ValueError):
            log.debug("offline status not sent", exc_info=True)
        c.disconnect()
        c.loop_stop()
        self.connected.clear()
        self.link = "offline"

    # -- the tick ---------------------------------------------------------------------------
    def tick(self) -> None:
        """Apply incoming acks and commands, then top up the in-flight window."""
        if not self._relaxed:
            # This thread's own SQLite connection commits acks without an fsync (WAL,
            # synchronous=NORMAL): an ack lost to a power cut only means one resend,
            # which the ingest dedups. Commands switch back to FULL (see _command).
            self.store.db.execute_sql("PRAGMA synchronous=NORMAL")
            self._relaxed = True
        self._drain_inbox()
        if not self.connected.is_set():
            return
        if self._reset.is_set():
            # A new connection: what was in flight may have died with the old one.
            self._reset.clear()
            self.inflight.clear()
            self._infos.clear()
            self._delivered.clear()
            self._cand = None
            self.auditship.forget()
        now = time.monotonic()
        for k, t in list(self.inflight.items()):
            infos = self._infos.get(k)
            if infos is not None and all(i.is_published() for i in infos):
                del self._infos[k]
                self._delivered[k] = now
                self.watch.delivered(now)
            if overdue(t, self._delivered.get(k), now, self.ack_timeout_s):
                self._forget(k)
                self.resent += 1
                self._cand = None            # re-read: it goes back into the plan
        room = self.sc.window - len(self.inflight)
        if room > 0:
            for it in self._plan(room):
                self._publish(it)
        self._ship_audit(now)
        if time.monotonic() >= self._next_health:
            self._next_health = time.monotonic() + self.sc.health_interval_s
            self.publish_health()

    def _plan(self, room: int) -> list[Item]:
        """Next items to send. Candidates are read from SQLite in batches of a few
        windows and reused for up to ``REFRESH_S`` (building and running the queries
        on every ack would cost more than sending)."""
        skip = set(self.inflight) | self.parked
        now = time.monotonic()
        if self._cand is None or now >= self._cand_until:
            self._refresh(now)
        chosen = plan(*self._cand, skip | self._done, room)
        if len(chosen) < room and now > self._cand_at + 0.02:
            # The cache ran dry: look for anything newer before giving up.
            self._refresh(now)
            chosen = plan(*self._cand, skip, room)
        keys = {it.key for it in chosen}
        self._cand = tuple([it for it in lst if it.key not in keys] for lst in self._cand)
        return chosen

    def _refresh(self, now: float) -> None:
        # Acks are committed on this thread before it plans, so a fresh read already
        # leaves out everything in _done.
        self._cand = self._candidates(4 * self.sc.window)
        self._cand_until, self._cand_at = now + REFRESH_S, now
        self._done.clear()

    def _candidates(self, room: int) -> tuple[list[Item], list[Item]]:
        C, S = self.store.m.Call, self.store.m.Segment
        limit = room + len(self.inflight) + len(self.parked) + len(self.rejected_mans)
        mans = [Item(c.id, None, c.manifest_sha256, c.manifest) for c in
                C.select(C.id, C.manifest, C.manifest_sha256)
                .where(C.manifest.is_null(False) & (C.manifest_acked == False)  # noqa: E712
                       & (C.state != "deleted")).order_by(C.created).limit(limit)
                if self.rejected_mans.get(c.id) != c.manifest_sha256
                or self._retry_rejected(c.id)]
        base_q = S.select(S.call, S.seq, S.sha256, S.path).where(S.acked == False)  # noqa: E712
        oldest = [Item(s.call_id, s.seq, s.sha256, s.path)
                  for s in base_q.order_by(S.id).limit(limit)]
        last = S.select(S.call).where(S.acked == False).order_by(S.id.desc()).first()  # noqa: E712
        newest = []
        if last is not None:
            newest = [Item(s.call_id, s.seq, s.sha256, s.path) for s in
                      base_q.where(S.call == last.call_id).order_by(S.seq).limit(limit)]
        # Manifests are small and complete a call upstream: they go with the backlog.
        return mans + oldest, newest

    def _publish(self, it: Item) -> None:
        try:
            blob = self.store.abs(it.path).read_bytes()
        except OSError:
            log.warning("outbox file %s is gone; retention will settle the row", it.path)
            self.parked.add(it.key)
            return
        if it.seq is None:
            topic = protocol.man_topic(self.sc.topic_prefix, self.site, self.device, it.call)
        else:
            topic = protocol.seg_topic(self.sc.topic_prefix, self.site, self.device, it.call,
                                       it.seq)
        # A segment file is never rewritten: its row's sha256 is the file's, so it is not
        # hashed again here. A manifest may be re-signed under the same name, so it is.
        self._infos[it.key] = [
            self.client.publish(topic, payload, qos=1)
            for payload in protocol.split(blob, self.sc.chunk_bytes,
                                          sha256=it.sha256 if it.seq is not None else None)]
        self._delivered.pop(it.key, None)
        self.inflight[it.key] = time.monotonic()
        self.sent += 1

    def _ship_audit(self, now: float) -> None:
        """Send the next batch of unacked audit entries, unless one is in flight (and
        not overdue) or the upstream refused one within ``REJECTED_RETRY_S``."""
        if now < self._audit_hold:
            return
        if self.auditship.sent:
            info = self._audit_info
            if self._audit_delivered is None and info is not None and info.is_published():
                self._audit_delivered = now
            if not overdue(self._audit_sent, self._audit_delivered, now, self.ack_timeout_s):
                return
            self.auditship.forget()
            self.resent += 1
        entries = self.auditship.next_batch()
        if not entries:
            return
        self._audit_info = self.client.publish(
            protocol.audit_topic(self.sc.topic_prefix, self.site, self.device),
            protocol.audit_payload(entries), qos=1)
        self._audit_sent, self._audit_delivered = now, None

    def _apply_audit_ack(self, acked: list, refused: list) -> None:
        if acked:
            self.auditship.on_ack(acked)
            self.wake.set()                   # the next batch may go at once
        for seq, reason in refused:
            # Only the box's own log could fix this (it cannot: it is tampered with, or
            # the upstream pins another identity): hold off, alarm, offer it again later.
            self.auditship.forget()
            self._audit_hold = time.monotonic() + REJECTED_RETRY_S
            log.error("upstream refused audit entry %d: %s", seq, reason)
            self._alarm("audit_refused", seq=seq, reason=reason)
        if acked and not refused and self.alarms is not None \
                and "audit_refused" in self.alarms.snapshot():
            self.alarms.set("audit_refused", False)

    def _forget(self, key: tuple) -> None:
        """``key`` is no longer in flight (acked, refused or timed out)."""
        self.inflight.pop(key, None)
        self._infos.pop(key, None)
        self._delivered.pop(key, None)

    # -- incoming -----------------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        acks = {k: [] for k in protocol.ACK_KEYS}
        while True:
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                break
            try:
                kind = protocol.parse_topic(topic).kind
                if kind == "ack":
                    for k, v in protocol.parse_ack(payload).items():
                        acks[k] += v
                elif kind == "cmd":
                    self._command(payload)
            except ProtocolError as exc:
                log.warning("ignored message on %s: %s", topic, exc)
        if any(acks.values()):
            self.watch.acked()
            # One transaction (one fsync) for every ack that arrived since the last tick.
            self._apply_ack(acks)
            self._apply_audit_ack(acks["audit"], acks["audit_refused"])

    def _apply_ack(self, ack: dict) -> None:
        C, S = self.store.m.Call, self.store.m.Segment
        now = self.clock()
        seg_t, call_t = S._meta.table_name, C._meta.table_name
        with self.store.db.atomic():
            # Plain executemany: building one peewee query per ack cost more than the
            # whole publish path.
            cur = self.store.db.cursor()
            for call, seq, sha in ack["segs"]:
                cur.execute(f"UPDATE {seg_t} SET acked = 1, acked_time = ? "  # noqa: S608
                            "WHERE call_id = ? AND seq = ? AND sha256 = ? AND acked = 0",
                            (now, call, seq, sha))
                self.acked += cur.rowcount
                if cur.rowcount:
                    self._done.add((call, seq))
                self._forget((call, seq))
            for call, sha in ack["mans"]:
                cur.execute(f"UPDATE {call_t} SET manifest_acked = 1 "  # noqa: S608
                            "WHERE id = ? AND manifest_sha256 = ?", (call, sha))
                if cur.rowcount:
                    self._done.add((call, None))
                self._forget((call, None))
        for call, seq, sha in ack["conflicts"]:
            self.parked.add((call, seq))
            self._forget((call, seq))
            log.error("upstream holds a different segment %s/%d; ours (%s) kept aside", call,
                      seq, sha[:12])
            self._alarm("sync_conflict", call=call, seq=seq)
        for call, reason in ack["rejected"]:
            # The ack names no hash: the version held back is the one the row names
            # now (the one that was sent, unless it was re-signed in between, in which
            # case the new one is held until the next restart or re-sign).
            row = C.get_or_none(C.id == call)
            self.rejected_mans[call] = row.manifest_sha256 if row is not None else ""
            self._rejected_at[call] = time.monotonic()
            self._forget((call, None))
            log.error("upstream rejected the manifest of %s: %s", call, reason)
            self._alarm("sync_rejected", call=call, reason=reason)

    def _retry_rejected(self, call: str) -> bool:
        """Offer a rejected manifest version again once ``REJECTED_RETRY_S`` has passed
        (the upstream answers again: accepted now, or rejected and held another while)."""
        t = self._rejected_at.get(call)
        if t is None or time.monotonic() - t < REJECTED_RETRY_S:
            return False
        self.rejected_mans.pop(call, None)
        self._rejected_at.pop(call, None)
        return True

    def _alarm(self, name, **detail) -> None:
        if self.alarms is not None:
            self.alarms.set(name, True, **detail)

    def _command(self, payload: bytes) -> None:
        # Nonces and deletions must survive a power cut (replay protection, tombstones).
        self.store.db.execute_sql("PRAGMA synchronous=FULL")
        try:
            self._command_full(payload)
        finally:
            if self._relaxed:
                self.store.db.execute_sql("PRAGMA synchronous=NORMAL")

    def _command_full(self, payload: bytes) -> None:
        body = None
        try:
            body = commands.verify(payload, self.command_key, self.device,
                                   synchronised=self.clock_synced(),
                                   floor=commands.time_floor(self.store))
            commands.check_nonce(self.store, body)
            if body["kind"] == "update":
                if self.updater is None:
                    raise CommandRejected("updates are not enabled on this box")
                result = self.updater.offer(body)
            elif self.retention is None:
                raise CommandRejected("retention service not running")
            else:
                result = self.retention.apply(body)
            audit.record(self.data_dir, "command_applied", kind=body["kind"],
                         nonce=body["nonce"], result=result)
            self._report({"nonce": body["nonce"], "kind": body["kind"], "status": "applied",
                          "result": result})
        except CommandRejected as exc:
            try:
                info, _raw, _sig = commands.parse(payload)
            except CommandRejected:
                info = {}
            nonce, kind = info.get("nonce"), info.get("kind")
            audit.record(self.data_dir, "command_rejected", reason=str(exc),
                         kind=str(kind), nonce=str(nonce))
            log.warning("rejected upstream command %s: %s", kind, exc)
            self._report({"nonce": nonce, "kind": kind, "status": "rejected",
                          "reason": str(exc)})

    def _report(self, obj: dict) -> None:
        if self.client is not None:
            self.client.publish(f"{self.base}/report", json.dumps(obj).encode(), qos=1)

    def report_update(self, obj: dict) -> bool:
        """Publish an update stage report (QoS 1) if the link is up; whether it went out
        (the updater reports the stage again later otherwise)."""
        if self.client is None or self.link != LINK_ONLINE:
            return False
        self.client.publish(f"{self.base}/report", json.dumps(obj).encode(), qos=1)
        return True

    def announce(self, event: str, detail: dict, timeout_s: float = 10.0) -> dict:
        """Publish ``{"kind": "notice", "event": ..., **detail}`` on ``report`` (QoS 1) and
        wait up to ``timeout_s`` seconds for the broker's PUBACK. Returns
        ``{"delivered": bool, "link": ...}``; never raises (called from the control
        socket by the provisioning agent before a factory reset)."""
        if self.client is None or self.link != LINK_ONLINE:
            return {"delivered": False, "link": self.link}
        body = json.dumps({"kind": "notice", "event": event, "device": self.device,
                           "detail": detail}, default=str).encode()
        try:
            info = self.client.publish(f"{self.base}/report", body, qos=1)
            info.wait_for_publish(timeout_s)
            return {"delivered": bool(info.is_published()), "link": self.link}
        except (RuntimeError, ValueError, OSError) as exc:
            return {"delivered": False, "link": self.link, "error": str(exc)}

    # -- status and health -------------------------------------------------------------------
    def sync_status(self) -> dict:
        """Link state, backlog (unacked segments) and the oldest one's age (seconds)."""
        S = self.store.m.Segment
        q = S.select().where(S.acked == False)  # noqa: E712
        oldest = q.order_by(S.created).first()
        return {"link": self.link, "online": self.link == LINK_ONLINE,
                "detail": self.link_detail, "backlog": q.count(),
                "oldest_age_s": round(self.clock() - oldest.created, 1) if oldest else None,
                "inflight": len(self.inflight), "sent": self.sent, "acked": self.acked,
                "resent": self.resent,
                "parked": len(self.parked) + len(self.rejected_mans),
                "attempts": self.watch.attempts, "last_error": self.watch.last_error,
                "next_retry_s": self.watch.next_retry_s,
                "unanswered_s": None if (u := self.watch.unanswered_s()) is None
                else round(u, 1)}

    def _audit_head(self) -> dict:
        """The audit log's last whole entry (seq 0 for none): the upstream checks that
        it never falls behind what it already holds (sync/upstream/boxaudit.py)."""
        seq, h = audit.head(self.data_dir)
        return {"seq": seq, "hash": h, "acked": self.auditship.acked_entries}

    def _free_bytes(self) -> int:
        """Free space as retention sees it (its probe is injectable), else the disk's."""
        probe = getattr(self.retention, "free_bytes", None)
        return probe() if probe is not None else shutil.disk_usage(self.store.root).free

    def publish_health(self) -> None:
        st = {}
        if self.status_fn is not None:
            try:
                st = self.status_fn() or {}
            except Exception:
                log.exception("status for health failed")
        sync = self.sync_status()
        body = {"device": self.device, "version": st.get("version"), "time": self.clock(),
                "disk_free_mb": round(self._free_bytes() / 2**20, 1),
                "backlog": sync["backlog"], "oldest_unsynced_age_s": sync["oldest_age_s"],
                "lines": [{"line": ln["line"], "state": ln["state"]}
                          for ln in st.get("lines", [])],
                "overruns": st.get("overruns"), "alarms": sorted(st.get("alarms") or {}),
                "store": self.store.summary(), "audit": self._audit_head(),
                **(self.updater.health() if self.updater is not None
                   else {"slot": None, "update": None})}
        self.client.publish(f"{self.base}/health", json.dumps(body, default=str).encode(),
                            qos=1)
