"""Round trip through the real mosquitto: box -> ingest -> ack -> local retention ->
identical exports from the box and from upstream."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.evidence.export import export_calls
from recorder.storage.store import device_key_for
from sync.upstream import ops as upstream_ops
from sync.upstream.objectstore import open_objects
from sync.upstream.store import UCall, USegment, is_complete
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    unacked,
    upstream_cfg,
    wait_for,
    write_calls,
)


def test_roundtrip_export_identical(tmp_path, broker, pki):
    priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    ids = write_calls(box, n_calls=4, segs=3, noisy=True)    # noisy: > 128 KiB, chunked
    sizes = [s.size for s in box.store.m.Segment.select()]
    assert max(sizes) > 128 * 1024
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box])
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki)
    try:
        wait_for(lambda: unacked(box.store) == 0, what="every item acked")
        st = run.up.sync_status()
        assert st["link"] == "online" and st["backlog"] == 0
        # The first tick sent a health message; a worker keeps the latest per device.
        from sync.upstream.store import Health
        wait_for(lambda: Health.get_or_none(Health.device == "dev-a") is not None,
                 what="health stored")
        h = Health.get(Health.device == "dev-a").body
        assert {"disk_free_mb", "backlog", "oldest_unsynced_age_s", "store"} <= set(h)
    finally:
        run.close()
        worker.close()
    assert USegment.select().count() == 12
    rows = list(UCall.select())
    assert len(rows) == 4 and all(is_complete(r) for r in rows)
    # Exports match byte for byte.
    export_calls(box.store, priv, tmp_path / "ex_box", device_key=device_key_for(box.data_dir))
    objects = open_objects(ucfg)
    for r in rows:
        upstream_ops.export_call(ucfg, objects, priv, tmp_path / "ex_up", r)
    for cid in ids:
        for ext in ("wav", "json"):
            a = (tmp_path / "ex_box" / f"{cid}.{ext}").read_bytes()
            b = (tmp_path / "ex_up" / f"{cid}.{ext}").read_bytes()
            assert a == b, f"{cid}.{ext} differs"
    assert '"status": "verified"' in (tmp_path / "ex_up" / f"{ids[0]}.json").read_text()
    # Upstream never trusts the key a manifest names: a device missing from the registry
    # is unverifiable; --identity-pub (identity_key) decides instead of the registry.
    site = ucfg.site_of(box.device)
    true_key = site.devices.pop(box.device)
    try:
        assert upstream_ops.export_call(ucfg, objects, priv, tmp_path / "ex_unreg",
                                        rows[0])["status"] == "unverifiable"
        assert upstream_ops.export_call(ucfg, objects, priv, tmp_path / "ex_pinned", rows[0],
                                        identity_key=true_key)["status"] == "verified"
        other = ed25519.Ed25519PrivateKey.generate().public_key()
        assert upstream_ops.export_call(ucfg, objects, priv, tmp_path / "ex_other", rows[0],
                                        identity_key=other)["status"] == "failed"
    finally:
        site.devices[box.device] = true_key
    # Synced copies are deleted on the box after keep_synced_days (0 here).
    from recorder.storage.retention.service import Retention
    r = Retention(box.store, box.data_dir, run.cfg.replace(retention__keep_synced_days=0.0),
                  free_bytes=lambda: 10**12, clock=lambda: time.time() + 1)
    done = r.tick()
    assert sorted(d.call_id for d in done) == sorted(ids)
    assert all(d.reason == "synced" and d.whole_call for d in done)
    assert box.store.m.Segment.select().count() == 0
