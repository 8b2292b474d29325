"""Frame codec: round trips, resynchronisation and every kind of bad frame."""

import json
import struct

import pytest

from provisioning import protocol as p
from recorder.errors import ProtocolError


def req(seq, obj):
    return p.encode_json(p.T_REQUEST, seq, obj)


def test_round_trip_byte_by_byte():
    frame = req(7, {"cmd": "hello"})
    parser = p.FrameParser()
    events = []
    for b in frame:
        events += parser.feed(bytes([b]))
    assert len(events) == 1
    f = events[0]
    assert isinstance(f, p.Frame)
    assert (f.type, f.seq, f.json()) == (p.T_REQUEST, 7, {"cmd": "hello"})
    assert parser.pending == 0


def test_resync_after_garbage():
    parser = p.FrameParser()
    events = parser.feed(b"\x00LTxx garbage L" + req(1, {"cmd": "a"}) + b"LLL" + req(2, {}))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["BadFrame", "Frame", "BadFrame", "Frame"]
    assert events[0].code == p.E_BAD_FRAME
    assert [e.seq for e in events if isinstance(e, p.Frame)] == [1, 2]


def test_bad_crc_reports_seq_and_recovers():
    good = req(5, {"cmd": "x"})
    bad = bytearray(req(9, {"cmd": "y"}))
    bad[-1] ^= 0xFF
    events = p.FrameParser().feed(bytes(bad) + good)
    assert events[0] == p.BadFrame(p.E_BAD_CRC, "frame CRC mismatch", 9)
    assert isinstance(events[-1], p.Frame) and events[-1].seq == 5


def test_too_large_and_bad_version():
    head = struct.pack(">2sBBHI", p.MAGIC, 1, 1, 3, p.MAX_PAYLOAD + 1)
    head += struct.pack(">H", p._crc16(head))
    events = p.FrameParser().feed(head)
    assert events == [p.BadFrame(p.E_TOO_LARGE, events[0].message, 3)]
    v2 = p.encode(p.T_REQUEST, 4, b"{}", version=2)
    events = p.FrameParser().feed(v2)
    assert events[0].code == p.E_BAD_VERSION and events[0].seq == 4


def test_corrupt_length_does_not_stall():
    frame = bytearray(req(1, {"cmd": "hello"}))
    frame[8] ^= 0x40  # length byte: the header CRC no longer matches
    parser = p.FrameParser()
    events = parser.feed(bytes(frame) + req(2, {"cmd": "hello"}))
    assert isinstance(events[-1], p.Frame) and events[-1].seq == 2


def test_payload_limit_on_encode():
    with pytest.raises(ProtocolError):
        p.encode(p.T_REQUEST, 0, b"x" * (p.MAX_PAYLOAD + 1))


def test_json_errors():
    assert p.Frame(1, 1, 0, b"{}").json() == {}
    for payload in (b"[1]", b"\xff", b"nope"):
        with pytest.raises(ProtocolError):
            p.Frame(1, 1, 0, payload).json()


def test_error_frame_shape():
    (f,) = p.FrameParser().feed(p.error_frame(3, p.E_CONFIG, "bad", problems=["a", "b"]))
    assert f.type == p.T_ERROR
    assert json.loads(f.payload) == {"ok": False, "code": "config_invalid", "message": "bad",
                                     "problems": ["a", "b"]}


def test_reset_reports_partial():
    parser = p.FrameParser()
    assert parser.feed(req(1, {})[:8]) == []
    assert parser.reset()[0].code == p.E_BAD_FRAME
    assert parser.reset() == []
