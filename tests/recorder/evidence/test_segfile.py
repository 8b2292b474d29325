"""Segments sealed under a content key (the journal's records): round trip, tampering,
malformed keys, and never two payloads under one nonce."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from recorder.errors import SegmentFormatError
from recorder.evidence import codec, segfile

SK = x25519.X25519PrivateKey.generate()
PCM = (np.arange(4000) % 611 - 300).astype(np.int16)


def _header(seq=5, samples=4000):
    return {"v": 1, "kind": "segment", "device": "d", "call": "c", "seq": seq,
            "first_sample": 1000, "samples": samples, "rate": 8000, "codec": "pcm",
            "start": "2026-11-26T09:00:00.000Z"}


def _open(data: bytes) -> np.ndarray:
    p = segfile.parse(data, signed=False)
    return codec.decode(segfile.open_payload(p, SK), p.header["samples"], p.header["codec"])


@pytest.mark.parametrize("aead", sorted(segfile.AEADS))
def test_a_content_key_seals_many_records_that_open_with_the_practice_key(aead):
    ck = segfile.ContentKey(segfile.suite_ids(aead), SK.public_key())
    files = [ck.seal(_header(seq, len(PCM) - seq), codec.encode(PCM[seq:], 8000, "pcm"))
             for seq in range(3)]
    for seq, data in enumerate(files):
        assert np.array_equal(_open(data), PCM[seq:])
    heads = [segfile.parse(d).header for d in files]
    assert len({h["key"] for h in heads}) == 1          # one HPKE seal for the run
    assert heads[0]["suite"] == segfile.suite_ids(aead)


def test_a_tiny_record_is_not_mistaken_for_a_truncated_file():
    ck = segfile.ContentKey(segfile.suite_ids(), SK.public_key())
    data = ck.seal(_header(samples=1), codec.encode(PCM[:1], 8000, "pcm"))
    assert np.array_equal(_open(data), PCM[:1])


def test_a_seq_is_never_sealed_twice_under_one_key():
    ck = segfile.ContentKey(segfile.suite_ids(), SK.public_key())
    ck.seal(_header(4), b"\0\0")
    with pytest.raises(ValueError, match="already sealed seq 4"):
        ck.seal(_header(4), b"\1\1")


def _reheader(data: bytes, **changes) -> bytes:
    """The same ciphertext under an edited header (what an attacker can do)."""
    p = segfile.parse(data)
    hdr = segfile.canonical(dict(p.header, **changes))
    return segfile._PRE.pack(segfile.MAGIC, 1, 1, len(hdr)) + hdr + p.sealed


def test_tampering_with_a_keyed_record_is_detected():
    ck = segfile.ContentKey(segfile.suite_ids(), SK.public_key())
    good = ck.seal(_header(5), codec.encode(PCM, 8000, "pcm"))
    other = segfile.ContentKey(segfile.suite_ids(), SK.public_key()).seal(
        _header(5), codec.encode(PCM, 8000, "pcm"))
    flipped = good[:-20] + bytes([good[-20] ^ 1]) + good[-19:]
    for bad in (flipped,
                _reheader(good, first_sample=2000),          # moved in time
                _reheader(good, seq=6),                      # renumbered (another nonce)
                _reheader(good, key=segfile.parse(other).header["key"])):   # another key
        with pytest.raises(SegmentFormatError, match="does not decrypt"):
            _open(bad)


@pytest.mark.parametrize("key, detail", [
    (123, "not a hex string"),
    ("zz" * 40, "not a hex string"),
    ("00" * 10, "content key does not open"),
    ("00" * 80, "content key does not open"),
    ("ab" * 200, "not a hex string"),
])
def test_a_malformed_content_key_is_named(key, detail):
    ck = segfile.ContentKey(segfile.suite_ids(), SK.public_key())
    data = _reheader(ck.seal(_header(), codec.encode(PCM, 8000, "pcm")), key=key)
    with pytest.raises(SegmentFormatError, match=detail):
        _open(data)


def test_pcm_of_the_wrong_length_is_named():
    with pytest.raises(SegmentFormatError, match="pcm audio has 7 bytes, header says 4"):
        codec.decode(b"\0" * 7, 4, "pcm")
