"""Box retention: the pure decision table, and the executor on a real store."""

from __future__ import annotations

import pytest

from recorder.errors import CommandRejected
from recorder.evidence import audit
from recorder.storage.retention.deletion import resume_deletions
from recorder.storage.retention.policy import CallView, Decision, Reason, SegView, decide
from recorder.storage.retention.service import Retention
from tests.support.syncbox import box_cfg, make_box, practice_keys, write_calls

DAY = 86400.0
NOW = 1_800_000_000.0
MB = 2**20


def cv(id_, age_days, *, keep=90, state="closed", hold=False, synced=False, synced_age=None,
       size=MB):
    start = NOW - age_days * DAY
    return CallView(id_, start, start + keep * DAY, state, hold, synced,
                    None if synced_age is None else NOW - synced_age * DAY, size)


def tuples(decisions: list[Decision]) -> list[tuple]:
    """Decisions in the tables' short form: (call, reason) or (call, reason, seqs)."""
    assert all(isinstance(d.reason, Reason) for d in decisions)
    return [(d.call_id, d.reason.value) + (() if d.whole_call else (d.seqs,))
            for d in decisions]


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
    assert tuples(decide(calls, NOW, free, min_free)) == want


def sv(*spec):
    """Segments from (synced, size_mb) pairs, seq in order."""
    return tuple(SegView(i, int(mb * MB), bool(sy)) for i, (sy, mb) in enumerate(spec))


def cs(id_, age_days, segs, *, synced=None, **kw):
    """A call with per-segment detail; fully synced only if said so."""
    full = all(s.synced for s in segs) if synced is None else synced
    c = cv(id_, age_days, synced=full, synced_age=1 if full else None,
           size=sum(s.bytes for s in segs), **kw)
    from dataclasses import replace
    return replace(c, segments=segs)


@pytest.mark.parametrize("calls, free, min_free, want", [
    # A fully synced call goes whole (even if one segment would do), before any
    # unsynced byte of an older call.
    ([cs("u_old", 9, sv((0, 1), (0, 1))), cs("s", 2, sv((1, 1), (1, 1), (1, 1)))],
     9 * MB, 10 * MB, [("s", "eviction")]),
    # Next: the synced segments of calls not fully synced, oldest call first, in order;
    # the call (row + manifest) stays because part of it is not upstream yet.
    ([cs("p_old", 5, sv((1, 1), (0, 1), (1, 1))), cs("p_new", 3, sv((1, 1), (0, 1))),
      cs("u", 9, sv((0, 1)))],
     7 * MB, 10 * MB, [("p_old", "eviction", (0, 2)), ("p_new", "eviction", (0,))]),
    # Segments all acked but the manifest not: still not a whole-call eviction.
    ([cs("m", 5, sv((1, 1), (1, 1)), synced=False)], 9 * MB, 11 * MB,
     [("m", "eviction", (0, 1))]),
    # Last: unsynced segments, oldest call first, one at a time until enough is free.
    ([cs("u_new", 1, sv((0, 1), (0, 1))), cs("u_old", 4, sv((0, 1), (0, 1), (0, 1))),
      cs("s", 2, sv((1, 1)))],
     6 * MB, 10 * MB, [("s", "eviction"), ("u_old", "eviction", (0, 1, 2))]),
    ([cs("u_new", 1, sv((0, 1), (0, 1))), cs("u_old", 4, sv((0, 1), (0, 1), (0, 1))),
      cs("s", 2, sv((1, 1)))],
     5 * MB, 10 * MB,
     [("s", "eviction"), ("u_old", "eviction", (0, 1, 2)), ("u_new", "eviction", (0,))]),
    # Mixed: synced parts of every call before any unsynced segment.
    ([cs("a", 5, sv((0, 1), (1, 1))), cs("b", 4, sv((1, 1), (0, 1)))],
     7 * MB, 10 * MB,
     [("a", "eviction", (0, 1)), ("b", "eviction", (0,))]),
    # Held and active calls keep every segment, even with the disk full.
    ([cs("h", 5, sv((1, 1)), hold=True), cs("act", 4, sv((0, 1)), state="active")],
     0, 10 * MB, []),
    # Enough space: nothing evicted.
    ([cs("a", 5, sv((1, 1)))], 10 * MB, 10 * MB, []),
])
def test_decide_eviction_per_segment(calls, free, min_free, want):
    assert tuples(decide(calls, NOW, free, min_free)) == want


