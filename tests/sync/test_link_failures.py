"""Nothing silent on the box's link: each failed connection is explained at once (with
its retry delay) and counted in status; a certificate for another device id is refused
at start; uploads the broker swallows raise an alarm. Real mosquitto (conftest)."""

from __future__ import annotations

import logging
import socket
import ssl

import pytest

from recorder.errors import ConfigError
from recorder.runtime import alarms as al
from sync import linkstate
from sync.upstream import pki as upki
from tests.support.syncbox import box_cfg, make_box, practice_keys, wait_for, write_calls


@pytest.mark.parametrize("exc, words", [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused by h:1"),
    (socket.gaierror(-2, "Name or service not known"), "host name 'h' not found"),
    (TimeoutError("timed out"), "no answer from h:1"),
    (ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"),
     "TLS alert from the broker"),
])
def test_describe_error_names_the_cause(exc, words):
    assert words in linkstate.describe_error(exc, "h", 1)


def test_describe_alert_reasons():
    e = ssl.SSLError(1, "x")
    e.reason = "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert "revoked upstream" in linkstate.describe_error(e)


def test_backoff_and_unanswered_window():
    w = linkstate.LinkWatch(1.0, 8.0)
    assert [w.failed("x", now=0) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert w.attempts == 5
    w.connected(now=10.0)
    assert w.attempts == 0 and w.unanswered_s(now=11) is None
    w.delivered(12.0)
    w.delivered(15.0)                       # the first unanswered delivery counts
    assert w.unanswered_s(now=20.0) == 8.0
    w.acked()
    assert w.unanswered_s(now=30.0) is None


def test_alarm_thresholds_come_from_config():
    i = al.Inputs(sync_on=True, link_down_s=130, unanswered_s=50)
    out = al.evaluate(i, al.Thresholds(broker_down_s=120, ack_silence_s=60))
    assert out["broker_unreachable"] == {"seconds": 130}
    assert out["sync_unacknowledged"] is None
    out = al.evaluate(i, al.Thresholds(broker_down_s=600, ack_silence_s=30))
    assert out["broker_unreachable"] is None
    assert "ACL" in out["sync_unacknowledged"]["detail"]


def _uploader(box, cfg, **kw):
    from sync.uploader import Uploader
    return Uploader(box.store, cfg, device=box.device, data_dir=box.data_dir,
                    reconnect_s=(0.05, 0.5), **kw)


@pytest.fixture
def box(tmp_path):
    _priv, pub, _pp, _ = practice_keys(tmp_path)
    b = make_box(tmp_path / "box", pub, device="dev-a")
    yield b
    b.store.close()


def test_certificate_for_another_device_is_refused_at_start(box, broker, pki):
    dev_b = pki.devices["dev-b"]
    cfg = box_cfg(box.data_dir, device="dev-a", enabled=True, host="127.0.0.1",
                  port=broker.port, ca=str(pki.ca), cert=dev_b.cert, key=dev_b.key)
    up = _uploader(box, cfg)
    with pytest.raises(ConfigError, match="CN 'dev-b' but the device id is 'dev-a'"):
        up.start()


def test_untrusted_certificate_is_logged_at_once_and_counted(box, broker, pki, tmp_path,
                                                            caplog):
    # A certificate with the right CN from a CA the broker does not trust.
    ca_key, ca = upki.make_ca("other-ca")
    k, c = upki.issue(ca_key, ca, "dev-a")
    (tmp_path / "c.pem").write_bytes(upki.pem_cert(c))
    (tmp_path / "k.pem").write_bytes(upki.pem_key(k))
    cfg = box_cfg(box.data_dir, device="dev-a", enabled=True, host="127.0.0.1",
                  port=broker.port, ca=str(pki.ca), cert=str(tmp_path / "c.pem"),
                  key=str(tmp_path / "k.pem"))
    up = _uploader(box, cfg)
    caplog.set_level(logging.WARNING, logger="sync.uploader")
    up.start()
    try:
        wait_for(lambda: up.sync_status()["attempts"] >= 2, 30, "failed attempts")
        st = up.sync_status()
        assert st["link"] != "online"
        assert "TLS" in st["last_error"] and st["next_retry_s"] > 0
        lines = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
        assert lines and "TLS" in lines[0] and "next in" in lines[0]
    finally:
        up.close()


def test_nothing_listening_is_logged_with_the_reason(box, pki, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dev = pki.devices["dev-a"]
    cfg = box_cfg(box.data_dir, device="dev-a", enabled=True, host="127.0.0.1", port=port,
                  ca=str(pki.ca), cert=dev.cert, key=dev.key)
    up = _uploader(box, cfg)
    caplog.set_level(logging.WARNING, logger="sync.uploader")
    up.start()
    try:
        wait_for(lambda: any("connection refused" in r.getMessage()
                             for r in caplog.records), 30, "the warning")
        assert "connection refused" in up.sync_status()["last_error"]
    finally:
        up.close()


def test_uploads_the_acl_drops_are_noticed(box, broker, pki):
    """A topic the ACL does not allow: mosquitto PUBACKs and drops. No ingest ack comes,
    and the watch says so while the link is up."""
    write_calls(box, n_calls=1, segs=2)
    dev = pki.devices["dev-a"]
    cfg = box_cfg(box.data_dir, device="dev-a", enabled=True, host="127.0.0.1",
                  port=broker.port, ca=str(pki.ca), cert=dev.cert, key=dev.key,
                  topic_prefix="not-in-the-acl")
    import threading

    from sync.uploader import UploaderThread
    up = _uploader(box, cfg, ack_timeout_s=60.0)
    stop = threading.Event()
    up.start()
    t = UploaderThread(up, stop)
    t.start()
    try:
        wait_for(lambda: (up.sync_status()["unanswered_s"] or 0) > 1.0, 30,
                 "uploads without an ack")
        st = up.sync_status()
        assert st["link"] == "online" and st["acked"] == 0
        out = al.evaluate(al.Inputs(sync_on=True, unanswered_s=st["unanswered_s"]),
                          al.Thresholds(ack_silence_s=1.0))
        assert out["sync_unacknowledged"] is not None
    finally:
        stop.set()
        t.join(10)
        up.close()


def test_status_says_when_the_daemon_is_not_running(tmp_path, capsys):
    """A status file left by a daemon that has exited is not shown as live."""
    import json

    from recorder.cli.main import main
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.json").write_text(json.dumps(
        {"device": "lt-x", "sync": {"link": "online", "backlog": 3}, "alarms": {}}))
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recorder NOT RUNNING" in out
    assert "sync: unknown (recorder not running), backlog 3" in out
    assert "sync: online" not in out
    assert main(["status", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is False


def test_ingest_says_at_once_when_the_broker_is_unreachable(tmp_path, pki, caplog):
    from sync.upstream.config import from_dict
    from sync.upstream.ingest import Worker
    from sync.upstream.store import open_db
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ucfg = from_dict({"database": {"url": f"sqlite:///{tmp_path / 'u.db'}"},
                      "objects": {"path": str(tmp_path / "objects")},
                      "broker": {"host": "127.0.0.1", "port": port, "ca": str(pki.ca),
                                 "cert": pki.ingest.cert, "key": pki.ingest.key}})
    open_db(ucfg.db_url)
    caplog.set_level(logging.WARNING, logger="sync.upstream.ingest")
    w = Worker(ucfg, reconnect_s=(0.05, 0.2))
    w.start()
    try:
        wait_for(lambda: any("cannot connect" in r.getMessage() for r in caplog.records),
                 30, "the ingest's warning")
        msg = next(r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage())
        assert "connection refused" in msg and f"127.0.0.1:{port}" in msg
    finally:
        w.close()


def test_until_synced_fails_naming_the_backlog_and_the_link(tmp_path, pki, capsys):
    import json

    from recorder.cli.main import main
    from recorder.evidence import keys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _priv, pub = keys.practice_keygen(tmp_path / "p.key")
    dev = pki.devices["dev-a"]
    (tmp_path / "box.toml").write_text(f"""
[device]
id = "dev-a"
site = "site1"
[sync]
enabled = true
host = "127.0.0.1"
port = {port}
ca = "{pki.ca}"
cert = "{dev.cert}"
key = "{dev.key}"
""")
    (tmp_path / "s.json").write_text(json.dumps(
        {"rate": 8000, "start": "2026-12-01T09:00:00Z", "duration": 14.0, "lines": 1,
         "events": [{"at": 1.0, "line": 0, "type": "offhook"},
                    {"at": 12.0, "line": 0, "type": "onhook"}]}))
    rc = main(["simulate", str(tmp_path / "s.json"), "--config", str(tmp_path / "box.toml"),
               "--data-dir", str(tmp_path / "box"), "--public-key", str(pub),
               "--until-synced", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "not synced after 2 s" in err and "segment(s)" in err
    assert "connection refused" in err
