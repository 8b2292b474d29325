"""Re-signed manifests: a newer manifest for a stored call, from the same registered
device key, whose segment list extends (or equals) the stored one replaces it; the old
one is kept as history. Anything else is a conflict, kept aside and never stored over
the first."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from recorder.calls.jobs import CallInfo, CloseCall, OpenCall, WriteSegment
from recorder.evidence import keys
from recorder.storage.store import Store
from sync import protocol
from sync.upstream import ops as upstream_ops
from sync.upstream.ingest import Ingest, supersedes
from sync.upstream.store import (
    ManifestHistory,
    Problem,
    UAudit,
    UCall,
    USegment,
    is_complete,
    open_db,
)
from tests.support.syncbox import (
    RATE,
    InProcWorker,
    Running,
    box_writer,
    make_box,
    practice_keys,
    tone,
    unacked,
    upstream_cfg,
    wait_for,
    write_calls,
)

SEG = 10 * RATE


def _write_call(box, call_id, hz, snapshots=(), segs=3, start=None):
    """Write one call of ``segs`` segments; after each segment count in ``snapshots``
    sign the manifest over what exists so far (as crash recovery does) and keep it.
    Returns (final manifest bytes, {count: manifest bytes})."""
    w = box_writer(box, start or time.time() - 3600)
    info = CallInfo(id=call_id, line=0, direction="inbound", offhook_sample=0,
                    caller_number="01632960123")
    w.handle(OpenCall(info))
    snaps = {}
    for s in range(segs):
        w.handle(WriteSegment(call_id, s, s * SEG, tone(SEG, hz + 10 * s)))
        if s + 1 in snapshots:
            w.write_manifest(box.store.call(call_id))
            snaps[s + 1] = box.store.abs(box.store.call(call_id).manifest).read_bytes()
    info.end_sample, info.end_reason = segs * SEG, "hangup"
    w.handle(CloseCall(info))
    row = box.store.call(call_id)
    return box.store.abs(row.manifest).read_bytes(), snaps


def _seg_msgs(box, call_id):
    out = []
    for s in box.store.segments_of(call_id):
        t = protocol.seg_topic("linetap", "site1", box.device, call_id, s.seq)
        out += [(t, p) for p in protocol.split(box.store.abs(s.path).read_bytes())]
    return out


def _send_manifest(ing, box, call_id, data):
    t = protocol.man_topic("linetap", "site1", box.device, call_id)
    res = ing.handle_batch([(t, p) for p in protocol.split(data)])
    return protocol.parse_ack(res[-1][1])


def _sha(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _h(segs, created):
    return {"segments": [{"seq": i, "sha256": s, "size": 10} for i, s in enumerate(segs)],
            "created": created}


@pytest.mark.parametrize("old, new, ok", [
    (_h("ab", "2026-11-25T09:00:00.000Z"), _h("abc", "2026-11-25T09:01:00.000Z"), True),
    (_h("ab", "2026-11-25T09:00:00.000Z"), _h("ab", "2026-11-25T09:00:00.000Z"), True),
    (_h("", "2026-11-25T09:00:00.000Z"), _h("a", "2026-11-25T09:01:00.000Z"), True),
    # shorter, diverging, or older: conflicts
    (_h("abc", "2026-11-25T09:00:00.000Z"), _h("ab", "2026-11-25T09:01:00.000Z"), False),
    (_h("ab", "2026-11-25T09:00:00.000Z"), _h("axc", "2026-11-25T09:01:00.000Z"), False),
    (_h("ab", "2026-11-25T09:01:00.000Z"), _h("abc", "2026-11-25T09:00:00.000Z"), False),
    (_h("ab", "2026-11-25T09:00:00.000Z"), {"segments": [{"seq": 0}], "created": None},
     False),
])
def test_supersedes_table(old, new, ok):
    assert (supersedes(old, new) is None) == ok


@pytest.mark.usefixtures("objects_backend")
def test_resigned_manifest_ingest(tmp_path, pki):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    cid = "C900-L0-resign"
    final, snaps = _write_call(box, cid, 400, snapshots=(1, 2))
    v1, v2, v3 = snaps[1], snaps[2], final
    ucfg = upstream_cfg(tmp_path / "up", SimpleNamespace(port=1), pki, [box])
    open_db(ucfg.db_url)
    ing = Ingest(ucfg)
    ing.handle_batch(_seg_msgs(box, cid))
    # The manifest written at "recovery" (2 of 3 segments) arrives first.
    assert _send_manifest(ing, box, cid, v2)["mans"] == [(cid, _sha(v2))]
    row = UCall.get(UCall.call == cid)
    assert len(row.expected) == 2
    # The box signs again once the call is whole: accepted, the old one kept aside.
    ack = _send_manifest(ing, box, cid, v3)
    assert ack["mans"] == [(cid, _sha(v3))] and not ack["rejected"]
    row = UCall.get(UCall.call == cid)
    assert row.manifest_sha256 == _sha(v3) and len(row.expected) == 3 and is_complete(row)
    h = ManifestHistory.get(ManifestHistory.call == cid)
    assert h.sha256 == _sha(v2) and h.replaced_by == _sha(v3) and h.segments == 2
    assert ing.objects.get(h.key) == v2
    assert [u.detail["old_segments"] for u in UAudit.select()
            if u.action == "manifest_superseded"] == [2]
    # A late copy of the replaced version is acked (the box stops) and changes nothing.
    assert _send_manifest(ing, box, cid, v2)["mans"] == [(cid, _sha(v2))]
    assert UCall.get(UCall.call == cid).manifest_sha256 == _sha(v3)
    # An older, shorter version never seen here is a conflict.
    ack = _send_manifest(ing, box, cid, v1)
    assert ack["rejected"] and "does not extend" in ack["rejected"][0][1]
    # Same device key, same call, another segment list: conflict, kept aside.
    twin = SimpleNamespace(store=Store(tmp_path / "twin"), identity=box.identity,
                           device=box.device, data_dir=tmp_path / "twin", public_key=pub,
                           retention_days=90.0)
    other, _ = _write_call(twin, cid, 700)
    ack = _send_manifest(ing, box, cid, other)
    assert ack["rejected"] and not ack["mans"]
    p = Problem.get(Problem.sha256 == _sha(other))
    assert p.kind == "conflict" and ing.objects.get(p.key) == other
    # Another key (not the registered one): rejected as before.
    stranger = SimpleNamespace(store=Store(tmp_path / "s"), identity=keys.ensure_identity(
        tmp_path / "s", first_start=True), device=box.device, data_dir=tmp_path / "s",
        public_key=pub, retention_days=90.0)
    forged, _ = _write_call(stranger, cid, 400)
    ack = _send_manifest(ing, box, cid, forged)
    assert ack["rejected"] and "different device" in ack["rejected"][0][1]
    assert Problem.get(Problem.sha256 == _sha(forged)).kind == "rejected"
    assert UCall.get(UCall.call == cid).manifest_sha256 == _sha(v3)
    # Deleting the call deletes the history and the copies kept aside too.
    upstream_ops.delete_call(ing.objects, UCall.get(UCall.call == cid), "upstream_delete")
    assert not ing.objects.exists(h.key) and not ing.objects.exists(p.key)
    assert ManifestHistory.select().count() == 0
    assert USegment.select().count() == 0


@pytest.mark.usefixtures("objects_backend")
def test_resigned_manifest_over_mqtt(tmp_path, broker, pki, postgres):
    """Box re-signs an already-acked manifest: it is sent again, accepted upstream (on
    PostgreSQL), and nothing is parked or alarmed on the box."""
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    ids = write_calls(box, n_calls=2, segs=2)
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box], db_url=postgres.new_db("resign"))
    alarms = SimpleNamespace(active={})
    alarms.set = lambda name, on, **d: alarms.active.__setitem__(name, d) if on else None
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki, alarms=alarms)
    try:
        wait_for(lambda: unacked(box.store) == 0, what="first sync")
        old = UCall.get(UCall.call == ids[0]).manifest_sha256
        w = box_writer(box, time.time())
        w.write_manifest(box.store.call(ids[0]))
        C = box.store.m.Call
        # A re-signed manifest must go out again (see the report: the writer should
        # clear manifest_acked itself when it re-signs).
        C.update(manifest_acked=False).where(C.id == ids[0]).execute()
        new = box.store.call(ids[0]).manifest_sha256
        assert new != old
        wait_for(lambda: unacked(box.store) == 0, what="re-signed manifest acked")
    finally:
        run.close()
        worker.close()
    assert UCall.get(UCall.call == ids[0]).manifest_sha256 == new
    assert ManifestHistory.get(ManifestHistory.call == ids[0]).sha256 == old
    assert "sync_rejected" not in alarms.active and not run.up.parked
    assert Problem.select().count() == 0
