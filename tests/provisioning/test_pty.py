"""Both ends over a real pty 'cable' with pyserial: apply, CLI verbs, a pulled cable."""

from __future__ import annotations

import argparse
import io
import time
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioning import client, protocol, sitefile, tlscert
from recorder import config as rconfig
from recorder.errors import ConfigError, ProtocolError
from recorder.evidence import audit, keys
from tests.provisioning.provhelpers import box_config


def write_site(tmp_path, box, *, with_ca=True, extra_box="") -> tuple:
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    _priv, pub = keys.practice_keygen(site_dir / "practice.key")
    (site_dir / "upstream-command.pub").write_bytes(
        keys.pem_public(ed25519.Ed25519PrivateKey.generate().public_key()))
    broker_ca, _ = tlscert.make_ca("broker CA")
    (site_dir / "broker-ca.pem").write_bytes(broker_ca)
    ca_cert, ca_key = tlscert.make_ca()
    (site_dir / "prov-ca.pem").write_bytes(ca_cert)
    (site_dir / "prov-ca.key").write_bytes(ca_key)
    (site_dir / "box.toml").write_text(
        box_config(box.etc, box.data) + "\n[retention]\ndays = 45.0\n" + extra_box)
    tls = '[tls]\nca_cert = "prov-ca.pem"\nca_key = "prov-ca.key"\ndays = 400\n' if with_ca \
        else '[tls]\ncsr_out = "csr/{device_id}.csr"\n'
    (site_dir / "site.toml").write_text(f"""
config = "box.toml"

[site]
name = "Surgery 12"

[keys]
practice_public = "practice.pub.pub"
command_key = "upstream-command.pub"
broker_ca = "broker-ca.pem"

{tls}""".replace("practice.pub.pub", pub.name))
    return site_dir / "site.toml", ca_cert


def test_hello_and_status_over_pty(served):
    r = served.link.call("hello")
    assert r["device_id"] == "lt-test0001"
    st = served.link.call("status")
    assert st["config"]["site"] == "surgery-12"


def test_apply_site_end_to_end(served, tmp_path):
    box = served.box
    site_path, ca_cert = write_site(tmp_path, box)
    out = io.StringIO()
    summary = client.apply_site(served.link, sitefile.load(site_path), out=out)
    assert summary["cert_installed"] is True
    text = out.getvalue()
    assert "[1/8] contacting the box" in text and text.rstrip().endswith("done")
    assert rconfig.load(box.config_path).retention.days == 45.0
    assert (box.etc / "practice.pub").exists()
    keys.load_practice_public(box.etc / "practice.pub")
    keys.load_ed25519_public(box.etc / "upstream-command.pub")
    cert = x509.load_pem_x509_certificate((box.data / "keys" / "device-cert.pem").read_bytes())
    assert cert.issuer == x509.load_pem_x509_certificate(ca_cert).subject
    assert tlscert.cert_matches_key(
        cert, tlscert.load_private(box.data / "keys" / "device-tls.key"))
    assert [c[0] for c in box.calls] == ["clock", "restart"]
    assert "recorder: active (reset-failed done, restart ok)" in text
    assert box.d.session is not None and not box.presence.active()   # window closed
    assert (box.etc / "provision-staging.json").exists() is False
    actions = [(e["action"], e["detail"].get("op") or e["detail"].get("kind"))
               for e in audit.read(box.data)]
    assert actions == [("provision", "session_open"), ("provision", "set_clock"),
                       ("key_change", "broker_ca"),
                       ("key_change", "command_key"), ("key_change", "practice_public"),
                       ("provision", "tls_csr"), ("key_change", "tls_cert"),
                       ("config_change", None)]


def test_apply_without_ca_writes_csr(served, tmp_path):
    site_path, _ = write_site(tmp_path, served.box, with_ca=False)
    out = io.StringIO()
    summary = client.apply_site(served.link, sitefile.load(site_path), out=out,
                                set_clock=False)
    assert summary["cert_installed"] is False
    csr = (site_path.parent / "csr" / "lt-test0001.csr").read_bytes()
    assert tlscert.load_csr(csr).subject.rfc4514_string() == "O=surgery-12,CN=lt-test0001"


