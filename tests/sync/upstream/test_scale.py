"""Two ingest workers on one shared subscription, metadata in PostgreSQL, draining the
backlog of two boxes: nothing lost, nothing stored twice."""

from __future__ import annotations

import pytest

from sync.upstream.store import Problem, UCall, USegment, is_complete
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


@pytest.mark.usefixtures("objects_backend")
def test_two_workers_postgres(tmp_path, broker, pki, postgres):
    _priv, pub, *_ = practice_keys(tmp_path)
    boxes = [make_box(tmp_path / d, pub, device=d) for d in ("dev-a", "dev-b")]
    for i, b in enumerate(boxes):
        write_calls(b, n_calls=5, segs=4, noisy=i == 0, seed=i)
    total = 40
    url = postgres.new_db("scale")
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, boxes, db_url=url)
    w1 = InProcWorker(ucfg, client_id="ingest-1")
    w2 = InProcWorker(ucfg, client_id="ingest-2")
    wait_for(lambda: w1.w.connected.is_set() and w2.w.connected.is_set(), what="workers")
    runs = [Running(b, broker, pki, window=8) for b in boxes]
    try:
        wait_for(lambda: all(unacked(b.store) == 0 for b in boxes), timeout=120,
                 what="backlog drained")
    finally:
        for r in runs:
            r.close()
        w1.close()
        w2.close()
    assert USegment.select().count() == total
    assert len(stored_objects(ucfg, "seg")) == total
    assert UCall.select().count() == 10 and all(is_complete(r) for r in UCall.select())
    assert Problem.select().count() == 0
    # The shared subscription spread the work.
    assert w1.w.ingest.stored > 0 and w2.w.ingest.stored > 0
    # Counters are rolled back with a failed batch, so this is exact.
    assert w1.w.ingest.stored + w2.w.ingest.stored == total + 10


def test_health_upsert_postgres(tmp_path, pki, postgres):
    """Repeated health messages replace the device's row on PostgreSQL too."""
    from types import SimpleNamespace

    from sync.upstream.ingest import Ingest
    from sync.upstream.store import Health, open_db
    box = SimpleNamespace(device="dev-a", identity=__import__(
        "cryptography.hazmat.primitives.asymmetric.ed25519",
        fromlist=["x"]).Ed25519PrivateKey.generate())
    ucfg = upstream_cfg(tmp_path / "up", SimpleNamespace(port=1), pki, [box],
                        db_url=postgres.new_db("health"))
    open_db(ucfg.db_url)
    ing = Ingest(ucfg)
    for n in range(3):
        res = ing.handle_batch([("linetap/site1/dev-a/health", b'{"backlog": %d}' % n)])
        assert res == [None]
    assert Health.select().count() == 1
    assert Health.get().body == {"backlog": 2}


def test_one_manifest_at_two_workers_at_once_is_stored_once_postgres(tmp_path, pki, postgres):
    """A box's resend after its ack timeout can reach a second worker while the first
    still holds the first copy. Both must ack it, and only one may count it stored (the
    conditional update; before it, both did)."""
    import threading
    from types import SimpleNamespace

    from sync import protocol
    from sync.upstream.ingest import Ingest
    from sync.upstream.store import open_db
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=12, segs=1)
    ucfg = upstream_cfg(tmp_path / "up", SimpleNamespace(port=1), pki, [box],
                        db_url=postgres.new_db("manrace"))
    open_db(ucfg.db_url)
    a, b = Ingest(ucfg), Ingest(ucfg)
    st = box.store
    for c in st.calls():
        t = protocol.man_topic("linetap", "site1", box.device, c.id)
        (p,) = protocol.split(st.abs(c.manifest).read_bytes())
        gate, out = threading.Barrier(2), {}

        def run(ing, name, t=t, p=p, gate=gate, out=out):
            gate.wait()
            out[name] = ing.handle_batch([(t, p)])[0]
        th = [threading.Thread(target=run, args=(i, n)) for i, n in ((a, "a"), (b, "b"))]
        for x in th:
            x.start()
        for x in th:
            x.join(30)
        for r in out.values():
            assert r is not None and not isinstance(r, Exception)
            assert protocol.parse_ack(r[1])["mans"]
    assert a.stored + b.stored == 12
    assert a.duplicates + b.duplicates == 12
    assert all(r.manifest_sha256 for r in UCall.select()) and UCall.select().count() == 12
