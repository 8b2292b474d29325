"""The real daemon on a simulated 2-line run with sync enabled (services started by
recorder.runtime.assembly), then the backlog drains upstream and exports match the box."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hw import scenario as scen
from recorder.evidence import keys
from recorder.evidence.export import export_calls
from recorder.runtime import simulate
from recorder.storage.store import Store, device_key_for
from sync.upstream import ops as upstream_ops
from sync.upstream.objectstore import open_objects
from sync.upstream.store import UCall
from tests.support.syncbox import (
    InProcWorker,
    box_cfg,
    practice_keys,
    unacked,
    upstream_cfg,
)

# Slow (`make test-fast` leaves it out): a daemon syncing through mosquitto.
pytestmark = pytest.mark.slow

SCENARIO = {"rate": 8000, "start": "2026-11-25T09:00:00Z", "duration": 40.0, "lines": 2,
            "events": [
                {"at": 1.0, "line": 0, "type": "ring", "until": 3.0},
                {"at": 3.2, "line": 0, "type": "offhook"},
                {"at": 2.0, "line": 1, "type": "offhook"},
                {"at": 16.0, "line": 0, "type": "onhook"},
                {"at": 20.0, "line": 1, "type": "onhook"},
                {"at": 24.0, "line": 0, "type": "offhook"},
                {"at": 36.0, "line": 0, "type": "onhook"}]}


def test_simulated_run_syncs(tmp_path, broker, pki):
    priv, _pub, pubpath, _ = practice_keys(tmp_path)
    data = tmp_path / "box"
    data.mkdir()
    ident = keys.ensure_identity(data, first_start=True)
    dev = pki.devices["dev-a"]
    cfg = box_cfg(data, device="dev-a", enabled=True, host="127.0.0.1", port=broker.port,
                  ca=str(pki.ca), cert=dev.cert, key=dev.key)
    sc = scen.from_dict(SCENARIO, tmp_path)
    cfg = simulate.sim_config(cfg, sc, str(data), public_key=str(pubpath))
    boxns = SimpleNamespace(device="dev-a", identity=ident, data_dir=data)
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [boxns])
    worker = InProcWorker(ucfg)
    try:
        # The daemon's own uploader drains everything before the daemon stops.
        res = simulate.run(sc, cfg, until_synced_s=120)
        assert res.status["sync"]["link"] == "online" and res.status["sync"]["online"]
        assert res.synced is not None and res.synced["backlog"] == 0
        assert res.daemon.services.uploader.acked > 0
        store = Store(data)
        boxns.store = store
        calls = store.calls()
        assert len(calls) == 3 and {c.line for c in calls} == {0, 1}
        assert unacked(store) == 0
    finally:
        worker.close()
    export_calls(store, priv, tmp_path / "ex_box", device_key=device_key_for(data))
    objects = open_objects(ucfg)
    for r in UCall.select():
        upstream_ops.export_call(ucfg, objects, priv, tmp_path / "ex_up", r)
    for c in calls:
        for ext in ("wav", "json"):
            assert (tmp_path / "ex_box" / f"{c.id}.{ext}").read_bytes() == \
                (tmp_path / "ex_up" / f"{c.id}.{ext}").read_bytes()


def test_simulation_in_the_past_keeps_its_calls(tmp_path):
    """Retention runs on line time in simulation: a scenario dated years ago must not
    have its calls expired by the wall clock as soon as they are written."""
    _priv, _pub, pubpath, _ = practice_keys(tmp_path)
    data = tmp_path / "box"
    raw = dict(SCENARIO, start="2020-01-01T09:00:00Z", duration=22.0,
               events=[e for e in SCENARIO["events"] if e["at"] <= 20.0])
    sc = scen.from_dict(raw, tmp_path)
    cfg = simulate.sim_config(box_cfg(data).replace(retention__interval_s=1.0), sc,
                              str(data), public_key=str(pubpath))
    simulate.run(sc, cfg, speed=4.0)      # slow enough for retention ticks to run
    store = Store(data)
    assert len(store.calls()) == 2
    assert all(c.state != "deleted" for c in store.calls(include_deleted=True))
