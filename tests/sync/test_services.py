"""recorder.services: retention always runs; a broken sync config never stops recording."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from synchelpers import box_cfg, make_box, practice_keys


class Alarms:
    def __init__(self):
        self.active = {}

    def set(self, name, on, **detail):
        if on:
            self.active[name] = detail


def test_bad_sync_config_is_an_alarm_not_a_crash(tmp_path):
    from recorder.service import join_all
    from recorder.services import start_services
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    cfg = box_cfg(box.data_dir, enabled=True, host="127.0.0.1", port=1,
                  ca=str(tmp_path / "missing-ca.pem"), cert=str(tmp_path / "nope.pem"),
                  key=str(tmp_path / "nope.key"))
    d = SimpleNamespace(cfg=cfg, store=box.store, data_dir=box.data_dir, device="dev-a",
                        stop=threading.Event(), alarms=Alarms(), status=lambda: {})
    threads = start_services(d)
    try:
        assert [t.name for t in threads] == ["retention"]
        assert "sync_config" in d.alarms.active
        assert d.sync_status()["link"] == "not started"
    finally:
        d.stop.set()
        assert join_all(threads, 10) == []
