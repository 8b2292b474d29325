"""K brokers by practice (docs/sync.md, "Many workers, K brokers"): two mosquitto
brokers, each with its own worker whose TOML lists only the practice on that broker,
one PostgreSQL and one object store shared. Each practice's box drains through its own
broker; each worker stores exactly its practice's uploads, and nothing is stored twice."""

from __future__ import annotations

from sync.upstream.config import from_dict
from sync.upstream.store import Problem, UCall, USegment
from tests.support.broker import Broker
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    stored_objects,
    unacked,
    upstream_raw,
    wait_for,
    write_calls,
)


def test_two_brokers_each_with_its_own_worker(tmp_path, broker, pki, postgres):
    (tmp_path / "broker2").mkdir()
    broker2 = Broker(tmp_path / "broker2", pki)
    broker2.start()
    _priv, pub, *_ = practice_keys(tmp_path)
    a = make_box(tmp_path / "a", pub, device="dev-a")
    b = make_box(tmp_path / "b", pub, device="dev-b")
    write_calls(a, n_calls=3, segs=4, seed=1)
    write_calls(b, n_calls=2, segs=5, seed=2)
    url = postgres.new_db("brokers")
    raw1 = upstream_raw(tmp_path / "up", broker, pki, [a], db_url=url)
    raw2 = upstream_raw(tmp_path / "up", broker2, pki, [b], db_url=url)
    raw2["sites"] = {"site2": raw2["sites"].pop("site1")}
    w1 = InProcWorker(from_dict(raw1), client_id="ingest-broker1")
    w2 = InProcWorker(from_dict(raw2), client_id="ingest-broker2")
    runs = []
    try:
        wait_for(lambda: w1.w.connected.is_set() and w2.w.connected.is_set(), what="workers")
        runs = [Running(a, broker, pki, window=8),
                Running(b, broker2, pki, window=8, site="site2")]
        wait_for(lambda: unacked(a.store) == 0 and unacked(b.store) == 0, timeout=120,
                 what="both practices drained, each through its own broker")
    finally:
        for r in runs:
            r.close()
        w1.close()
        w2.close()
        broker2.stop()
    # Segments and manifests: 12 + 3 through broker 1, 10 + 2 through broker 2.
    assert (w1.w.ingest.stored, w2.w.ingest.stored) == (15, 12)
    assert USegment.select().count() == 22
    assert len(stored_objects(from_dict(raw1), "seg")) == 22
    assert {(c.device, c.site) for c in UCall.select()} == {("dev-a", "site1"),
                                                           ("dev-b", "site2")}
    assert Problem.select().count() == 0
