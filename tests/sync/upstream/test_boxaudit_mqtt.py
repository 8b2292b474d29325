"""The box's audit log shipped upstream over the real mosquitto fixture (mutual TLS,
the per-device ACL ``upstream init`` writes): entries arrive and are acked, unacked
ones are sent again after a reconnect, a tampered entry is refused with a named reason
(and alarmed on the box), and a deleted box log is evident upstream."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from recorder.evidence import audit
from recorder.runtime.alarms import Alarms
from sync.auditship import META_KEY
from sync.upstream import config as upstream_config
from sync.upstream.cli import cli_main
from sync.upstream.store import BoxAudit, Problem, UAudit
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    to_toml,
    upstream_raw,
    wait_for,
)


@pytest.fixture
def rig(tmp_path, broker, pki):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    raw = upstream_raw(tmp_path / "up", broker, pki, [box])
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    return box, upstream_config.from_dict(raw), str(conf)


def _acked(box) -> int:
    return (box.store.get_meta(META_KEY) or {}).get("seq", 0)


def test_entries_arrive_are_acked_resent_after_reconnect_and_a_deletion_shows(
        rig, broker, pki, capsys):
    box, ucfg, conf = rig
    early = datetime.now(UTC) - timedelta(minutes=1)   # surely before any health report
    for i in range(3):
        audit.record(box.data_dir, "export", now=early, calls=i)
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki, ack_timeout_s=3.0)
    try:
        wait_for(lambda: _acked(box) == 3, what="three entries acked")
        held = [b.entry for b in BoxAudit.select().order_by(BoxAudit.seq)]
        assert held == audit.read(box.data_dir)              # byte for byte, signatures too
        # The upstream goes away; a new entry leaves the box but nobody acks it.
        worker.close()
        audit.record(box.data_dir, "pause", line=0)
        wait_for(lambda: run.up.auditship.sent, what="entry 4 in flight")
        run.close()                                          # the box restarts
        assert _acked(box) == 3
        worker = InProcWorker(ucfg)
        run = Running(box, broker, pki, ack_timeout_s=3.0)
        wait_for(lambda: _acked(box) == 4, what="entry 4 sent again and acked")
        assert BoxAudit.select().count() == 4
        # Someone deletes the box's audit log: the next start's health message says the
        # log is empty, and the next entry restarts the chain; both are problems upstream.
        run.close()
        (box.data_dir / audit.AUDIT_FILE).unlink()
        run = Running(box, broker, pki, ack_timeout_s=3.0)
        wait_for(lambda: Problem.select().where(Problem.kind == "audit_behind").exists(),
                 what="the empty log noticed")
        audit.record(box.data_dir, "resume", line=0)
        wait_for(lambda: _acked(box) == 1, what="the restarted chain acked")
        p = Problem.get(Problem.kind == "audit_break")
        assert p.detail.startswith("restart: the box's log starts again at seq 1 after "
                                   "seq 4")
        assert {a.action for a in UAudit.select()} >= {"box_audit_behind", "box_audit_break"}
    finally:
        run.close()
        worker.close()
    assert BoxAudit.select().count() == 5                    # nothing the box sent is lost
    capsys.readouterr()
    assert cli_main(["--config", conf, "audit", "--verify", "--json"]) == 1
    (b,) = json.loads(capsys.readouterr().out)["boxes"]
    assert b["status"] == "broken" and b["signed"] == 5 and len(b["breaks"]) == 2


def test_a_tampered_entry_is_refused_and_alarmed(rig, broker, pki):
    box, ucfg, _conf = rig
    for i in range(2):
        audit.record(box.data_dir, "export", calls=i)
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki, ack_timeout_s=3.0)
    alarms = Alarms()
    try:
        wait_for(lambda: _acked(box) == 2, what="two entries acked")
        run.close()
        audit.record(box.data_dir, "delete", call="C1")
        path = box.data_dir / audit.AUDIT_FILE
        lines = path.read_text().splitlines()
        e = json.loads(lines[-1])
        e["detail"]["call"] = "C2"                           # edited while the box was off
        lines[-1] = json.dumps(e, sort_keys=True, separators=(",", ":"))
        path.write_text("\n".join(lines) + "\n")
        run = Running(box, broker, pki, ack_timeout_s=3.0, alarms=alarms)
        wait_for(lambda: "audit_refused" in alarms.snapshot(), what="the refusal")
        assert alarms.snapshot()["audit_refused"] == {"seq": 3, "reason": "hash mismatch"}
        p = Problem.get(Problem.kind == "audit_refused")
        assert (p.device, p.seq, p.detail) == ("dev-a", 3, "hash mismatch")
    finally:
        run.close()
        worker.close()
    assert _acked(box) == 2 and BoxAudit.select().count() == 2
