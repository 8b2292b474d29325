"""Never trust a key named inside the thing checked: a thief who deletes identity.key and
re-signs the manifests with a key of their own gets no call reported as verified."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder import cli
from recorder.errors import KeyFileError
from recorder.evidence import keys, segfile, trust
from recorder.storage.store import Store


def _one_call(sim):
    sim.run([{"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 4.0, "line": 0, "type": "onhook"}], duration=5)


def _resign_every_manifest(sim, attacker: ed25519.Ed25519PrivateKey) -> int:
    """What someone with the data dir and the practice *public* key can do: reseal each
    manifest's metadata under a header naming their key, and sign it."""
    priv = keys.load_practice_private(sim.priv)
    pub = keys.load_practice_public(sim.pub)
    n = 0
    for path in sim.data.rglob("manifest.ltm"):
        p = segfile.parse(path.read_bytes())
        body = segfile.open_payload(p, priv)          # the test's shortcut: same metadata
        header = dict(p.header, signer=keys.raw_public(attacker.public_key()).hex())
        path.write_bytes(segfile.seal(segfile.KIND_MANIFEST, header, body, pub,
                                      signer=attacker))
        n += 1
    return n


def _export(sim, tmp_path, name, *extra):
    out = tmp_path / name
    rc = cli.main(["export", "--data-dir", str(sim.data), "--key", str(sim.priv),
                   "--out", str(out), *extra])
    [meta] = [json.loads(p.read_text()) for p in out.glob("*.json")]
    return rc, meta["integrity"]


def test_identity_is_pinned_at_first_start(sim):
    _one_call(sim)
    store = Store(sim.data)
    raw, fp = keys.identity_public(sim.data)
    assert store.get_meta(trust.PUB_KEY) == raw.hex()
    assert store.get_meta(trust.FP_KEY) == fp
    assert cli.main(["verify", "--data-dir", str(sim.data)]) == 0


def test_deleted_key_and_resigned_manifests_are_not_verified(sim, tmp_path, capsys):
    _one_call(sim)
    raw, _fp = keys.identity_public(sim.data)
    recorded = tmp_path / "identity.pub"            # what provisioning wrote down
    recorded.write_text(raw.hex() + "\n")
    assert _export(sim, tmp_path, "before")[1]["status"] == "verified"

    keys.identity_path(sim.data).unlink()
    assert _resign_every_manifest(sim, ed25519.Ed25519PrivateKey.generate()) == 1

    # The store's pin catches it.
    assert cli.main(["verify", "--data-dir", str(sim.data)]) == 1
    assert "signed by a different device" in capsys.readouterr().out
    rc, integrity = _export(sim, tmp_path, "pinned")
    assert rc == 1 and integrity["status"] == "failed"
    assert "signed by a different device" in integrity["detail"]

    # The thief rewrites the pin too: nothing trusted is left, so nothing is verified.
    store = Store(sim.data)
    store.m.Meta.delete().where(store.m.Meta.key.in_([trust.PUB_KEY, trust.FP_KEY])).execute()
    store.close()
    capsys.readouterr()
    assert cli.main(["verify", "--data-dir", str(sim.data)]) == 3
    cap = capsys.readouterr()
    assert ": unverifiable:" in cap.out and "--identity-pub" in cap.err
    rc, integrity = _export(sim, tmp_path, "unpinned")
    assert rc == 3 and integrity["status"] == "unverifiable"

    # The key recorded at provisioning still tells the truth.
    assert cli.main(["verify", "--data-dir", str(sim.data), "--identity-pub",
                     str(recorded)]) == 1
    rc, integrity = _export(sim, tmp_path, "recorded", "--identity-pub", str(recorded))
    assert rc == 1 and "signed by a different device" in integrity["detail"]


def test_trusted_identity_sources(sim, tmp_path):
    _one_call(sim)
    store = Store(sim.data)
    raw, _fp = keys.identity_public(sim.data)
    t = trust.trusted_identity(store, sim.data)
    assert keys.raw_public(t.key) == raw and "pinned" in t.source
    # A pin that disagrees with its fingerprint is not trusted.
    store.set_meta(trust.PUB_KEY, "00" * 32)
    assert trust.trusted_identity(store, sim.data).key is None
    # Only a fingerprint (a store from before the public key was pinned): identity.key
    # is trusted only when it matches.
    store.m.Meta.delete().where(store.m.Meta.key == trust.PUB_KEY).execute()
    t = trust.trusted_identity(store, sim.data)
    assert t.key is not None and keys.raw_public(t.key) == raw
    store.set_meta(trust.FP_KEY, "0000-0000-0000-0000")
    assert trust.trusted_identity(store, sim.data).key is None
    # An explicit file wins over everything; PEM, hex and raw bytes all load.
    pem, hexf, rawf = tmp_path / "id.pem", tmp_path / "id.hex", tmp_path / "id.raw"
    pem.write_bytes(keys.pem_public(keys.load_ed25519_public(raw)))
    hexf.write_text(raw.hex() + "\n")
    rawf.write_bytes(raw)
    for f in (pem, hexf, rawf):
        assert keys.raw_public(trust.trusted_identity(store, sim.data, f).key) == raw
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(KeyFileError, match="bad.pub"):
        trust.load_identity_pub(bad)
