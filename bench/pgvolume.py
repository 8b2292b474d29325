"""Does daily partitioning of ``usegment`` pay? Measured on a real PostgreSQL server.

Two copies of the segment table, each holding ``--days`` days of ``--rows-per-day``
rows (calls of 30 segments, the 5-minute call of 10 s segments):

- ``plain``: the upstream's table as :mod:`sync.upstream.pgschema` leaves it (bigint id,
  unique (device, call, seq));
- ``daily``: the same columns plus ``day``, ``PARTITION BY RANGE (day)``, one partition
  a day, unique (device, call, seq, day) (a partitioned table's unique keys must hold
  the partition key).

Measured on each: the ingest's write (per segment: lookup by key, insert on conflict do
nothing; 64 per commit, as a worker batch does) on the loaded table; retention of the
oldest day call by call (what the upstream must do: deadlines differ by site and legal
holds keep some calls, so a day's calls never all go at once), rows/s and the longest
single delete; and, for ``daily`` only, dropping the oldest partition whole (possible
only when every call of that day has expired and none is held).

The server is the test fixture's (``fsync=off``), so absolute figures flatter both; the
comparison is what counts. Last line: one JSON object.

    .venv/bin/python -m bench.pgvolume [--days 4] [--rows-per-day 500000]
"""

from __future__ import annotations

import argparse
import json
import time

SEGS_PER_CALL = 30
INGEST_ROWS = 6400          # rows written ingest-style into each loaded table
DELETE_CALLS = 2000         # calls of the oldest day deleted one by one (timed)


def _load(cur, table: str, days: int, per_day: int, partitioned: bool) -> float:
    t0 = time.perf_counter()
    for d in range(days):
        day = f"2026-01-{d + 1:02d}"
        if partitioned:
            cur.execute(f"CREATE TABLE {table}_{d} PARTITION OF {table} "
                        f"FOR VALUES FROM ('{day}') TO ('{day}'::date + 1)")
        calls = per_day // SEGS_PER_CALL
        day_col = f", '{day}'::date" if partitioned else ""
        cur.execute(f"""
            INSERT INTO {table} (device, "call", seq, sha256, size, "key", created
                                 {', day' if partitioned else ''})
            SELECT 'lt-' || (c % 8000), 'C{d}-' || c, s, md5(c::text || s::text) ||
                   md5(s::text || c::text), 129000, 'seg/x/' || c || '/' || s,
                   extract(epoch from '{day}'::timestamp) + c {day_col}
            FROM generate_series(0, {calls - 1}) c, generate_series(0, {SEGS_PER_CALL - 1}) s
        """)
    return time.perf_counter() - t0


def _ingest(conn, table: str, partitioned: bool, n: int) -> float:
    """Rows/s of the ingest's per-segment statements, 64 per commit."""
    cur = conn.cursor()
    day = ", '2026-01-04'::date" if partitioned else ""
    t0 = time.perf_counter()
    for b in range(n // 64):
        for i in range(64):
            k = b * 64 + i
            cur.execute(f'SELECT sha256 FROM {table} WHERE device = %s AND "call" = %s '
                        "AND seq = %s", ("lt-new", f"N{k // 30}", k % 30))
            cur.fetchone()
            cur.execute(f'INSERT INTO {table} (device, "call", seq, sha256, size, "key", '
                        f'created{", day" if partitioned else ""}) VALUES (%s, %s, %s, %s, '
                        f"%s, %s, %s{day}) ON CONFLICT DO NOTHING",
                        ("lt-new", f"N{k // 30}", k % 30, "ab" * 32, 129000, "seg/k", 0.0))
        conn.commit()
    return n / (time.perf_counter() - t0)


def _retention(conn, table: str, calls: int) -> dict:
    cur = conn.cursor()
    worst, t0 = 0.0, time.perf_counter()
    rows = 0
    for c in range(calls):
        t = time.perf_counter()
        cur.execute(f'DELETE FROM {table} WHERE device = %s AND "call" = %s',
                    (f"lt-{c % 8000}", f"C0-{c}"))
        rows += cur.rowcount
        conn.commit()
        worst = max(worst, time.perf_counter() - t)
    dt = time.perf_counter() - t0
    return {"rows_per_s": round(rows / dt), "calls_per_s": round(calls / dt),
            "worst_delete_ms": round(worst * 1000, 1), "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--rows-per-day", type=int, default=500_000)
    args = ap.parse_args(argv)
    import psycopg2

    from tests.support.broker import Postgres
    pg = Postgres()
    pg.start()
    out: dict = {"bench": "pgvolume", "days": args.days, "rows_per_day": args.rows_per_day}
    try:
        url = pg.new_db("volume")
        from sync.upstream.store import open_db
        open_db(url)                                  # the real schema, migrated
        conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres",
                                dbname="volume")
        cur = conn.cursor()
        cur.execute("""CREATE TABLE usegment_daily (id bigserial, device varchar(255) NOT NULL,
            "call" varchar(255) NOT NULL, seq integer NOT NULL, sha256 varchar(255) NOT NULL,
            size integer NOT NULL, "key" varchar(255) NOT NULL,
            created double precision NOT NULL, day date NOT NULL) PARTITION BY RANGE (day)""")
        cur.execute('CREATE UNIQUE INDEX usegment_daily_key ON usegment_daily '
                    '(device, "call", seq, day)')
        conn.commit()
        for name, table, part in (("plain", "usegment", False),
                                  ("daily", "usegment_daily", True)):
            load_s = _load(cur, table, args.days, args.rows_per_day, part)
            conn.commit()
            cur.execute(f"ANALYZE {table}")
            conn.commit()
            cur.execute(f"SELECT pg_total_relation_size('{table}')" if not part else
                        "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                        "WHERE inhparent = 'usegment_daily'::regclass")
            size = int(cur.fetchone()[0])
            r = {"load_s": round(load_s, 1), "mb": round(size / 1e6),
                 "ingest_rows_per_s": round(_ingest(conn, table, part, INGEST_ROWS)),
                 "retention_call_by_call": _retention(conn, table, DELETE_CALLS)}
            if part:
                t = time.perf_counter()
                cur.execute("DROP TABLE usegment_daily_0")
                conn.commit()
                r["drop_day_partition_ms"] = round((time.perf_counter() - t) * 1000, 1)
            out[name] = r
            print(name, json.dumps(r), flush=True)
        conn.close()
    finally:
        pg.stop()
    need = 30e6 / 86400
    out["needed_rows_per_s"] = round(need)
    out["retention_headroom"] = round(
        out["plain"]["retention_call_by_call"]["rows_per_s"] / need, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
