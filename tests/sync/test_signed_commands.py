"""Signed upstream commands: accepted once, and rejected when forged, replayed,
expired, malformed or meant for another device."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.errors import CommandRejected
from sync import signed_commands as commands
from tests.support.syncbox import make_box, practice_keys


@pytest.fixture
def box(tmp_path):
    _priv, pub, *_ = practice_keys(tmp_path)
    return make_box(tmp_path / "data", pub)


KEY = ed25519.Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def test_valid_command_once(box):
    env = commands.sign(KEY, "hold", "dev-a", call="c1", on=True)
    body = commands.verify(env, PUB, "dev-a")
    commands.check_nonce(box.store, body)
    assert body["kind"] == "hold" and body["on"] is True
    with pytest.raises(CommandRejected, match="replayed"):
        commands.check_nonce(box.store, commands.verify(env, PUB, "dev-a"))


@pytest.mark.parametrize("make, match", [
    (lambda: commands.sign(ed25519.Ed25519PrivateKey.generate(), "delete", "dev-a",
                           call="c"), "bad signature"),
    (lambda: commands.sign(KEY, "delete", "dev-b", call="c"), "device"),
    (lambda: commands.sign(KEY, "delete", "dev-a", call="c", now=time.time() - 10,
                           lifetime_s=5), "expired"),
    (lambda: commands.sign(KEY, "delete", "dev-a", call="c", lifetime_s=10**8), "lifetime"),
    (lambda: commands.sign(KEY, "format", "dev-a"), "unknown command"),
    (lambda: commands.sign(KEY, "hold", "dev-a", call="c"), "argument"),
    (lambda: commands.sign(KEY, "retention", "dev-a", days=0), "range"),
    (lambda: b'{"body": "{}"}', "malformed"),
    (lambda: b"not json", "malformed"),
])
def test_rejections(make, match):
    with pytest.raises(CommandRejected, match=match):
        commands.verify(make(), PUB, "dev-a")


def test_tampered_body_rejected():
    import json
    env = json.loads(commands.sign(KEY, "hold", "dev-a", call="c1", on=True))
    env["body"] = env["body"].replace("true", "false")
    with pytest.raises(CommandRejected, match="bad signature"):
        commands.verify(json.dumps(env).encode(), PUB, "dev-a")


def test_no_key_configured():
    with pytest.raises(CommandRejected, match="no upstream command key"):
        commands.verify(commands.sign(KEY, "hold", "dev-a", call="c", on=True), None, "dev-a")
