"""The upstream behind pgbouncer in transaction mode, as docs/sync.md recommends: the
migrations straight at PostgreSQL, then two workers whose handler and tick threads
(five clients) share two server connections. Every segment stored once, and no
session state left in the pool (no advisory lock held)."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from sync.upstream.store import Problem, UCall, USegment, open_db
from tests.support.broker import PGBOUNCER, PgBouncer
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    stored_objects,
    unacked,
    upstream_cfg,
    wait_for,
    write_calls,
)


@pytest.fixture
def bouncer(postgres):
    if not Path(PGBOUNCER).exists():
        pytest.skip("pgbouncer is not installed (make apt)")
    b = PgBouncer(postgres, pool=2)
    b.start()
    yield b
    b.stop()


def _server_connections(direct: str, name: str) -> int:
    with psycopg2.connect(direct) as c, c.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid()", (name,))
        return cur.fetchone()[0]


def test_two_workers_through_pgbouncer(tmp_path, broker, pki, postgres, bouncer):
    _priv, pub, *_ = practice_keys(tmp_path)
    boxes = [make_box(tmp_path / d, pub, device=d) for d in ("dev-a", "dev-b")]
    for i, b in enumerate(boxes):
        write_calls(b, n_calls=5, segs=4, noisy=i == 0, seed=i)
    direct = postgres.new_db("bouncer")
    name = direct.rsplit("/", 1)[1]
    open_db(direct)                 # the upgrade with a direct URL (docs/sync.md)
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, boxes, db_url=bouncer.url(name))
    w1 = InProcWorker(ucfg, client_id="ingest-1")
    w2 = InProcWorker(ucfg, client_id="ingest-2")
    runs = []
    try:
        wait_for(lambda: w1.w.connected.is_set() and w2.w.connected.is_set(), what="workers")
        runs = [Running(b, broker, pki, window=8) for b in boxes]
        wait_for(lambda: all(unacked(b.store) == 0 for b in boxes), timeout=120,
                 what="backlog drained through pgbouncer")
        # Every database connection the workers made went through the pool.
        assert 0 < _server_connections(direct, name) <= 2
    finally:
        for r in runs:
            r.close()
        w1.close()
        w2.close()
    assert USegment.select().count() == 40
    assert len(stored_objects(ucfg, "seg")) == 40
    assert UCall.select().count() == 10 and all(r.manifest_key for r in UCall.select())
    assert Problem.select().count() == 0
    with psycopg2.connect(direct) as c, c.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert cur.fetchone()[0] == 0
