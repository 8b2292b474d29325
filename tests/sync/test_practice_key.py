"""The practice key at rest: ``linetap keygen`` writes encrypted PKCS#8 (PBES2 with
PBKDF2-HMAC-SHA256 and AES-256-CBC) that OpenSSL opens; ``export`` and the upstream
tools open it with ``--passphrase-file``; an unencrypted key still opens, with a warning."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from recorder import cli
from recorder.errors import KeyFileError
from recorder.evidence import keys
from recorder.evidence.keys import open_practice_private
from recorder.evidence.practice_key import PBKDF2_ITERATIONS, get_passphrase
from sync.upstream.cli import cli_main as upstream_main
from tests.support.syncbox import make_box, to_toml, write_calls

PASS = "correct horse battery staple ü"


@pytest.fixture
def made(tmp_path):
    pf = tmp_path / "pass.txt"
    pf.write_text(PASS + "\n", encoding="utf-8")
    key = tmp_path / "practice.key"
    assert cli.main(["keygen", "--out", str(key), "--passphrase-file", str(pf)]) == 0
    return key, pf


def test_keygen_writes_standard_encrypted_pkcs8(made, tmp_path):
    key, pf = made
    pem = key.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert key.stat().st_mode & 0o777 == 0o600
    # The algorithm identifiers, as OpenSSL parses them.
    asn1 = subprocess.run(["openssl", "asn1parse", "-in", str(key)], check=True,
                          capture_output=True, text=True).stdout
    for name in ("PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"):
        assert f":{name}" in asn1, name
    assert re.search(rf"INTEGER\s+:0*{PBKDF2_ITERATIONS:X}\n", asn1)
    # OpenSSL decrypts it with the passphrase file; the key matches K.pub.
    out = subprocess.run(["openssl", "pkcs8", "-in", str(key), "-passin", f"file:{pf}"],
                         check=True, capture_output=True).stdout
    plain = serialization.load_pem_private_key(out, password=None)
    pub = keys.load_practice_public(key.with_suffix(".pub"))
    assert keys.raw_public(plain.public_key()) == keys.raw_public(pub)
    # ... and refuses a wrong passphrase.
    bad = tmp_path / "bad.txt"
    bad.write_text("not the passphrase\n")
    r = subprocess.run(["openssl", "pkcs8", "-in", str(key), "-passin", f"file:{bad}"],
                       capture_output=True)
    assert r.returncode != 0


def test_open_encrypted(made, tmp_path):
    key, pf = made
    got = open_practice_private(key, pf)
    pub = keys.load_practice_public(key.with_suffix(".pub"))
    assert keys.raw_public(got.public_key()) == keys.raw_public(pub)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("correct horse battery staple\n")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        open_practice_private(key, wrong)
    # No file and no terminal: a clear error naming the option.
    with pytest.raises(KeyFileError, match="--passphrase-file"):
        open_practice_private(key, None, isatty=lambda: False)
    # At a terminal: the prompt is used.
    got = open_practice_private(key, None, isatty=lambda: True, prompt=lambda _p: PASS)
    assert keys.raw_public(got.public_key()) == keys.raw_public(pub)
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        keys.load_practice_private(key)


def test_keygen_passphrase_rules(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("tooshort\n")
    with pytest.raises(KeyFileError, match="too short"):
        get_passphrase(short, new=True)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(KeyFileError, match="empty"):
        get_passphrase(empty, new=True)
    answers = iter(["a long enough passphrase", "a different passphrase!"])
    with pytest.raises(KeyFileError, match="differ"):
        get_passphrase(None, new=True, isatty=lambda: True, prompt=lambda _p: next(answers))
    assert cli.main(["keygen", "--out", str(tmp_path / "k"), "--passphrase-file",
                     str(short)]) == 2
    assert not (tmp_path / "k").exists()


def test_unencrypted_key_opens_with_warning(tmp_path, capsys):
    priv, pub = keys.practice_keygen(tmp_path / "old.key")       # as before encryption
    got = open_practice_private(priv)
    assert keys.raw_public(got.public_key()) == keys.raw_public(keys.load_practice_public(pub))
    assert "WARNING" in capsys.readouterr().err


def test_export_and_upstream_open_encrypted_key(made, tmp_path, capsys):
    key, pf = made
    box = make_box(tmp_path / "box", keys.load_practice_public(key.with_suffix(".pub")))
    ids = write_calls(box, n_calls=1, segs=1)
    out = tmp_path / "export"
    assert cli.main(["export", "--data-dir", str(box.data_dir), "--key", str(key),
                     "--passphrase-file", str(pf), "--out", str(out)]) == 0
    assert (out / f"{ids[0]}.wav").exists()
    # Without a passphrase (no terminal under pytest) the export is refused, naming why.
    capsys.readouterr()
    assert cli.main(["export", "--data-dir", str(box.data_dir), "--key", str(key),
                     "--out", str(tmp_path / "x")]) == 2
    assert "--passphrase-file" in capsys.readouterr().err
    # The upstream tools take the same option (an empty upstream store: the key opens,
    # nothing matches).
    raw = {"database": {"url": f"sqlite:///{tmp_path / 'up.db'}"},
           "objects": {"path": str(tmp_path / "objects")},
           "sites": {"s": {"retention_days": 30, "devices": {}}}}
    conf = tmp_path / "up.toml"
    conf.write_text(to_toml(raw))
    capsys.readouterr()
    assert upstream_main(["--config", str(conf), "calls", "--number", "01632960123",
                          "--key", str(key), "--passphrase-file", str(pf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("wrong passphrase here\n")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        upstream_main(["--config", str(conf), "export", "--key", str(key),
                       "--passphrase-file", str(wrong), "--out", str(tmp_path / "y")])
