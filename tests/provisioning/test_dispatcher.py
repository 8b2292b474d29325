"""The box side, driven in-process: every command, presence, and error codes."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioning import protocol, tlscert
from recorder import config as rconfig
from recorder.evidence import audit, keys
from tests.provisioning.provhelpers import box_config, call, reply


def practice_pub(tmp_path) -> str:
    _priv, pub = keys.practice_keygen(tmp_path / "practice.key")
    return pub.read_text()


def command_pub() -> str:
    return keys.pem_public(ed25519.Ed25519PrivateKey.generate().public_key()).decode()


def test_hello(box):
    r = call(box.d, "hello")
    assert r["ok"] is True
    assert r["device_id"] == "lt-test0001"
    assert r["hardware"] == "Raspberry Pi 4 Model B Rev 1.5"
    assert r["identity"]["fingerprint"] == keys.identity_public(box.data)[1]
    assert r["provisioning_mode"]["active"] is True
    assert r["protocol"] == protocol.VERSION


def test_hello_without_identity_or_model(box):
    keys.identity_path(box.data).unlink()
    box.env.model_path = box.tmp / "absent"
    r = call(box.d, "hello")
    assert r["identity"] is None and r["hardware"] == "unknown"


STATE_CMDS = ("set_config", "install_key", "tls_csr", "set_clock", "reboot",
              "factory_reset_begin", "audio_test", "config_stage", "config_commit",
              "line_test", "session_open", "authorise")


def test_state_changes_need_presence(box):
    from provisioning.presence import Presence
    box.env.presence = Presence(False)
    for cmd in STATE_CMDS:
        r = call(box.d, cmd)
        assert r["code"] == protocol.E_PRESENCE, cmd
        assert "press and hold the pause button for 5 s" in r["message"]
    assert call(box.d, "hello")["ok"]
    assert call(box.d, "status")["ok"]
    assert box.calls == []


def test_closed_window_has_its_own_message(box):
    box.presence.end("ended by the engineer (end)")
    for cmd in STATE_CMDS:
        r = call(box.d, cmd)
        assert r["code"] == protocol.E_PRESENCE_EXPIRED, cmd
        assert "was closed at" in r["message"] and "opened at" in r["message"]
    assert box.calls == []


def test_presence_times_out():
    from provisioning.presence import Presence
    now = [100.0]
    p = Presence(True, timeout_s=60, clock=lambda: now[0])
    assert p.active() and p.remaining_s() == 60
    now[0] += 59.5
    assert p.active()
    now[0] += 1
    assert not p.active() and p.remaining_s() == 0


def test_unknown_command_and_bad_requests(box):
    assert call(box.d, "frobnicate")["code"] == protocol.E_UNKNOWN_COMMAND
    _t, seq, r = reply(box.d.handle_request(9, {"args": {}}))
    assert seq == 9 and r["code"] == protocol.E_BAD_ARGS
    assert reply(box.d.handle_request(1, {"cmd": "hello", "args": []}))[2]["code"] == \
        protocol.E_BAD_ARGS
    ev = protocol.Frame(1, protocol.T_RESPONSE, 4, b"{}")
    assert reply(box.d.handle_event(ev))[2]["code"] == protocol.E_BAD_TYPE
    ev = protocol.Frame(1, protocol.T_REQUEST, 4, b"[]")
    t, seq, r = reply(box.d.handle_event(ev))
    assert (t, seq, r["code"]) == (protocol.T_ERROR, 4, protocol.E_BAD_JSON)


def test_set_config_reports_every_problem_and_keeps_old(box):
    old = box.config_path.read_text()
    bad = "[audio]\nlinez = 2\nrate = 9000\n[devce]\n"
    r = call(box.d, "set_config", text=bad)
    assert r["code"] == protocol.E_CONFIG
    assert len(r["problems"]) == 3
    assert any("did you mean 'lines'" in p for p in r["problems"])
    assert box.config_path.read_text() == old
    assert call(box.d, "config_check", text=bad)["code"] == protocol.E_CONFIG


def test_set_config_atomic_with_prev_and_audit(box):
    old = box.config_path.read_text()
    new = box_config(box.etc, box.data) + "\n[retention]\ndays = 30.0\n"
    r = call(box.d, "set_config", text=new)
    assert r["applied"] and r["previous_kept"] and r["recorder_restarted"]
    assert box.config_path.read_text() == new
    assert (box.etc / "linetap.toml.prev").read_text() == old
    assert stat.S_IMODE(box.config_path.stat().st_mode) == 0o640
    assert rconfig.load(box.config_path).retention.days == 30.0
    assert ("restart",) in box.calls
    last = audit.read(box.data)[-1]
    assert last["action"] == "config_change" and last["detail"]["new_sha256"] == r["sha256"]
    assert audit.verify(box.data).problems == []


def test_stage_then_commit(box):
    assert call(box.d, "config_commit")["code"] == protocol.E_BAD_ARGS
    new = box_config(box.etc, box.data) + "\n[audio]\nlines = 1\n"
    assert call(box.d, "config_stage", text=new)["staged"]
    assert call(box.d, "status")["config"]["staged"] is True
    assert call(box.d, "config_commit")["applied"]
    assert rconfig.load(box.config_path).audio.lines == 1


def test_install_keys(box, tmp_path):
    pub = practice_pub(tmp_path)
    r = call(box.d, "install_key", kind="practice_public", pem=pub)
    assert r["ok"] and (box.etc / "practice.pub").read_text() == pub
    keys.load_practice_public(box.etc / "practice.pub")
    r = call(box.d, "install_key", kind="command_key", pem=command_pub())
    assert r["ok"]
    ca_pem, _ = tlscert.make_ca()
    r = call(box.d, "install_key", kind="broker_ca", pem=ca_pem.decode())
    assert r["ok"] and (box.etc / "broker-ca.pem").read_bytes() == ca_pem
    kinds = [e["detail"]["kind"] for e in audit.read(box.data) if e["action"] == "key_change"]
    assert kinds == ["practice_public", "command_key", "broker_ca"]


def test_install_wrong_keys(box):
    assert call(box.d, "install_key", kind="practice_public",
                pem=command_pub())["code"] == protocol.E_KEY
    assert call(box.d, "install_key", kind="command_key", pem="junk")["code"] == protocol.E_KEY
    _ca, ca_key = tlscert.make_ca()
    assert call(box.d, "install_key", kind="broker_ca", pem=ca_key.decode())["code"] == \
        protocol.E_KEY
    assert call(box.d, "install_key", kind="root_password", pem="x")["code"] == \
        protocol.E_BAD_ARGS
    assert not (box.etc / "practice.pub").exists()


def test_key_path_outside_allowed_roots_is_refused(box, tmp_path):
    evil = box_config(box.etc, box.data).replace(f"{box.etc}/practice.pub",
                                                  f"{tmp_path}/elsewhere/practice.pub")
    assert call(box.d, "config_stage", text=evil)["ok"]
    r = call(box.d, "install_key", kind="practice_public", pem=practice_pub(tmp_path))
    assert r["code"] == protocol.E_BAD_ARGS and "outside" in r["message"]
    assert not (tmp_path / "elsewhere").exists()


def test_csr_and_cert(box):
    r = call(box.d, "tls_csr")
    assert r["key_created"] is True and r["common_name"] == "lt-test0001"
    key_path = box.data / "keys" / "device-tls.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert "PRIVATE" not in r["csr"]
    again = call(box.d, "tls_csr")
    assert again["key_created"] is False
    ca_cert, ca_key = tlscert.make_ca()
    cert = tlscert.sign_csr(r["csr"].encode(), ca_cert, ca_key, days=30)
    r2 = call(box.d, "install_cert", pem=cert.decode())
    assert r2["ok"], r2
    assert (box.data / "keys" / "device-cert.pem").read_bytes() == cert
    # A certificate for another key is refused.
    other = tlscert.sign_csr(tlscert.make_csr(tlscert.ensure_tls_key(box.tmp / "o.key"), "x"),
                             ca_cert, ca_key)
    assert call(box.d, "install_cert", pem=other.decode())["code"] == protocol.E_KEY


def test_set_clock(box):
    assert call(box.d, "set_clock")["code"] == protocol.E_BAD_ARGS
    assert call(box.d, "set_clock", epoch_s=12.0)["code"] == protocol.E_BAD_ARGS
    assert call(box.d, "set_clock", epoch_s="now")["code"] == protocol.E_BAD_ARGS
    assert call(box.d, "set_clock", epoch_s=1795597200.5)["ok"]
    assert box.calls == [("clock", 1795597200.5)]
    assert audit.read(box.data)[-1]["detail"]["op"] == "set_clock"


def test_clock_failure_is_reported(box):
    def deny(_t):
        raise PermissionError(1, "Operation not permitted")
    box.env.set_clock = deny
    r = call(box.d, "set_clock", epoch_s=1795597200.0)
    assert r["code"] == protocol.E_IO and "not permitted" in r["message"]


def test_live_tests_without_recorder(box):
    for cmd in ("line_test", "audio_test"):
        r = call(box.d, cmd)
        assert r["code"] == protocol.E_NOT_RUNNING
        assert "recorder not running" in r["message"]
    st = call(box.d, "status")
    assert st["recorder"]["running"] is False
    assert st["disk"]["free_mb"] > 0


def test_live_tests_with_recorder(box, fake_recorder):
    r = call(box.d, "line_test")
    assert [ln["hook"] for ln in r["lines"]] == ["off", "on"]
    r = call(box.d, "audio_test", line=1, hz=1000, seconds=0.5, dbfs=-12)
    assert r["captured_dbfs"] == -18.0
    assert fake_recorder.requests[-1] == {"cmd": "tone", "line": 1, "hz": 1000.0,
                                          "seconds": 0.5, "dbfs": -12.0}
    fake_recorder.lines = 1     # the recorder's own refusal still comes through
    r = call(box.d, "audio_test", line=1)
    assert r["code"] == protocol.E_RECORDER and "no such line" in r["message"]
    assert call(box.d, "status")["recorder"]["running"] is True


def test_factory_reset(box, tmp_path):
    call(box.d, "install_key", kind="practice_public", pem=practice_pub(tmp_path))
    (box.data / "segments" / "2026").mkdir(parents=True)
    (box.data / "segments" / "2026" / "a.seg").write_bytes(b"x")
    from recorder.storage.store import Store
    Store(box.data).close()     # an empty store: nothing un-uploaded
    last_hash = audit.read(box.data)[-1]["hash"]

    assert call(box.d, "factory_reset", code="000000")["code"] == protocol.E_CONFIRM
    code = call(box.d, "factory_reset_begin")["code"]
    assert len(code) == 6 and code.isdigit()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert call(box.d, "factory_reset", code=wrong)["code"] == protocol.E_CONFIRM
    # A wrong guess burns the code.
    assert call(box.d, "factory_reset", code=code)["code"] == protocol.E_CONFIRM
    assert (box.data / "linetap.db").exists()

    code = call(box.d, "factory_reset_begin")["code"]
    n_before = len(audit.read(box.data))
    r = call(box.d, "factory_reset", code=code)
    # The last entry of the old log is the reset announced before the wipe.
    assert r["reset"] and r["previous_log_last_hash"] != last_hash
    assert r["announced_upstream"] == {"delivered": False, "link": "recorder not running: "
                                       "start linetap-recorder.service for live tests"}
    assert ("stop",) in box.calls
    assert not (box.data / "segments").exists()
    assert not (box.data / "linetap.db").exists()
    assert not keys.identity_path(box.data).exists()
    assert not (box.etc / "practice.pub").exists()
    entries = audit.read(box.data)
    assert len(entries) == 1 and entries[0]["action"] == "factory_reset"
    assert entries[0]["detail"]["previous_log_last_hash"] == r["previous_log_last_hash"]
    assert entries[0]["detail"]["previous_log_entries"] == n_before + 1
    assert entries[0]["detail"]["announced_upstream"] is False
    assert not box.presence.active()      # a reset closes the window
    # The fresh log's first entry is written before the box has an identity again:
    # unsigned, and reported so, not as verified.
    r = audit.verify(box.data)
    assert (r.entries, r.problems, r.status) == (1, [], "unsigned (legacy)")
    rconfig.load(box.config_path)  # the default config loads


def test_factory_reset_code_expires(box):
    now = [0.0]
    box.env.monotonic = lambda: now[0]
    code = call(box.d, "factory_reset_begin")["code"]
    now[0] += 121
    assert call(box.d, "factory_reset", code=code)["code"] == protocol.E_CONFIRM


def test_factory_reset_spares_config_inside_data_dir(tmp_path):
    """On the image /etc/linetap is bound from the data partition; a reset must keep it."""
    from provisioning.dispatcher import _wipe_dir
    data = tmp_path / "data"
    (data / "config").mkdir(parents=True)
    (data / "config" / "linetap.toml").write_text("")
    (data / "keys").mkdir()
    (data / "keys" / "identity.key").write_text("k")
    os.symlink(data / "keys", data / "link")
    assert _wipe_dir(data, {data / "config"}) == 2
    assert sorted(p.name for p in data.iterdir()) == ["config"]


def test_reboot_runs_after_reply(box):
    r = call(box.d, "reboot")
    assert r["rebooting"] and box.calls == []
    action = box.d.pop_after_reply()
    action()
    assert box.calls == [("reboot",)]
    assert box.d.pop_after_reply() is None


def test_internal_errors_become_error_frames(box):
    def boom(_args):
        raise ZeroDivisionError("x")
    box.d.commands["hello"] = (boom, False)
    r = call(box.d, "hello")
    assert r["code"] == protocol.E_INTERNAL


@pytest.mark.parametrize("cmd", ["config_get", "status"])
def test_read_only_with_broken_config(box, cmd):
    box.config_path.write_text("[audio]\nrate = 1\n")
    r = call(box.d, cmd)
    if cmd == "status":
        assert r["config"]["problems"]
    else:
        assert r["code"] == protocol.E_CONFIG


def test_csr_carries_the_public_key_and_no_private_material(box):
    """The CSR that crosses the cable is signed by the box's new TLS key and carries its
    public half; neither the PEM nor the decoded DER holds the private scalar."""
    from cryptography import x509
    r = call(box.d, "tls_csr")
    key = serialization.load_pem_private_key(
        (box.data / "keys" / "device-tls.key").read_bytes(), None)
    csr = x509.load_pem_x509_csr(r["csr"].encode())
    assert csr.is_signature_valid
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    assert raw not in csr.public_bytes(serialization.Encoding.DER)
    assert "PRIVATE" not in r["csr"]
