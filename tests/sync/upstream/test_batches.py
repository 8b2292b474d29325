"""The ingest on PostgreSQL writes a batch in one transaction and acks only after its
commit (issue 19): a batch's rows share one transaction id, and a commit that fails at
COMMIT, after every statement of the batch succeeded, sends no ack at all."""

from __future__ import annotations

import pytest

from sync import protocol
from sync.upstream.ingest import BATCH, Ingest
from sync.upstream.store import UCall, USegment, db, open_db
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

# Fires at COMMIT (a deferred constraint trigger), not at the INSERT: every statement of
# the batch has succeeded when the transaction fails.
REFUSE_COMMIT = """
CREATE FUNCTION refuse_commit() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'commit refused by the test'; END $$ LANGUAGE plpgsql;
CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON usegment
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit();
"""


def _messages(box) -> list[tuple[str, bytes]]:
    """Every segment and manifest of ``box`` as the uploader sends them (topic, chunk)."""
    out = []
    for c in box.store.m.Call.select():
        for s in box.store.segments_of(c.id):
            blob = box.store.abs(s.path).read_bytes()
            topic = protocol.seg_topic("linetap", "site1", box.device, c.id, s.seq)
            out += [(topic, p) for p in protocol.split(blob, sha256=s.sha256)]
        man = box.store.abs(c.manifest).read_bytes()
        out += [(protocol.man_topic("linetap", "site1", box.device, c.id), p)
                for p in protocol.split(man)]
    return out


def test_a_batch_is_one_transaction(tmp_path, broker, pki, postgres):
    _priv, pub, *_ = practice_keys(tmp_path)
    boxes = [make_box(tmp_path / d, pub, device=d) for d in ("dev-a", "dev-b")]
    for i, b in enumerate(boxes):
        write_calls(b, n_calls=3, segs=4, seed=i)
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, boxes, db_url=postgres.new_db("batch"))
    open_db(ucfg.db_url)
    # The top-level transaction of each row's insert (a savepoint's rows would show
    # their subtransaction in xmin; txid_current() is always the top level's).
    for t in ("usegment", "ucall"):
        db.execute_sql(f"ALTER TABLE {t} ADD COLUMN test_tx bigint DEFAULT txid_current()")
    msgs = [m for b in boxes for m in _messages(b)]
    assert len(msgs) <= BATCH
    results = Ingest(ucfg).handle_batch(msgs)
    assert all(isinstance(r, tuple) for r in results), results
    assert USegment.select().count() == 24 and UCall.select().count() == 6
    # One transaction for the whole batch, call rows and manifests included.
    xids = {r[0] for t in ("usegment", "ucall")
            for r in db.execute_sql(f"SELECT test_tx FROM {t}").fetchall()}
    assert len(xids) == 1, xids


@pytest.mark.slow
def test_no_ack_before_the_commit(tmp_path, broker, pki, postgres):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=4, segs=3)
    total = 4 * 3
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box], db_url=postgres.new_db("commit"))
    open_db(ucfg.db_url)
    db.execute_sql(REFUSE_COMMIT)
    worker = InProcWorker(ucfg)
    failed = {"batches": 0}
    handle = worker.w.ingest.handle_batch

    def counted(msgs):
        try:
            return handle(msgs)
        except Exception:
            failed["batches"] += 1
            raise

    worker.w.ingest.handle_batch = counted
    run = Running(box, broker, pki, window=16, ack_timeout_s=1.0)
    try:
        # Several attempts of every segment (the box resends after its ack timeout), each
        # batch's statements done and its commit refused: not one segment acked.
        wait_for(lambda: failed["batches"] >= 3, what="batches refused at commit")
        S = box.store.m.Segment
        assert S.select().where(S.acked == True).count() == 0  # noqa: E712
        assert USegment.select().count() == 0
        db.execute_sql("DROP TRIGGER refuse_commit ON usegment")
        wait_for(lambda: unacked(box.store) == 0, what="drain once commits succeed")
    finally:
        run.close()
        worker.close()
    assert USegment.select().count() == total
    assert len(stored_objects(ucfg, "seg")) == total
