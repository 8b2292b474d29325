"""The disk reserve (recorder/storage/reserve.py, docs/retention.md): a box started on a disk
with 0 bytes free plays the announcement and records (root only: a real tmpfs); and the
reserve's own life cycle on any disk."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from recorder.storage.reserve import FILE, Reserve
from tests.reliability.test_diskfull_roots import RATE, _scenario, _verify_all
from tests.reliability.test_diskfull_roots import disk as disk  # noqa: F401 - the fixture
from tests.support.sim import tone, write_wav

MB = 2**20


def test_reserve_is_made_only_with_room_released_once_and_made_again(tmp_path):
    r = Reserve(tmp_path / FILE, 2 * MB)
    assert not r.held and r.shortfall() == 2 * MB
    assert not r.ensure(free_bytes=3 * MB, min_free_bytes=2 * MB)   # no room above min
    assert not (tmp_path / FILE).exists()
    assert r.ensure(free_bytes=10 * MB, min_free_bytes=2 * MB)
    assert r.held and r.shortfall() == 0
    assert (tmp_path / FILE).stat().st_size == 2 * MB
    # Real blocks, not a sparse hole: the space is really taken from the disk.
    assert (tmp_path / FILE).stat().st_blocks * 512 >= 2 * MB
    assert r.release("test") == 2 * MB
    assert r.release("again") == 0 and not r.held
    assert r.ensure(free_bytes=10 * MB, min_free_bytes=0) and r.created_count == 2
    assert not list(tmp_path.glob(".*.tmp"))
    none = Reserve(tmp_path / "none", 0)
    assert none.held and none.shortfall() == 0 and none.release("x") == 0
    with pytest.raises(ValueError, match="negative"):
        Reserve(tmp_path / "bad", -1)


def _cfg(sc, data, pub, **over):
    from recorder import config
    from recorder.runtime import simulate
    cfg = simulate.sim_config(config.Config(), sc, str(data), str(pub))
    return cfg.replace(audio__period_frames=400, retention__interval_s=1.0,
                       retention__min_free_mb=1.0, retention__reserve_mb=1.0, **over)


def test_a_box_started_on_a_disk_with_0_bytes_free_announces_and_records(
        disk, tmp_path, practice_keys):  # noqa: F811 - the fixture imported above
    from recorder.runtime import simulate
    _priv, pub = practice_keys
    ann = write_wav(tmp_path / "ann.wav", tone(440, 2.0, 0.25))
    probe = {"free_bytes": disk.free}
    # Day 1: a call recorded; retention puts the reserve in place.
    day1 = _scenario(tmp_path, [
        {"at": 0.0, "line": 0, "type": "tone", "hz": 500, "duration": 40.0},
        {"at": 1.0, "line": 0, "type": "offhook"},
        {"at": 35.0, "line": 0, "type": "onhook"}], 40.0, 1)
    simulate.run(day1, _cfg(day1, disk.data, pub), **probe)
    reserve = disk.data / FILE
    assert reserve.stat().st_size == MB
    # Something else fills the disk to the last byte; the box restarts.
    disk.fill()
    assert disk.free() == 0
    seen = []

    def watch_alarm(daemon, line):
        stop = threading.Event()

        def run():
            while not stop.wait(0.05):
                seen.extend(daemon.alarms.snapshot())
        threading.Thread(target=run, daemon=True).start()
        watch_alarm.stop = stop
    day2 = _scenario(tmp_path, [
        {"at": 0.0, "line": 0, "type": "tone", "hz": 700, "duration": 40.0},
        {"at": 1.0, "line": 0, "type": "ring", "until": 6.0},
        {"at": 3.0, "line": 0, "type": "offhook"},
        {"at": 30.0, "line": 0, "type": "onhook"}], 40.0, 1, start="2026-11-26T09:00:00Z")
    try:
        res = simulate.run(day2, _cfg(day2, disk.data, pub, announcement__file=str(ann)),
                           keep_playback=True, before_start=watch_alarm, **probe)
    finally:
        watch_alarm.stop.set()
    played = res.line.played[:, 0].astype(np.int32)
    assert np.abs(played[int(3.3 * RATE):int(6.0 * RATE)]).max() > 1000, \
        "the announcement was not played"
    assert "low_storage" in seen
    verdicts = _verify_all(disk.data)
    from recorder.storage.store import Store
    s = Store(disk.data)
    try:
        rows = s.calls()
        new = [r for r in rows if r.start_time and r.start_time >= day2.start.timestamp()]
    finally:
        s.close()
    assert len(new) == 1 and new[0].state == "closed", [(r.id, r.state) for r in rows]
    assert verdicts[new[0].id].status == "verified", verdicts[new[0].id].detail
    # Space comes back: the next boot puts the reserve back.
    disk.unfill()
    day3 = _scenario(tmp_path, [], 5.0, 1, start="2026-11-27T09:00:00Z")
    simulate.run(day3, _cfg(day3, disk.data, pub), **probe)
    assert reserve.stat().st_size == MB
