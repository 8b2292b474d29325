"""`apply --check` looks inside every file, and refuses before anything crosses the cable."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioning import client, protocol, sitecheck, sitefile, tlscert
from recorder.errors import ConfigError
from recorder.evidence import keys
from tests.provisioning.provhelpers import call
from tests.provisioning.test_pty import write_site


def problems_of(site_path, **kw) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        sitecheck.check(sitefile.load(site_path), **kw)
    return exc.value.problems


def test_good_site_passes(box, tmp_path):
    site_path, _ = write_site(tmp_path, box)
    assert sitecheck.check(sitefile.load(site_path))[0] == []


def test_private_key_where_the_public_belongs_never_crosses(served, tmp_path):
    box = served.box
    site_path, _ = write_site(tmp_path, box)
    d = site_path.parent
    (d / "practice.pub").write_bytes((d / "practice.key").read_bytes())
    (p,) = problems_of(site_path)
    assert p.startswith("keys.practice_public = practice.pub is a PRIVATE key")
    sent = served.cable.bytes_to_box
    with pytest.raises(ConfigError):
        client.apply_site(served.link, sitefile.load(site_path), out=io.StringIO())
    assert served.cable.bytes_to_box == sent          # nothing went over the cable
    # The box refuses one anyway (an old client, a hand-made request).
    r = call(box.d, "install_key", kind="practice_public",
             pem=(d / "practice.key").read_text())
    assert r["code"] == protocol.E_KEY and "PRIVATE key" in r["message"]
    assert "BEGIN PRIVATE" not in r["message"]


def test_swapped_key_files(box, tmp_path):
    site_path, _ = write_site(tmp_path, box)
    d = site_path.parent
    a, b = (d / "practice.pub").read_bytes(), (d / "upstream-command.pub").read_bytes()
    (d / "practice.pub").write_bytes(b)
    (d / "upstream-command.pub").write_bytes(a)
    ps = problems_of(site_path)
    assert len(ps) == 2 and all("are the two files swapped?" in p for p in ps)
    assert ps[0].startswith("keys.command_key = upstream-command.pub holds the practice PUBLIC")


def test_broker_ca_that_is_not_a_ca(box, tmp_path):
    site_path, _ = write_site(tmp_path, box)
    d = site_path.parent
    (d / "broker-ca.pem").write_bytes(keys.pem_public(
        ed25519.Ed25519PrivateKey.generate().public_key()))
    (p,) = problems_of(site_path)
    assert "keys.broker_ca = broker-ca.pem holds the upstream command PUBLIC key" in p


def test_ca_cert_and_key_swapped_or_alone(box, tmp_path):
    site_path, _ = write_site(tmp_path, box)
    d = site_path.parent
    (p,) = problems_of(site_path, ca_cert=d / "prov-ca.key", ca_key=d / "prov-ca.pem")
    assert "the two are swapped" in p
    other_cert, _ = tlscert.make_ca("other CA")
    (d / "other.pem").write_bytes(other_cert)
    (p,) = problems_of(site_path, ca_cert=d / "other.pem")
    assert "does not belong to CA certificate other.pem" in p


def test_device_certificate_given_as_ca(box, tmp_path):
    site_path, _ = write_site(tmp_path, box)
    d = site_path.parent
    key = tlscert.ensure_tls_key(tmp_path / "dev.key")
    cert = tlscert.sign_csr(tlscert.make_csr(key, "lt-test0001"),
                            (d / "prov-ca.pem").read_bytes(), (d / "prov-ca.key").read_bytes())
    (d / "dev.pem").write_bytes(cert)
    ps = problems_of(site_path, ca_cert=d / "dev.pem")
    assert "is a device certificate (CN 'lt-test0001', this box's own)" in ps[0]


def test_config_problems_inside(tmp_path):
    (tmp_path / "site.toml").write_text('[box.device]\nsite = "s1"\n[box.sync]\nenabled = '
                                        'true\nhost = ""\n')
    ps = problems_of(tmp_path / "site.toml")
    assert any(p.startswith("device.id is not set") and "machine-id" in p for p in ps)
    assert any("sync.enabled = true but sync.host is empty" in p for p in ps)


def test_cli_check_ca_cert_without_key(box, tmp_path, capsys):
    site_path, _ = write_site(tmp_path, box, with_ca=False)
    rc = client.cli_main(["apply", "--check", str(site_path), "--ca-cert",
                          str(site_path.parent / "broker-ca.pem")])
    assert rc == 2
    assert "--ca-cert and --ca-key (tls.ca_cert, tls.ca_key) go together" in \
        capsys.readouterr().err


def test_certificate_for_another_device(served, tmp_path, capsys):
    box = served.box
    call(box.d, "tls_csr")
    key = tlscert.load_private(box.data / "keys" / "device-tls.key")
    ca, ca_key = tlscert.make_ca()
    wrong = tlscert.sign_csr(tlscert.make_csr(key, "lt-someone-else"), ca, ca_key)
    r = call(box.d, "install_cert", pem=wrong.decode())
    assert r["code"] == protocol.E_KEY and "CN 'lt-someone-else'" in r["message"]
    (tmp_path / "wrong.pem").write_bytes(wrong)
    with pytest.raises(ConfigError, match="is not the box's device id 'lt-test0001'"):
        sitecheck.check_cert_for_device(wrong, "lt-test0001")


def test_keygen_names_match_the_site_file(tmp_path):
    (tmp_path / "pass").write_text("a passphrase of some length\n")
    r = subprocess.run([sys.executable, "-m", "recorder.cli", "keygen", "--out",
                        str(tmp_path / "practice.key"), "--passphrase-file",
                        str(tmp_path / "pass")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "practice.key").exists() and (tmp_path / "practice.pub").exists()
    # The site file example names exactly this file for keys.practice_public.
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "provisioning.md").read_text()
    assert 'practice_public = "practice.pub"' in doc
    assert "linetap keygen --out practice.key" in doc
