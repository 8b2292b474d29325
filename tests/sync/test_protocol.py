"""Wire format and the upload order (pure functions)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.errors import ProtocolError
from sync import protocol
from sync.uploader import SEND_CAP, Item, overdue, plan


@given(st.binary(max_size=300_000), st.integers(min_value=1024, max_value=131072))
def test_split_roundtrip(blob, size):
    parts = protocol.split(blob, size)
    assert all(len(p) <= size for p in parts)
    chunks = [protocol.parse_chunk(p) for p in parts]
    assert [c.index for c in chunks] == list(range(len(parts)))
    assert {c.count for c in chunks} == {len(parts)}
    assert {c.sha256 for c in chunks} == {hashlib.sha256(blob).hexdigest()}
    assert b"".join(c.data for c in chunks) == blob


@pytest.mark.parametrize("payload", [b"", b"XXXX" + bytes(40), protocol.split(b"a")[0][:10]])
def test_bad_chunks(payload):
    with pytest.raises(ProtocolError):
        protocol.parse_chunk(payload)


def test_topics():
    t = protocol.parse_topic(protocol.seg_topic("linetap", "s", "d", "c1", 7))
    assert (t.site, t.device, t.kind, t.call, t.seq) == ("s", "d", "seg", "c1", 7)
    assert protocol.parse_topic("linetap/s/d/man/c1").kind == "man"
    for bad in ("linetap/s/d/seg/c1/x", "linetap/s/d/seg/c1", "linetap/s", "a/b/c/nope"):
        with pytest.raises(ProtocolError):
            protocol.parse_topic(bad)


def _items(call, n, start=0):
    return [Item(call, i, "0" * 64, f"{call}/{i}") for i in range(start, start + n)]


@pytest.mark.parametrize("oldest, newest, inflight, room, want", [
    # no live call: oldest first
    (_items("old", 3), [], set(), 2, [("old", 0), ("old", 1)]),
    # a live call is interleaved with the backlog, live first
    (_items("old", 3), _items("new", 3), set(), 4,
     [("new", 0), ("old", 0), ("new", 1), ("old", 1)]),
    # items in flight are skipped; nothing is chosen twice when lists overlap
    (_items("new", 3), _items("new", 3), {("new", 0)}, 5, [("new", 1), ("new", 2)]),
    # when one stream runs dry the other fills the window
    (_items("old", 1), _items("new", 4), set(), 4,
     [("new", 0), ("old", 0), ("new", 1), ("new", 2)]),
    ([], [], set(), 3, []),
])
def test_plan(oldest, newest, inflight, room, want):
    assert [it.key for it in plan(oldest, newest, inflight, room)] == want


@pytest.mark.parametrize("sent, delivered, now, due", [
    # the ack timeout (60 s) runs from the broker's PUBACK, not from the publish:
    (0.0, 50.0, 100.0, False),       # queued 50 s on a slow uplink, PUBACKed 50 s ago
    (0.0, 50.0, 110.5, True),        # 60.5 s after its PUBACK
    (0.0, None, 100.0, False),       # still queued for the uplink after 100 s
    (0.0, None, SEND_CAP * 60.0 + 1, True),   # never PUBACKed: the cap
    (10.0, 10.0, 70.0, False),       # exactly the timeout is not overdue
])
def test_overdue(sent, delivered, now, due):
    assert overdue(sent, delivered, now, 60.0) is due
