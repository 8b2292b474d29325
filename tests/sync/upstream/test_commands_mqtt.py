"""Commands and retention end to end: upstream -> signed command over MQTT -> box."""

from __future__ import annotations

import json
import time

import pytest

from recorder.evidence import audit
from sync import signed_commands as commands
from sync.upstream import ops as upstream_ops
from sync.upstream.cli import cli_main
from sync.upstream.objectstore import open_objects
from sync.upstream.store import Command, UCall, USegment
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    to_toml,
    unacked,
    upstream_cfg,
    upstream_raw,
    wait_for,
    write_calls,
    write_command_key,
)


def _actions(box, action):
    return [e["detail"] for e in audit.read(box.data_dir) if e["action"] == action]


@pytest.mark.usefixtures("objects_backend")
def test_commands_hold_delete_retention_and_rejections(tmp_path, broker, pki):
    priv, pub, _pubpath, privpath = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    ids = write_calls(box, n_calls=3, segs=2, start=time.time() - 20 * 86400)
    key, key_pub = write_command_key(tmp_path / "command.key")
    raw = upstream_raw(tmp_path / "up", broker, pki, [box], command_key=tmp_path / "command.key",
                       retention_days=30)
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box],
                        command_key=tmp_path / "command.key", retention_days=30)
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki, command_pub=key_pub, ack_timeout_s=3.0)
    try:
        wait_for(lambda: unacked(box.store) == 0, what="upload")
        # The site's retention (30 days) is pushed to the box once.
        wait_for(lambda: box.store.get_meta("retention_days") == 30.0, what="retention push")
        # Legal hold from upstream reaches the box.
        assert cli_main(["--config", str(conf), "hold", "--call", ids[0], "--on"]) == 0
        wait_for(lambda: box.store.call(ids[0]).legal_hold, what="hold on the box")
        # Upstream delete propagates to the box.
        assert cli_main(["--config", str(conf), "delete", "--call", ids[1]]) == 0
        assert UCall.get(UCall.call == ids[1]).state == "deleted"
        assert USegment.select().where(USegment.call == ids[1]).count() == 0
        wait_for(lambda: box.store.call(ids[1]).state == "deleted", what="delete on the box")
        assert any(d["call"] == ids[1] for d in _actions(box, "delete"))
        wait_for(lambda: Command.select().where(Command.status == "pending").count() == 0,
                 what="box reports every command")
        # Forged, replayed and expired commands are rejected and reported.
        from cryptography.hazmat.primitives.asymmetric import ed25519
        base = "linetap/site1/dev-a/cmd"
        forged = commands.sign(ed25519.Ed25519PrivateKey.generate(), "delete", "dev-a",
                               call=ids[2])
        good = commands.sign(key, "hold", "dev-a", call=ids[2], on=True)
        expired = commands.sign(key, "delete", "dev-a", call=ids[2],
                                now=time.time() - 100, lifetime_s=10)
        other = commands.sign(key, "delete", "dev-b", call=ids[2])
        pubc = worker.w.client
        for env in (forged, good, good, expired, other):
            pubc.publish(base, env, qos=1).wait_for_publish(5)
        # Wait for each kind, not a count: under load QoS 1 may deliver one twice (a
        # second "bad signature" would make four before the "device" one arrives).
        kinds = ("bad signature", "replayed", "expired", "device")

        def reasons():
            return [d["reason"] for d in _actions(box, "command_rejected")]
        wait_for(lambda: all(any(k in r for r in reasons()) for k in kinds),
                 what="every rejection reason")
        for k in kinds:
            assert any(k in r for r in reasons())
        assert box.store.call(ids[2]).state != "deleted"
        assert box.store.call(ids[2]).legal_hold            # the one good command
    finally:
        run.close()
        worker.close()
    # Retention on the box: 30 days pushed, calls are 20 days old: nothing expires yet;
    # at day 31 the unheld call goes, the held one stays. Upstream does the same alone.
    r = run.retention
    r.clock = lambda: time.time() + 11 * 86400
    r.free_bytes = lambda: 10**12
    got = r.tick()
    assert got == []      # ids[0] and ids[2] are on hold, ids[1] already deleted
    UCall.update(legal_hold=False).where(UCall.call == ids[2]).execute()
    objects = open_objects(ucfg)
    assert upstream_ops.expire(objects, now=time.time() + 11 * 86400) == 1
    assert UCall.get(UCall.call == ids[2]).state == "deleted"
    assert UCall.get(UCall.call == ids[0]).state == "live"       # held upstream too
    out = tmp_path / "calls.json"
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(["--config", str(conf), "calls", "--json"]) == 0
    out.write_text(buf.getvalue())
    assert [c["call_id"] for c in json.loads(buf.getvalue())] == [ids[0]]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(["--config", str(conf), "expiring", "--days", "11", "--json"]) == 0
    assert [c["call_id"] for c in json.loads(buf.getvalue())] == [ids[0]]   # held, listed
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(["--config", str(conf), "export", "--key", str(privpath), "--out",
                         str(tmp_path / "ex")]) == 0
    assert (tmp_path / "ex" / f"{ids[0]}.wav").exists()
