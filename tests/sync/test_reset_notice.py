"""A factory reset is announced upstream before it happens (real mosquitto, real ingest).

The provisioning agent asks the recorder's control socket to ``announce``; the
recorder's uploader publishes the notice on ``report`` (QoS 1) and answers once the
broker has acknowledged it; the ingest worker writes it to the upstream audit trail.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

from provisioning import evidence
from recorder.runtime.control_socket import ControlServer
from sync.upstream.store import UAudit
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


def test_reset_notice_reaches_the_upstream_audit(tmp_path, broker, pki):
    _priv, pub, _pubpath, _privpath = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=2, segs=2, start=time.time() - 3600)
    assert evidence.unsynced_calls(box.data_dir) == 2
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box])
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki)
    daemon = SimpleNamespace(data_dir=box.data_dir, stop=threading.Event(), uploader=run.up)
    (box.data_dir / "run").mkdir(exist_ok=True)
    ctl = ControlServer(daemon)
    try:
        wait_for(lambda: unacked(box.store) == 0, what="upload")
        assert evidence.unsynced_calls(box.data_dir) == 0
        reply = ctl.handle(json.dumps({"cmd": "announce", "event": "factory_reset",
                                       "detail": {"unsynced_calls": 0}}).encode())
        assert reply == {"ok": True, "delivered": True, "link": "online"}
        wait_for(lambda: UAudit.select().where(UAudit.action == "box_notice").count() == 1,
                 what="notice in the upstream audit")
        row = UAudit.get(UAudit.action == "box_notice")
        assert row.detail["device"] == box.device and row.detail["event"] == "factory_reset"
        # Link down: the answer says so, and nothing pretends it was delivered.
        broker.stop()
        wait_for(lambda: run.up.link != "online", what="link down")
        down = ctl.handle(b'{"cmd": "announce", "event": "factory_reset"}')
        assert down["ok"] and down["delivered"] is False and down["link"] != "online"
    finally:
        ctl.sock.close()
        run.close()
        worker.close()
