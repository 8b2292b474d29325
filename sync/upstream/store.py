"""Upstream metadata (peewee; SQLite by default, PostgreSQL at scale).

Tables: ``ucall`` (one row per (device, call), tombstoned on deletion), ``usegment``
(unique on (device, call, seq): the idempotency key; the sha256 decides duplicate or
conflict), ``problem`` (conflicting segments and refused manifests, kept aside),
``manifest_history`` (manifests replaced by a newer re-signed version),
``command`` (signed commands to boxes, with their delivery status), ``health`` (last
health message per device), ``uaudit`` (every deletion, hold and command; hash-chained
and signed with the upstream audit key), ``box_audit`` (each box's own signed audit
entries, :mod:`sync.upstream.boxaudit`), and the fleet view's ``health_history``,
``alarm_seen``, ``fleet_alert`` and ``lease`` (:mod:`sync.upstream.fleet`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import peewee as pw
from playhouse.db_url import connect

from recorder.errors import KeyFileError
from recorder.evidence import auditchain
from recorder.evidence.auditchain import GENESIS, Link
from recorder.evidence.segfile import canonical
from recorder.sqlfields import JSONField

log = logging.getLogger(__name__)

db = pw.DatabaseProxy()
_url: str | None = None
_signer = None          # the upstream audit key (Ed25519 private), or None: rows unsigned


class Base(pw.Model):
    class Meta:
        database = db


class UCall(Base):
    device = pw.CharField()
    call = pw.CharField()
    site = pw.CharField(index=True)
    start_time = pw.DoubleField(null=True)       # epoch s of the call's first sample
    deadline = pw.DoubleField(null=True, index=True)
    legal_hold = pw.BooleanField(default=False)
    state = pw.CharField(default="live")         # live | deleting | deleted
    deleted_time = pw.DoubleField(null=True)
    delete_reason = pw.CharField(null=True)
    manifest_key = pw.CharField(null=True)
    manifest_sha256 = pw.CharField(null=True)
    expected = JSONField(null=True)              # manifest header segment list
    created = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "ucall"
        indexes = ((("device", "call"), True),)


class USegment(Base):
    device = pw.CharField()
    call = pw.CharField()
    seq = pw.IntegerField()
    sha256 = pw.CharField()
    size = pw.IntegerField()
    key = pw.CharField()
    created = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "usegment"
        indexes = ((("device", "call", "seq"), True),)


class Problem(Base):
    kind = pw.CharField()                        # conflict | rejected
    device = pw.CharField()
    call = pw.CharField()
    seq = pw.IntegerField(null=True)
    sha256 = pw.CharField()
    key = pw.CharField(null=True)
    detail = pw.TextField(default="")
    created = pw.DoubleField(default=time.time)
    resolved_time = pw.DoubleField(null=True)    # open while None (sync.upstream.tracking)
    resolution = pw.TextField(null=True)

    class Meta:
        table_name = "problem"
        indexes = ((("kind", "device", "call", "seq", "sha256"), True),)


class ManifestHistory(Base):
    """A manifest a newer, extending version from the same device key replaced. Its
    object stays in the store (``key``) until the call is deleted."""

    device = pw.CharField()
    call = pw.CharField()
    sha256 = pw.CharField()
    key = pw.CharField()
    segments = pw.IntegerField()
    created = pw.CharField(null=True)            # the manifest header's ``created``
    replaced_by = pw.CharField()                 # sha256 of the manifest that replaced it
    replaced_time = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "manifest_history"
        indexes = ((("device", "call", "sha256"), True),)


class Command(Base):
    nonce = pw.CharField(primary_key=True)
    device = pw.CharField(index=True)
    kind = pw.CharField()
    envelope = pw.TextField()
    expires = pw.DoubleField()
    status = pw.CharField(default="pending", index=True)   # pending | applied | rejected
    result = pw.TextField(null=True)
    sent_time = pw.DoubleField(null=True)
    created = pw.DoubleField(default=time.time)
    resolved_time = pw.DoubleField(null=True)    # a refusal or expiry dealt with
    retried_as = pw.CharField(null=True)         # nonce of the command that retried it

    class Meta:
        table_name = "command"


class Health(Base):
    device = pw.CharField(primary_key=True)
    site = pw.CharField()
    body = JSONField()
    time = pw.DoubleField()

    class Meta:
        table_name = "health"


class DeviceState(Base):
    device = pw.CharField(primary_key=True)
    retention_pushed = pw.DoubleField(null=True)   # days last sent to the box

    class Meta:
        table_name = "device_state"


class HealthHistory(Base):
    """Every health message, kept ``fleet.history_days`` (30 by default) for the fleet view."""

    device = pw.CharField()
    time = pw.DoubleField()
    body = JSONField()

    class Meta:
        table_name = "health_history"
        indexes = ((("device", "time"), False),)


class AlarmSeen(Base):
    """Since when each of a device's alarms has been raised without a break (by health
    messages), so the fleet view can tell an alarm that stayed past its grace."""

    device = pw.CharField()
    name = pw.CharField()
    since = pw.DoubleField()

    class Meta:
        table_name = "alarm_seen"
        primary_key = pw.CompositeKey("device", "name")


class FleetAlert(Base):
    """One alert on one device: raised, reminded, cleared. ``pending`` is the notice not
    yet sent (raised | reminder | cleared), held up to ``fleet.group_s`` so a storm goes
    out as one message."""

    device = pw.CharField()
    site = pw.CharField()
    kind = pw.CharField()                       # offline | dead_line | backlog | ...
    detail = pw.TextField()
    raised = pw.DoubleField()
    cleared = pw.DoubleField(null=True, index=True)
    last_notice = pw.DoubleField(null=True)
    notices = pw.IntegerField(default=0)
    pending = pw.CharField(null=True, index=True)
    pending_since = pw.DoubleField(null=True)

    class Meta:
        table_name = "fleet_alert"
        indexes = ((("device", "kind", "cleared"), False),)


class Lease(Base):
    """A named lease that one worker holds at a time (the fleet's notifier), so many
    stateless workers send each notice once."""

    name = pw.CharField(primary_key=True)
    holder = pw.CharField()
    until = pw.DoubleField()

    class Meta:
        table_name = "lease"


class UAudit(Base):
    """Hash-chained like the box's ``audit.log``: ``hash`` is sha256 over the canonical
    JSON of ``{seq, time, action, detail, prev}``, ``prev`` the previous row's hash, and
    ``sig`` the upstream audit key's Ed25519 signature over
    ``b"linetap-uaudit-v1\\n" + hash`` (:mod:`recorder.evidence.auditchain`); None on
    rows written before the key existed, or by a process without it."""

    seq = pw.IntegerField(null=True, unique=True)
    time = pw.DoubleField(default=time.time)
    action = pw.CharField()
    detail = JSONField()
    prev = pw.CharField(null=True)
    hash = pw.CharField(null=True)
    sig = pw.CharField(max_length=128, null=True)

    class Meta:
        table_name = "uaudit"


class BoxAudit(Base):
    """One entry of a box's own audit log, as the box signed it (:mod:`.boxaudit`).
    ``epoch`` counts the breaks in the box's chain (0 until the first): a box whose log
    restarts, skips or goes backwards starts a new epoch, and a problem says why."""

    device = pw.CharField()
    epoch = pw.IntegerField(default=0)
    seq = pw.IntegerField()
    hash = pw.CharField()
    prev = pw.CharField()
    entry = JSONField()                          # the whole entry, ``sig`` included
    signed = pw.BooleanField()
    key = pw.CharField(max_length=64, null=True)  # hex of the pinned identity it verified with
    received = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "box_audit"
        indexes = ((("device", "hash"), True), (("device", "epoch", "seq"), True))


class Rollout(Base):
    """One staged offer of a RAUC bundle (sync/upstream/updates.py). ``state``: active |
    paused | done; ``phase``: canary | rest, since ``phase_since`` (epoch s);
    ``base_good``/``base_failed``: rollout-wide counts accepted at the last resume."""

    sha256 = pw.CharField(index=True)
    size = pw.BigIntegerField()
    version = pw.CharField()
    url = pw.CharField()
    state = pw.CharField(default="active", index=True)
    phase = pw.CharField(default="canary")
    phase_since = pw.DoubleField()
    canary_share = pw.DoubleField()
    max_failure_rate = pw.DoubleField()
    reason = pw.TextField(default="")
    base_good = pw.IntegerField(default=0)
    base_failed = pw.IntegerField(default=0)
    created = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "rollout"


class RolloutTarget(Base):
    """One device of a rollout: its phase, the ``update`` command's nonce once offered,
    and the last stage its box reported (updates.BOX_STAGES)."""

    rollout = pw.IntegerField()
    device = pw.CharField(index=True)
    phase = pw.CharField()                      # canary | rest
    nonce = pw.CharField(null=True, index=True)
    stage = pw.CharField(null=True)             # None until offered
    reason = pw.TextField(default="")
    bytes = pw.BigIntegerField(null=True)
    updated = pw.DoubleField()

    class Meta:
        table_name = "rollout_target"
        indexes = ((("rollout", "device"), True),)


MODELS = [UCall, USegment, Problem, ManifestHistory, Command, Health, DeviceState, UAudit,
          BoxAudit, HealthHistory, AlarmSeen, FleetAlert, Lease, Rollout, RolloutTarget]


def load_audit_key(path: str):
    """The upstream audit key (Ed25519 private, unencrypted PEM) from ``path``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"upstream audit key {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"upstream audit key {path} is not an unencrypted PEM "
                           "private key") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"upstream audit key {path} is not an Ed25519 key")
    return key


