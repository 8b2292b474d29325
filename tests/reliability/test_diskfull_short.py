"""Short version of the full-disk campaign (bench/campaigns/diskfull.py): the data dir on
a small tmpfs (root only), a day with the broker down (eviction of unsynced data,
low_storage, every eviction audited, SQLite consistent), a day with the broker up and a
quiet drain (alarm cleared, synced data evicted first). The ENOSPC behaviour the full
campaign found (findings 6 and 7 in docs/reliability.md) is pinned by regression
tests: the daemon keeps recording through ENOSPC, and starts on a disk still full."""

from __future__ import annotations

import logging
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests_reliability_skip import need_mosquitto, need_root  # noqa: E402

from bench.campaigns import common, diskfull  # noqa: E402


def _args(**kw):
    base = dict(quick=True, seed=5, keep=False, speed=0.0, full_s=2.0, days_down=1,
                day_s=300.0, phases="AB")
    return Namespace(**{**base, **kw})


def test_eviction_alarm_audit_and_drain():
    need_root()
    need_mosquitto()
    c = diskfull.Campaign(_args())
    try:
        rc = c.run()
    finally:
        logging.getLogger().removeHandler(c.trap)
    assert c.alarm_raised and c.alarm_cleared
    assert not c.violations, c.violations
    assert rc == 0


@pytest.fixture
def full_box():
    need_root()
    c = diskfull.Campaign(_args())
    logging.getLogger().addHandler(c.trap)
    c.mount(10)
    c.min_free_mb = 2
    c.box = common.new_box(c.mnt)
    c.rig = common.SyncRig(c.root, c.box)
    yield c
    logging.getLogger().removeHandler(c.trap)
    c.umount()


def test_enospc_while_recording_keeps_the_daemon_running(full_box):
    info = full_box.boot("ENOSPC", 90.0, fill=True)
    assert not info["dead_threads"], info["errors"]
    assert info["ended"], {k: v for k, v in info.items() if k not in ("samples",)}


def test_start_on_a_full_disk_recovers_evicts_and_records(full_box):
    """A box that stopped on ENOSPC (calls left open) restarts on a disk still full:
    recovery writes before retention can free anything."""
    full_box.boot("ENOSPC", 90.0, fill=True)   # leaves open calls behind
    full_box._fill(0.0, hold=True)
    try:
        info = full_box.boot("start on a full disk", 30.0)
    finally:
        full_box.unfill()
    assert info["exception"] is None and info["ended"]
