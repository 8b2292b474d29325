"""Tampering is detected and named; intact calls in the same store still verify; a
segment decrypts by an independent HPKE path written from docs/formats.md alone."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from recorder import cli
from recorder.evidence import audit
from recorder.evidence.verify import verify_call
from recorder.storage.store import device_key_for
from tests.support.plaintext import plaintext_files, plaintext_in

EVENTS = [
    {"at": 0.0, "line": 0, "type": "tone", "hz": 800, "duration": 200},
    {"at": 1.0, "line": 0, "type": "offhook"}, {"at": 46.0, "line": 0, "type": "onhook"},
    {"at": 50.0, "line": 0, "type": "offhook"}, {"at": 60.0, "line": 0, "type": "onhook"},
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, practice_keys):
    from tests.support.sim import Sim
    base = tmp_path_factory.mktemp("evidence")
    s = Sim(base, practice_keys)
    s.run(EVENTS, duration=62)
    return s


@pytest.fixture
def store_copy(recorded, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(recorded.data, d)
    from recorder.storage.store import Store
    st = Store(d)
    rows = st.calls()
    assert [r.segments for r in rows] == [5, 2]
    return st, rows[0], rows[1]


def seg_path(store, row, seq):
    return store.abs(store.segments_of(row.id)[seq].path)


def verdict(store, row):
    v, _ = verify_call(store, row, device_key_for(store.root))
    return v


def flip(p, at=-40):
    b = bytearray(p.read_bytes())
    b[at] ^= 0x01
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("name,tamper,expect", [
    ("flip one byte", lambda st, r: flip(seg_path(st, r, 3)), "segment 3 altered"),
    ("flip a header byte", lambda st, r: flip(seg_path(st, r, 1), 20), "segment 1 altered"),
    ("truncate", lambda st, r: seg_path(st, r, 4).write_bytes(
        seg_path(st, r, 4).read_bytes()[:-100]), "segment 4 truncated"),
    ("delete", lambda st, r: seg_path(st, r, 2).unlink(), "segment 2 missing"),
    ("swap", lambda st, r: _swap(seg_path(st, r, 1), seg_path(st, r, 2)),
     "segments 1 and 2 swapped"),
    ("duplicate", lambda st, r: shutil.copy(seg_path(st, r, 4),
                                            seg_path(st, r, 4).with_name("00005.seg")),
     "segment 5 duplicates segment 4"),
    ("replace with a copy", lambda st, r: shutil.copy(seg_path(st, r, 0), seg_path(st, r, 3)),
     "segment 3 replaced by a copy of segment 0"),
    ("manifest from another call", lambda st, r: _other_manifest(st, r),
     "manifest belongs to call"),
    ("manifest bit flip", lambda st, r: flip(st.abs(r.manifest), 30),
     "manifest signature invalid"),
    ("re-signed by another key", lambda st, r: _resign(st, r),
     "signed by a different device"),
    ("manifest deleted", lambda st, r: st.abs(r.manifest).unlink(), "manifest missing"),
])
def test_tampering_is_detected_with_the_right_detail(store_copy, name, tamper, expect):
    st, victim, bystander = store_copy
    assert verdict(st, victim).status == "verified"
    tamper(st, victim)
    v = verdict(st, victim)
    assert v.status == "failed", name
    assert expect in v.detail, (name, v.detail)
    assert verdict(st, bystander).status == "verified"      # intact calls still verify


def _swap(a, b):
    x, y = a.read_bytes(), b.read_bytes()
    a.write_bytes(y)
    b.write_bytes(x)


def _other_manifest(st, row):
    other = [r for r in st.calls() if r.id != row.id][0]
    shutil.copy(st.abs(other.manifest), st.abs(row.manifest))


def _resign(st, row):
    """Re-sign the genuine manifest with a new key, as a forger would."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from recorder.evidence.segfile import canonical, parse
    p = parse(st.abs(row.manifest).read_bytes())
    h = dict(p.header)
    k = ed25519.Ed25519PrivateKey.generate()
    from recorder.evidence.keys import raw_public
    h["signer"] = raw_public(k.public_key()).hex()
    hdr = canonical(h)
    pre = p.preamble[:6] + struct.pack(">I", len(hdr)) + hdr
    body = pre + p.sealed
    st.abs(row.manifest).write_bytes(body + k.sign(body))


