"""Store migration 2: caller numbers, caller names and dialled numbers out of the clear.

Schema 1 kept them in plaintext ``call`` columns, two of them indexed. Migration 2, in
the one transaction the store runs each migration in:

1. adds ``personal`` (the three fields sealed to the practice key,
   :mod:`recorder.evidence.personal`) and ``party_masked``
   (:func:`recorder.privacy.mask_number` of the caller's or the dialled number) and fills
   them from the old columns;
2. drops the indexes on the old columns, then the columns (SQLite rewrites every row);
3. sets ``personal_scrub_pending`` in ``meta``.

A power cut before the commit leaves schema 1 whole (SQLite rolls the WAL back); after
it, schema 2 with every call and its sealed data. Dropping a column does not erase the
bytes: old row images stay in free pages, in the WAL and in the backup the store made
before migrating. So :func:`scrub` runs next, and again at every open while the flag is
set (a power cut inside it just repeats it): ``VACUUM`` with the temp database in memory
rewrites every page of the file (``secure_delete`` is on as well), a ``TRUNCATE``
checkpoint empties the WAL, the pre-migration backup is deleted, and only then is the
flag cleared. A scrubbed store holds no trace of a number in its database, ``-wal``
or ``-journal`` (tests/recorder/storage/test_personal_migration.py scans every byte).
"""

from __future__ import annotations

import json
import logging

from recorder.errors import StoreError
from recorder.fsutil import crash_point, fsync_dir
from recorder.privacy import mask_number

log = logging.getLogger(__name__)

#: The schema 1 columns that held personal data in clear.
OLD_COLUMNS = ("caller_number", "caller_name", "dialled_digits")
#: ``meta`` key: set by the migration, cleared once the old bytes are gone.
SCRUB_PENDING = "personal_scrub_pending"
#: Backups made before migrating a schema that held numbers in clear.
OLD_BACKUPS = ("bak-v1",)


def _columns(db, table: str) -> set[str]:
    return {r[1] for r in db.execute_sql(f"PRAGMA table_info('{table}')").fetchall()}


def _indexes_on(db, table: str, columns) -> list[str]:
    """Names of the indexes on ``table`` that cover any of ``columns``."""
    out = []
    for r in db.execute_sql(f"PRAGMA index_list('{table}')").fetchall():
        name = r[1]
        cols = {c[2] for c in db.execute_sql(f"PRAGMA index_info('{name}')").fetchall()}
        if cols & set(columns):
            out.append(name)
    return out


def _clear_rows(db) -> list[tuple]:
    """(id, device, number, name, dialled) of every call with personal data in clear."""
    if not db.table_exists("call") or not set(OLD_COLUMNS) <= _columns(db, "call"):
        return []
    return db.execute_sql(
        "SELECT id, device, caller_number, caller_name, dialled_digits FROM call "
        "WHERE caller_number IS NOT NULL OR caller_name IS NOT NULL "
        "OR dialled_digits IS NOT NULL").fetchall()


def require_sealer(db, sealer) -> None:
    """Raise StoreError when calls hold personal data in clear and there is no sealer to
    keep it with. The store asks before it backs up (the backup would be one more clear
    copy) and before it changes anything."""
    if sealer is None:
        n = len(_clear_rows(db))
        if n:
            raise StoreError(f"the store holds caller numbers of {n} call(s) in clear and "
                             "must be migrated by the recorder, which seals them to the "
                             "practice public key: start it (linetap run) once first")


def migrate(db, m, sealer) -> None:
    """The transactional part (see the module docstring). ``sealer(device, call_id,
    personal) -> bytes | None`` (:func:`require_sealer` says when it is needed)."""
    have = _columns(db, "call")
    if not set(OLD_COLUMNS) & have:
        return                                 # made at schema 2 (migration 1 is current)
    require_sealer(db, sealer)
    rows = _clear_rows(db)
    for col, kind in (("personal", "BLOB"), ("party_masked", "VARCHAR(255)")):
        if col not in have:
            db.execute_sql(f"ALTER TABLE call ADD COLUMN {col} {kind}")
    for call_id, device, number, name, dialled in rows:
        personal = {"caller_number": number, "caller_name": name, "dialled_digits": dialled}
        db.execute_sql("UPDATE call SET personal = ?, party_masked = ? WHERE id = ?",
                       (sealer(device, call_id, personal),
                        mask_number(number or dialled) or None, call_id))
    for idx in _indexes_on(db, "call", OLD_COLUMNS):
        db.execute_sql(f'DROP INDEX "{idx}"')
    for col in OLD_COLUMNS:
        if col in have:
            db.execute_sql(f"ALTER TABLE call DROP COLUMN {col}")
    m.Meta.replace(key=SCRUB_PENDING, value=json.dumps(True)).execute()
    crash_point("migrate_before_commit")
    log.info("store migration 2: personal data of %d call(s) sealed; plain columns dropped",
             len(rows))


def scrub(store) -> None:
    """Make the bytes of the dropped columns go (see the module docstring). Leaves the
    flag set, to run again at the next open, if the WAL could not be emptied."""
    db = store.db
    crash_point("scrub_start")
    # The VACUUM's temporary copy of the database stays in memory, never in /tmp.
    db.execute_sql("PRAGMA temp_store = MEMORY")
    db.execute_sql("VACUUM")
    crash_point("scrub_vacuumed")
    if not store.checkpoint():
        log.warning("store scrub: the WAL is in use; finishing at the next start")
        return
    for suffix in OLD_BACKUPS:
        for p in store.root.glob(f"{store.path.name}.{suffix}*"):
            p.unlink(missing_ok=True)
    fsync_dir(store.root)
    crash_point("scrub_backup_removed")
    store.m.Meta.delete().where(store.m.Meta.key == SCRUB_PENDING).execute()
    store.checkpoint()
    log.info("store scrubbed: no trace of the plain personal columns is left")
