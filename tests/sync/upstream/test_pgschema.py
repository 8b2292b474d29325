"""The PostgreSQL schema for volume (sync/upstream/pgschema.py) on the real PostgreSQL
fixture: bigint ids, the retention and portal indexes (valid, and chosen by the planner
for the queries the code makes), migrations once each, an old database upgraded, an
index left invalid by a build cut short rebuilt; and retention in bounded batches."""

from __future__ import annotations

import time

from sync.upstream import ops as upstream_ops
from sync.upstream import pgschema
from sync.upstream.store import UCall, USegment, db, open_db


def _ids(d):
    return dict(d.execute_sql(
        "SELECT table_name, data_type FROM information_schema.columns "
        "WHERE column_name = 'id' AND table_name = ANY(%s)",
        (pgschema.BIGINT_IDS,)).fetchall())


def _plan(d, query) -> str:
    sql, params = query.sql()
    with d.atomic():
        d.execute_sql("SET LOCAL enable_seqscan = off")
        return "\n".join(r[0] for r in d.execute_sql("EXPLAIN " + sql, params).fetchall())


def test_schema_on_a_new_and_an_old_database(postgres):
    d = open_db(postgres.new_db("pgschema"))
    assert pgschema.applied(d) == [m[0] for m in pgschema.MIGRATIONS]
    assert set(_ids(d).values()) == {"bigint"}
    names = {r[0]: r[1] for r in d.execute_sql(
        "SELECT c.relname, i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid").fetchall()}
    for name, *_ in pgschema.INDEXES:
        assert names.get(name) is True, name
    assert pgschema.upgrade(d) == []                 # once each
    # The queries retention and the portal make use the indexes built for them.
    now = time.time()
    assert "ucall_expiry_idx" in _plan(d, UCall.select().where(
        (UCall.state == "live") & (UCall.legal_hold == False)  # noqa: E712
        & (UCall.deadline <= now)).order_by(UCall.deadline).limit(500))
    assert "ucall_deleting_idx" in _plan(d, UCall.select().where(
        UCall.state == "deleting").order_by(UCall.id).limit(500))
    assert "ucall_site_start_idx" in _plan(d, UCall.select().where(
        UCall.site == "s").order_by(UCall.start_time.desc()).limit(50))
    assert "usegment_device_call_seq" in _plan(d, USegment.select().where(
        (USegment.device == "d") & (USegment.call == "c")).order_by(USegment.seq))
    # An old database: integer ids, no migrations recorded, an index build cut short.
    for t in pgschema.BIGINT_IDS:
        d.execute_sql(f"ALTER TABLE {t} ALTER COLUMN id TYPE integer")
    d.execute_sql("UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                  "'ucall_expiry_idx'::regclass")
    d.execute_sql("DELETE FROM schema_migrations")
    assert pgschema.upgrade(d) == [1, 2, 3]
    assert set(_ids(d).values()) == {"bigint"}
    assert d.execute_sql("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                         "'ucall_expiry_idx'::regclass").fetchone()[0] is True


def test_retention_in_bounded_batches(postgres, tmp_path):
    """expire() reads the expired calls a batch at a time and deletes each in its own
    transaction: 23 calls in batches of 5, a held one kept, a refused one not re-read."""
    from sync.upstream.objectstore import FsObjectStore
    open_db(postgres.new_db("expire_batches"))
    objects = FsObjectStore(tmp_path / "objects")
    now = time.time()
    for i in range(25):
        UCall.create(device="dev-a", call=f"c{i:02d}", site="s", start_time=now - 100 * 86400,
                     deadline=now - 86400 + i, legal_hold=i == 3, state="live")
        key = f"seg/dev-a/c{i:02d}/00000.{'ab' * 32}"
        objects.put(key, b"x")
        USegment.create(device="dev-a", call=f"c{i:02d}", seq=0, sha256="ab" * 32, size=1,
                        key=key)
    UCall.update(deadline=now + 86400).where(UCall.call == "c24").execute()
    queries = []
    real = db.obj.execute_sql

    def spy(sql, params=None, *a, **k):
        if sql.startswith("SELECT") and 'FROM "ucall"' in sql and "LIMIT" in sql:
            queries.append(sql)
        return real(sql, params, *a, **k)

    db.obj.execute_sql = spy
    try:
        assert upstream_ops.expire(objects, now=now, batch=5) == 23
    finally:
        del db.obj.execute_sql
    states = {r.call: r.state for r in UCall.select()}
    assert states.pop("c03") == "live" and states.pop("c24") == "live"
    assert set(states.values()) == {"deleted"}
    assert [k for k, _m in objects.walk("seg")] == [
        f"seg/dev-a/c03/00000.{'ab' * 32}", f"seg/dev-a/c24/00000.{'ab' * 32}"]
    # 1 query for "deleting" (none), then 23 expired calls read 5 at a time.
    assert len(queries) == 1 + 5
    assert upstream_ops.expire(objects, now=now, batch=5) == 0



def test_an_up_to_date_database_takes_no_lock(postgres):
    """A worker starting on an up-to-date database must not wait for the migrations'
    session-level lock: behind pgbouncer in transaction mode, a lock and its unlock may
    reach two server connections, and the pool then holds the lock for ever. Here
    another session holds it the whole time."""
    import threading

    import psycopg2
    url = postgres.new_db("uptodate")
    open_db(url)
    holder = psycopg2.connect(url)
    holder.autocommit = True
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (pgschema.LOCK_KEY,))
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(done=pgschema.upgrade(db)),
                         daemon=True)
    try:
        t.start()
        t.join(30)        # a guard against a hang, not a timing assertion
        assert result.get("done") == [], "upgrade waited for the migrations' lock"
    finally:
        holder.close()    # releases the lock, so a blocked upgrade can finish
        t.join(30)
