"""A call's personal data sealed on the box (recorder.evidence.personal)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from recorder.errors import SegmentFormatError
from recorder.evidence import keys, personal, segfile
from recorder.evidence.manifest import manifest_body

FIELDS = {"caller_number": "01632960123", "caller_name": "J SMITH", "dialled_digits": None}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("k")
    priv, pub = keys.practice_keygen(d / "p.key")
    return keys.load_practice_private(priv), keys.load_practice_public(pub)


def test_sealed_round_trip_and_nothing_in_clear(pair):
    priv, pub = pair
    blob = personal.seal("lt-1", "CALL-1", FIELDS, pub)
    assert b"1632960123" not in blob and b"SMITH" not in blob
    assert segfile.parse(blob, signed=False).kind == segfile.KIND_PERSONAL
    assert personal.open_sealed(blob, priv, "CALL-1") == FIELDS


def test_nothing_to_seal_is_none(pair):
    assert personal.seal("lt-1", "C", personal.fields(None, "", ""), pair[1]) is None
    assert personal.open_sealed(None, pair[0]) == personal.fields()


def test_sealed_data_moved_to_another_call_or_opened_with_another_key_is_refused(
        pair, tmp_path):
    priv, pub = pair
    blob = personal.seal("lt-1", "CALL-1", FIELDS, pub)
    with pytest.raises(SegmentFormatError, match="stored with call"):
        personal.open_sealed(blob, priv, "CALL-2")
    other, _ = keys.practice_keygen(tmp_path / "o.key")
    with pytest.raises(SegmentFormatError, match="does not decrypt"):
        personal.open_sealed(blob, keys.load_practice_private(other), "CALL-1")
    with pytest.raises(SegmentFormatError, match="not a call's personal data"):
        personal.open_sealed(segfile.seal(segfile.KIND_SEGMENT, {
            "suite": segfile.suite_ids()}, b"{}", pub), priv)


def _row(blob):
    return SimpleNamespace(id="CALL-1", device="lt-1", line=0, direction="inbound",
                           meta={}, end_sample=None, offhook_sample=None, end_time=None,
                           offhook_time=None, start_time=1.8e9, rate=8000, codec="flac",
                           first_sample=0, ring_time=None, personal=blob)


def test_manifest_body_carries_the_fields_or_the_sealed_copy(pair, tmp_path):
    priv, pub = pair
    blob = personal.seal("lt-1", "CALL-1", FIELDS, pub)
    live = manifest_body(_row(blob), [], FIELDS)
    assert live["caller_number"] == "01632960123" and personal.SEALED_KEY not in live
    later = manifest_body(_row(blob), [])
    assert later["caller_number"] is None and later["caller_name"] is None
    assert personal.reveal(later, priv) == live
    # Without the key that opens it, the fields stay empty (never an exception).
    other, _ = keys.practice_keygen(tmp_path / "o.key")
    hidden = personal.reveal(later, keys.load_practice_private(other))
    assert hidden["caller_number"] is None and hidden["caller_name"] is None


def test_search_opens_each_row_and_counts_what_does_not_open(pair, tmp_path):
    priv, pub = pair
    rows = [SimpleNamespace(id=f"C{i}", personal=personal.seal(
        "lt-1", f"C{i}", {"caller_number": n}, pub)) for i, n in
        enumerate(["01632960123", "01632960999", None])]
    rows.append(SimpleNamespace(id="C9", personal=personal.seal("lt-1", "C8", FIELDS, pub)))
    found, unreadable = personal.with_number(rows, priv, "+44 1632 960123")
    assert [r.id for r in found] == ["C0"] and unreadable == 1
