"""The client never stalls: resend with sequence numbers, hello while waiting for the
button, options anywhere, line-test --watch, doctor over the cable, the recorder really
started after apply. Over a real pty pair with pyserial on both ends."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from provisioning import client, protocol, sitefile
from provisioning.dispatcher import start_recorder_unit
from provisioning.presence import Presence
from tests.provisioning.provhelpers import box_config, reply
from tests.provisioning.test_pty import ns, write_site
from tests.support.syncbox import wait_for


def test_frame_lost_behind_a_half_sent_one_is_resent(served):
    link = served.link
    link.retry_s = 2.0
    # A predecessor cut after its header: its length swallows the next frame whole.
    big = protocol.encode_json(protocol.T_REQUEST, 77, {"cmd": "config_check",
                                                        "args": {"text": "#" * 4000}})
    half = big[:40]
    served.laptop.write(half)
    served.laptop.flush()
    r = link.call("hello")
    assert r["device_id"] == "lt-test0001"
    assert link.resent >= 1


def test_a_repeated_request_runs_once(box):
    frame = protocol.encode_json(protocol.T_REQUEST, 9, {"cmd": "set_clock",
                                                        "args": {"epoch_s": 1.8e9}})
    (ev,) = protocol.FrameParser().feed(frame)
    first = box.d.handle_event(ev)
    again = box.d.handle_event(ev)
    assert first == again and reply(first)[2]["set"] is True
    assert box.calls == [("clock", 1.8e9)]
    # A new seq is a new request.
    (ev2,) = protocol.FrameParser().feed(protocol.encode_json(
        protocol.T_REQUEST, 10, {"cmd": "set_clock", "args": {"epoch_s": 1.8e9}}))
    box.d.handle_event(ev2)
    assert len(box.calls) == 2


def test_hello_while_waiting_for_the_button(served):
    pres = Presence(False)
    served.box.env.presence = pres
    pres.waiting()
    out = io.StringIO()
    t = threading.Timer(0.3, pres.grant)
    t.start()
    hello = client.wait_for_presence(served.link, out, timeout_s=30, poll_s=0.05)
    assert hello["provisioning_mode"]["state"] == "active"
    assert "waiting for presence: press and hold the pause button for 5 s now" in \
        out.getvalue()
    pres.deny("no press within 60 s")
    with pytest.raises(client.RemoteError, match="no press within 60 s"):
        client.wait_for_presence(served.link, io.StringIO(), timeout_s=5)


def test_agent_answers_hello_while_it_watches_the_button(tmp_path, cable):
    """The real agent on gpiozero's mock pins: nobody presses, hello is answered."""
    etc, data = tmp_path / "etc", tmp_path / "data"
    etc.mkdir()
    data.mkdir()
    (etc / "linetap.toml").write_text(box_config(etc, data))
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
    # The agent's log goes to a file, not a pipe nobody reads once it is serving: a full
    # pipe would block the agent in a write, and a stuck agent left behind reopens its
    # port by name, which the next test's pty may reuse.
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recorder.cli", "provision-agent", "--", "--port",
             cable.box_path, "--config", str(etc / "linetap.toml"), "--data-dir", str(data),
             "--presence-window-s", "120"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "serving on" in log_path.read_text(errors="replace")
                 or proc.poll() is not None, what="the agent serving")
        assert proc.poll() is None, log_path.read_text(errors="replace")[-2000:]
        import serial
        with serial.Serial(cable.laptop_path, 115200, timeout=0.2) as ser:
            hello = client.Link(ser, timeout_s=20).call("hello")
        assert hello["provisioning_mode"]["state"] == "waiting_for_press", \
            json.dumps(hello["provisioning_mode"])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()             # never leave an agent behind on a reusable pty
            proc.wait(timeout=10)
            raise