def test_apply_refused_outside_provisioning_mode(served, tmp_path):
    site_path, _ = write_site(tmp_path, served.box)
    from provisioning.presence import Presence
    served.box.env.presence = Presence(False)
    with pytest.raises(client.RemoteError) as exc:
        client.apply_site(served.link, sitefile.load(site_path), out=io.StringIO())
    assert exc.value.code == protocol.E_PRESENCE
    assert "pause button for 5 s" in str(exc.value)
    served.box.env.presence = Presence(True)
    served.box.env.presence.end("ended by the engineer (end)")
    with pytest.raises(client.RemoteError) as exc:
        client.apply_site(served.link, sitefile.load(site_path), out=io.StringIO())
    assert exc.value.code == protocol.E_PRESENCE_EXPIRED
    assert "is closed (ended by the engineer (end)" in str(exc.value)


def test_box_reports_every_config_problem_over_the_wire(served):
    with pytest.raises(client.RemoteError) as exc:
        served.link.call("set_config", text="[audio]\nlines = 9\nrat = 8000\n")
    assert exc.value.code == protocol.E_CONFIG
    assert len(exc.value.problems) == 2


def test_dropped_cable_mid_apply_keeps_old_config(served, tmp_path):
    box = served.box
    old = box.config_path.read_text()
    site_path, _ = write_site(tmp_path, box)
    served.link.timeout_s = 1.0
    # Cut the cable part-way through the uploads, before the config commit.
    served.cable.cut_after_to_box = served.cable.bytes_to_box + 2500
    with pytest.raises(ProtocolError, match="no answer"):
        client.apply_site(served.link, sitefile.load(site_path), out=io.StringIO(),
                          set_clock=False)
    assert box.config_path.read_text() == old
    assert not (box.etc / "linetap.toml.prev").exists()
    assert [e["action"] for e in audit.read(box.data)
            if e["action"] == "config_change"] == []
    # The agent dropped the partial frame and still answers once the cable is back.
    served.cable.cut.clear()
    served.link.timeout_s = 10.0
    assert served.link.call("hello")["device_id"] == "lt-test0001"


def test_garbage_on_the_line_gets_error_frames(served):
    served.laptop.write(b"\x00\x01garbage\xffLT\x01")
    served.laptop.flush()
    # The agent drops the partial frame after its timeout and answers bad_frame.
    parser = protocol.FrameParser()
    events = []
    while not events:
        events = [e for e in parser.feed(served.laptop.read(256)) if isinstance(e, protocol.Frame)]
    assert events[0].type == protocol.T_ERROR
    assert events[0].json()["code"] == protocol.E_BAD_FRAME
    assert served.link.call("hello")["ok"]


def ns(**kw):
    base = {"json": False, "port": None, "token": None, "watch": False, "count": 0,
            "interval": 0.0, "destroy_unsynced": False}
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_verbs_over_pty(served, fake_recorder, tmp_path):
    link, box = served.link, served.box
    out = io.StringIO()
    assert client.run(ns(cmd="line-test"), link, out=out) == 0
    assert "line 0: hook off" in out.getvalue()
    out = io.StringIO()
    assert client.run(ns(cmd="audio-test", line=0, hz=1000.0, seconds=0.2, dbfs=-12.0),
                      link, out=out) == 0
    assert "captured_dbfs: -18.0" in out.getvalue()
    assert client.run(ns(cmd="set-clock", time="2026-11-25T09:00:00Z"), link,
                      out=io.StringIO()) == 0
    assert box.calls[-1] == ("clock", 1795597200.0)
    with pytest.raises(ProtocolError):
        client.run(ns(cmd="set-clock", time="2026-11-25T09:00:00"), link, out=io.StringIO())
    cfg = tmp_path / "new.toml"
    cfg.write_text(box_config(box.etc, box.data) + "\n[audio]\nlines = 1\n")
    assert client.run(ns(cmd="set-config", file=str(cfg)), link, out=io.StringIO()) == 0
    out = io.StringIO()
    client.run(ns(cmd="get-config"), link, out=out)
    assert "lines = 1" in out.getvalue()
    out = io.StringIO()
    assert client.run(ns(cmd="hello", json=True), link, out=out) == 0
    assert '"device_id": "lt-test0001"' in out.getvalue()


