"""`linetap doctor`: each check table-tested with injected probes, plus a real TLS probe."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections import namedtuple
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from provisioning import tlscert
from recorder import config as rconfig
from recorder.cli import doctor
from recorder.cli.doctor import FAIL, OK, WARN
from recorder.evidence import keys

NOW = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
Usage = namedtuple("Usage", "total used free")


def cfg_with(**kw) -> rconfig.Config:
    return rconfig.Config().replace(**kw)


# -- config and keys -------------------------------------------------------------------------

def test_config_ok_and_fail(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[device]\nsite = "s1"\n')
    res, cfg = doctor.check_config(good)
    assert res.status == OK and "site s1" in res.detail and cfg is not None
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio]\nlinez = 2\nrate = 1\n")
    res, cfg = doctor.check_config(bad)
    assert res.status == FAIL and cfg is None
    assert "did you mean 'lines'" in res.detail and "rate" in res.detail and res.fix
    res, _ = doctor.check_config(tmp_path / "absent.toml")
    assert res.status == FAIL and "not found" in res.detail


def test_practice_key(tmp_path):
    cfg = cfg_with(recording__public_key=str(tmp_path / "p.pub"))
    assert doctor.check_practice_key(cfg).status == FAIL
    keys.practice_keygen(tmp_path / "p")
    r = doctor.check_practice_key(cfg)
    assert r.status == OK and "fingerprint" in r.detail
    (tmp_path / "p.pub").write_bytes(keys.pem_public(
        ed25519.Ed25519PrivateKey.generate().public_key()))
    assert doctor.check_practice_key(cfg).status == FAIL


def test_identity(tmp_path):
    assert doctor.check_identity(tmp_path).status == WARN
    keys.ensure_identity(tmp_path, first_start=True)
    assert doctor.check_identity(tmp_path).status == OK
    keys.identity_path(tmp_path).write_text("garbage")
    assert doctor.check_identity(tmp_path).status == FAIL


def test_command_key(tmp_path):
    assert doctor.check_command_key(rconfig.Config()).status == OK
    cfg = cfg_with(sync__enabled=True, sync__command_key=str(tmp_path / "c.pub"))
    assert doctor.check_command_key(cfg).status == FAIL
    (tmp_path / "c.pub").write_bytes(keys.pem_public(
        ed25519.Ed25519PrivateKey.generate().public_key()))
    assert doctor.check_command_key(cfg).status == OK


# -- hardware ---------------------------------------------------------------------------------

def _raise(exc):
    def f(*_a, **_k):
        raise exc
    return f


@pytest.mark.parametrize("hardware,probe,running,expect", [
    ("sim", _raise(OSError("never called")), False, OK),
    ("pi", lambda *a: None, False, OK),
    ("pi", _raise(ImportError("no alsaaudio")), False, WARN),
    ("pi", _raise(OSError("No such file or directory [hw:1]")), False, FAIL),
    ("pi", _raise(OSError("Device or resource busy [default]")), True, OK),
    ("pi", _raise(OSError("Device or resource busy [default]")), False, FAIL),
])
def test_alsa(hardware, probe, running, expect):
    cfg = cfg_with(device__hardware=hardware)
    r = doctor.check_alsa(cfg, running, open_capture=probe)
    assert r.status == expect, r
    assert bool(r.fix) == (expect != OK)


def test_alsa_probe_receives_config():
    seen = []
    cfg = cfg_with(audio__capture_device="hw:1", audio__lines=2, audio__rate=16000,
                   audio__period_frames=320)
    doctor.check_alsa(cfg, False, open_capture=lambda *a: seen.append(a))
    assert seen == [("hw:1", 2, 16000, 320)]


def test_doctor_probes_are_the_daemons(tmp_path, monkeypatch):
    """doctor passes a sound card or a pin factory only if the daemon could use it: it
    calls the daemon's own probes, and the ALSA one opens a real PCM as capture does."""
    import inspect

    from hw import audio, gpio
    assert inspect.signature(doctor.check_alsa).parameters["open_capture"].default \
        is audio.probe_capture
    name, f = doctor.make_pin_factory("mock")
    assert isinstance(f, type(gpio.make_factory("mock")))
    f.close()
    # A real ALSA PCM (alsa-lib's null plugin: no card needed) opens as capture would;
    # a PCM that does not exist fails, naming it.
    conf = tmp_path / "alsa.conf"
    conf.write_text("pcm.linetap_probe {\n    type null\n}\n")
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    cfg = cfg_with(device__hardware="pi", audio__capture_device="linetap_probe",
                   audio__lines=2, audio__rate=8000)
    assert doctor.check_alsa(cfg, False).status == OK
    r = doctor.check_alsa(cfg.replace(audio__capture_device="linetap_nosuch"), False)
    assert r.status == FAIL and "linetap_nosuch" in r.detail


