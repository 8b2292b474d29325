"""Faults: broker restarts mid-transfer, duplicated and reordered deliveries, a worker
killed after its durable write but before its ack. 0 lost, 0 stored twice."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from sync import protocol
from sync.upstream.ingest import Ingest
from sync.upstream.store import Problem, UCall, USegment, is_complete, open_db
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    stored_objects,
    to_toml,
    unacked,
    upstream_cfg,
    upstream_raw,
    wait_for,
    write_calls,
    write_command_key,
)

# Slow (`make test-fast` leaves it out): workers killed and brokers restarted, on both stores.
pytestmark = pytest.mark.slow


def _acked(store) -> int:
    S = store.m.Segment
    return S.select().where(S.acked == True).count()  # noqa: E712


def _stored_once(ucfg, total):
    assert USegment.select().count() == total
    files = stored_objects(ucfg, "seg")
    assert len(files) == total, "a segment was stored twice"


@pytest.mark.usefixtures("objects_backend")
def test_broker_restarts_mid_transfer(tmp_path, broker, pki):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=15, segs=4, noisy=True)
    total = 60
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box])
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki, window=2, ack_timeout_s=2.0)
    try:
        for k in range(20):           # the figure: 20 restarts mid-transfer
            target = min(total - 1, _acked(box.store) + 2)
            wait_for(lambda t=target: _acked(box.store) >= t, what=f"progress {k}")
            broker.restart()
        wait_for(lambda: unacked(box.store) == 0, timeout=120, what="drain after restarts")
    finally:
        run.close()
        worker.close()
    _stored_once(ucfg, total)
    assert all(is_complete(r) for r in UCall.select())


def _items(box):
    """(topic, payload) for every chunk of every segment and manifest of the box."""
    out = []
    st = box.store
    for c in st.calls():
        for s in st.segments_of(c.id):
            t = protocol.seg_topic("linetap", "site1", box.device, c.id, s.seq)
            out += [(t, p) for p in protocol.split(st.abs(s.path).read_bytes(), 40000)]
        t = protocol.man_topic("linetap", "site1", box.device, c.id)
        out += [(t, p) for p in protocol.split(st.abs(c.manifest).read_bytes())]
    return out


def _offline_ingest(tmp_path, pki, n_calls, command_key=None):
    """A box with ``n_calls`` closed calls of 3 segments, and an ingest (no broker)
    registered for it; returns (box, ucfg, ingest, every chunk of the box)."""
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=n_calls, segs=3, noisy=True)
    ucfg = upstream_cfg(tmp_path / "up", type("B", (), {"port": 1})(), pki, [box],
                        command_key=command_key)
    open_db(ucfg.db_url)
    return box, ucfg, Ingest(ucfg), _items(box)


@pytest.mark.usefixtures("objects_backend")
def test_duplicated_and_reordered_deliveries(tmp_path, pki):
    box, ucfg, ing, items = _offline_ingest(tmp_path, pki, 3)
    rng = random.Random(7)
    deliveries = items * 3
    rng.shuffle(deliveries)                   # manifests before segments, chunks mixed
    acks = []
    for topic, payload in deliveries:
        out = ing.handle(topic, payload)
        if out:
            acks.append(protocol.parse_ack(out[1]))
    _stored_once(ucfg, 9)
    assert ing.stored == 9 + 3 and ing.conflicts == 0
    assert all(is_complete(r) for r in UCall.select())
    acked = {tuple(s) for a in acks for s in a["segs"]}
    assert len(acked) == 9
    # The same key with another hash is kept aside and alarmed, never overwritten.
    c = box.store.calls()[0]
    s0 = box.store.segments_of(c.id)[0]
    evil = bytearray(box.store.abs(s0.path).read_bytes())
    evil[-1] ^= 1
    t = protocol.seg_topic("linetap", "site1", box.device, c.id, 0)
    for chunk in protocol.split(bytes(evil)):
        out = ing.handle(t, chunk)
    assert protocol.parse_ack(out[1])["conflicts"] and not protocol.parse_ack(out[1])["segs"]
    assert USegment.get(USegment.call == c.id, USegment.seq == 0).sha256 == s0.sha256
    assert Problem.select().where(Problem.kind == "conflict").count() == 1
    # A chunk whose reassembled hash is wrong is dropped, not stored.
    bad = protocol.split(b"x" * 100)[0][:-1] + b"y"
    assert ing.handle(protocol.seg_topic("linetap", "site1", box.device, c.id, 9), bad) is None
    # A late copy of a call deleted upstream is acked but never stored again.
    from sync.upstream import ops as upstream_ops
    row = UCall.get(UCall.call == c.id)
    upstream_ops.delete_call(ing.objects, row, "upstream_delete")
    late = [(t, p) for t, p in items if f"/{c.id}" in t]
    res = ing.handle_batch(late)
    assert all(r is not None and not isinstance(r, Exception) for r in res)
    assert USegment.select().where(USegment.call == c.id).count() == 0
    assert UCall.get(UCall.call == c.id).state == "deleted"
    # A device registered to another site, or unknown, is dropped.
    assert ing.handle(protocol.seg_topic("linetap", "site2", box.device, c.id, 0),
                      protocol.split(bytes(evil))[0]) is None


def test_box_applies_only_matching_acks(tmp_path, pki):
    from sync.uploader import Uploader
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    (cid,) = write_calls(box, n_calls=1, segs=2)
    up = Uploader(box.store, upstream_box_cfg(box), device=box.device,
                  data_dir=box.data_dir)
    segs = box.store.segments_of(cid)
    up._apply_ack(protocol.parse_ack(protocol.ack_payload(
        segs=[(cid, 0, "0" * 64), (cid, 1, segs[1].sha256), (cid, 1, segs[1].sha256)])))
    got = {s.seq: s.acked for s in box.store.segments_of(cid)}
    assert got == {0: False, 1: True}
    # A conflict reply parks the item (no endless resend) and raises an alarm.
    alarms = {}
    up.alarms = type("A", (), {"set": lambda self, n, on, **d: alarms.update({n: d})})()
    up._apply_ack(protocol.parse_ack(protocol.ack_payload(conflicts=[(cid, 0, "f" * 64)])))
    assert (cid, 0) in up.parked and "sync_conflict" in alarms
    assert not box.store.segments_of(cid)[0].acked
    # A rejected manifest holds back that version only: a re-signed one goes out.
    def mans():
        up._cand = None
        return [it for lst in up._candidates(16) for it in lst if it.seq is None]
    assert [it.call for it in mans()] == [cid]
    up._apply_ack(protocol.parse_ack(protocol.ack_payload(rejected=[(cid, "bad")])))
    assert "sync_rejected" in alarms and mans() == [] and up.sync_status()["parked"] == 2
    from tests.support.syncbox import box_writer
    box_writer(box, 0.0).write_manifest(box.store.call(cid))
    assert [it.sha256 for it in mans()] == [box.store.call(cid).manifest_sha256]


def upstream_box_cfg(box):
    from tests.support.syncbox import box_cfg
    return box_cfg(box.data_dir, device=box.device)


@pytest.mark.usefixtures("objects_backend")
def test_worker_killed_before_ack(tmp_path, broker, pki):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=3, segs=3)
    total = 9
    raw = upstream_raw(tmp_path / "up", broker, pki, [box])
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    env = dict(os.environ, LINETAP_CRASH_AT="ingest_before_ack:3")
    proc = subprocess.Popen([sys.executable, "-m", "sync.upstream.ingest", "--config", str(conf)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = Running(box, broker, pki, window=4, ack_timeout_s=2.0)
    try:
        proc.wait(60)
        assert proc.returncode == -9, proc.stderr.read().decode()[-2000:]
        ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box])
        open_db(ucfg.db_url)
        # The write happened, its ack did not.
        assert USegment.select().count() + UCall.select().where(
            UCall.manifest_key.is_null(False)).count() >= 3
        worker = InProcWorker(ucfg, client_id="ingest-t2")
        try:
            wait_for(lambda: unacked(box.store) == 0, what="drain after worker crash")
        finally:
            worker.close()
    finally:
        run.close()
        if proc.poll() is None:
            proc.kill()
    _stored_once(ucfg, total)
    assert all(is_complete(r) for r in UCall.select())


@pytest.mark.usefixtures("objects_backend")
def test_offline_then_broker_appears(tmp_path, broker, pki):
    """The box starts with the broker down (days offline in miniature), keeps
    recording into its outbox, and drains when the broker comes back."""
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=2, segs=2)
    broker.stop()
    run = Running(box, broker, pki, ack_timeout_s=2.0)
    try:
        st = run.up.sync_status()
        assert st["link"] in ("connecting", "offline") and st["backlog"] == 4
        write_calls(box, n_calls=2, segs=2, seed=5)      # more calls while offline
        broker.start()
        ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box])
        worker = InProcWorker(ucfg)
        try:
            wait_for(lambda: unacked(box.store) == 0, what="drain after offline")
        finally:
            worker.close()
        assert run.up.sync_status()["link"] == "online"
    finally:
        run.close()
    _stored_once(ucfg, 8)


@pytest.mark.usefixtures("objects_backend")
def test_an_upstream_deletion_cut_short_is_finished_by_the_next_tick(tmp_path, pki):
    """The upstream crashes between a call's blobs and its rows (here: the object store
    fails after the first blob). The call is left ``deleting``, never ``live`` naming
    blobs that are gone; the ingest refuses late copies of it, and the next retention
    pass finishes the deletion, audited once and marked resumed."""
    from sync.upstream import ops as upstream_ops
    from sync.upstream.store import UAudit
    box, ucfg, ing, items = _offline_ingest(tmp_path, pki, 2)
    for topic, payload in items:
        ing.handle(topic, payload)
    cid, keep = [c.id for c in box.store.calls()]
    real, calls = ing.objects.delete, {"n": 0}

    def crash_after_one(key):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("power cut")
        real(key)

    ing.objects.delete = crash_after_one
    with pytest.raises(OSError):
        upstream_ops.delete_call(ing.objects, UCall.get(UCall.call == cid), "upstream_delete")
    ing.objects.delete = real
    assert UCall.get(UCall.call == cid).state == "deleting"
    late = [(t, p) for t, p in items if f"/{cid}/" in t or t.endswith(f"/{cid}")]
    assert len(late) >= 4
    res = ing.handle_batch(late)
    assert all(r is not None and not isinstance(r, Exception) for r in res)
    assert USegment.select().where(USegment.call == cid).count() == 3    # nothing new
    assert upstream_ops.expire(ing.objects) == 1
    row = UCall.get(UCall.call == cid)
    assert row.state == "deleted" and row.delete_reason == "upstream_delete"
    assert USegment.select().where(USegment.call == cid).count() == 0
    left = stored_objects(ucfg, "seg")
    assert len(left) == 3 and all(cid not in k for k in left)
    entries = [a.detail for a in UAudit.select() if a.detail.get("call") == cid]
    assert len(entries) == 1 and entries[0]["resumed"] is True
    assert UCall.get(UCall.call == keep).state == "live"
    assert upstream_ops.expire(ing.objects) == 0


@pytest.mark.usefixtures("objects_backend")
def test_a_deleting_call_takes_no_hold_no_export_and_is_audited_once(tmp_path, pki):
    """While a call is 'deleting' (a deletion cut short), a legal hold is refused (the
    next tick would ignore it), export is refused, and two workers finishing it audit
    it once between them."""
    import pytest

    from recorder.errors import CommandRejected, StoreError
    from sync.upstream import ops as upstream_ops
    from sync.upstream.store import UAudit
    box, ucfg, ing, items = _offline_ingest(tmp_path, pki, 1)
    for topic, payload in items:
        ing.handle(topic, payload)
    [cid] = [c.id for c in box.store.calls()]
    UCall.update(state="deleting", delete_reason="retention_expiry").where(
        UCall.call == cid).execute()
    stale = UCall.get(UCall.call == cid)
    with pytest.raises(CommandRejected, match="deleting"):
        upstream_ops.user_hold(ucfg, cid, True)
    with pytest.raises(StoreError, match="deleting"):
        upstream_ops.export_call(ucfg, ing.objects, None, tmp_path / "out", stale)
    # A worker that read the call as live stored one more segment meanwhile.
    ing.objects.put(f"seg/{stale.device}/{cid}/00099.{'ab' * 32}", b"late copy")
    assert upstream_ops.delete_call(ing.objects, stale, "retention_expiry") is True
    assert ing.objects.list(f"seg/{stale.device}/{cid}") == []
    assert upstream_ops.delete_call(ing.objects, stale, "retention_expiry") is False
    entries = [a for a in UAudit.select() if a.detail.get("call") == cid]
    assert len(entries) == 1 and entries[0].action == "retention_expiry"


@pytest.mark.usefixtures("objects_backend")
def test_a_practice_deletion_queues_the_box_command_before_it_deletes(tmp_path, pki):
    """A crash inside the upstream deletion must not leave the box keeping the call:
    the signed delete command is queued first, and expire() finishes upstream."""
    import pytest

    from sync.upstream import ops as upstream_ops
    from sync.upstream.store import Command
    write_command_key(tmp_path / "command.key")
    box, ucfg, ing, items = _offline_ingest(tmp_path, pki, 1, tmp_path / "command.key")
    for topic, payload in items:
        ing.handle(topic, payload)
    [cid] = [c.id for c in box.store.calls()]

    def crash(key):
        raise OSError("power cut")

    real, ing.objects.delete = ing.objects.delete, crash
    with pytest.raises(OSError):
        upstream_ops.user_delete(ucfg, ing.objects, cid)
    ing.objects.delete = real
    assert [c.kind for c in Command.select()] == ["delete"]
    assert upstream_ops.expire(ing.objects) == 1
    assert UCall.get(UCall.call == cid).state == "deleted"
