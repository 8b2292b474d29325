"""Short run of the power-cut campaign (``python -m bench.campaigns.powercut --quick``):
a few SIGKILLs of ``linetap simulate`` (4 lines, sync through a local mosquitto to an
ingest worker), each restart checked (integrity, verification, no temp or plaintext file, open calls
recovered, bounded loss), deletions cut at each step and finished by the next boot,
then the backlog drains with nothing lost or duplicated. The last test cuts power
during recovery itself, on a box of its own (:mod:`tests.support.simbox`)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.campaign import need_mosquitto, run_campaign
from tests.support.simbox import new_box, unit_nice

DELETE_POINTS = 4   # the campaign's delete_marked, _unlinked, _committed, _audited


@pytest.mark.slow
def test_random_kills_recover_and_sync():
    need_mosquitto()
    rc, summary, out = run_campaign("powercut", "--seed", "11", "--speed", "4", "--kills",
                                    "4", "--points", "0", "--deletes", str(DELETE_POINTS))
    assert summary["campaign"] == "powercut"
    assert summary["kills"] == 4 + DELETE_POINTS
    assert summary["recovered_calls"] > 0
    # A deletion cut at each of its steps, finished by the next boot.
    assert summary["deletions_finished"] == DELETE_POINTS
    assert summary["upstream_lost"] == summary["upstream_duplicated"] == 0
    assert summary["violations"] == 0, out[-3000:]
    assert rc == 0
    # The daemon ran at the recorder unit's priority (as root; otherwise at ours), and
    # the starvation at each kill was measured and kept under its ceiling.
    assert summary["daemon_nice"] == (unit_nice() if os.geteuid() == 0 else None)
    assert summary["starved_at_kill_max_s"] is not None
    assert summary["losses_over_lag_ceiling"] == 0


def _scenario(path: Path, start: str, duration: float, call: bool) -> Path:
    ev = [{"at": 1.0, "line": 0, "type": "offhook"},
          {"at": 1.0, "line": 0, "type": "tone", "hz": 440, "duration": duration - 1.5}] \
        if call else []
    path.write_text(json.dumps({"rate": 8000, "start": start, "duration": duration,
                                "lines": 1, "events": ev}))
    return path


@pytest.mark.slow   # a daemon subprocess, killed
@pytest.mark.parametrize("point", ["before_fsync:1", "before_rename:1"])
def test_power_cut_during_recovery_leaves_a_verifiable_call(tmp_path, point):
    box = new_box(tmp_path / "box")
    box.spawn(_scenario(tmp_path / "a.json", "2026-11-25T09:00:00Z", 600.0, True), 20.0)
    end = time.monotonic() + 60
    while time.monotonic() < end and not list(box.data.rglob("00002.seg")):
        assert box.proc.poll() is None, box.log_tail()
        time.sleep(0.05)
    box.kill()                                           # a call is open
    # Next boot: the first crash-safe write is recovery's manifest; power fails there.
    box.spawn(_scenario(tmp_path / "b.json", "2026-11-25T10:00:00Z", 5.0, False), 0.0,
              env={"LINETAP_CRASH_AT": point})
    assert box.proc.wait(60) == -signal.SIGKILL
    box.spawn(_scenario(tmp_path / "c.json", "2026-11-25T11:00:00Z", 2.0, False), 0.0)
    assert box.proc.wait(60) == 0, box.log_tail()
    from recorder.evidence.verify import verify_call
    from recorder.storage.store import Store, device_key_for
    s = Store(box.data)
    rows = s.calls()
    assert rows
    for row in rows:
        v, _ = verify_call(s, row, device_key_for(box.data))
        assert v.status == "verified", (row.state, v.detail)
