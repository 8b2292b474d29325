"""The journal of the segment in progress: record framing, torn tails, failed appends,
and recovery adopting the records a power cut left behind."""

from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest

from recorder.calls.jobs import CallInfo, CloseCall, JournalAppend, OpenCall, WriteSegment
from recorder.errors import JournalError
from recorder.evidence import keys, trust
from recorder.evidence.export import decode_segments
from recorder.evidence.verify import verify_call
from recorder.storage import journal, recovery
from recorder.storage.store import Store, device_key_for
from recorder.storage.writer import Writer
from recorder.timebase import Timebase, iso

RATE = 8000
BLOBS = [b"first record", b"x" * 3000, b"third"]
WHOLE = b"".join(journal.frame(b) for b in BLOBS)
LEN0 = len(journal.frame(BLOBS[0]))
LEN1 = len(journal.frame(BLOBS[1]))


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


@pytest.mark.parametrize("data, n_good, problem", [
    (WHOLE, 3, None),
    (b"", 0, None),
    (WHOLE[:LEN0], 1, None),                                  # cut on a record boundary
    (WHOLE[:LEN0 + 10], 1, "torn record header"),             # power cut mid-header
    (WHOLE[:LEN0 + 100], 1, "runs past the end"),             # ... mid-blob
    (_flip(WHOLE, LEN0 + 50), 1, "fails its hash"),           # a flipped bit in record 2
    (_flip(WHOLE, LEN0 + 9), 1, "fails its hash"),            # ... in its stored hash
    (_flip(WHOLE, LEN0), 1, "bad record magic"),
    (WHOLE[:LEN0] + b"\0" * 64, 1, "bad record magic"),       # zeros past the last write
    (WHOLE[:LEN0 + LEN1] + b"LTJ1\0\0\0\0" + b"\0" * 32, 2, "runs past the end"),  # L = 0
])
def test_read_keeps_every_record_before_the_damage(data, n_good, problem):
    blobs, why = journal.read(data)
    assert blobs == BLOBS[:n_good]
    assert (why is None) if problem is None else (problem in why)


def test_frame_refuses_empty_and_huge_records():
    with pytest.raises(JournalError, match="journal record of 0 bytes"):
        journal.frame(b"")
    with pytest.raises(JournalError):
        journal.frame(b"x" * (journal.MAX_BLOB + 1))


def test_a_failed_append_is_cut_back_so_later_records_still_read(tmp_path, monkeypatch):
    files = journal.JournalFiles()
    path = tmp_path / journal.NAME
    assert files.append("c1", path, b"one")
    files.sync()
    real = os.fdatasync
    calls = {"n": 0}

    def full_once(fd):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", full_once)
    assert files.append("c1", path, b"two (lost to a full disk)")
    assert files.append("c1", path, b"and its companion in the same sync")
    with pytest.raises(OSError):
        files.sync()
    assert not files.dirty
    assert files.append("c1", path, b"three")
    files.sync()
    files.close_all()
    assert journal.read(path.read_bytes()) == ([b"one", b"three"], None)


def test_records_waiting_together_share_one_sync(tmp_path):
    files = journal.JournalFiles()
    for i in range(5):
        files.append("a", tmp_path / "a.ltj", b"rec %d" % i)
        files.append("b", tmp_path / "b.ltj", b"rec %d" % i)
    files.sync()
    assert (files.records, files.syncs) == (10, 2)
    files.close_all()
    assert len(journal.read((tmp_path / "a.ltj").read_bytes())[0]) == 5


# -- the writer's journal and recovery ------------------------------------------------------

def _box(tmp_path, practice_keys):
    data = tmp_path / "data"
    store = Store(data)
    ident = keys.ensure_identity(data, first_start=True)
    trust.pin(store, ident.public_key())      # as the daemon does at first start
    pub = keys.load_practice_public(practice_keys[1])
    w = Writer(store, device="dev-j", rate=RATE, codec_name="flac", aead="chacha20poly1305",
               public_key=pub, identity=ident, timebase=Timebase(RATE, time.time() - 600),
               retention_s=86400)
    return store, w, data


def _audio(n, seed=3):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 3000).astype(np.int16)


def _record_call(w, pcm, seg, jn, cut_at):
    """Feed the writer what the recorder would for a call of ``pcm``: segments of
    ``seg`` samples and journal records of ``jn``, up to sample ``cut_at`` (the power
    cut). Returns the call id."""
    info = CallInfo(id="CJ-L0-000001", line=0, direction="inbound", offhook_sample=0)
    w.handle(OpenCall(info))
    seq = 0
    for s0 in range(0, cut_at, seg):
        end = min(s0 + seg, cut_at)
        complete = end - s0 == seg
        for j0 in range(s0, end, jn):
            # A segment is cut before its last piece would be journalled.
            if j0 + jn < end or (not complete and j0 + jn == end):
                w.handle(JournalAppend(info.id, j0, pcm[j0:j0 + jn].copy()))
        if complete:
            w.handle(WriteSegment(info.id, seq, s0, pcm[s0:end].copy()))
            seq += 1
    w.journal.sync()
    return info.id