def open_db(url: str, audit_key: str = "") -> pw.Database:
    """Connect ``db`` to ``url`` (``sqlite:///path`` or ``postgresql://...``) and create
    missing tables. Safe to call from several workers at once; a second call with the
    same URL in one process reuses the open database (swapping the proxy under running
    threads would split their transactions). ``audit_key`` (``[audit] key`` of the
    upstream config) signs every ``uaudit`` row this process writes; without it rows
    are unsigned, which ``audit --verify`` reports once signing has started."""
    global _url, _signer
    _signer = load_audit_key(audit_key) if audit_key else None
    if _url == url and db.obj is not None:
        return db.obj
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        d = connect(url, pragmas={"journal_mode": "wal", "synchronous": "full",
                                  "busy_timeout": 30000})
    else:
        d = connect(url)
    db.initialize(d)
    _url = url
    for attempt in range(3):
        try:
            with d.atomic():
                _migrate_uaudit(d)
                _migrate_tracking(d)
                d.create_tables(MODELS, safe=True)
            break
        except (pw.IntegrityError, pw.ProgrammingError, pw.OperationalError):
            # Two workers creating the same table at once in PostgreSQL: one loses.
            if attempt == 2:
                raise
            time.sleep(0.2)
    if isinstance(d, pw.PostgresqlDatabase):
        from sync.upstream import pgschema
        pgschema.upgrade(d)            # bigint ids, indexes for volume (pgschema.py)
    return d