def test_decide_eviction_unsynced_after_synced():
    calls = [cv("u_old", 5), cv("s", 2, synced=True, synced_age=1), cv("u_new", 1)]
    got = tuples(decide(calls, NOW, 0, int(2.5 * MB)))
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
    assert tuples(r.tick()) == [(old[0], "retention_expiry")]
    row = store.call(old[0])
    assert row.state == "deleted" and row.personal is None and row.party_masked is None \
        and row.manifest is None
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
    got = tuples(r.tick())
    # Per segment: the synced call whole, then the oldest unsynced call's segments (its
    # row and manifest stay: the manifest still goes upstream).
    assert got[0] == (new[0], "eviction")
    assert got[1][:2] == (new[1], "eviction") and len(got[1]) == 3
    assert "low_storage" in alarms.active and alarms.active["low_storage"][
        "evicted_unsynced"] == len(got[1][2])
    left = {s.seq for s in store.segments_of(new[1])}
    assert left == {0, 1} - set(got[1][2])
    assert store.call(new[1]).state == "closed" and store.abs(store.call(new[1]).manifest) \
        .is_file()
    assert store.call(new[2]).state == "closed"
    ev = [e["detail"] for e in audit.read(box.data_dir) if e["action"] == "eviction"]
    assert len(ev) == 2 and ev[1]["seqs"] == list(got[1][2]) and not ev[1]["whole_call"]
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
    assert tuples(r.tick()) == [(ids[0], "synced")]
    # The upstream pushes 10 days: the other call (20 days old) is now past its deadline.
    r.apply({"kind": "retention", "days": 10, "nonce": "n" * 16})
    assert tuples(r.tick()) == [(ids[1], "retention_expiry")]


class FakeDisk:
    """A disk of ``capacity`` bytes holding only the recordings under ``root``: free
    space follows what retention deletes, and nothing reads the real disk."""

    def __init__(self, root, capacity):
        self.root, self.capacity = root, capacity

    def __call__(self):
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return self.capacity - used


def test_executor_evicts_segments_against_a_fake_disk(box):
    import time
    now = time.time()
    ids = write_calls(box, n_calls=3, segs=3, start=now - 3 * DAY)
    store = box.store
    S, C = store.m.Segment, store.m.Call
    # Call 0: fully synced. Call 1: segment 0 acked, the rest and the manifest not.
    S.update(acked=True, acked_time=now).where(S.call == ids[0]).execute()
    C.update(manifest_acked=True).where(C.id == ids[0]).execute()
    S.update(acked=True, acked_time=now).where((S.call == ids[1]) & (S.seq == 0)).execute()
    cfg = box_cfg(box.data_dir)
    min_free = int(cfg.retention.min_free_mb * MB)
    seg = {(s.call_id, s.seq): s.size for s in S.select()}
    # Short by the synced call plus half of call 1's first segment.
    short = sum(v for (c, _), v in seg.items() if c == ids[0]) + seg[(ids[1], 0)] // 2
    disk = FakeDisk(box.data_dir / "segments", 0)
    disk.capacity = min_free - short - disk()       # so that free = min_free - short
    alarms = FakeAlarms()
    r = Retention(store, box.data_dir, cfg, alarms=alarms, free_bytes=disk)
    got = tuples(r.tick())
    assert got == [(ids[0], "eviction"), (ids[1], "eviction", (0,))]
    assert disk() >= min_free
    assert store.call(ids[0]).state == "deleted"
    assert [s.seq for s in store.segments_of(ids[1])] == [1, 2]
    # Only synced data went: no alarm.
    assert "low_storage" not in alarms.active
    # The disk fills again: now unsynced segments go, oldest first, and the alarm rises.
    disk.capacity += min_free - seg[(ids[1], 1)] - seg[(ids[1], 2)] // 2 - disk()
    got = tuples(r.tick())
    assert got == [(ids[1], "eviction", (1, 2))]
    assert alarms.active["low_storage"]["evicted_unsynced"] == 2
    assert store.call(ids[1]).state == "closed" and not store.segments_of(ids[1])
    ev = [e["detail"] for e in audit.read(box.data_dir) if e["action"] == "eviction"]
    assert [(d["call"], d.get("seqs"), d["unsynced_segments"]) for d in ev] == [
        (ids[0], None, 0), (ids[1], [0], 0), (ids[1], [1, 2], 2)]
    assert store.segments_of(ids[2]) and store.call(ids[2]).state == "closed"
    # Space is back on the next tick, but unsynced recordings were just lost: the alarm
    # must not flicker off while that is recent.
    disk.capacity += 10 * min_free
    assert tuples(r.tick()) == []
    assert alarms.active["low_storage"]["evicted_unsynced_total"] == 2