@pytest.mark.parametrize("model,factory,expect", [
    (None, None, WARN),                                    # a PC: not a Pi
    (b"Raspberry Pi 4 Model B Rev 1.5\0", lambda n: ("lgpio", object()), OK),
    (b"Raspberry Pi 4 Model B Rev 1.5\0", _raise(RuntimeError("lgpio: not installed")), FAIL),
])
def test_pins(tmp_path, model, factory, expect):
    mp = tmp_path / "model"
    if model is not None:
        mp.write_bytes(model)
    r = doctor.check_pins(rconfig.Config(), mp, factory=factory or _raise(AssertionError()))
    assert r.status == expect, r
    if model is None:
        assert "not a Pi" in r.detail


def test_pins_sim():
    assert doctor.check_pins(cfg_with(device__hardware="sim")).status == OK


def test_pin_factory_by_name():
    name, f = doctor.make_pin_factory("mock")
    assert name == "MockFactory"
    f.close()
    with pytest.raises(ValueError, match="'nope' is not supported"):
        doctor.make_pin_factory("nope")


# -- broker -----------------------------------------------------------------------------------

def _server_cert(ca_cert_pem, ca_key_pem, host="localhost"):
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture
def pki(tmp_path):
    """A broker CA, a device key + certificate from it, as files."""
    ca_cert, ca_key = tlscert.make_ca("broker CA")
    (tmp_path / "ca.pem").write_bytes(ca_cert)
    dev_key = tlscert.ensure_tls_key(tmp_path / "dev.key")
    csr = tlscert.make_csr(dev_key, "lt-test")
    (tmp_path / "dev.pem").write_bytes(tlscert.sign_csr(csr, ca_cert, ca_key, days=90,
                                                        now=NOW))
    cfg = cfg_with(device__id="lt-test", sync__enabled=True, sync__host="localhost",
                   sync__port=8883,
                   sync__ca=str(tmp_path / "ca.pem"), sync__cert=str(tmp_path / "dev.pem"),
                   sync__key=str(tmp_path / "dev.key"))
    return cfg, ca_cert, ca_key, tmp_path


def test_broker_table(pki):
    cfg, ca_cert, ca_key, tmp = pki
    ok = lambda *a: "TLSv1.3"  # noqa: E731
    assert doctor.check_broker(rconfig.Config(), NOW).status == OK
    assert doctor.check_broker(cfg.replace(sync__host=""), NOW, connect=ok).status == FAIL
    r = doctor.check_broker(cfg, NOW, connect=ok)
    assert r.status == OK and "TLSv1.3" in r.detail
    r = doctor.check_broker(cfg, NOW + dt.timedelta(days=80), connect=ok)
    assert r.status == WARN and "expires" in r.detail
    r = doctor.check_broker(cfg, NOW + dt.timedelta(days=91), connect=ok)
    assert r.status == FAIL and "expired" in r.detail
    r = doctor.check_broker(cfg, NOW - dt.timedelta(days=2), connect=ok)
    assert r.status == FAIL and "clock" in r.detail
    r = doctor.check_broker(cfg, NOW, connect=_raise(ConnectionRefusedError(111, "refused")))
    assert r.status == FAIL and "cannot connect" in r.detail
    other = tmp / "other.key"
    tlscert.ensure_tls_key(other)
    r = doctor.check_broker(cfg.replace(sync__key=str(other)), NOW, connect=ok)
    assert r.status == FAIL and "does not match" in r.detail
    r = doctor.check_broker(cfg.replace(sync__ca=str(tmp / "absent.pem")), NOW, connect=ok)
    assert r.status == FAIL and "missing" in r.detail
    (tmp / "bad.pem").write_text("nope")
    r = doctor.check_broker(cfg.replace(sync__cert=str(tmp / "bad.pem")), NOW, connect=ok)
    assert r.status == FAIL and "not a PEM certificate" in r.detail
    r = doctor.check_broker(cfg.replace(device__id="lt-other"), NOW, connect=ok)
    assert r.status == FAIL and "CN 'lt-test' is not the device id 'lt-other'" in r.detail


