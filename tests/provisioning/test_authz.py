"""Who may change a provisioned box: presence AND an upstream-signed token.

The hostile laptop has presence (the window is open, as after someone pressed the
front-panel button) but no token; every protected operation must be refused, leave the
box as it was, and be audited. Over a real pty pair with pyserial on both ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioning import client, protocol, tlscert
from recorder import config as rconfig
from recorder.evidence import audit, keys
from sync import authz
from tests.provisioning.provhelpers import box_config, call


def _pems(tmp_path, name):
    _priv, pub = keys.practice_keygen(tmp_path / f"{name}.key")
    return pub.read_text()


@pytest.fixture
def upstream_key():
    return ed25519.Ed25519PrivateKey.generate()


def provision(box, upstream_key, tmp_path):
    """Make ``box`` a provisioned one: it pins ``upstream_key``'s public half."""
    (box.etc / "upstream-command.pub").write_bytes(keys.pem_public(upstream_key.public_key()))
    (box.etc / "practice.pub").write_text(_pems(tmp_path, "installed"))
    ca, _ = tlscert.make_ca("broker CA")
    (box.etc / "broker-ca.pem").write_bytes(ca)
    tlscert.ensure_tls_key(box.data / "keys" / "device-tls.key")


def snapshot(box) -> dict:
    """Every file a protected operation could change, by content."""
    paths = [box.config_path, box.etc / "practice.pub", box.etc / "upstream-command.pub",
             box.etc / "broker-ca.pem", box.data / "keys" / "device-tls.key",
             keys.identity_path(box.data)]
    return {str(p): p.read_bytes() if p.exists() else None for p in paths}


@pytest.fixture
def provisioned(served, upstream_key, tmp_path):
    provision(served.box, upstream_key, tmp_path)
    return SimpleNamespace(**vars(served), key=upstream_key)


def hostile_attempts(box, tmp_path) -> list[tuple[str, dict, str]]:
    """(cmd, args, op) for every protected operation, each a real change."""
    other_cmd = keys.pem_public(ed25519.Ed25519PrivateKey.generate().public_key()).decode()
    other_ca, _ = tlscert.make_ca("attacker CA")
    base = box_config(box.etc, box.data)
    return [
        ("install_key", {"kind": "practice_public", "pem": _pems(tmp_path, "attacker")},
         "practice_key"),
        ("install_key", {"kind": "command_key", "pem": other_cmd}, "command_key"),
        ("install_key", {"kind": "broker_ca", "pem": other_ca.decode()}, "broker"),
        ("config_stage", {"text": base.replace("broker.example.net", "evil.example.org")},
         "broker"),
        ("set_config", {"text": base.replace("enabled = false", "enabled = true")
                        .replace("broker.example.net", "evil.example.org")}, "broker"),
        ("config_stage", {"text": base.replace('id = "lt-test0001"', 'id = "lt-evil"')},
         "device_id"),
        ("config_stage", {"text": base.replace(f"{box.etc}/practice.pub",
                                               f"{box.etc}/other.pub")}, "practice_key"),
        ("config_stage", {"text": base.replace(f"{box.etc}/upstream-command.pub",
                                               f"{box.etc}/other-command.pub")},
         "command_key"),
        ("tls_csr", {"new_key": True}, "broker"),
        ("factory_reset_begin", {}, "factory_reset"),
    ]


