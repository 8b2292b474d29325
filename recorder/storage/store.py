"""The box's store: SQLite (peewee, WAL) for rows, plus one encrypted file per segment.

Life cycle of a segment (crash-safe at every step): the sealed bytes are written to a
temp name, fsynced, renamed into ``segments/<day>/<call>/<seq>.seg``, the folder is
fsynced, and only then is the row committed. A row therefore always names a complete
file; a file without a row (power cut between rename and commit) is adopted back on
the next start if it continues its call's chain.

Schema changes are numbered migrations; the database is backed up before any
migration runs. ``synchronous=FULL`` because a commit here is what the upstream ack and
the retention audit rely on. ``secure_delete`` so that a deleted row's bytes are zeroed,
not left in a free page.

No caller number, caller name or dialled number is in any column: a call's personal
data is sealed to the practice key in its ``personal`` column
(:mod:`recorder.evidence.personal`), and ``linetap calls`` shows ``party_masked``, the
masked number computed when the call was written. Migration 2 takes them out of stores
made before (:mod:`recorder.storage.personal_migration`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import peewee as pw

from recorder.errors import StoreError
from recorder.evidence.trust import Trusted, trusted_identity
from recorder.sqlfields import JSONField
from recorder.storage import personal_migration
from recorder.timebase import iso

log = logging.getLogger(__name__)

DB_FILE = "linetap.db"
SEGMENTS = "segments"
SCHEMA_VERSION = 2
PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1,
           "busy_timeout": 10000, "secure_delete": 1}


def _models(db: pw.Database) -> SimpleNamespace:
    """Model classes bound to ``db`` only (peewee binding is per class, so a store that
    is opened twice in one process, as in tests, must not share classes)."""

    class Base(pw.Model):
        class Meta:
            database = db

    class Meta_(Base):
        key = pw.CharField(primary_key=True)
        value = pw.TextField()

        class Meta:
            table_name = "meta"

    class Call(Base):
        id = pw.CharField(primary_key=True)
        device = pw.CharField()
        line = pw.IntegerField()
        direction = pw.CharField()             # inbound | outbound
        state = pw.CharField(index=True)        # active | closed | recovered | missed | deleted
        rate = pw.IntegerField()
        codec = pw.CharField()
        first_sample = pw.BigIntegerField(null=True)   # first sample of the recording
        offhook_sample = pw.BigIntegerField(null=True)
        end_sample = pw.BigIntegerField(null=True)
        start_time = pw.DoubleField(null=True)   # epoch s of first_sample
        offhook_time = pw.DoubleField(null=True)
        end_time = pw.DoubleField(null=True)
        ring_time = pw.DoubleField(null=True)
        # caller number and name, dialled number: sealed to the practice key, never
        # in clear (recorder.evidence.personal); NULL when the call has none of them
        personal = pw.BlobField(null=True)
        party_masked = pw.CharField(null=True)  # privacy.mask_number of caller or dialled
        meta = JSONField(default=dict)          # pauses, masks, announcement, flags...
        segments = pw.IntegerField(default=0)
        samples = pw.BigIntegerField(default=0)
        chain_head = pw.CharField(null=True)
        manifest = pw.CharField(null=True)      # path relative to the data dir
        manifest_sha256 = pw.CharField(null=True)
        manifest_acked = pw.BooleanField(default=False, index=True)
        legal_hold = pw.BooleanField(default=False)
        deadline = pw.DoubleField(null=True, index=True)   # epoch s; retention deadline
        deleted_time = pw.DoubleField(null=True)
        delete_reason = pw.CharField(null=True)
        created = pw.DoubleField()

        class Meta:
            table_name = "call"

    class Segment(Base):
        call = pw.ForeignKeyField(Call, backref="segment_rows", on_delete="CASCADE")
        seq = pw.IntegerField()
        path = pw.CharField()                   # relative to the data dir
        first_sample = pw.BigIntegerField()
        samples = pw.IntegerField()
        size = pw.IntegerField()
        sha256 = pw.CharField()
        chain = pw.CharField()
        created = pw.DoubleField()
        acked = pw.BooleanField(default=False, index=True)
        acked_time = pw.DoubleField(null=True)

        class Meta:
            table_name = "segment"
            indexes = ((("call", "seq"), True),)

    class Nonce(Base):
        """Upstream command nonces already used (replay protection)."""
        nonce = pw.CharField(primary_key=True)
        expires = pw.DoubleField(index=True)

        class Meta:
            table_name = "nonce"

    return SimpleNamespace(Meta=Meta_, Call=Call, Segment=Segment, Nonce=Nonce,
                           all=[Meta_, Call, Segment, Nonce])


def _migration_1(db, m, sealer):
    db.create_tables(m.all)


MIGRATIONS = {1: _migration_1, 2: personal_migration.migrate}


class Store:
    """Open (creating if needed) the store in ``data_dir``.

    ``first_start`` is true when this call created the database: the identity key may
    then be generated; on any later start a missing key is an alarm, not a new key.
    ``sealer(device, call_id, personal) -> bytes | None`` seals a call's personal data
    to the practice key; only migration 2 of a store that holds numbers in clear needs
    it (the recorder passes it; other openers get a StoreError saying so).
    """

    def __init__(self, data_dir: str | os.PathLike, sealer=None):
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / SEGMENTS).mkdir(exist_ok=True)
        self.path = self.root / DB_FILE
        self.first_start = not self.path.exists()
        self.db = pw.SqliteDatabase(str(self.path), pragmas=PRAGMAS, check_same_thread=False)
        self.m = _models(self.db)
        self.sealer = sealer
        try:
            self.db.connect(reuse_if_open=True)
            self._migrate()
            if self.get_meta(personal_migration.SCRUB_PENDING):
                personal_migration.scrub(self)
        except (pw.DatabaseError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"database {self.path} cannot be opened: {exc}") from exc

    # -- schema ------------------------------------------------------------------------
    def _version(self) -> int:
        if not self.db.table_exists("meta"):
            return 0
        row = self.m.Meta.get_or_none(self.m.Meta.key == "schema_version")
        return int(row.value) if row else 0

    def _migrate(self) -> None:
        v = self._version()
        if v > SCHEMA_VERSION:
            raise StoreError(f"database schema {v} is newer than this software "
                             f"({SCHEMA_VERSION}); refusing to touch it")
        if v == SCHEMA_VERSION:
            return
        if v > 0:
            personal_migration.require_sealer(self.db, self.sealer)
            self.backup(self.root / f"{DB_FILE}.bak-v{v}")
        for n in range(v + 1, SCHEMA_VERSION + 1):
            with self.db.atomic():
                MIGRATIONS[n](self.db, self.m, self.sealer)
                self.m.Meta.replace(key="schema_version", value=str(n)).execute()
            log.info("store schema migrated to version %d", n)

    def backup(self, dest: Path) -> None:
        """Online copy of the database (SQLite backup API), fsynced."""
        src = sqlite3.connect(str(self.path))
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it to 0 bytes; False when a
        reader kept it from finishing (the WAL then still holds frames)."""
        busy = self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return not busy

    def integrity_check(self) -> str:
        return self.db.execute_sql("PRAGMA integrity_check").fetchone()[0]

    # -- meta --------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        row = self.m.Meta.get_or_none(self.m.Meta.key == key)
        return json.loads(row.value) if row else default

    def set_meta(self, key: str, value) -> None:
        self.m.Meta.replace(key=key, value=json.dumps(value)).execute()

    # -- paths -------------------------------------------------------------------------
    def call_dir(self, call_id: str, start_time: float) -> Path:
        import time as _t
        day = _t.strftime("%Y/%m/%d", _t.gmtime(start_time))
        return self.root / SEGMENTS / day / call_id

    def rel(self, p: Path) -> str:
        return str(Path(p).relative_to(self.root))

    def abs(self, rel: str) -> Path:
        return self.root / rel

    # -- queries -----------------------------------------------------------------------
    def call(self, call_id: str):
        return self.m.Call.get_or_none(self.m.Call.id == call_id)

    def segments_of(self, call_id: str) -> list:
        S = self.m.Segment
        return list(S.select().where(S.call == call_id).order_by(S.seq))

    def calls(self, ids=None, include_deleted=False) -> list:
        """Call rows in the order they happened on this box. A search by number needs
        the practice key (:func:`recorder.evidence.personal.with_number`)."""
        C = self.m.Call
        # Insertion order is the order calls happened on this box; wall-clock times can
        # step backwards (NTP, an RTC-less boot), so they do not order calls.
        q = C.select().order_by(pw.SQL("rowid"))
        if ids:
            q = q.where(C.id.in_(list(ids)))
        if not include_deleted:
            q = q.where(C.state != "deleted")
        return list(q)

    def summary(self) -> dict:
        """Counts for ``status`` and the health report: calls not deleted, segments, the
        unsynced backlog and the creation time (ISO 8601 UTC) of its oldest segment."""
        C, S = self.m.Call, self.m.Segment
        unsynced = S.select().where(S.acked == False)  # noqa: E712 - peewee expression
        oldest = unsynced.order_by(S.created).first()
        return {"calls": C.select().where(C.state != "deleted").count(),
                "segments": S.select().count(), "unsynced_segments": unsynced.count(),
                "oldest_unsynced": iso(oldest.created) if oldest else None}

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()


def disk_full(exc: BaseException | None) -> bool:
    """Is this the file system or SQLite saying there is no space left?

    Follows the exception chain: on SQLITE_FULL, SQLite rolls the transaction back by
    itself, and the ORM's own rollback then fails with "no transaction is active",
    carrying the disk-full error as its context.
    """
    import errno
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, pw.OperationalError | sqlite3.OperationalError) and \
                "full" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def trusted_for(data_dir, identity_pub=None) -> Trusted:
    """The identity key ``verify`` and ``export`` match the signers of the box in
    ``data_dir`` to (:func:`recorder.evidence.trust.trusted_identity`): ``identity_pub``
    (a file), else the key pinned in its store."""
    store = Store(data_dir) if (Path(data_dir) / DB_FILE).exists() else None
    try:
        return trusted_identity(store, data_dir, identity_pub)
    finally:
        if store is not None:
            store.close()


def device_key_for(data_dir, identity_pub=None):
    """The trusted identity public key of the box in ``data_dir``; None if there is none
    (its calls are then ``unverifiable``)."""
    return trusted_for(data_dir, identity_pub).key