def _entry_hash(seq: int, t: float, action: str, detail, prev: str) -> str:
    return hashlib.sha256(canonical({"seq": seq, "time": t, "action": action,
                                      "detail": detail, "prev": prev})).hexdigest()


TRACKING_COLUMNS = {
    "problem": (("resolved_time", pw.DoubleField(null=True)),
                ("resolution", pw.TextField(null=True))),
    "command": (("resolved_time", pw.DoubleField(null=True)),
                ("retried_as", pw.CharField(null=True))),
}


def _migrate_tracking(d) -> None:
    """Add the resolution columns to ``problem`` and ``command`` tables made before them
    (:mod:`sync.upstream.tracking` reads them; ``open_db`` calls this inside its
    transaction, before ``create_tables``)."""
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run
    m = SchemaMigrator.from_database(d)
    for table, cols in TRACKING_COLUMNS.items():
        if not d.table_exists(table):
            continue
        have = {c.name for c in d.get_columns(table)}
        ops = [m.add_column(table, name, f) for name, f in cols if name not in have]
        if ops:
            run(*ops)
            log.warning("%s: added %s", table, ", ".join(n for n, _ in cols if n not in have))


def _migrate_uaudit(d) -> None:
    """Add the chain columns to a ``uaudit`` table from before the chain, and chain its
    rows in id order (they had no integrity protection before; from here on they do)."""
    if not d.table_exists("uaudit"):
        return
    cols = {c.name for c in d.get_columns("uaudit")}
    from playhouse.migrate import SchemaMigrator, migrate
    m = SchemaMigrator.from_database(d)
    if "sig" not in cols:
        migrate(m.add_column("uaudit", "sig", pw.CharField(max_length=128, null=True)))
    if "hash" in cols:
        return
    migrate(m.add_column("uaudit", "seq", pw.IntegerField(null=True)),
            m.add_column("uaudit", "prev", pw.CharField(null=True)),
            m.add_column("uaudit", "hash", pw.CharField(null=True)))
    prev, n = GENESIS, 0
    rows = list(UAudit.select(UAudit.id, UAudit.time, UAudit.action, UAudit.detail)
                .order_by(UAudit.id))
    for r in rows:
        n += 1
        h = _entry_hash(n, r.time, r.action, r.detail, prev)
        UAudit.update(seq=n, prev=prev, hash=h).where(UAudit.id == r.id).execute()
        prev = h
    # create_tables (next) adds the unique index on seq.
    log.warning("uaudit: %d existing row(s) chained on migration", n)


