"""`linetap upstream init | enrol | pin | revoke | check | serve` against a real mosquitto
(started by `serve` from the generated config) and real SQLite."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from provisioning import sitefile, tlscert
from recorder.errors import KeyFileError
from recorder.evidence import keys
from sync.upstream import config as upstream_config
from sync.upstream import pki, setup
from sync.upstream.store import UAudit, open_db

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
LINETAP = str(Path(sys.executable).parent / "linetap")
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def up():
    # Not under pytest's 0700 tmp root: mosquitto drops to its own user and must be
    # able to walk to its files, as it would in /srv or /etc.
    d = Path(tempfile.mkdtemp(prefix="linetap-up-"))
    os.chmod(d, 0o755)
    port = free_port()
    lay = setup.init(d / "up", port=port, bind="127.0.0.1", workers=1,
                     out=open(os.devnull, "w"))
    yield lay
    shutil.rmtree(d, ignore_errors=True)


class Serve:
    def __init__(self, lay):
        self.lay = lay
        self.log = open(lay.root / "serve.log", "wb")
        self.p = subprocess.Popen([LINETAP, "upstream", "--config", str(lay.config), "serve",
                                   "--workers", "1"], stdout=self.log, stderr=self.log)
        self.wait_ready()

    def wait_ready(self, after: int = 0):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = (self.lay.root / "serve.log").read_text(errors="replace")
            if text.count("running (pid") > after:
                return
            assert self.p.poll() is None, text
            time.sleep(0.1)
        raise AssertionError("serve did not start: " + text)

    def restart(self):
        before = (self.lay.root / "serve.log").read_text(errors="replace").count(
            "running (pid")
        self.p.send_signal(signal.SIGHUP)
        self.wait_ready(after=before)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(30)
        self.log.close()


@pytest.fixture
def served(up):
    s = Serve(up)
    yield s
    s.stop()


def connect(lay, cert, key, port) -> str:
    """Connect with a client certificate: 'ok', or what went wrong."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(lay.ca), certfile=str(cert), keyfile=str(key),
              tls_version=ssl.PROTOCOL_TLS_CLIENT)
    done, out = threading.Event(), {}

    def on_connect(client, userdata, flags, rc, props):
        out["rc"] = str(rc)
        done.set()

    def on_disconnect(client, userdata, flags, rc, props):
        # TLS 1.3: the broker's refusal of the client certificate arrives after the
        # client's side of the handshake, as the connection closing before CONNACK.
        out.setdefault("rc", f"refused: closed before CONNACK ({rc})")
        done.set()
    c.on_connect, c.on_disconnect = on_connect, on_disconnect
    try:
        c.connect("localhost", port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"
    c.loop_start()
    try:
        if not done.wait(5):
            return "no connack"
        return "ok" if out["rc"] == "Success" else out["rc"]
    finally:
        c.loop_stop()
        c.disconnect()


def test_init_writes_a_complete_upstream(up):
    lay = up
    mode = {p.name: p.stat().st_mode & 0o777 for p in lay.pki.iterdir()}
    assert mode["ca.key"] == 0o600
    assert mode["ingest.key"] in (0o600, 0o640) and mode["command.key"] in (0o600, 0o640)
    assert mode["broker.key"] == 0o640 and mode["enrolment.json"] == 0o600
    if os.geteuid() == 0:
        import grp
        assert lay.broker_key.stat().st_gid == grp.getgrnam("mosquitto").gr_gid
    ca = pki.load_cert(lay.ca)
    br = pki.load_cert(lay.broker)
    assert pki.verify_chain(br, ca) is None
    sans = br.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in [str(n.value) for n in sans]
    assert pki.cn_of(pki.load_cert(lay.ingest)) == "ingest"
    conf = lay.mosq_conf.read_text()
    for line in ("require_certificate true", "use_identity_as_username true",
                 f"acl_file {lay.acl}", f"crlfile {lay.crl}", f"keyfile {lay.broker_key}",
                 "allow_anonymous false"):
        assert line in conf
    assert "pattern write linetap/+/%u/seg/#" in lay.acl.read_text()
    assert "require_certificate" not in lay.acl.read_text()       # separate files
    u = upstream_config.load(str(lay.config))
    assert u.cert == str(lay.ingest) and u.command_key == str(lay.command_key)
    with pytest.raises(setup.SetupError, match="never overwrites a CA"):
        setup.init(lay.root, out=open(os.devnull, "w"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_init_makes_an_audit_key_that_signs_the_trail(up):
    """`upstream init` writes pki/audit.key (beside, not the same as, the command key)
    and names it in upstream.toml; every audited set-up step is then signed by it."""
    from sync.upstream.store import load_audit_key, verify_audit
    lay = up
    assert lay.audit_key.stat().st_mode & 0o777 in (0o600, 0o640)
    u = upstream_config.load(str(lay.config))
    assert u.audit_key == str(lay.audit_key)
    key = load_audit_key(u.audit_key)
    assert keys.raw_public(key.public_key()) == keys.raw_public(
        keys.load_ed25519_public(lay.audit_pub))
    assert lay.audit_key.read_bytes() != lay.command_key.read_bytes()
    setup._audit(lay, "test_step", n=1)
    setup._audit(lay, "test_step", n=2)
    r = verify_audit(key.public_key())
    assert r.entries >= 2 and r.signed == r.entries and r.status == "verified"


def test_units_verify(up, tmp_path):
    d = tmp_path / "units"
    d.mkdir()
    for f in up.systemd.iterdir():
        shutil.copy(f, d / f.name)
    shutil.copy(d / "linetap-ingest@.service", d / "linetap-ingest@1.service")
    for unit in ("linetap-upstream-broker.service", "linetap-ingest@1.service",
                 "linetap-portal.service", "linetap-updates.service",
                 "linetap-upstream.target"):
        r = subprocess.run(["systemd-analyze", "verify", str(d / unit)],
                           capture_output=True, text=True, timeout=120)
        ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "linetap" in ln]
        assert r.returncode == 0 and not ours, r.stdout + r.stderr
    text = (d / "linetap-upstream-broker.service").read_text()
    for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "User=mosquitto",
                 "PrivateTmp=yes", "MemoryDenyWriteExecute=yes", "Restart=on-failure"):
        assert line in text
    import re
    assert "portal --config" in (d / "linetap-portal.service").read_text()
    assert "update serve" in (d / "linetap-updates.service").read_text()
    for unit in ("linetap-upstream-broker.service", "linetap-ingest@1.service",
                 "linetap-portal.service", "linetap-updates.service"):
        r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                            str(d / unit)], capture_output=True, text=True)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        assert m and float(m.group(1)) <= 2.5, r.stdout + r.stderr   # the box's goal


