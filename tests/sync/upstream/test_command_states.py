"""Commands have a state upstream (queued, delivered, applied, refused with the reason);
a hold is shown pending until the box applies it; a refused command is an open problem,
can be retried, and is resolved when the retry is applied; a command to an offline box
is delivered when it comes back. Real mosquitto, ingest worker, box uploader."""

from __future__ import annotations

import json
import time

import pytest

from sync.upstream import config as upstream_config
from sync.upstream import tracking
from sync.upstream.cli import cli_main
from sync.upstream.store import Command, Problem
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    to_toml,
    unacked,
    upstream_raw,
    wait_for,
    write_calls,
    write_command_key,
)


def _cli(capsys, conf, *args):
    capsys.readouterr()
    rc = cli_main(["--config", str(conf), *args])
    return rc, capsys.readouterr().out


def _hold_line(capsys, conf, call):
    rc, out = _cli(capsys, conf, "calls")
    assert rc == 0
    return next(ln for ln in out.splitlines() if call in ln)


def test_refused_hold_is_a_problem_until_retried_and_applied(tmp_path, broker, pki, capsys):
    _priv, pub, _pp, _ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    ids = write_calls(box, n_calls=1, segs=1)
    _key, key_pub = write_command_key(tmp_path / "command.key")
    _other, other_pub = write_command_key(tmp_path / "other.key")
    raw = upstream_raw(tmp_path / "up", broker, pki, [box],
                       command_key=tmp_path / "command.key")
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    worker = InProcWorker(upstream_config.from_dict(raw))
    # The box trusts another command key: it refuses the hold ("bad signature").
    run = Running(box, broker, pki, command_pub=other_pub)
    try:
        wait_for(lambda: unacked(box.store) == 0, what="upload")
        assert _cli(capsys, conf, "hold", "--call", ids[0], "--on")[0] == 0
        wait_for(lambda: Command.select().where((Command.kind == "hold")
                                                & (Command.status == "rejected")).exists(),
                 what="the box's refusal")
        line = _hold_line(capsys, conf, ids[0])
        assert "HOLD REFUSED BY BOX" in line and "signature" in line
        assert not box.store.call(ids[0]).legal_hold
        rc, out = _cli(capsys, conf, "problems")
        # The retention push was refused too: both are open problems.
        assert out.count("command_refused") == 2 and "2 open problem(s)" in out
        nonce = Command.get(Command.kind == "hold").nonce
        ret = Command.get(Command.kind == "retention").nonce
        # The fix: the box gets the right command key. Then retry.
        run.close()
        run = Running(box, broker, pki, command_pub=key_pub)      # the fix
        rc, out = _cli(capsys, conf, "retry", "--command", nonce[:10])
        assert rc == 0 and "signed again" in out
        line = _hold_line(capsys, conf, ids[0])
        assert "pending" in line
        wait_for(lambda: box.store.call(ids[0]).legal_hold, what="hold applied on the box")
        wait_for(lambda: "pending" not in _hold_line(capsys, conf, ids[0]),
                 what="upstream sees it applied")
        assert _hold_line(capsys, conf, ids[0]).endswith("  HOLD")
        rc, out = _cli(capsys, conf, "problems")
        assert "1 open problem(s)" in out and "retention" in out
        assert _cli(capsys, conf, "retry", "--command", ret[:10])[0] == 0
        wait_for(lambda: "0 open problem(s)" in _cli(capsys, conf, "problems")[1],
                 what="retention retry applied")
        rc, out = _cli(capsys, conf, "problems", "--all", "--json")
        rows = json.loads(out)
        assert {r["kind"] for r in rows} == {"command_refused"} and all(
            r["resolved"] for r in rows)
        with pytest.raises(tracking.TrackingError, match="already retried"):
            _cli(capsys, conf, "retry", "--command", nonce[:10])
    finally:
        run.close()
        worker.close()