def test_export_of_a_tampered_call_fails_and_exits_nonzero(store_copy, practice_keys,
                                                           tmp_path, capsys):
    st, victim, bystander = store_copy
    flip(seg_path(st, victim, 2))
    out = tmp_path / "out"
    rc = cli.main(["export", "--data-dir", str(st.root), "--key", str(practice_keys[0]),
                   "--out", str(out)])
    assert rc == 1
    meta = json.loads((out / f"{victim.id}.json").read_text())
    assert meta["integrity"]["status"] == "failed"
    assert "segment 2 altered" in meta["integrity"]["detail"]
    ok = json.loads((out / f"{bystander.id}.json").read_text())
    assert ok["integrity"] == {"status": "verified",
                               "detail": "all segments, chain and signature verified"}
    assert cli.main(["verify", "--data-dir", str(st.root)]) == 1
    assert "segment 2 altered" in capsys.readouterr().out


def _independent_hpke_open(sk, enc: bytes, ct: bytes, info: bytes) -> bytes:
    """RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
    built from cryptography's primitives as docs/formats.md describes: not our reader."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    def extract(salt, ikm):
        return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()

    def expand(prk, info, n):
        out, t, i = b"", b"", 1
        while len(out) < n:
            t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
            out += t
            i += 1
        return out[:n]

    def labeled_extract(suite_id, salt, label, ikm):
        return extract(salt, b"HPKE-v1" + suite_id + label + ikm)

    def labeled_expand(suite_id, prk, label, info, n):
        return expand(prk, n.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info, n)

    pk_r = sk.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    kem_id = b"KEM" + (0x20).to_bytes(2, "big")
    eae = labeled_extract(kem_id, b"", b"eae_prk", dh)
    shared = labeled_expand(kem_id, eae, b"shared_secret", enc + pk_r, 32)
    suite = b"HPKE" + (0x20).to_bytes(2, "big") + (1).to_bytes(2, "big") + \
        (3).to_bytes(2, "big")
    psk_id_hash = labeled_extract(suite, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(suite, b"", b"info_hash", info)
    ctx = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(suite, shared, b"secret", b"")
    key = labeled_expand(suite, secret, b"key", ctx, 32)
    nonce = labeled_expand(suite, secret, b"base_nonce", ctx, 12)
    return ChaCha20Poly1305(key).decrypt(nonce, ct, b"")


def _split(data: bytes):
    assert data[:4] == b"LTAP" and data[4] == 1 and data[5] == 1
    hlen = int.from_bytes(data[6:10], "big")
    pre = data[:10 + hlen]
    return pre, json.loads(pre[10:]), data[10 + hlen:]


def test_independent_hpke_decryption_from_the_format_doc(recorded, practice_keys):
    from cryptography.hazmat.primitives import serialization
    sk = serialization.load_pem_private_key(practice_keys[0].read_bytes(), None)
    data = next((recorded.data / "segments").rglob("00000.seg")).read_bytes()
    pre, header, body = _split(data)
    assert header["suite"] == {"kem": 32, "kdf": 1, "aead": 3}
    flac = _independent_hpke_open(sk, body[:32], body[32:], b"linetap-v1" + pre)
    assert flac[:4] == b"fLaC"
    import io

    import soundfile as sf
    pcm, sr = sf.read(io.BytesIO(flac), dtype="int16")
    assert sr == 8000 and len(pcm) == header["samples"]


def test_independent_decryption_of_a_journal_record(tmp_path, practice_keys):
    """A record sealed under a content key (the journal's, adopted as a segment after a
    power cut) opens by docs/formats.md alone: HPKE opens the key in the header, then
    ChaCha20-Poly1305 with the seq as nonce and the preamble as associated data."""
    import numpy as np
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from recorder.evidence import codec, segfile
    sk = serialization.load_pem_private_key(practice_keys[0].read_bytes(), None)
    pcm = (np.arange(4000) % 701 - 350).astype(np.int16)
    ck = segfile.ContentKey(segfile.suite_ids(), sk.public_key())
    data = ck.seal({"v": 1, "kind": "segment", "device": "d", "call": "c", "seq": 7,
                    "first_sample": 0, "samples": 4000, "rate": 8000, "codec": "pcm",
                    "start": "2026-11-26T09:00:00.000Z"}, codec.encode(pcm, 8000, "pcm"))
    pre, header, body = _split(data)
    sealed_key = bytes.fromhex(header["key"])
    key = _independent_hpke_open(sk, sealed_key[:32], sealed_key[32:],
                                 b"linetap-v1 content-key")
    raw = ChaCha20Poly1305(key).decrypt((7).to_bytes(12, "big"), body, b"linetap-v1" + pre)
    assert np.array_equal(np.frombuffer(raw, "<i2"), pcm)


def test_no_plaintext_audio_anywhere_on_disk(recorded):
    """Scan every byte of every file the daemon wrote for audio containers and for the
    test tone as headerless PCM (tests/support/plaintext.py, the campaigns' scan)."""
    assert plaintext_files(recorded.data) == []


def test_writer_never_hands_plaintext_to_the_disk(sim, monkeypatch):
    """Every byte the writer hands the disk, temp files and the journal of the segment in
    progress included: files go through atomic_write, journal records through
    JournalFiles.append; each is sealed (LTAP) and none carries the tone in clear."""
    import recorder.storage.writer as w
    from recorder.storage import journal
    seen, records = [], []
    real_write, real_append = w.atomic_write, journal.JournalFiles.append

    def spy(path, data, **kw):
        seen.append(bytes(data))
        return real_write(path, data, **kw)

    def spy_append(self, call_id, path, blob, *a, **kw):
        records.append(bytes(blob))
        return real_append(self, call_id, path, blob, *a, **kw)

    monkeypatch.setattr(w, "atomic_write", spy)
    monkeypatch.setattr(journal.JournalFiles, "append", spy_append)
    sim.run([{"at": 0.0, "line": 0, "type": "tone", "hz": 800, "duration": 20},
             {"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 12.0, "line": 0, "type": "onhook"}], duration=14)
    assert seen and records                  # both paths were taken
    for b in seen + records:
        assert b[:4] == b"LTAP"
        assert plaintext_in(b) is None


def test_audit_log_records_and_detects_tampering(store_copy, capsys):
    st, _victim, _ = store_copy
    d = st.root
    for i in range(3):
        audit.record(d, "export", calls=i)
    r = audit.verify(d, device_key_for(d))
    assert r.entries >= 2 and r.problems == [] and r.status == "verified"
    assert cli.main(["audit", "--data-dir", str(d), "--verify"]) == 0
    log = d / "audit.log"
    lines = log.read_text().splitlines()
    e = json.loads(lines[1])
    e["detail"]["line"] = 7
    lines[1] = json.dumps(e, sort_keys=True, separators=(",", ":"))
    log.write_text("\n".join(lines) + "\n")
    first = audit.verify(d).first_bad
    assert first.where.startswith("line 2 ") and "hash mismatch" in first.reasons
    assert cli.main(["audit", "--data-dir", str(d), "--verify"]) == 1
    log.write_text("\n".join([lines[0]] + lines[2:]) + "\n")     # delete a line
    first = audit.verify(d).first_bad
    assert first.where.startswith("line 2 ") and "chain broken" in first.reasons \
        and "sequence gap" in first.reasons


def test_identity_is_never_silently_replaced(store_copy, practice_keys, tmp_path, capsys):
    st, _v, _b = store_copy
    d = st.root
    assert cli.main(["identity", "--data-dir", str(d)]) == 0
    assert "fingerprint" in capsys.readouterr().out
    (d / "keys" / "identity.key").write_text("garbage")
    from tests.support.sim import Sim
    s = Sim(tmp_path, practice_keys)
    s.data = d
    from recorder.errors import LinetapError
    with pytest.raises(LinetapError, match="refusing to record"):
        s.run([], duration=2)
    assert (d / "keys" / "identity.key").read_text() == "garbage"


def test_audit_log_after_a_torn_last_line_and_through_a_small_window(tmp_path):
    """A power cut can leave the last line half written: the next entry chains onto the
    last whole one, verify names the torn line, and tail() over a window that cuts a
    line returns only whole entries."""
    for i in range(5):
        audit.record(tmp_path, "pause", n=i)
    with open(tmp_path / audit.AUDIT_FILE, "ab") as f:
        f.write(b'{"seq": 6, "ts": "2026-11-')                  # torn by the cut
    e = audit.record(tmp_path, "resume", n=5)
    assert e["seq"] == 6
    r = audit.verify(tmp_path)
    assert r.problems == [] and [t.where for t in r.torn] == ["line 6"]
    size = (tmp_path / audit.AUDIT_FILE).stat().st_size
    got = audit.tail(tmp_path, nbytes=size - 10)          # cuts the first line
    assert [x["detail"].get("n") for x in got] == [1, 2, 3, 4, 5]
    assert audit.tail(tmp_path / "nowhere") == []


def test_exported_files_are_private(sim):
    """An export is a patient's call in clear: WAV and JSON are mode 0600 (issue 15)."""
    import stat
    sim.run([{"at": 0.0, "line": 0, "type": "tone", "hz": 800, "duration": 6},
             {"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 4.0, "line": 0, "type": "onhook"}], duration=6)
    out = sim.tmp / "private"
    calls, failures = sim.export(out)
    assert calls and failures == 0
    files = sorted(out.iterdir())
    assert {p.suffix for p in files} == {".wav", ".json"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