def test_check_passes_end_to_end_and_fails_when_the_broker_is_down(served, capsys):
    cfg = str(served.lay.config)
    rc = setup.check(cfg, timeout_s=10, wait_s=30)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OK   broker localhost" in out and "round trip" in out
    assert "OK   database" in out
    served.stop()
    assert setup.check(cfg, timeout_s=3) == 1
    assert "FAIL broker" in capsys.readouterr().out


def test_check_names_a_bad_key_mode_and_a_wrong_key(up, capsys):
    shutil.copy(up.broker_key, up.ingest_key)
    os.chmod(up.ingest_key, 0o644)
    assert setup.check(str(up.config), timeout_s=1) == 1
    out = capsys.readouterr().out
    assert "readable by everyone" in out
    assert "ingest.key is not the key of ingest.pem" in out


def test_enrol_pins_identity_and_writes_a_valid_site_file(up, tmp_path, capsys):
    cfg = str(up.config)
    priv, pub = keys.practice_keygen(tmp_path / "practice.key")
    folder = setup.enrol(cfg, "surgery-1", "lt-a", practice_public=str(pub))
    assert "identity NOT pinned" in capsys.readouterr().out
    assert upstream_config.load(cfg).site_of("lt-a") is None      # not until pinned
    cert = pki.load_cert(folder / "device-cert.pem")
    assert pki.cn_of(cert) == "lt-a"
    assert (folder / "device-tls.key").stat().st_mode & 0o777 == 0o600
    site = sitefile.load(folder / "site.toml")
    assert site.config.device.id == "lt-a" and site.config.device.site == "surgery-1"
    assert set(site.keys) == {"practice_public", "command_key", "broker_ca"}
    ident = keys.ensure_identity(tmp_path / "box", first_start=True)
    raw = keys.raw_public(ident.public_key())
    watch = upstream_config.ConfigWatch(cfg, upstream_config.load(cfg))
    assert watch.changed() is None
    setup.pin(cfg, "lt-a", raw.hex())
    assert "lt-a" in watch.changed().sites["surgery-1"].devices      # workers follow
    u = upstream_config.load(cfg)
    assert keys.raw_public(u.sites["surgery-1"].devices["lt-a"]) == raw
    open_db(u.db_url)
    acts = [(a.action, a.detail.get("identity")) for a in UAudit.select().order_by(UAudit.seq)]
    assert ("identity_pinned", keys.fingerprint(raw)) in acts
    with pytest.raises(setup.SetupError, match="64 hex digits"):
        setup.pin(cfg, "lt-a", "abc")


