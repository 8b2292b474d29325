"""PostgreSQL schema for volume: numbered migrations over the tables peewee creates.

Sized for about 30 million segment rows a day at peak (2,000 practices x 4 busy lines,
10 s segments, around the clock at the worst): 2.7 billion ``usegment`` rows over 90
days of retention, so every id is a ``bigint`` (an ``integer`` id runs out after about
70 days), and every query the ingest, the retention pass and the portal make is served
by an index (docs/sync.md, "PostgreSQL for volume", has the plans):

- ingest: ``usegment (device, call, seq)`` unique, ``ucall (device, call)`` unique;
- retention: a partial index on ``ucall (deadline)`` holding only live calls not on
  hold, and one on the calls left ``deleting``; a call's segments, history and problems
  by ``(device, call)``;
- portal: ``ucall (site, start_time DESC)`` for a site's newest calls.

No partitioning: a day's partition can only be dropped when every call in it is past
its deadline and none is on hold, and deadlines differ by site and move when a site's
retention changes, so retention deletes call by call anyway. ``bench/pgvolume.py``
measures it (the figures are in docs/benchmarks.md).

Migrations run once each, in order, under an advisory lock (several workers start at
once), and are recorded in ``schema_migrations``. Index builds are ``CONCURRENTLY``
(outside a transaction) so that upgrading a live database never blocks the ingest's
writes; a build cut short leaves an invalid index, which the next run drops and
rebuilds.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

LOCK_KEY = 0x4C54_5550        # advisory lock id ("LTUP")

# (name, columns, WHERE or "") on (table)
INDEXES = [
    ("ucall_expiry_idx", "ucall", "(deadline)", "state = 'live' AND NOT legal_hold"),
    ("ucall_deleting_idx", "ucall", "(id)", "state = 'deleting'"),
    ("ucall_site_start_idx", "ucall", "(site, start_time DESC)", ""),
    ("problem_device_call_idx", "problem", '(device, "call")', ""),
    ("manifest_history_device_call_idx", "manifest_history", '(device, "call")', ""),
]
BIGINT_IDS = ["ucall", "usegment", "uaudit", "problem", "manifest_history"]


def _bigint_ids(d) -> None:
    """``id`` columns to bigint (a table rewrite under an exclusive lock: instant on a
    new database; on an existing large one, start the first upgraded worker in a
    maintenance window)."""
    for table in BIGINT_IDS:
        row = d.execute_sql(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = %s AND column_name = 'id'", (table,)).fetchone()
        if row and row[0] == "integer":
            d.execute_sql(f"ALTER TABLE {table} ALTER COLUMN id TYPE bigint")
            d.execute_sql(f"ALTER SEQUENCE IF EXISTS {table}_id_seq AS bigint")


def _indexes(d) -> None:
    for name, table, cols, where in INDEXES:
        bad = d.execute_sql(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND NOT i.indisvalid", (name,)).fetchone()
        if bad:
            log.warning("index %s was left invalid by a build cut short: rebuilding", name)
            d.execute_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        d.execute_sql(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} {cols}"
                      + (f" WHERE {where}" if where else ""))


def _storage(d) -> None:
    """``usegment`` only grows and is deleted from in whole calls: vacuum and analyse it
    by row counts, not by a share of billions of rows (20 % would be 500 M)."""
    d.execute_sql("ALTER TABLE usegment SET (autovacuum_vacuum_scale_factor = 0, "
                  "autovacuum_vacuum_threshold = 200000, "
                  "autovacuum_vacuum_insert_scale_factor = 0, "
                  "autovacuum_vacuum_insert_threshold = 1000000, "
                  "autovacuum_analyze_scale_factor = 0, "
                  "autovacuum_analyze_threshold = 1000000)")
    d.execute_sql("ALTER TABLE ucall SET (autovacuum_vacuum_scale_factor = 0.01, "
                  "autovacuum_analyze_scale_factor = 0.01)")


# Append only: a released migration is never edited, a change is a new entry.
MIGRATIONS = [
    (1, "bigint ids", _bigint_ids, True),
    (2, "indexes for retention and the portal", _indexes, False),
    (3, "autovacuum by row counts", _storage, True),
]


def applied(d) -> list[int]:
    return [r[0] for r in d.execute_sql(
        "SELECT version FROM schema_migrations ORDER BY version").fetchall()]


def upgrade(d) -> list[int]:
    """Apply the missing migrations to the PostgreSQL database ``d`` (a peewee
    database, connected, tables created). Returns the versions applied now."""
    done: list[int] = []
    d.execute_sql("CREATE TABLE IF NOT EXISTS schema_migrations "
                  "(version integer PRIMARY KEY, name text NOT NULL, "
                  "applied double precision NOT NULL)")
    if set(applied(d)) >= {m[0] for m in MIGRATIONS}:
        # Nothing to apply: no lock either. It is session-level (index builds run
        # outside a transaction), and behind pgbouncer in transaction mode a lock taken
        # on one server connection and released on another stays held by the pool, so
        # every later worker start would wait for it for ever.
        return done
    d.execute_sql("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        have = set(applied(d))
        for version, name, fn, in_tx in MIGRATIONS:
            if version in have:
                continue
            t0 = time.monotonic()
            if in_tx:
                with d.atomic():
                    fn(d)
                    _record(d, version, name)
            else:
                # CREATE INDEX CONCURRENTLY refuses a transaction block.
                if d.in_transaction():
                    raise RuntimeError("schema upgrade called inside a transaction")
                fn(d)
                _record(d, version, name)
            log.info("schema migration %d (%s) applied in %.1f s", version, name,
                     time.monotonic() - t0)
            done.append(version)
    finally:
        d.execute_sql("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return done


def _record(d, version: int, name: str) -> None:
    d.execute_sql("INSERT INTO schema_migrations (version, name, applied) VALUES (%s, %s, %s)",
                  (version, name, time.time()))