def test_recovery_adopts_the_journal_of_the_segment_in_progress(tmp_path, practice_keys):
    store, w, data = _box(tmp_path, practice_keys)
    pcm = _audio(100000)
    seg, jn = 4 * RATE, RATE // 2                  # 4 s segments, 0.5 s records
    cut = 2 * seg + 5 * jn + 1234                  # in the 3rd segment, 5 records down
    call_id = _record_call(w, pcm, seg, jn, cut)
    assert w.journal.records == 7 + 7 + 5          # 7 + 7 superseded, 5 still needed
    w.journal.close_all()                          # the power cut: nothing else runs
    jpath = store.call_dir(call_id, store.call(call_id).start_time) / journal.NAME
    assert jpath.exists()
    assert pcm.tobytes()[:4000] not in jpath.read_bytes()      # sealed, never plaintext
    store.close()

    store = Store(data)
    _, w2, _ = _box(tmp_path, practice_keys)
    assert recovery.recover(store, w2, "dev-j") == 1
    row = store.call(call_id)
    assert row.state == "recovered"
    segs = store.segments_of(call_id)
    assert [s.samples for s in segs] == [seg, seg] + [jn] * 5
    assert row.end_sample == 2 * seg + 5 * jn      # lost: only the 1234 samples not journalled
    v, header = verify_call(store, row, device_key_for(data))
    assert v.status == "verified", v.detail
    assert header["recovered"] is True and len(header["segments"]) == 7
    priv = keys.load_practice_private(practice_keys[0])
    out, problems = decode_segments(
        [(s.seq, store.abs(s.path).read_bytes()) for s in segs], priv, 0, "flac")
    assert problems == [] and np.array_equal(out, pcm[:2 * seg + 5 * jn])
    assert not jpath.exists()                      # adopted, then deleted
    assert store.integrity_check() == "ok"


def _record_keys(path) -> list[tuple[int, str]]:
    from recorder.evidence import segfile
    return [(h["seq"], h["key"]) for h in
            (segfile.parse(b).header for b in journal.read(path.read_bytes())[0])]


def test_records_share_one_content_key_per_segment_in_progress(tmp_path, practice_keys):
    """One HPKE seal per segment in progress, not per record; a new segment, a new key.
    Once a segment is stored its records are cut from the journal, which so holds at
    most the segment in progress (issue 22: a disk running full)."""
    store, w, _ = _box(tmp_path, practice_keys)
    seg, jn = 4 * RATE, RATE // 2
    pcm = _audio(40000)
    call_id = _record_call(w, pcm, seg, jn, seg - 1)     # segment 0 in progress
    path = store.call_dir(call_id, store.call(call_id).start_time) / journal.NAME
    first = _record_keys(path)
    assert [s for s, _ in first] == list(range(7)) and len({k for _, k in first}) == 1
    w.handle(WriteSegment(call_id, 0, 0, pcm[:seg].copy()))
    assert path.stat().st_size == 0
    for j0 in range(seg, seg + 3 * jn, jn):
        w.handle(JournalAppend(call_id, j0, pcm[j0:j0 + jn].copy()))
    w.journal.sync()
    got = _record_keys(path)
    assert [s for s, _ in got] == [1, 2, 3] and len({k for _, k in got}) == 1
    assert got[0][1] != first[0][1]


