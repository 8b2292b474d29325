"""Short run of the full-disk campaign (``python -m bench.campaigns.diskfull --quick``):
the data dir on a small tmpfs (root only); a day with the broker down (eviction of
unsynced data, low_storage, every eviction audited, SQLite consistent); a day with the
broker up and a quiet drain (alarm cleared, synced data evicted first); then the disk
filled to the last byte while 4 lines record, and a start on a disk still full. The
last phase pins the ENOSPC behaviour the full campaign found (findings 6 and 7 in
docs/reliability.md): the daemon keeps recording through ENOSPC, and a box that stopped
there starts again on a full disk (recovery writes before retention can free
anything)."""

from __future__ import annotations

import pytest

from tests.reliability.campaign import need_mosquitto, need_root, run_campaign


@pytest.mark.slow
def test_eviction_alarm_audit_drain_and_enospc():
    need_root()
    need_mosquitto()
    rc, summary, out = run_campaign("diskfull", "--seed", "5", "--full-s", "2",
                                    "--days-down", "1", "--phases", "ABC")
    assert summary["campaign"] == "diskfull"
    assert "skipped" not in summary
    assert summary["low_storage_raised"] and summary["low_storage_cleared"]
    assert not summary["enospc_daemon_died"], out[-3000:]
    assert summary["start_on_full_disk_ok"], out[-3000:]
    assert summary["violations"] == 0, out[-3000:]
    assert rc == 0