def test_cli_factory_reset_over_pty(served):
    box = served.box
    out = io.StringIO()
    # Typing the wrong code erases nothing.
    assert client.run(ns(cmd="factory-reset", yes=False, no_reboot=False), served.link,
                      out=out, inp=lambda _prompt: "nope") == 1
    assert keys.identity_path(box.data).exists()
    codes = []

    def typed(_prompt):
        codes.append(out.getvalue().rsplit("confirmation code: ", 1)[1].split()[0])
        return codes[-1]
    out = io.StringIO()
    assert client.run(ns(cmd="factory-reset", yes=False, no_reboot=False), served.link,
                      out=out, inp=typed) == 0
    assert not keys.identity_path(box.data).exists()
    assert "rebooting" in out.getvalue()
    # The agent reboots once its reply is on the wire, so the client can see the reply
    # first: wait for the call (not a timing check: it must come, however slowly).
    deadline = time.monotonic() + 30
    while box.calls[-1] != ("reboot",) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert box.calls[-1] == ("reboot",)
    assert audit.read(box.data)[0]["action"] == "factory_reset"


def test_find_port():
    ports = [SimpleNamespace(device="/dev/ttyUSB0", vid=0x0403, pid=0x6001),
             SimpleNamespace(device="/dev/ttyACM0", vid=0x0525, pid=0xA4A7),
             SimpleNamespace(device="/dev/ttyS0", vid=None, pid=None)]
    assert client.find_port(comports=lambda: ports) == "/dev/ttyACM0"
    with pytest.raises(client.BoxNotFound, match="--port"):
        client.find_port(0x1234, 0x5678, comports=lambda: ports)
    with pytest.raises(client.BoxNotFound, match="several"):
        client.find_port(comports=lambda: ports + [SimpleNamespace(
            device="/dev/ttyACM1", vid=0x0525, pid=0xA4A7)])


def test_site_file_problems_all_at_once(tmp_path):
    (tmp_path / "site.toml").write_text("""
[box.audio]
lines = 7
[keys]
practice_publik = "x.pub"
command_key = "missing.pub"
[tls]
ca_cert = "ca.pem"
days = 0
""")
    with pytest.raises(ConfigError) as exc:
        sitefile.load(tmp_path / "site.toml")
    problems = exc.value.problems
    assert any("did you mean 'practice_public'" in p for p in problems)
    assert any("missing.pub" in p for p in problems)
    assert any("ca_key go together" in p for p in problems)
    assert any("tls.days" in p for p in problems)
    assert any("[box]" in p and "audio.lines" in p for p in problems)


def test_site_file_inline_box(tmp_path):
    (tmp_path / "site.toml").write_text('[box.device]\nsite = "s1"\n[box.retention]\ndays = 30\n')
    site = sitefile.load(tmp_path / "site.toml")
    assert rconfig.loads(site.config_text).retention.days == 30.0
    assert site.config.device.site == "s1"


def test_cli_main_check_and_errors(tmp_path, capsys):
    (tmp_path / "site.toml").write_text('[box.device]\nsite = "s1"\n')
    assert client.cli_main(["apply", "--check", str(tmp_path / "site.toml")]) == 2
    assert "device.id is not set" in capsys.readouterr().err
    (tmp_path / "site.toml").write_text('[box.device]\nsite = "s1"\nid = "lt-1"\n')
    assert client.cli_main(["apply", "--check", str(tmp_path / "site.toml")]) == 0
    assert "OK" in capsys.readouterr().out
    assert client.cli_main(["--port", str(tmp_path / "nodev"), "hello"]) == 2
    assert "hello" in capsys.readouterr().err
