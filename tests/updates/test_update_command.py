"""The signed ``update`` command: its arguments are checked like every other kind's
(https only, a size a slot can hold, a real SHA-256, a plain version string)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.errors import CommandRejected
from sync import signed_commands as commands

KEY = ed25519.Ed25519PrivateKey.generate()
PUB = KEY.public_key()
GOOD = {"url": "https://upstream.example:8443/bundles/abc.raucb", "size": 123456,
        "sha256": "ab" * 32, "version": "1.4.2"}


def test_a_good_update_is_accepted():
    body = commands.verify(commands.sign(KEY, "update", "dev-a", **GOOD), PUB, "dev-a")
    assert body["kind"] == "update" and body["sha256"] == "ab" * 32


@pytest.mark.parametrize("change, match", [
    ({"url": "http://upstream.example/b.raucb"}, "https"),
    ({"url": "ftp://upstream.example/b.raucb"}, "https"),
    ({"url": "https:///b.raucb"}, "https"),
    ({"url": "upstream.example/b.raucb"}, "https"),
    ({"url": "https://up stream/b.raucb"}, "spaces"),
    ({"url": "https://u/" + "x" * 3000}, "too long"),
    ({"size": 0}, "size 0 out of range"),
    ({"size": -5}, "out of range"),
    ({"size": commands.MAX_BUNDLE_BYTES + 1}, "out of range"),
    ({"size": 12.5}, "argument 'size'"),
    ({"size": True}, "argument 'size'"),
    ({"sha256": "AB" * 32}, "hex"),
    ({"sha256": "ab" * 31}, "hex"),
    ({"sha256": "zz" * 32}, "hex"),
    ({"version": ""}, "version"),
    ({"version": "1.0; rm -rf /"}, "version"),
    ({"version": "v" * 65}, "version"),
    ({"version": 3}, "argument 'version'"),
])
def test_bad_update_arguments_are_rejected(change, match):
    env = commands.sign(KEY, "update", "dev-a", **{**GOOD, **change})
    with pytest.raises(CommandRejected, match=match):
        commands.verify(env, PUB, "dev-a")


def test_a_missing_argument_is_rejected():
    args = dict(GOOD)
    del args["sha256"]
    with pytest.raises(CommandRejected, match="argument 'sha256'"):
        commands.verify(commands.sign(KEY, "update", "dev-a", **args), PUB, "dev-a")
