"""recorder.runtime.assembly: retention always runs; a broken sync config never stops recording."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from tests.support.syncbox import box_cfg, make_box, practice_keys


class Alarms:
    def __init__(self):
        self.active = {}

    def set(self, name, on, **detail):
        if on:
            self.active[name] = detail


def test_bad_sync_config_is_an_alarm_not_a_crash(tmp_path):
    from recorder.runtime.assembly import start_services
    from recorder.runtime.threads import join_all
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


def _daemon(tmp_path, hardware, **extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    cfg = box_cfg(box.data_dir).replace(device__hardware=hardware)
    return SimpleNamespace(cfg=cfg, store=box.store, data_dir=box.data_dir, device="dev-a",
                           stop=threading.Event(), alarms=Alarms(), status=lambda: {},
                           timebase=SimpleNamespace(epoch=lambda n: 0.0),
                           ring=SimpleNamespace(written=0), **extra)


def test_free_space_probe_injected_or_simulated(tmp_path):
    """Eviction never reads the host's disk in simulation, and a probe on the daemon
    is what retention uses."""
    from recorder.runtime.assembly import start_services
    from recorder.runtime.threads import join_all
    from recorder.storage.retention.service import SIM_DISK_BYTES, SimDisk
    d = _daemon(tmp_path / "sim", "sim")
    threads = start_services(d)
    d.stop.set()
    assert join_all(threads, 10) == []
    probe = d.retention.free_bytes
    assert isinstance(probe, SimDisk) and probe() == SIM_DISK_BYTES   # nothing recorded
    seg = d.store.root / "segments" / "x"
    seg.mkdir(parents=True)
    (seg / "s.lts").write_bytes(b"x" * 1000)
    assert probe() == SIM_DISK_BYTES - 1000
    d2 = _daemon(tmp_path / "inj", "sim", free_bytes=lambda: 123)
    threads = start_services(d2)
    d2.stop.set()
    assert join_all(threads, 10) == []
    assert d2.retention.free_bytes() == 123
