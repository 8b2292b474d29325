"""The writer's queue never blocks the call processor (issue 22): over its audio budget,
journal records are skipped and segments shed as gaps, and a call with shed segments
still closes and verifies. No root needed (tests/reliability/test_diskfull_roots.py
has the same on a real full disk)."""

from __future__ import annotations

import errno
import threading
import time

import numpy as np

from recorder.evidence import keys, trust
from recorder.evidence.verify import verify_call
from recorder.storage.store import Store, device_key_for
from recorder.storage.writer import (
    CallInfo,
    CloseCall,
    JournalAppend,
    OpenCall,
    Writer,
    WriteSegment,
)
from recorder.timebase import Timebase

RATE = 8000
SEG = 10 * RATE


def _writer(tmp_path, practice_keys, **kw):
    data = tmp_path / "data"
    store = Store(data)
    ident = keys.ensure_identity(data, first_start=True)
    trust.pin(store, ident.public_key())      # as the daemon does at first start
    pub = keys.load_practice_public(practice_keys[1])
    w = Writer(store, device="dev-q", rate=RATE, codec_name="flac", aead="chacha20poly1305",
               public_key=pub, identity=ident, timebase=Timebase(RATE, time.time() - 600),
               retention_s=86400, **kw)
    return store, w, data


def test_put_never_blocks_and_sheds_audio_over_the_budget(tmp_path, practice_keys):
    # Budget: three 10 s segments (160 KB each). Nobody consumes the queue yet, as when
    # the writer is stuck on a full disk.
    store, w, data = _writer(tmp_path, practice_keys, max_queue=4,
                             max_queue_bytes=3 * SEG * 2)
    dropped = []

    def full_audit(job):      # the audit write fails too, as it would on that disk
        dropped.append(job.seq)
        raise OSError(errno.ENOSPC, "No space left on device")
    w.on_dropped = full_audit
    info = CallInfo(id="CQ-L0-000001", line=0, direction="inbound", offhook_sample=0)
    rng = np.random.default_rng(5)
    pcm = (rng.standard_normal(20 * SEG) * 2000).astype(np.int16)

    def processor():
        w.put(OpenCall(info))
        for k in range(20):                       # 200 s: far more than the budget
            w.put(WriteSegment(info.id, k, k * SEG, pcm[k * SEG:(k + 1) * SEG].copy()))
        w.put(JournalAppend(info.id, 20 * SEG, pcm[:RATE].copy()))     # over: skipped
        info.end_sample = 20 * SEG
        w.put(CloseCall(info))
        w.put(None)
    t = threading.Thread(target=processor, daemon=True)
    t.start()
    t.join(30)                # a guard, not a timing assertion: it never waits on w
    assert not t.is_alive(), "put() blocked with the writer not consuming"
    assert w.shed_segments == 17 and w.journal_skipped == 1
    w.run(threading.Event())                      # now the writer catches up
    row = store.call(info.id)
    assert row.state == "closed"
    assert [s.seq for s in store.segments_of(info.id)] == [0, 1, 2]
    assert len(row.meta["gaps"]) == 17 and dropped == list(range(3, 20))
    v, _ = verify_call(store, row, device_key_for(data))
    assert v.status == "verified", v.detail
    assert w.behind() is False and w._queued_bytes == 0


def test_a_writer_stuck_on_a_full_disk_is_not_behind_and_abandons_on_request(
        tmp_path, practice_keys):
    """``behind()`` is what a simulated line waits on: a writer retrying on a full disk
    must not hold line time back; ``abandon()`` (shutdown) ends its retries."""
    store, w, _ = _writer(tmp_path, practice_keys, max_queue=2)
    info = CallInfo(id="CQ-L0-000002", line=0, direction="inbound", offhook_sample=0)
    real = store.db.execute_sql

    def full(sql, *a, **k):
        if sql.lstrip().upper().startswith("INSERT"):
            import peewee as pw
            raise pw.OperationalError("database or disk is full")
        return real(sql, *a, **k)
    store.db.execute_sql = full
    for _ in range(5):
        w.put(OpenCall(info))
    assert w.behind()                              # five queued, not yet stuck
    t = threading.Thread(target=w.run, args=(threading.Event(),), daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not w.stalled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.stalled and not w.behind()
    w.abandon()
    t.join(30)
    assert not t.is_alive() and w.abandoned_jobs == 5
    assert store.call(info.id) is None