def test_enrol_signs_a_box_csr_only_for_its_own_device_id(up, tmp_path):
    cfg = str(up.config)
    k = tlscert.ensure_tls_key(tmp_path / "tls.key")
    setup.enrol(cfg, "s1", "lt-b", csr=_csr(tmp_path, k, "lt-b"))
    folder = up.devices / "lt-b"
    assert not (folder / "device-tls.key").exists()          # the key stays on the box
    assert pki.key_matches(pki.load_cert(folder / "device-cert.pem"), k)
    with pytest.raises(KeyFileError, match="CN 'lt-x', not the device id 'lt-b'"):
        setup.enrol(cfg, "s1", "lt-b", csr=_csr(tmp_path, k, "lt-x"))


def _csr(d: Path, key, cn: str) -> str:
    p = d / f"{cn}.csr"
    p.write_bytes(tlscert.make_csr(key, cn))
    return str(p)


def test_revoked_and_reenrolled_certificates_are_refused_by_broker_and_ingest(served,
                                                                            tmp_path):
    lay = served.lay
    cfg = str(lay.config)
    port = upstream_config.load(cfg).port
    ident = keys.ensure_identity(tmp_path / "box", first_start=True)
    hexkey = keys.raw_public(ident.public_key()).hex()
    folder = setup.enrol(cfg, "s1", "lt-r", identity=hexkey)
    old = tmp_path / "old.pem"
    shutil.copy(folder / "device-cert.pem", old)
    old_key = tmp_path / "old.key"
    shutil.copy(folder / "device-tls.key", old_key)
    served.restart()
    assert connect(lay, old, old_key, port) == "ok"
    # Re-enrolment: a new certificate; the old one is dead.
    setup.enrol(cfg, "s1", "lt-r")
    served.restart()
    assert connect(lay, folder / "device-cert.pem", folder / "device-tls.key", port) == "ok"
    assert connect(lay, old, old_key, port).startswith("refused")
    # Revocation: refused by the broker, and the ingest drops the device.
    setup.revoke(cfg, "lt-r")
    served.restart()
    assert connect(lay, folder / "device-cert.pem", folder / "device-tls.key",
                   port).startswith("refused")
    from sync.upstream.ingest import Ingest
    ing = Ingest(upstream_config.load(cfg))
    assert ing.handle("linetap/s1/lt-r/health", b"{}") is None and ing.dropped == 1
    assert "revoked" in (lay.pki / "enrolment.json").read_text()


def test_expiring_says_how_many_even_when_none(up, capsys):
    from sync.upstream.cli import cli_main
    assert cli_main(["--config", str(up.config), "expiring"]) == 0
    assert "0 call(s) expire within 7 day(s)" in capsys.readouterr().out


def test_upstream_config_reports_every_problem_in_every_section():
    from recorder.errors import ConfigError
    with pytest.raises(ConfigError) as ei:
        upstream_config.from_dict({
            "databse": {}, "broker": {"port": "8883"},
            "sites": {"s": {"retention_days": 99999, "devices": {"d": "nothex"}}}})
    text = "\n".join(ei.value.problems)
    for part in ("unknown section [databse] (did you mean 'database'?)",
                 "broker.port: wrong type str", "sites.s.retention_days",
                 "sites.s.devices.d"):
        assert part in text
