"""The box's audit outbox (sync/auditship.py): what to send after the acked pointer,
and how acks move it. Pure tables, then the shipper on a real log and store."""

from __future__ import annotations

import json

import pytest

from recorder.evidence import audit
from sync.auditship import (
    MAX_BATCH_BYTES,
    META_KEY,
    AuditShipper,
    Pointer,
    advance,
    after,
    batch,
)
from tests.support.syncbox import make_box, practice_keys


def E(seq, h=None):
    return {"seq": seq, "hash": h or f"h{seq}"}


ROWS = [(0, E(1)), (100, E(2)), (200, None), (250, E(3)), (350, E(4))]


@pytest.mark.parametrize("acked,want,restarted", [
    (None, [1, 2, 3, 4], False),                       # nothing acked: all, torn skipped
    (Pointer(2, "h2", 100), [3, 4], False),
    (Pointer(4, "h4", 350), [], False),
    (Pointer(9, "h9", 900), [1, 2, 3, 4], True),       # the log no longer reaches seq 9
    (Pointer(2, "other", 100), [1, 2, 3, 4], True),    # seq 2 is not the acked one
])
def test_after_the_acked_entry(acked, want, restarted):
    p = after(ROWS, acked)
    assert [e["seq"] for _o, e in p.rows] == want and p.restarted is restarted


def test_batch_is_bounded_but_never_empty():
    rows = [(i, {"seq": i, "pad": "x" * 100}) for i in range(1, 11)]
    assert len(batch(rows, max_bytes=400)) == 3          # 123 bytes each
    assert len(batch(rows, max_bytes=10)) == 1
    assert batch([], max_bytes=10) == []


@pytest.mark.parametrize("acks,want", [
    ([], Pointer(1, "h1", 0)),                              # nothing: the old pointer
    ([(3, "h3")], Pointer(3, "h3", 250)),
    ([(2, "h2"), (4, "h4")], Pointer(4, "h4", 350)),        # the furthest
    ([(4, "forged")], Pointer(1, "h1", 0)),                 # another hash moves nothing
])
def test_advance(acks, want):
    sent = [(o, e) for o, e in ROWS if e is not None]
    assert advance(sent, acks, Pointer(1, "h1", 0)) == want


def test_shipper_on_a_real_log(tmp_path):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    for i in range(3):
        audit.record(box.data_dir, "export", calls=i)
    sh = AuditShipper(box.store, box.data_dir)
    first = sh.next_batch()
    assert [e["seq"] for e in first] == [1, 2, 3]
    assert sh.on_ack([(2, first[1]["hash"])]) == 2
    assert box.store.get_meta(META_KEY)["seq"] == 2
    # A new shipper (a restart) reads from the stored pointer.
    sh = AuditShipper(box.store, box.data_dir)
    assert [e["seq"] for e in sh.next_batch()] == [3]
    sh.on_ack([(3, first[2]["hash"])])
    assert sh.next_batch() == []
    audit.record(box.data_dir, "export", calls=3)
    assert [e["seq"] for e in sh.next_batch()] == [4]
    # The log deleted: what is there now goes from its first line, flagged.
    sh.on_ack([(4, audit.read(box.data_dir)[3]["hash"])])
    (box.data_dir / audit.AUDIT_FILE).unlink()
    audit.record(box.data_dir, "export", calls=9)
    assert [e["seq"] for e in sh.next_batch()] == [1] and sh.restarted


def test_a_long_log_goes_in_bounded_batches_that_follow_on(tmp_path):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    for i in range(300):
        audit.record(box.data_dir, "eviction", call=f"C{i:04d}", reason="x" * 150)
    sh = AuditShipper(box.store, box.data_dir)
    seen, batches = [], 0
    while (b := sh.next_batch()):
        batches += 1
        assert len(json.dumps(b, separators=(",", ":"))) <= MAX_BATCH_BYTES + len(b) + 2
        seen += [e["seq"] for e in b]
        sh.on_ack([(b[-1]["seq"], b[-1]["hash"])])
    assert seen == list(range(1, 301)) and sh.acked_entries == 300 and batches >= 2
