"""``linetap portal user add|list|disable|reset`` and the serve command's arguments."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder import cli
from recorder.evidence.keys import raw_public
from sync.upstream.portal import accounts


@pytest.fixture
def conf(tmp_path):
    dev = raw_public(ed25519.Ed25519PrivateKey.generate().public_key()).hex()
    p = tmp_path / "upstream.toml"
    p.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/up.db"\n[objects]\n'
                 f'path = "{tmp_path}/objects"\n[sites.surgery-1]\nretention_days = 90\n'
                 f'devices = {{ "lt-1" = "{dev}" }}\n')
    (tmp_path / "pw").write_text("a long enough password\n")
    return p


def run(conf, *args):
    return cli.main(["portal", "--config", str(conf), *args])


def test_user_add_list_disable_reset(conf, tmp_path, capsys):
    pw = str(tmp_path / "pw")
    assert run(conf, "user", "add", "alice", "--site", "surgery-1", "--role", "manager",
               "--password-file", pw) == 0
    assert run(conf, "user", "add", "bob", "--site", "surgery-1", "--role", "auditor",
               "--password-file", pw, "--totp") == 0
    out = capsys.readouterr().out
    assert "otpauth://totp/Linetap:bob" in out
    assert accounts.authenticate("alice", "a long enough password", "").user is not None
    u = accounts.get_user("alice")
    assert u.pw_hash.startswith("$argon2id$")
    assert run(conf, "user", "list", "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["alice"]["role"] == "manager" and rows["bob"]["totp"]
    assert run(conf, "user", "disable", "alice") == 0
    assert accounts.authenticate("alice", "a long enough password", "").user is None
    assert run(conf, "user", "disable", "alice", "--enable") == 0
    (tmp_path / "pw2").write_text("another long password\n")
    assert run(conf, "user", "reset", "alice", "--password-file", str(tmp_path / "pw2")) == 0
    assert accounts.authenticate("alice", "another long password", "").user is not None
    assert run(conf, "user", "reset", "bob", "--no-totp") == 0
    assert accounts.get_user("bob").totp_secret is None


@pytest.mark.parametrize("args, words", [
    (["user", "add", "carol", "--site", "nowhere", "--role", "staff"], "site 'nowhere'"),
    (["user", "add", "Carol!", "--site", "surgery-1", "--role", "staff"], "user name"),
    (["user", "reset", "nobody"], "no such user"),
])
def test_bad_input_is_a_clear_error(conf, tmp_path, capsys, args, words):
    if "add" in args:
        args = [*args, "--password-file", str(tmp_path / "pw")]
    else:
        args = [*args, "--password-file", str(tmp_path / "pw")]
    assert run(conf, *args) == 2
    assert words in capsys.readouterr().err


def test_short_password_and_bad_bind_are_refused(conf, tmp_path, capsys):
    (tmp_path / "short").write_text("short\n")
    assert run(conf, "user", "add", "dave", "--site", "surgery-1", "--role", "staff",
               "--password-file", str(tmp_path / "short")) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(conf, "--bind", "localhost")
    assert "HOST:PORT" in capsys.readouterr().err