def test_hostile_laptop_with_presence_but_no_token(provisioned, tmp_path):
    box, link = provisioned.box, provisioned.link
    before = snapshot(box)
    n_audit = len(audit.read(box.data))
    assert link.call("hello")["provisioned"] is True
    client.open_session(link, None)
    attempts = hostile_attempts(box, tmp_path)
    for cmd, args, op in attempts:
        with pytest.raises(client.RemoteError) as exc:
            link.call(cmd, **args)
        assert exc.value.code == protocol.E_UNAUTHORISED, (cmd, op, exc.value)
        assert f"token for '{op}'" in exc.value.message, exc.value.message
        assert "linetap upstream authorise --device lt-test0001" in exc.value.message
    # A forged token (another upstream's key), one for another box and one for another
    # operation do not help either.
    forged = authz.mint(ed25519.Ed25519PrivateKey.generate(), "lt-test0001",
                        ["factory_reset"])
    elsewhere = authz.mint(provisioned.key, "lt-other", ["factory_reset"])
    for tok in (forged, elsewhere, b"not a token"):
        with pytest.raises(client.RemoteError) as exc:
            link.call("authorise", token=tok.decode())
        assert exc.value.code == protocol.E_UNAUTHORISED
    link.call("authorise", token=authz.mint(provisioned.key, "lt-test0001",
                                            ["practice_key"]).decode())
    with pytest.raises(client.RemoteError) as exc:
        link.call("factory_reset_begin")
    assert "token allows practice_key" in exc.value.message
    assert snapshot(box) == before
    assert box.calls == []
    refused = [e["detail"] for e in audit.read(box.data)[n_audit:]
               if e["action"] == "provision_refused"]
    assert [(d["cmd"], d["op"]) for d in refused if "op" in d][:len(attempts)] == \
        [(("factory_reset" if c == "factory_reset_begin" else c), op)
         for c, _a, op in attempts]
    assert len([d for d in refused if d["cmd"] == "authorise"]) == 3
    assert refused[-1]["reason"] == "token allows practice_key"
    assert audit.verify(box.data).problems == []


def test_same_files_again_need_no_token(provisioned):
    """Re-applying what is already in force is not a change."""
    box, link = provisioned.box, provisioned.link
    client.open_session(link, None)
    link.call("config_stage", text=box.config_path.read_text())
    for kind, name in (("practice_public", "practice.pub"), ("broker_ca", "broker-ca.pem"),
                       ("command_key", "upstream-command.pub")):
        link.call("install_key", kind=kind, pem=(box.etc / name).read_text())
    link.call("tls_csr")
    assert link.call("config_commit")["applied"]


def test_token_allows_exactly_its_operation_once(provisioned, tmp_path):
    box, link = provisioned.box, provisioned.link
    tok = authz.mint(provisioned.key, "lt-test0001", ["practice_key"], ttl_s=600)
    client.open_session(link, None)
    assert link.call("authorise", token=tok.decode())["authorised"] == ["practice_key"]
    new = _pems(tmp_path, "new-practice")
    link.call("config_stage", text=box.config_path.read_text())
    link.call("install_key", kind="practice_public", pem=new)
    assert (box.etc / "practice.pub").read_text() != new      # staged, not in force
    link.call("config_commit")
    assert (box.etc / "practice.pub").read_text() == new
    # Replaying the same token on the same box is refused.
    link.call("end")
    box.env.presence.grant()
    client.open_session(link, None)
    with pytest.raises(client.RemoteError) as exc:
        link.call("authorise", token=tok.decode())
    assert "already used" in exc.value.message


def test_token_checks():
    key = ed25519.Ed25519PrivateKey.generate()
    tok = authz.mint(key, "lt-1", ["broker"], ttl_s=60, now=1000.0)
    body = authz.verify(tok, key.public_key(), "lt-1", now=1030.0)
    assert body["ops"] == ["broker"] and body["destroy_unsynced"] is False
    with pytest.raises(authz.AuthorisationError, match="expired"):
        authz.verify(tok, key.public_key(), "lt-1", now=1061.0)
    with pytest.raises(authz.AuthorisationError, match="for device 'lt-1'"):
        authz.verify(tok, key.public_key(), "lt-2", now=1030.0)
    with pytest.raises(authz.AuthorisationError, match="does not verify"):
        authz.verify(tok, ed25519.Ed25519PrivateKey.generate().public_key(), "lt-1",
                     now=1030.0)
    # A delete command signed by the same key is not a provisioning token.
    from sync import signed_commands as commands
    cmd = commands.sign(key, "delete", "lt-1", now=1000.0, call="c1")
    with pytest.raises(authz.AuthorisationError, match="kind 'delete'"):
        authz.verify(cmd, key.public_key(), "lt-1", now=1030.0)
    with pytest.raises(authz.AuthorisationError, match="outside 1..86400"):
        authz.mint(key, "lt-1", ["broker"], ttl_s=2 * 86400)
    with pytest.raises(authz.AuthorisationError, match="unknown operation"):
        authz.mint(key, "lt-1", ["everything"])
    with pytest.raises(authz.AuthorisationError, match="only makes sense"):
        authz.mint(key, "lt-1", ["broker"], destroy_unsynced=True)