def test_a_record_lost_to_a_full_disk_is_resealed_under_a_fresh_key(tmp_path, practice_keys,
                                                                   monkeypatch):
    """The record after a failed append takes the same seq, so it must not reuse the
    key (the same nonce under the same key would leak both records' keystream)."""
    store, w, _ = _box(tmp_path, practice_keys)
    info = CallInfo(id="CJ-L0-000002", line=0, direction="inbound", offhook_sample=0)
    w.handle(OpenCall(info))
    pcm = _audio(3 * 4000)
    w.handle(JournalAppend(info.id, 0, pcm[:4000].copy()))
    real = w.journal.append
    monkeypatch.setattr(w.journal, "append", lambda *a: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    w._handle_until_stored(JournalAppend(info.id, 4000, pcm[4000:8000].copy()))
    assert w.journal_skipped == 1
    monkeypatch.setattr(w.journal, "append", real)
    w.handle(JournalAppend(info.id, 4000, pcm[4000:8000].copy()))
    w.journal.sync()
    got = _record_keys(store.call_dir(info.id, store.call(info.id).start_time) / journal.NAME)
    assert [s for s, _ in got] == [0, 1]
    assert got[0][1] != got[1][1]


def test_a_torn_journal_tail_loses_only_the_torn_record(tmp_path, practice_keys):
    store, w, data = _box(tmp_path, practice_keys)
    pcm = _audio(40000)
    seg, jn = 4 * RATE, RATE // 2
    call_id = _record_call(w, pcm, seg, jn, seg + 3 * jn)
    w.journal.close_all()
    jpath = store.call_dir(call_id, store.call(call_id).start_time) / journal.NAME
    with open(jpath, "r+b") as f:                   # the last write reached the disk half-way
        f.truncate(jpath.stat().st_size - 100)
    store.close()
    store = Store(data)
    _, w2, _ = _box(tmp_path, practice_keys)
    recovery.recover(store, w2, "dev-j")
    assert [s.samples for s in store.segments_of(call_id)] == [seg, jn, jn]
    v, _ = verify_call(store, store.call(call_id), device_key_for(data))
    assert v.status == "verified", v.detail


def test_a_closed_call_leaves_no_journal_and_stale_ones_are_removed(tmp_path, practice_keys):
    store, w, data = _box(tmp_path, practice_keys)
    pcm = _audio(20000)
    call_id = _record_call(w, pcm, 4 * RATE, RATE // 2, 4 * RATE + RATE)
    d = store.call_dir(call_id, store.call(call_id).start_time)
    assert (d / journal.NAME).exists()
    info = CallInfo(id=call_id, line=0, direction="inbound", offhook_sample=0,
                    end_sample=5 * RATE)
    w.handle(WriteSegment(call_id, 1, 4 * RATE, pcm[4 * RATE:5 * RATE].copy()))
    w.handle(CloseCall(info))
    assert not (d / journal.NAME).exists()
    # A crash between the manifest and the unlink leaves a journal of a finished call:
    # the next start deletes it and adopts nothing from it.
    (d / journal.NAME).write_bytes(journal.frame(b"stale"))
    assert recovery.recover(store, w, "dev-j") == 0
    assert not (d / journal.NAME).exists()
    assert [s.seq for s in store.segments_of(call_id)] == [0, 1]


def test_a_segment_given_up_to_a_full_disk_leaves_a_gap_not_a_crash(tmp_path, practice_keys,
                                                                    monkeypatch):
    """A segment that still cannot be stored after the retries is given up; the next
    ones are stored with contiguous seqs (the chain and manifest stay whole), the lost
    span is a gap in the call's metadata and silence in the export, and the writer does
    not stop ("segment 2 where 1 was due" used to kill it)."""
    import recorder.storage.writer as wmod
    store, w, data = _box(tmp_path, practice_keys)
    monkeypatch.setattr(wmod, "DISK_FULL_RETRIES", 3)
    monkeypatch.setattr(wmod.time, "sleep", lambda s: None)
    given_up = []
    w.on_dropped = given_up.append
    seg = 4 * RATE
    pcm = _audio(3 * seg)
    info = CallInfo(id="CJ-L0-000003", line=0, direction="inbound", offhook_sample=0)
    info.first_sample = 0
    w.handle(OpenCall(info))
    w._handle_until_stored(WriteSegment(info.id, 0, 0, pcm[:seg].copy()))
    real = w._segment

    def full(job):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(w, "_segment", full)
    w._handle_until_stored(WriteSegment(info.id, 1, seg, pcm[seg:2 * seg].copy()))
    monkeypatch.setattr(w, "_segment", real)
    w._handle_until_stored(WriteSegment(info.id, 2, 2 * seg, pcm[2 * seg:].copy()))
    info.end_sample = 3 * seg
    w.handle(CloseCall(info))
    assert [j.seq for j in given_up] == [1] and w.dropped_segments == 1
    segs = store.segments_of(info.id)
    assert [(s.seq, s.first_sample) for s in segs] == [(0, 0), (1, 2 * seg)]
    row = store.call(info.id)
    v, _ = verify_call(store, row, device_key_for(data))
    assert v.status == "verified", v.detail
    assert row.meta["gaps"] == [{"start": iso(w._epoch(seg)), "end": iso(w._epoch(2 * seg)),
                                 "start_sample": seg, "end_sample": 2 * seg, "frames": seg}]
    priv = keys.load_practice_private(practice_keys[0])
    out, problems = decode_segments([(s.seq, store.abs(s.path).read_bytes()) for s in segs],
                                    priv, 0, "flac")
    assert problems == []
    assert np.array_equal(out[:seg], pcm[:seg]) and not out[seg:2 * seg].any()
    assert np.array_equal(out[2 * seg:], pcm[2 * seg:])