def audit(action: str, **detail) -> None:
    """Append one hash-chained ``uaudit`` row. Never put full phone numbers in
    ``detail``.

    Appends are serialised: on PostgreSQL a self-conflicting table lock held to the end
    of the transaction (so two workers cannot both chain onto the same row); on SQLite
    the single writer lock (``BEGIN IMMEDIATE`` when no transaction is open). The unique
    ``seq`` is a last guard: a fork raises instead of being stored.
    """
    d = db.obj
    detail = json.loads(json.dumps(detail, default=str))      # what the row will hold
    postgres = isinstance(d, pw.PostgresqlDatabase)
    kw = {} if postgres or d.in_transaction() else {"lock_type": "IMMEDIATE"}
    with d.atomic(**kw):
        if postgres:
            d.execute_sql("LOCK TABLE uaudit IN SHARE ROW EXCLUSIVE MODE")
        last = UAudit.select(UAudit.seq, UAudit.hash).order_by(UAudit.seq.desc()).first()
        seq = (last.seq if last else 0) + 1
        prev = last.hash if last else GENESIS
        t = time.time()
        h = _entry_hash(seq, t, action, detail, prev)
        UAudit.create(seq=seq, time=t, action=action, detail=detail, prev=prev, hash=h,
                      sig=None if _signer is None else
                      auditchain.sign(_signer, h, auditchain.UPSTREAM_DOMAIN))
    log.info("upstream audit: %s %s", action, detail)


def verify_audit(public_key=None) -> auditchain.Report:
    """Check the whole ``uaudit`` chain and its signatures against ``public_key`` (the
    upstream audit key's public half, trusted from outside the database; None: the
    chain is checked, signatures cannot be). ``problems[0]`` is the first bad row."""
    def links():
        for r in UAudit.select().order_by(UAudit.seq.asc(nulls="LAST"), UAudit.id):
            e = {"seq": r.seq, "time": r.time, "action": r.action, "detail": r.detail,
                 "prev": r.prev, "hash": r.hash}
            if r.sig:
                e["sig"] = r.sig
            yield Link(f"seq {r.seq}" if r.seq is not None else f"row id {r.id}", e)
    return auditchain.check(links(), public_key, auditchain.UPSTREAM_DOMAIN)


def audit_chain(ucfg, limit: int = 20) -> dict:
    """The verdict on ``uaudit`` for a page: checked against the public half of the
    configured audit key (``problems`` the first ``limit``, in order)."""
    r = verify_audit(load_audit_key(ucfg.audit_key).public_key() if ucfg.audit_key else None)
    return {"checked": r.entries, "intact": not r.problems, "status": r.status,
            "signed": r.signed, "problems": [str(p) for p in r.problems[:limit]]}


def expected_seqs(row: UCall) -> dict[int, str]:
    return {int(s["seq"]): s["sha256"] for s in (row.expected or [])}


def is_complete(row: UCall) -> bool:
    """Manifest present and every segment in its chain stored with the right hash."""
    if row.manifest_key is None or row.expected is None:
        return False
    have = {s.seq: s.sha256 for s in USegment.select(USegment.seq, USegment.sha256).where(
        (USegment.device == row.device) & (USegment.call == row.call))}
    return all(have.get(k) == v for k, v in expected_seqs(row).items())