def test_options_anywhere_on_the_command_line():
    a = client.parse_args(["apply", "site.toml", "--port", "/dev/x", "--json", "--ca-cert",
                           "c", "--ca-key", "k", "--timeout", "3"])
    assert (a.port, a.json, a.timeout, a.ca_cert) == ("/dev/x", True, 3.0, "c")
    b = client.parse_args(["--port", "/dev/y", "status", "--json"])
    assert (b.port, b.json, b.cmd) == ("/dev/y", True, "status")
    c = client.parse_args(["line-test", "--watch", "--token", "t.json"])
    assert (c.port, c.token, c.watch, c.timeout) == (None, "t.json", True, 15.0)


def test_line_test_watch_streams_lines_and_alarms(served, fake_recorder):
    fake_recorder.alarms = {"sync_backlog": {"age_s": 4000}}
    out = io.StringIO()
    args = ns(cmd="line-test", watch=True, count=3, interval=0.0)
    assert client.run(args, served.link, out=out) == 0
    text = out.getvalue()
    assert text.count("line 0: hook off") == 3 and text.count("alarms: sync_backlog") == 3
    assert "call C000-L0-abc123" in text
    assert [r["cmd"] for r in fake_recorder.requests].count("status") == 3


def test_doctor_over_the_cable(served, fake_recorder):
    out = io.StringIO()
    rc = client.run(ns(cmd="doctor"), served.link, out=out)
    text = out.getvalue()
    assert "checks on the box" in text and "staged" in text and "config" in text
    assert rc in (0, 1)
    (served.box.etc / "provision-staging.json").write_text('{"session": "s", "files": {}}')
    out = io.StringIO()
    client.run(ns(cmd="doctor"), served.link, out=out)
    assert "WARN  staged" in out.getvalue()


def test_doctor_broker_check_uses_the_recorders_link(served, fake_recorder, tmp_path):
    box = served.box
    box.config_path.write_text(box_config(box.etc, box.data, sync=True))
    r = served.link.call("doctor")
    broker = next(x for x in r["results"] if x["name"] == "broker")
    assert broker["status"] == "FAIL"    # no CA/cert files, or the link is offline
    assert r["fail"] >= 1


def test_start_recorder_unit_resets_a_failed_unit_first(tmp_path, monkeypatch):
    """A real subprocess standing in for systemctl: the order and the report."""
    log = tmp_path / "calls"
    sc = tmp_path / "bin" / "systemctl"
    sc.parent.mkdir()
    sc.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$1" in
  reset-failed) exit 0 ;;
  restart) echo "Job for linetap-recorder.service failed." >&2; exit 1 ;;
  is-active) echo failed; exit 3 ;;
esac
""")
    sc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{sc.parent}:{os.environ['PATH']}")
    r = start_recorder_unit()
    assert log.read_text().split("\n")[:3] == [
        "reset-failed linetap-recorder.service", "restart linetap-recorder.service",
        "is-active linetap-recorder.service"]
    assert r == {"reset_failed": True, "restart": "Job for linetap-recorder.service failed.",
                 "active": "failed"}


def test_apply_says_when_the_recorder_did_not_start(served, tmp_path):
    box = served.box
    box.env.restart_recorder = lambda: {"reset_failed": True, "restart": "Job failed",
                                        "active": "failed"}
    site_path, _ = write_site(tmp_path, box)
    out = io.StringIO()
    r = client.apply_site(served.link, sitefile.load(site_path), out=out)
    assert r["recorder"]["active"] == "failed"
    text = out.getvalue()
    assert "recorder: failed (reset-failed done, restart Job failed)" in text
    assert text.rstrip().endswith("the recorder is NOT running: see "
                                  "`linetap-provision doctor`")


def test_second_client_gets_busy(served):
    link = served.link
    client.open_session(link, None)
    other = client.Link(served.laptop, timeout_s=10.0)   # another process, same cable
    with pytest.raises(client.RemoteError) as exc:
        other.call("session_open", client="mallory@laptop pid 1")
    assert exc.value.code == protocol.E_BUSY
    assert exc.value.message.startswith(f"busy: session {link.session} from ")
    with pytest.raises(client.RemoteError) as exc:
        other.call("set_clock", epoch_s=1.8e9)       # sessionless while one is open
    assert exc.value.code == protocol.E_BUSY
    assert served.box.calls == []
    link.call("end")
    assert json.dumps(link.call("hello")["session"]) == "null"