def refuse_writes(monkeypatch, store, verbs=("DELETE", "UPDATE")):
    """Make the store's database refuse ``verbs`` as a disk full to the last byte
    does; ``monkeypatch.undo()`` gives it its space back."""
    import peewee as pw
    real = store.db.execute_sql

    def full(sql, *a, **k):
        if sql.lstrip().upper().startswith(tuple(verbs)):
            raise pw.OperationalError("database or disk is full")
        return real(sql, *a, **k)

    monkeypatch.setattr(store.db, "execute_sql", full)


@pytest.mark.parametrize("how", ["delete_call", "evict_segments"])
def test_a_deletion_the_database_refuses_is_finished_on_the_next_tick(box, monkeypatch,
                                                                       how):
    """On a disk full to the last byte the files must go first (SQLite cannot commit
    until they do); if the database still refuses the row change, it is owed and
    finished on the next tick, so the call never stays 'closed' pointing at a manifest
    that is gone, and the audit entry comes with it (finding 15)."""
    import peewee as pw
    [cid] = write_calls(box, n_calls=1, segs=3)
    store = box.store
    r = Retention(store, box.data_dir, box_cfg(box.data_dir), free_bytes=lambda: 10**12)
    files = [store.abs(s.path) for s in store.segments_of(cid)] + \
        [store.abs(store.call(cid).manifest)]
    refuse_writes(monkeypatch, store)
    with pytest.raises(pw.OperationalError):
        if how == "delete_call":
            r.delete_call(cid, "eviction")
        else:
            r.evict_segments(cid, [0, 1])
    r.tick()             # still refused: still owed, and the tick goes on (issue 22)
    monkeypatch.undo()
    assert not [e for e in audit.read(box.data_dir) if e["action"] == "eviction"]
    r.tick()                                       # the database takes it now
    row = store.call(cid)
    ev = [e["detail"] for e in audit.read(box.data_dir) if e["action"] == "eviction"]
    if how == "delete_call":
        assert not any(p.exists() for p in files)
        assert row.state == "deleted" and row.manifest is None
        assert not store.segments_of(cid)
        assert len(ev) == 1 and ev[0]["segments"] == 3
    else:
        assert [s.seq for s in store.segments_of(cid)] == [2]
        assert row.state == "closed" and store.abs(row.manifest).is_file()
        assert len(ev) == 1 and ev[0]["seqs"] == [0, 1] and not ev[0]["whole_call"]


_CUT = """
import sys
from recorder.storage.retention.service import Retention
from recorder.storage.store import Store
store = Store(sys.argv[1])
r = Retention(store, sys.argv[1], None, free_bytes=lambda: 10**12)
if sys.argv[2] == "delete_call":
    r.delete_call(sys.argv[3], "upstream_delete", nonce="n" * 16)
else:
    r.evict_segments(sys.argv[3], [0, 1])
sys.exit(3)     # the crash point was never reached
"""


@pytest.mark.parametrize("how,point", [
    ("delete_call", "delete_marked"), ("delete_call", "delete_unlinked"),
    ("delete_call", "delete_committed"), ("delete_call", "delete_audited"),
    ("evict_segments", "evict_marked"), ("evict_segments", "delete_committed"),
    ("evict_segments", "delete_audited")])
