"""The fleet view: rules (table tests), the alert life cycle over real SMTP and a real
webhook, storms grouped into one message, one sender among many workers, and health
reports that arrive from a real box over mosquitto."""

from __future__ import annotations

import datetime as dt
import email
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from recorder.errors import ConfigError
from sync.upstream import fleet
from sync.upstream.cli import cli_main
from sync.upstream.fleet import DeviceView, FleetSettings, evaluate, working_seconds
from sync.upstream.store import FleetAlert, open_db
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    to_toml,
    upstream_cfg,
    upstream_raw,
    wait_for,
)

S = FleetSettings()


def ts(y, mo, d, h, mi=0) -> float:
    """Epoch s of a December 2026 time in London, which is then on GMT (= UTC)."""
    return dt.datetime(y, mo, d, h, mi, tzinfo=dt.UTC).timestamp()


# -- pure rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("start,end,hours", [
    (ts(2026, 12, 7, 7), ts(2026, 12, 7, 9), 1.0),          # Monday: 08:00-09:00 counts
    (ts(2026, 12, 7, 18), ts(2026, 12, 7, 23), 0.5),        # 18:00-18:30
    (ts(2026, 12, 4, 18), ts(2026, 12, 7, 8, 30), 1.0),     # Fri 18:00 -> Mon 08:30
    (ts(2026, 12, 5, 0), ts(2026, 12, 6, 23), 0.0),         # a weekend counts nothing
    (ts(2026, 12, 7, 9), ts(2026, 12, 7, 9), 0.0),
    (ts(2026, 12, 7, 0), ts(2026, 12, 9, 0), 21.0),         # two whole working days
])
def test_working_seconds(start, end, hours):
    assert working_seconds(start, end, S) == pytest.approx(hours * 3600)


def test_working_hours_follow_british_summer_time():
    # 1 July 2026 is BST (UTC+1): 08:00 local is 07:00 UTC.
    start = dt.datetime(2026, 7, 1, 7, 0, tzinfo=dt.UTC).timestamp()
    assert working_seconds(start, start + 3600, S) == pytest.approx(3600)
    assert working_seconds(start - 3600, start, S) == 0.0


NOW = ts(2026, 12, 7, 15)      # a Monday afternoon


def dv(last_seen=NOW - 60, body=None, since=None, device="lt-a"):
    return DeviceView(device, "surgery-1", last_seen, body or {}, since or {})


@pytest.mark.parametrize("view,kinds", [
    (dv(), []),
    (dv(last_seen=None), ["offline"]),
    (dv(last_seen=NOW - 16 * 60), ["offline"]),
    (dv(last_seen=NOW - 14 * 60), []),
    # An offline box is judged by 'offline' alone: its report is stale.
    (dv(last_seen=NOW - 3600, body={"disk_free_mb": 1}), ["offline"]),
    (dv(since={"dead_line": NOW - 3 * 3600}), ["dead_line"]),
    (dv(since={"dead_line": NOW - 3600}), []),
    # Dead since Friday 19:00: only Monday's working hours count (08:00-15:00, 7 h).
    (dv(since={"dead_line": ts(2026, 12, 4, 19)}), ["dead_line"]),
    (dv(since={"dead_line": ts(2026, 12, 7, 7, 30)}), ["dead_line"]),
    (dv(body={"oldest_unsynced_age_s": 5 * 3600, "backlog": 40}), ["backlog"]),
    (dv(body={"oldest_unsynced_age_s": 3 * 3600}), []),
    (dv(body={"disk_free_mb": 120.0}), ["disk"]),
    (dv(body={"disk_free_mb": 900.0}), []),
    (dv(body={"update": {"state": "failed", "version": "1.2", "reason": "health gate"}}),
     ["update"]),
    (dv(body={"update": {"state": "installed"}}), []),
    (dv(since={"clock_unsynchronised": NOW - 3600}), ["clock"]),
    (dv(since={"clock_unsynchronised": NOW - 60}), []),
    (dv(since={"capture_stalled": NOW - 3600}), ["alarm:capture_stalled"]),
    (dv(since={"capture_stalled": NOW - 60}), []),
    (dv(since={"low_storage": NOW - 3600}), []),        # the disk rule covers it
    (dv(body={"disk_free_mb": "lots"}), []),             # nonsense is not an alert
])
def test_rules(view, kinds):
    assert sorted(a.kind for a in evaluate([view], NOW, S)) == sorted(kinds)