def test_real_tls_probe_against_loopback_broker(pki):
    """tls_connect does a real mutual-TLS handshake with a loopback server."""
    cfg, ca_cert, ca_key, tmp = pki
    srv_cert, srv_key = _server_cert(ca_cert, ca_key)
    (tmp / "srv.pem").write_bytes(srv_cert)
    (tmp / "srv.key").write_bytes(srv_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "srv.pem", tmp / "srv.key")
    ctx.load_verify_locations(tmp / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    peers = []

    def serve():
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                peers.append(tls.getpeercert()["subject"])
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
    t = threading.Thread(target=serve, name="tls-broker", daemon=True)
    t.start()
    version = doctor.tls_connect("localhost", port, cfg.sync.ca, cfg.sync.cert, cfg.sync.key, 5)
    t.join(5)
    listener.close()
    assert version.startswith("TLS")
    assert peers and (("commonName", "lt-test"),) in peers[0]


# -- disk, clock, all --------------------------------------------------------------------------

@pytest.mark.parametrize("free_mb,expect", [(50, FAIL), (300, WARN), (5000, OK)])
def test_disk(free_mb, expect):
    r = doctor.check_disk(rconfig.Config(), "/data",
                          usage=lambda _p: Usage(10**10, 0, free_mb * 10**6))
    assert r.status == expect, r


def test_disk_missing():
    assert doctor.check_disk(rconfig.Config(), "/x", usage=_raise(
        FileNotFoundError(2, "No such file or directory"))).status == FAIL


@pytest.mark.parametrize("year,synced,expect", [
    (2026, True, OK), (2026, False, WARN), (2026, None, WARN), (1970, None, FAIL),
    (2023, True, FAIL)])
def test_clock(year, synced, expect):
    now = NOW.replace(year=year)
    assert doctor.check_clock(now, synced).status == expect


def test_ntp_flag(tmp_path):
    flag = tmp_path / "synchronized"
    flag.touch()
    assert doctor.ntp_synchronised(flag) is True


@pytest.mark.parametrize("lines,expect", [
    ([], OK),
    (["/dev/zram0  partition  102396  0  100"], OK),
    (["/var/swap  file  102396  0  -2"], FAIL),                 # Raspberry Pi OS's default
    (["/dev/zram0  partition  1024  0  100", "/dev/mmcblk0p3  partition  1024  0  -2"], FAIL),
])
def test_swap(lines, expect):
    r = doctor.check_swap(NO_SWAP + "".join(line + "\n" for line in lines))
    assert r.status == expect, r
    if expect == FAIL:
        assert lines[-1].split()[0] in r.detail and "swapoff" in r.fix


def test_swap_unreadable(tmp_path):
    assert doctor.read_swaps(tmp_path / "absent") is None
    assert doctor.check_swap(None).status == WARN


def test_run_checks_fails_on_swap(tmp_path):
    cfgp, _data = _box(tmp_path)
    probes = dict(PROBES, swaps=NO_SWAP + "/var/swap file 102396 0 -2\n")
    res = {r.name: r.status for r in doctor.run_checks(str(cfgp), None, now=NOW,
                                                       probes=probes)}
    assert res["swap"] == FAIL


def _box(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    keys.practice_keygen(tmp_path / "practice")
    keys.ensure_identity(data, first_start=True)
    cfgp = tmp_path / "linetap.toml"
    cfgp.write_text(f'[device]\ndata_dir = "{data}"\nhardware = "sim"\n'
                    f'[recording]\npublic_key = "{tmp_path}/practice.pub"\n')
    return cfgp, data


NO_SWAP = "Filename\tType\tSize\tUsed\tPriority\n"
PROBES = {"usage": lambda _p: Usage(10**10, 0, 5 * 10**9), "synced": True,
          "swaps": NO_SWAP}


def test_run_checks_all_ok(tmp_path):
    cfgp, data = _box(tmp_path)
    results = doctor.run_checks(str(cfgp), None, now=NOW, probes=PROBES)
    assert [r.name for r in results] == ["config", "practice", "identity", "cmdkey", "alsa",
                                         "pins", "broker", "disk", "clock", "swap", "staged"]
    assert all(r.status == OK for r in results), [r.line() for r in results]


def test_run_checks_broken_config_still_checks_the_rest(tmp_path):
    cfgp = tmp_path / "bad.toml"
    cfgp.write_text("[nope]\n")
    results = doctor.run_checks(str(cfgp), str(tmp_path), now=NOW, probes=PROBES)
    assert results[0].status == FAIL
    assert len(results) == 11


def test_cli_exit_status(tmp_path, capsys, monkeypatch):
    cfgp, data = _box(tmp_path)
    real = doctor.run_checks
    monkeypatch.setattr(doctor, "run_checks",
                        lambda c, d: real(c, d, now=NOW, probes=PROBES))
    assert doctor.cli_main(["--config", str(cfgp)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("OK    config")
    assert "11 checks: 0 FAIL, 0 WARN" in out
    Path(tmp_path / "practice.pub").unlink()
    assert doctor.cli_main(["--config", str(cfgp)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  practice" in out and "fix: install the practice public key" in out
    assert doctor.cli_main(["--config", str(cfgp), "--json"]) == 1
    assert '"status": "FAIL"' in capsys.readouterr().out
