"""Box retention: the pure decision table, and the executor on a real store."""

from __future__ import annotations

import pytest
from synchelpers import box_cfg, make_box, practice_keys, write_calls

from recorder import audit
from recorder.errors import CommandRejected
from recorder.retention import CallView, Retention, decide

DAY = 86400.0
NOW = 1_800_000_000.0
MB = 2**20


def cv(id_, age_days, *, keep=90, state="closed", hold=False, synced=False, synced_age=None,
       size=MB):
    start = NOW - age_days * DAY
    return CallView(id_, start, start + keep * DAY, state, hold, synced,
                    None if synced_age is None else NOW - synced_age * DAY, size)


@pytest.mark.parametrize("calls, free, min_free, want", [
    # nothing to do
    ([cv("a", 1)], 100 * MB, 10 * MB, []),
    # past deadline, unsynced: deleted all the same (the box never waits)
    ([cv("a", 91)], 100 * MB, 10 * MB, [("a", "retention_expiry")]),
    # legal hold suspends the deadline and eviction
    ([cv("a", 91, hold=True)], 0, 10 * MB, []),
    # active calls are never touched
    ([cv("a", 91, state="active")], 0, 10 * MB, []),
    # tombstones are ignored
    ([cv("a", 91, state="deleted")], 100 * MB, 10 * MB, []),
    # synced copies go after keep_synced (7 days) but not before
    ([cv("a", 10, synced=True, synced_age=8), cv("b", 10, synced=True, synced_age=6)],
     100 * MB, 10 * MB, [("a", "synced")]),
    # disk low: synced first (oldest first), then oldest unsynced, stopping when enough
    ([cv("u_old", 5), cv("s_new", 2, synced=True, synced_age=1),
      cv("s_old", 3, synced=True, synced_age=1), cv("u_new", 1)],
     8 * MB, 10 * MB, [("s_old", "eviction"), ("s_new", "eviction")]),
    ([cv("u_old", 5), cv("s_new", 2, synced=True, synced_age=1), cv("u_new", 1)],
     9 * MB, 10 * MB + 1, [("s_new", "eviction"), ("u_old", "eviction")]),
    # expiry frees space, so no eviction is needed
    ([cv("old", 100, size=5 * MB), cv("new", 1)], 6 * MB, 10 * MB,
     [("old", "retention_expiry")]),
    # missed calls (no bytes) are never evicted, only expired
    ([cv("m", 1, state="missed", size=0)], 0, 10 * MB, []),
])
def test_decide_table(calls, free, min_free, want):
    assert decide(calls, NOW, free, min_free) == want


def test_decide_eviction_unsynced_after_synced():
    calls = [cv("u_old", 5), cv("s", 2, synced=True, synced_age=1), cv("u_new", 1)]
    got = decide(calls, NOW, 0, int(2.5 * MB))
    assert got == [("s", "eviction"), ("u_old", "eviction"), ("u_new", "eviction")]


@pytest.fixture
def box(tmp_path):
    _priv, pub, *_ = practice_keys(tmp_path)
    return make_box(tmp_path / "data", pub)


class FakeAlarms:
    def __init__(self):
        self.active = {}

    def set(self, name, on, **detail):
        if on:
            self.active[name] = detail
        else:
            self.active.pop(name, None)


def test_executor_expiry_hold_and_eviction(box, tmp_path):
    import time
    now = time.time()
    old = write_calls(box, n_calls=2, segs=2, start=now - 100 * DAY)   # past 90 days
    new = write_calls(box, n_calls=3, segs=2, start=now - 3600, seed=2)
    store = box.store
    C, S = store.m.Call, store.m.Segment
    C.update(legal_hold=True).where(C.id == old[1]).execute()
    # new[0] is synced, new[1] and new[2] are not
    S.update(acked=True, acked_time=now).where(S.call == new[0]).execute()
    C.update(manifest_acked=True).where(C.id == new[0]).execute()
    free = {"v": 10**12}
    alarms = FakeAlarms()
    r = Retention(store, box.data_dir, box_cfg(box.data_dir), alarms=alarms,
                  free_bytes=lambda: free["v"])
    assert r.tick() == [(old[0], "retention_expiry")]
    row = store.call(old[0])
    assert row.state == "deleted" and row.caller_number is None and row.manifest is None
    assert not store.segments_of(old[0])
    assert store.call(old[1]).state == "closed"            # on hold
    assert not any(p.is_file() for p in (box.data_dir / "segments").rglob("*")
                   if old[0] in str(p))
    assert not [d for d in (box.data_dir / "segments").rglob(old[0])]   # folder pruned
    acts = [e["action"] for e in audit.read(box.data_dir)]
    assert "retention_expiry" in acts
    # Disk low: the synced call goes first, then the oldest unsynced, with an alarm.
    min_free = int(box_cfg(box.data_dir).retention.min_free_mb * MB)
    one = sum(s.size for s in store.segments_of(new[0]))
    free["v"] = min_free - int(1.5 * one)
    got = r.tick()
    assert got == [(new[0], "eviction"), (new[1], "eviction")]
    assert "low_storage" in alarms.active
    assert store.call(new[2]).state == "closed"
    assert [e["action"] for e in audit.read(box.data_dir)].count("eviction") == 2
    with pytest.raises(CommandRejected):
        r.delete_call(old[1], "upstream_delete")


def test_executor_synced_copy_and_pushed_retention(box):
    import time
    now = time.time()
    ids = write_calls(box, n_calls=2, segs=1, start=now - 20 * DAY)
    store = box.store
    S, C = store.m.Segment, store.m.Call
    S.update(acked=True, acked_time=now - 8 * DAY).where(S.call == ids[0]).execute()
    C.update(manifest_acked=True).where(C.id == ids[0]).execute()
    r = Retention(store, box.data_dir, box_cfg(box.data_dir), free_bytes=lambda: 10**12)
    assert r.tick() == [(ids[0], "synced")]
    # The upstream pushes 10 days: the other call (20 days old) is now past its deadline.
    r.apply({"kind": "retention", "days": 10, "nonce": "n" * 16})
    assert r.tick() == [(ids[1], "retention_expiry")]