def test_settings_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        fleet.settings_from({"working_hours": "18:30-08:00", "timezone": "Mars/Base",
                             "offline_min": 0, "working_days": ["mon", "funday"]},
                            {"smtp_host": "mail", "webhook": "ftp://x"})
    text = str(e.value)
    for bit in ("working_hours", "timezone", "offline_min", "working_days", "smtp_to",
                "webhook"):
        assert bit in text
    s = fleet.settings_from({"working_hours": "07:30-17:00", "working_days": ["Sat"],
                             "offline_min": 5}, {"webhook": "http://127.0.0.1:1/x"})
    assert (s.work_start, s.work_end, s.work_days, s.offline_s) == (450, 1020, (5,), 300.0)


# -- life cycle, with real delivery -----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


@pytest.fixture
def smtp():
    """A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")
    got = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):   # noqa: N802 - aiosmtpd
            got.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    port = free_port()
    c = aiosmtpd.Controller(Handler(), hostname="127.0.0.1", port=port)
    c.start()
    yield SimpleNamespace(port=port, got=got)
    c.stop()


@pytest.fixture
def webhook():
    got = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):   # noqa: N802 - http.server's name
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{srv.server_port}/hook", got=got)
    srv.shutdown()


@pytest.fixture
def db(tmp_path):
    open_db(f"sqlite:///{tmp_path / 'up.db'}")


def settings(smtp, webhook, **kw):
    return FleetSettings(smtp_host="127.0.0.1", smtp_port=smtp.port,
                         smtp_to=("it@surgery.example",), webhook=webhook.url, **kw)


def test_a_silent_box_is_alerted_once_reminded_and_cleared(db, smtp, webhook):
    s = settings(smtp, webhook, group_s=0.0, reminder_s=6 * 3600)
    f = fleet.Fleet(s, {"lt-a": "surgery-1"})
    t0 = ts(2026, 12, 7, 9)
    fleet.record_health("lt-a", "surgery-1", {"version": "1.0", "disk_free_mb": 900}, t0)
    assert f.tick(t0 + 60) is None                       # reporting: nothing to say
    for m in range(5, 15, 5):                            # silent, but not long enough
        assert f.tick(t0 + m * 60) is None
    n = f.tick(t0 + 16 * 60)                             # past offline_min (15)
    assert n is not None and [a.kind for a in n.raised] == ["offline"]
    assert len(smtp.got) == 1 and "1 raised" in smtp.got[0]["Subject"]
    assert "surgery-1/lt-a offline" in smtp.got[0].get_payload()
    assert webhook.got[0]["raised"][0]["device"] == "lt-a"
    for m in (20, 60, 120):                              # once only
        assert f.tick(t0 + m * 60) is None
    assert len(smtp.got) == 1
    n = f.tick(t0 + 16 * 60 + 6 * 3600)                  # a reminder while it lasts
    assert n is not None and [a.kind for a in n.reminders] == ["offline"]
    back = t0 + 7 * 3600
    fleet.record_health("lt-a", "surgery-1", {"version": "1.0", "disk_free_mb": 900}, back)
    n = f.tick(back + 30)
    assert n is not None and [a.kind for a in n.cleared] == ["offline"]
    assert len(smtp.got) == 3 and "cleared" in smtp.got[2]["Subject"]
    assert fleet.open_alerts() == []


def test_an_alert_storm_is_one_message(db, smtp, webhook):
    """100 boxes go silent at once (a broker restart): one message names them all."""
    s = settings(smtp, webhook, group_s=120.0)
    devices = {f"lt-{i:03d}": f"surgery-{i // 4}" for i in range(100)}
    f = fleet.Fleet(s, devices)
    t0 = ts(2026, 12, 7, 9)
    for i, d in enumerate(devices):
        fleet.record_health(d, devices[d], {"version": "1.0"}, t0 + i * 0.5)
    for m in (16, 17):                            # ticks while the storm is gathered
        f.tick(t0 + m * 60)
    assert smtp.got == [] and webhook.got == []
    n = f.tick(t0 + 18 * 60)                      # group_s after the first was raised
    assert n is not None and len(n.raised) == 100
    assert len(smtp.got) == 1 and len(webhook.got) == 1
    assert "offline on 100 devices" in smtp.got[0].get_payload()
    assert len(webhook.got[0]["raised"]) == 100


def test_flapping_inside_the_group_window_says_nothing(db, smtp, webhook):
    s = settings(smtp, webhook, group_s=300.0)
    f = fleet.Fleet(s, {"lt-a": "surgery-1"})
    t0 = ts(2026, 12, 7, 9)
    fleet.record_health("lt-a", "surgery-1", {}, t0)
    f.tick(t0 + 16 * 60)                          # raised, held for grouping
    fleet.record_health("lt-a", "surgery-1", {}, t0 + 17 * 60)
    f.tick(t0 + 18 * 60)                          # back before anyone was told
    assert f.tick(t0 + 30 * 60) is None
    assert smtp.got == [] and fleet.open_alerts() == []


def test_undeliverable_notice_is_retried(db, smtp, webhook):
    port = free_port()                            # nobody listens here
    s = FleetSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_to=("it@x",),
                      group_s=0.0)
    f = fleet.Fleet(s, {"lt-a": "surgery-1"})
    t0 = ts(2026, 12, 7, 9)
    assert f.tick(t0) is None                     # never reported: raised, not delivered
    assert FleetAlert.get().pending == "raised"
    f.send = fleet.notifiers(settings(smtp, webhook, group_s=0.0))
    n = f.tick(t0 + 60)
    assert n is not None and len(smtp.got) == 1 and FleetAlert.get().pending is None


def test_only_the_lease_holder_sends(db, smtp, webhook):
    s = settings(smtp, webhook, group_s=0.0)
    a = fleet.Fleet(s, {"lt-a": "surgery-1"}, holder="worker-a")
    b = fleet.Fleet(s, {"lt-a": "surgery-1"}, holder="worker-b")
    t0 = ts(2026, 12, 7, 9)
    assert a.tick(t0) is not None                 # lt-a never reported: raised
    assert b.tick(t0 + 1) is None and len(smtp.got) == 1
    # worker-a dies; after its lease the other takes over.
    fleet.record_health("lt-a", "surgery-1", {}, t0 + 400)
    n = b.tick(t0 + 400)
    assert n is not None and [a.kind for a in n.cleared] == ["offline"]
    assert len(smtp.got) == 2 and "cleared" in smtp.got[1]["Subject"]


# -- a real box's health over mosquitto --------------------------------------------------------

def test_health_from_a_real_box_reaches_the_fleet_view(tmp_path, broker, pki, capsys):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box])
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki)
    try:
        # Seen, and "ok": a fleet tick that ran before the first report raised
        # "enrolled but has never reported", which the next tick clears (under load the
        # report can arrive between the two).
        wait_for(lambda: any(r["last_seen_s"] is not None and r["state"] == "ok"
                             for r in fleet.table(dt.datetime.now().timestamp(),
                                                  ucfg.enrolled())),
                 what="a health report upstream, and its device ok")
    finally:
        run.close()
        worker.close()
    rows = fleet.table(dt.datetime.now().timestamp(), ucfg.enrolled())
    row, = rows
    assert row["device"] == box.device and row["site"] == "site1"
    assert row["state"] == "ok" and row["disk_free_mb"] is not None
    assert fleet.history(box.device, 0.0)
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(upstream_raw(tmp_path / "up", broker, pki, [box])))
    assert cli_main(["--config", str(conf), "fleet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["device"] == box.device and out[0]["alerts"] == []