def test_a_deletion_cut_by_power_loss_is_finished_at_start_up(box, how, point):
    """Power is cut at each step of a deletion (SIGKILL at a crash point, in a separate
    process). Start-up recovery finishes it: no row names a file that is gone, nothing
    else is touched, and the deletion is audited exactly once."""
    import hashlib
    import os
    import subprocess
    import sys

    from recorder.storage.store import Store
    keep, cid = write_calls(box, n_calls=2, segs=3)
    box.store.close()
    env = dict(os.environ, LINETAP_CRASH_AT=point)
    p = subprocess.run([sys.executable, "-c", _CUT, str(box.data_dir), how, cid], env=env,
                       capture_output=True, timeout=120)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    store = Store(box.data_dir)                                    # the next boot
    assert resume_deletions(store, box.data_dir) == 1
    assert resume_deletions(store, box.data_dir) == 0              # nothing left over
    row = store.call(cid)
    for r in store.calls():                                       # every row names a file
        for s in store.segments_of(r.id):
            data = store.abs(s.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == s.sha256
        assert store.abs(r.manifest).is_file()
    assert len(store.segments_of(keep)) == 3
    acts = [e for e in audit.read(box.data_dir) if e["detail"].get("call") == cid]
    assert len(acts) == 1, acts
    assert audit.verify(box.data_dir).problems == []
    seg_root = box.data_dir / "segments"
    assert not [p for p in seg_root.rglob("*") if p.name.endswith(".del")]
    if how == "delete_call":
        assert row.state == "deleted" and row.manifest is None
        assert not [p for p in seg_root.rglob(f"*{cid}*")]          # folder pruned too
        assert acts[0]["action"] == "delete" and acts[0]["detail"]["reason"] == \
            "upstream_delete"
    else:
        assert row.state == "closed" and [s.seq for s in store.segments_of(cid)] == [2]
        assert acts[0]["action"] == "eviction" and acts[0]["detail"]["seqs"] == [0, 1]
    # Resumed when the cut came before the entry; the original entry otherwise.
    resumed = point not in ("delete_audited",)
    assert bool(acts[0]["detail"].get("resumed")) == resumed


def test_start_up_leaves_markers_it_does_not_own_alone(box):
    """A folder that only looks like a deletion marker (an unknown call, a name that
    does not parse) is left as it is, and the box's own calls are untouched."""
    [cid] = write_calls(box, n_calls=1, segs=2)
    day = box.store.abs(box.store.segments_of(cid)[0].path).parent.parent
    stray = day / ".C999-L0-abcdef.retention_expiry.del"
    stray.mkdir()
    (stray / "00000.seg").write_bytes(b"not ours")
    odd = day / cid / ".notes.del"
    odd.write_bytes(b"x")
    assert resume_deletions(box.store, box.data_dir) == 0
    assert (stray / "00000.seg").read_bytes() == b"not ours" and odd.exists()
    assert len(box.store.segments_of(cid)) == 2 and box.store.call(cid).state == "closed"
    assert not audit.read(box.data_dir)


def test_resuming_an_eviction_frees_the_space_before_it_commits(box, monkeypatch):
    """Cut after the rename, before the truncate, on a disk still full at the next
    start: the resume must free the space before its commit, or recovery could never
    make room (finding 15 again)."""
    import os
    import subprocess
    import sys

    import peewee as pw

    from recorder.storage.store import Store
    [cid] = write_calls(box, n_calls=1, segs=3)
    box.store.close()
    p = subprocess.run([sys.executable, "-c", _CUT, str(box.data_dir), "evict_segments", cid],
                       env=dict(os.environ, LINETAP_CRASH_AT="evict_marked"),
                       capture_output=True, timeout=120)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    marks = [m for m in (box.data_dir / "segments").rglob("*.del")]
    assert len(marks) == 2 and all(m.stat().st_size > 0 for m in marks)
    store = Store(box.data_dir)
    refuse_writes(monkeypatch, store, ("DELETE", "UPDATE", "INSERT"))
    with pytest.raises(pw.OperationalError):
        resume_deletions(store, box.data_dir)
    assert all(m.stat().st_size == 0 for m in marks)          # the space is back
    monkeypatch.undo()
    assert resume_deletions(store, box.data_dir) == 1
    assert [s.seq for s in store.segments_of(cid)] == [2]


def test_a_command_on_a_call_with_an_owed_deletion_finishes_that_one(box, monkeypatch):
    """The database refused a deletion (owed, its marker in hand); an upstream delete
    for the same call arrives before the next tick. The owed deletion is finished
    with its marker and its one audit entry, not overtaken and left behind."""
    import peewee as pw
    [cid] = write_calls(box, n_calls=1, segs=2)
    store = box.store
    r = Retention(store, box.data_dir, box_cfg(box.data_dir), free_bytes=lambda: 10**12)
    refuse_writes(monkeypatch, store)
    with pytest.raises(pw.OperationalError):
        r.delete_call(cid, "eviction")
    monkeypatch.undo()
    assert r.apply({"kind": "delete", "call": cid, "nonce": "n" * 16}) == "absent"
    assert store.call(cid).state == "deleted"
    acts = [e for e in audit.read(box.data_dir) if e["detail"].get("call") == cid]
    assert [(e["action"], e["detail"]["reason"]) for e in acts] == [("eviction", "eviction")]
    assert not [p for p in (box.data_dir / "segments").rglob("*") if p.name.endswith(".del")]
