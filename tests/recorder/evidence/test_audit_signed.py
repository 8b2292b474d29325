"""The box's audit log is signed by its identity and verified against the PINNED key
(issue 15 item 2): a writer without the key cannot edit and re-chain it, a key named
in the log is never trusted, a torn tail is not tampering, and an old unsigned log
reads as "unsigned (legacy)", not as verified."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder import cli
from recorder.evidence import audit, auditchain, keys
from tests.support.auditlog import rechain
from tests.support.syncbox import make_box, practice_keys


def _box(tmp_path):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    for i in range(5):
        audit.record(box.data_dir, "export", calls=i)
    return box


def _verify(box, capsys, *extra):
    capsys.readouterr()
    rc = cli.main(["audit", "--data-dir", str(box.data_dir), "--verify", *extra])
    return rc, capsys.readouterr().out


def _rewrite(path, entries):
    path.write_bytes(b"".join(json.dumps(e, sort_keys=True, separators=(",", ":"))
                              .encode() + b"\n" for e in entries))


def _rechain(entries, key=None):
    """What someone who can write the file (but lacks the box's key) does after an
    edit: recompute every hash and link, and sign with ``key`` if given."""
    return rechain(entries, key=key)


def test_every_entry_is_signed_by_the_identity(tmp_path, capsys):
    box = _box(tmp_path)
    pub = box.identity.public_key()
    for e in audit.read(box.data_dir):
        assert e["signer"] == keys.fingerprint(keys.raw_public(pub))
        assert auditchain.signature_ok(pub, e["hash"], e["sig"], auditchain.BOX_DOMAIN)
    rc, out = _verify(box, capsys)
    assert rc == 0 and "5 entries, 5 with a verified signature: verified" in out


def test_an_edited_and_rechained_log_fails(tmp_path, capsys):
    """Today's chain had no key: this edit passed `audit --verify`."""
    box = _box(tmp_path)
    path = box.data_dir / audit.AUDIT_FILE
    entries = audit.read(box.data_dir)
    entries[2]["detail"]["calls"] = 99
    _rewrite(path, _rechain(entries))
    rc, out = _verify(box, capsys)
    assert rc == 1 and out.startswith("FIRST BAD ENTRY: line 1 (seq 1): bad signature "
                                      "(signature missing)")
    # With the signer names stripped too, the log reads as unsigned: never verified.
    for e in entries:
        del e["signer"]
    _rewrite(path, _rechain(entries))
    rc, out = _verify(box, capsys)
    assert rc == 3 and "UNSIGNED (LEGACY)" in out
    # Re-signed with a key of the writer's own, naming it as signer: still refused,
    # at the first entry it signed.
    mine = ed25519.Ed25519PrivateKey.generate()
    entries = audit.read(box.data_dir)
    for e in entries:
        e["signer"] = keys.fingerprint(keys.raw_public(mine.public_key()))
    _rewrite(path, _rechain(entries, key=mine))
    rc, out = _verify(box, capsys)
    assert rc == 1 and out.startswith("FIRST BAD ENTRY: line 1 (seq 1): bad signature")


def test_an_edit_after_signed_entries_is_named(tmp_path, capsys):
    box = _box(tmp_path)
    path = box.data_dir / audit.AUDIT_FILE
    entries = audit.read(box.data_dir)
    entries[3]["detail"]["calls"] = 99            # edited, hash left as it was
    _rewrite(path, entries)
    rc, out = _verify(box, capsys)
    assert rc == 1 and out.startswith("FIRST BAD ENTRY: line 4 (seq 4): hash mismatch")
    entries = audit.read(box.data_dir)
    del entries[1]                                # a line removed
    entries[2]["detail"]["calls"] = 3
    _rewrite(path, entries)
    rc, out = _verify(box, capsys, "--json")
    r = json.loads(out)
    assert rc == 1 and r["first_bad"].startswith("line 2 (seq 3): sequence gap, chain broken")


def test_only_the_pinned_key_vouches(tmp_path, capsys):
    box = _box(tmp_path)
    other = tmp_path / "other.pub"
    other.write_bytes(keys.pem_public(ed25519.Ed25519PrivateKey.generate().public_key()))
    rc, out = _verify(box, capsys, "--identity-pub", str(other))
    assert rc == 1 and "bad signature" in out
    mine = tmp_path / "mine.pub"
    mine.write_bytes(keys.pem_public(box.identity.public_key()))
    assert _verify(box, capsys, "--identity-pub", str(mine))[0] == 0
    # No store pin and no --identity-pub: the key file beside the log is not trusted.
    (box.data_dir / "linetap.db").unlink()
    rc, out = _verify(box, capsys, "--json")
    assert rc == 3 and json.loads(out)["status"] == "unverifiable"


def test_a_torn_tail_is_not_tampering_and_the_log_carries_on(tmp_path, capsys):
    box = _box(tmp_path)
    with open(box.data_dir / audit.AUDIT_FILE, "ab") as f:
        f.write(b'{"action":"export","detail":{"ca')                # the power cut
    rc, out = _verify(box, capsys)
    assert rc == 0 and "line 6: torn tail" in out
    e = audit.record(box.data_dir, "resume", n=1)
    assert e["seq"] == 6 and e["sig"]
    rc, out = _verify(box, capsys)
    assert rc == 0 and "line 6: torn tail" in out and "6 with a verified signature" in out


def test_a_legacy_unsigned_log_reads_as_legacy(tmp_path, capsys):
    """A log written before signing (no signer/sig) verifies as unsigned (legacy) up to
    where signing starts; on its own it is never "verified"."""
    box = _box(tmp_path)
    path = box.data_dir / audit.AUDIT_FILE
    legacy = [{k: v for k, v in e.items() if k not in ("sig", "signer")}
              for e in audit.read(box.data_dir)[:3]]
    _rewrite(path, _rechain(legacy))
    rc, out = _verify(box, capsys)
    assert rc == 3 and "unsigned (legacy): the first 3 entries" in out
    audit.record(box.data_dir, "export", calls=9)              # new software signs on
    rc, out = _verify(box, capsys, "--json")
    r = json.loads(out)
    assert rc == 0 and (r["status"], r["unsigned_legacy"], r["signed"]) == ("verified", 3, 1)
