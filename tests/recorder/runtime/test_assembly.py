"""recorder.runtime.assembly: retention always runs; a broken sync config never stops
recording; the hardware decides the disk probe and the clock."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from hw.clock import SimClock
from hw.simdisk import SIM_DISK_BYTES, SimDisk
from recorder.runtime.assembly import build_services
from recorder.runtime.hardware import Hardware
from recorder.runtime.service_api import ServiceContext
from recorder.runtime.simulate import SimHardware
from recorder.threads import join_all
from tests.support.syncbox import box_cfg, make_box, practice_keys


class Alarms:
    def __init__(self):
        self.active = {}

    def set(self, name, on, **detail):
        if on:
            self.active[name] = detail


def _context(box, cfg, **over) -> ServiceContext:
    kw = dict(cfg=cfg, store=box.store, data_dir=box.data_dir, device="dev-a",
              alarms=Alarms(), stop=threading.Event(), status=lambda: {},
              now=lambda: 0.0, free_bytes=lambda: 10**12)
    kw.update(over)
    return ServiceContext(**kw)


def test_bad_sync_config_is_an_alarm_not_a_crash(tmp_path):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    cfg = box_cfg(box.data_dir, enabled=True, host="127.0.0.1", port=1,
                  ca=str(tmp_path / "missing-ca.pem"), cert=str(tmp_path / "nope.pem"),
                  key=str(tmp_path / "nope.key"))
    ctx = _context(box, cfg)
    services = build_services(ctx)
    threads = services.start()
    try:
        assert [t.name for t in threads] == ["retention"]
        assert "sync_config" in ctx.alarms.active
        assert services.sync_status()["link"] == "not started"
    finally:
        ctx.stop.set()
        assert join_all(threads, 10) == []


def test_retention_uses_the_context_probe_and_clock(tmp_path):
    """Retention judges free space and deadlines by what the hardware gave the daemon."""
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    services = build_services(_context(box, box_cfg(box.data_dir), now=lambda: 42.0,
                                       free_bytes=lambda: 123))
    assert services.retention.free_bytes() == 123
    assert services.retention.clock() == 42.0
    assert services.sync_status() is None          # sync off


def test_simulated_disk_never_reads_the_host(tmp_path):
    """Eviction never reads the host's disk in simulation; a probe passed in replaces it."""
    clock = SimClock(8000)
    hw = SimHardware(SimpleNamespace(capture_pcm="c", playback_pcm="p"), None, clock,
                     lambda n: True, 1000.0)
    probe = hw.free_bytes(tmp_path)
    assert isinstance(probe, SimDisk) and probe() == SIM_DISK_BYTES   # nothing recorded
    seg = tmp_path / "segments" / "x"
    seg.mkdir(parents=True)
    (seg / "s.lts").write_bytes(b"x" * 1000)
    assert probe() == SIM_DISK_BYTES - 1000
    hw2 = SimHardware(SimpleNamespace(capture_pcm="c", playback_pcm="p"), None, clock,
                      lambda n: True, 1000.0, free_bytes=lambda: 123)
    assert hw2.free_bytes(tmp_path)() == 123
    # Line time, not the host's clock, and never an NTP re-anchor.
    clock.position = 8000 * 30
    assert hw.now() == 1030.0 and hw.system_clock_synchronised() is False
    # A Pi's probe is the data partition's real free space.
    assert Hardware("c", "p").free_bytes(tmp_path)() > 0