def test_fresh_box_needs_presence_only(box, tmp_path):
    """No pinned command key: the first provisioning is presence alone."""
    (box.etc / "upstream-command.pub").unlink(missing_ok=True)
    assert call(box.d, "hello")["provisioned"] is False
    r = call(box.d, "install_key", kind="practice_public", pem=_pems(tmp_path, "p"))
    assert r["installed"] == "practice_public"


def test_broken_pinned_key_does_not_make_the_box_fresh(box, tmp_path):
    (box.etc / "upstream-command.pub").write_text("garbage")
    (box.etc / "practice.pub").write_text(_pems(tmp_path, "old"))
    r = call(box.d, "install_key", kind="practice_public", pem=_pems(tmp_path, "p"))
    assert r["code"] == protocol.E_UNAUTHORISED and "does not load" in r["message"]


def test_read_only_commands_leak_no_call_activity(box, fake_recorder):
    from provisioning.presence import Presence
    box.env.presence = Presence(False)
    st = call(box.d, "status")
    assert st["recorder"]["running"] is True
    text = json.dumps(st)
    for leak in ("hook", "level_dbfs", "ringing", '"call"', "lines\": ["):
        assert leak not in text, leak
    assert call(box.d, "line_test")["code"] == protocol.E_PRESENCE
    hello = json.dumps(call(box.d, "hello"))
    assert "hook" not in hello and "level" not in hello
    box.env.presence = Presence(True)
    assert call(box.d, "status")["recorder"]["lines"][0]["hook"] == "off"


def test_authorise_cli_mints_a_token_the_box_accepts(tmp_path, upstream_key, box):
    """`linetap upstream authorise` end to end: token file, upstream audit entry."""
    from cryptography.hazmat.primitives import serialization
    (tmp_path / "command.key").write_bytes(upstream_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "upstream.toml").write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/up.db"\n\n'
        f'[commands]\nkey = "{tmp_path}/command.key"\n')
    run = [sys.executable, "-m", "recorder.cli", "upstream", "--config",
           str(tmp_path / "upstream.toml"), "authorise", "--device", "lt-test0001",
           "--op", "factory_reset", "--destroy-unsynced", "--ttl", "15m",
           "--out", str(tmp_path / "token.json")]
    r = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    tok = (tmp_path / "token.json").read_bytes().strip()
    body = authz.verify(tok, upstream_key.public_key(), "lt-test0001")
    assert body["ops"] == ["factory_reset"] and body["destroy_unsynced"] is True
    assert 899 <= body["expires"] - body["issued"] <= 901
    a = subprocess.run([sys.executable, "-m", "recorder.cli", "upstream", "--config",
                        str(tmp_path / "upstream.toml"), "audit", "--json"],
                       capture_output=True, text=True, timeout=60)
    rows = json.loads(a.stdout)
    assert rows[-1]["action"] == "provision_authorised"
    assert rows[-1]["detail"]["nonce"] == body["nonce"]
    bad = subprocess.run(run[:-4] + ["--ttl", "2d"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--ttl '2d'" in bad.stderr
    # The box pins that key: the token is accepted.
    (box.etc / "upstream-command.pub").write_bytes(keys.pem_public(upstream_key.public_key()))
    assert call(box.d, "authorise", token=tok.decode())["authorised"] == ["factory_reset"]


def test_token_expiry_during_a_session(provisioned, tmp_path):
    box, link = provisioned.box, provisioned.link
    now = [time.time()]
    box.env.now = lambda: now[0]
    client.open_session(link, None)
    link.call("authorise", token=authz.mint(provisioned.key, "lt-test0001",
                                            ["practice_key"], ttl_s=60).decode())
    now[0] += 61
    with pytest.raises(client.RemoteError) as exc:
        link.call("install_key", kind="practice_public", pem=_pems(tmp_path, "late"))
    assert "token expired" in exc.value.message
    assert rconfig.load(box.config_path).device.id == "lt-test0001"
