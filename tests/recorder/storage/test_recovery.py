"""Power cut in the middle of a call: the next start recovers the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from recorder import fsutil
from recorder.evidence.verify import verify_call
from recorder.storage.store import Store, device_key_for

# Slow (`make test-fast` leaves it out): daemons killed at every crash point.
pytestmark = pytest.mark.slow


def _scenario(path, duration, extra=()):
    path.write_text(json.dumps({
        "rate": 8000, "start": "2026-11-25T09:00:00Z", "duration": duration, "lines": 1,
        "events": [{"at": 0.0, "line": 0, "type": "tone", "hz": 900, "duration": duration},
                   {"at": 1.0, "line": 0, "type": "offhook"}, *extra]}))
    return path


def _simulate(tmp_path, practice_keys, scenario, speed, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "recorder.cli", "-q", "simulate", str(scenario),
         "--data-dir", str(tmp_path / "data"), "--public-key", str(practice_keys[1]),
         "--speed", str(speed)],
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _reboot_quietly(tmp_path, practice_keys, duration):
    """The next boot: a short, quiet line on the same data dir; it must exit cleanly."""
    quiet = tmp_path / "quiet.json"
    quiet.write_text(json.dumps({"rate": 8000, "start": "2026-11-25T10:00:00Z",
                                 "duration": duration, "lines": 1, "events": []}))
    p2 = _simulate(tmp_path, practice_keys, quiet, speed=0)
    assert p2.wait(60) == 0, p2.stderr.read().decode()[-2000:]


def _wait_for_segments(data, n, proc, timeout=60):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if (data / "linetap.db").exists():
            try:
                s = Store(data)
                k = s.m.Segment.select().count()
                s.close()
                if k >= n:
                    return
            except Exception:  # noqa: BLE001 - the db may be mid-creation
                pass
        if proc.poll() is not None:
            pytest.fail(f"simulate exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    pytest.fail("no segments appeared")


def test_restart_in_the_middle_of_a_call(tmp_path, practice_keys):
    sc = _scenario(tmp_path / "long.json", 600.0)
    proc = _simulate(tmp_path, practice_keys, sc, speed=20)
    _wait_for_segments(tmp_path / "data", 3, proc)
    proc.send_signal(signal.SIGKILL)                         # the cleaner pulls the plug
    proc.wait(10)
    s = Store(tmp_path / "data")
    assert s.calls()[0].state == "active"
    s.close()
    # Next boot: a short, quiet line. The old call must be closed, signed, and verify.
    _reboot_quietly(tmp_path, practice_keys, 2.0)
    s = Store(tmp_path / "data")
    row = s.calls()[0]
    assert row.state == "recovered" and row.meta["recovered"] is True
    assert row.segments >= 3
    v, header = verify_call(s, row, device_key_for(tmp_path / "data"))
    assert v.status == "verified", v.detail
    assert header["recovered"] is True
    assert s.integrity_check() == "ok"
    assert not list((tmp_path / "data").rglob(f"*{fsutil.TEMP_SUFFIX}"))


@pytest.mark.parametrize("point", ["before_fsync:1", "before_rename:1", "before_dirsync:1",
                                   "before_fsync:4", "before_rename:4", "before_dirsync:4"])
def test_crash_inside_the_segment_write(tmp_path, practice_keys, point):
    """The kill lands inside fsync/rename (the 1st write is the identity key, the 4th a
    segment): no temp file survives, the store verifies, and the box records again."""
    sc = _scenario(tmp_path / "s.json", 60.0)
    proc = _simulate(tmp_path, practice_keys, sc, speed=0,
                     env={"LINETAP_CRASH_AT": point})
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    _reboot_quietly(tmp_path, practice_keys, 1.0)
    s = Store(tmp_path / "data")
    assert s.integrity_check() == "ok"
    for row in s.calls():
        v, _ = verify_call(s, row, device_key_for(tmp_path / "data"))
        assert v.status == "verified", v.detail
    assert not list((tmp_path / "data").rglob(f"*{fsutil.TEMP_SUFFIX}"))


def test_power_cut_during_a_pause_keeps_the_pause(tmp_path, practice_keys):
    sc = _scenario(tmp_path / "paused.json", 600.0,
                   [{"at": 12.0, "type": "button", "button": "pause", "hold": 0.1}])
    proc = _simulate(tmp_path, practice_keys, sc, speed=20)
    _wait_for_segments(tmp_path / "data", 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    _reboot_quietly(tmp_path, practice_keys, 1.0)
    s = Store(tmp_path / "data")
    row = s.calls()[0]
    assert row.state == "recovered"
    pauses = row.meta["pauses"]
    assert len(pauses) == 1 and pauses[0]["start"] == "2026-11-25T09:00:12.000Z"
    end = row.first_sample + sum(x.samples for x in s.segments_of(row.id))
    assert pauses[0]["end_sample"] == end and pauses[0]["end"] is not None


def test_a_kill_at_a_journal_write_keeps_every_journalled_record(tmp_path, practice_keys):
    """Killed at the 3rd journal fdatasync (records waiting together share one): the
    records written before it are adopted at the next start after the stored
    segments, each at least journal_s = 0.5 s (cut at processor passes)."""
    sc = _scenario(tmp_path / "j.json", 60.0)
    proc = _simulate(tmp_path, practice_keys, sc, speed=0,
                     env={"LINETAP_CRASH_AT": "journal_before_sync:3"})
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    _reboot_quietly(tmp_path, practice_keys, 1.0)
    s = Store(tmp_path / "data")
    row = s.calls()[0]
    assert row.state == "recovered"
    sizes = [x.samples for x in s.segments_of(row.id)]
    records = [n for n in sizes if n != 80000]
    assert records and sizes[:len(sizes) - len(records)] == [80000] * (len(sizes) -
                                                                      len(records)), sizes
    assert all(4000 <= n < 8000 for n in records), sizes
    v, header = verify_call(s, row, device_key_for(tmp_path / "data"))
    assert v.status == "verified", v.detail
    assert not list((tmp_path / "data").rglob("journal.ltj"))


def test_a_recovered_call_keeps_its_caller_sealed(tmp_path, practice_keys):
    """The process that knew the caller in clear died: the manifest recovery signs
    carries the row's sealed copy, and export with the practice key shows the caller."""
    from recorder.evidence import keys, segfile
    from recorder.evidence.export import export_calls
    from tests.support.personal_scan import personal_traces
    sc = tmp_path / "in.json"
    sc.write_text(json.dumps({
        "rate": 8000, "start": "2026-11-25T09:00:00Z", "duration": 600.0, "lines": 1,
        "events": [{"at": 1.0, "line": 0, "type": "cli", "number": "01632960123",
                    "name": "J SMITH"},
                   {"at": 2.0, "line": 0, "type": "ring", "until": 6.0},
                   {"at": 4.3, "line": 0, "type": "offhook"},
                   {"at": 5.0, "line": 0, "type": "tone", "hz": 900, "duration": 590.0}]}))
    proc = _simulate(tmp_path, practice_keys, sc, speed=20)
    _wait_for_segments(tmp_path / "data", 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    _reboot_quietly(tmp_path, practice_keys, 2.0)
    data = tmp_path / "data"
    s = Store(data)
    [row] = s.calls()
    assert row.state == "recovered" and row.party_masked == "0163*****23"
    priv = keys.load_practice_private(practice_keys[0])
    body = json.loads(segfile.open_payload(segfile.parse(s.abs(row.manifest).read_bytes()),
                                           priv))
    assert body["caller_number"] is None and body["personal_sealed"]
    done, failures = export_calls(s, priv, tmp_path / "out", device_key=device_key_for(data))
    meta = json.loads((tmp_path / "out" / f"{row.id}.json").read_text())
    assert failures == 0 and meta["caller_number"] == "01632960123"
    assert meta["caller_name"] == "J SMITH" and "personal_sealed" not in meta
    s.close()
    assert personal_traces(data, ["01632960123"], ["J SMITH"]) == []