def test_command_to_an_offline_box_is_delivered_when_it_returns(tmp_path, broker, pki,
                                                               capsys):
    _priv, pub, _pp, _ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    ids = write_calls(box, n_calls=1, segs=1)
    _key, key_pub = write_command_key(tmp_path / "command.key")
    raw = upstream_raw(tmp_path / "up", broker, pki, [box],
                       command_key=tmp_path / "command.key")
    raw["commands"]["resend_s"] = 3600        # only the box's return may trigger a resend
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    worker = InProcWorker(upstream_config.from_dict(raw))
    run = Running(box, broker, pki, command_pub=key_pub)
    try:
        wait_for(lambda: unacked(box.store) == 0, what="upload")
        run.close()
        # The box's broker session is gone (as after a broker restart): a command sent
        # now is lost on the way, and must go again when the box is back.
        broker.restart()
        worker.close()
        worker = InProcWorker(upstream_config.from_dict(raw))
        assert _cli(capsys, conf, "hold", "--call", ids[0], "--on")[0] == 0
        assert "pending: queued" in _hold_line(capsys, conf, ids[0]) or \
            "pending: delivered" in _hold_line(capsys, conf, ids[0])
        wait_for(lambda: Command.get(Command.kind == "hold").sent_time is not None,
                 what="first send (box away)")
        assert "pending: delivered" in _hold_line(capsys, conf, ids[0])
        # Its last health is old: the box has been away.
        from sync.upstream.store import Health
        Health.update(time=time.time() - 2 * tracking.BACK_AFTER_S).execute()
        run = Running(box, broker, pki, command_pub=key_pub)
        wait_for(lambda: box.store.call(ids[0]).legal_hold, what="hold applied on return")
        wait_for(lambda: Command.get(Command.kind == "hold").status == "applied",
                 what="applied upstream")
    finally:
        run.close()
        worker.close()


def test_rejected_manifest_resolves_when_a_valid_one_arrives(tmp_path):
    from sync.upstream.store import open_db
    open_db(f"sqlite:///{tmp_path / 'u.db'}")
    Problem.create(kind="rejected", device="d", call="c", seq=None, sha256="x" * 64,
                   detail="signed by a different device")
    assert len(tracking.problems()) == 1
    tracking.manifest_accepted("d", "c")
    assert tracking.problems() == []
    assert tracking.problems(include_resolved=True)[0]["resolution"].startswith("a valid")


def test_wrong_pinned_identity_resolves_after_the_fix_without_a_box_restart(
        tmp_path, broker, pki, capsys):
    from types import SimpleNamespace

    from recorder.evidence import keys as ekeys
    from sync import uploader as upl
    _priv, pub, _pp, _ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    ids = write_calls(box, n_calls=1, segs=1)
    wrong = SimpleNamespace(device=box.device, identity=ekeys.ensure_identity(
        tmp_path / "other", first_start=True))
    raw = upstream_raw(tmp_path / "up", broker, pki, [wrong])
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    worker = InProcWorker(upstream_config.from_dict(raw))
    run = Running(box, broker, pki)
    try:
        wait_for(lambda: ids[0] in run.up.rejected_mans, what="the rejection")
        rc, out = _cli(capsys, conf, "problems")
        assert "1 open problem(s)" in out and "linetap upstream pin --device dev-a" in out
        worker.close()
        raw = upstream_raw(tmp_path / "up", broker, pki, [box])         # the fix
        conf.write_text(to_toml(raw))
        worker = InProcWorker(upstream_config.from_dict(raw))
        # The box offers the rejected version again once REJECTED_RETRY_S has passed.
        run.up._rejected_at[ids[0]] -= upl.REJECTED_RETRY_S
        run.up._cand = None
        wait_for(lambda: unacked(box.store) == 0, what="the manifest accepted")
        rc, out = _cli(capsys, conf, "problems")
        assert "0 open problem(s)" in out
        rc, out = _cli(capsys, conf, "problems", "--all")
        assert "a valid manifest for this call was accepted" in out
    finally:
        run.close()
        worker.close()
