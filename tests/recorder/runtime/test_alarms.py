"""Alarm decisions (pure), blink codes, and alarms raised by the running daemon."""

from __future__ import annotations

import json

import pytest

from recorder.runtime import alarms as al

T = al.Thresholds()


@pytest.mark.parametrize("name,inputs,raised", [
    ("all quiet", al.Inputs(silent_s=(0.0, 0.0), clip_age_s=(None, None)), set()),
    ("overruns", al.Inputs(overruns=3), {"capture_overruns"}),
    ("capture stalled", al.Inputs(capture_age_s=6.0), {"capture_stalled"}),
    ("capture merely slow", al.Inputs(capture_age_s=4.0), set()),
    ("clock", al.Inputs(clock_synchronised=False), {"clock_unsynchronised"}),
    ("link down briefly", al.Inputs(sync_on=True, link_down_s=119), set()),
    ("broker unreachable", al.Inputs(sync_on=True, link_down_s=300), {"broker_unreachable"}),
    ("sync off: no sync alarms", al.Inputs(sync_on=False, link_down_s=9999,
                                           oldest_unsynced_age_s=1e6), set()),
    ("backlog old", al.Inputs(sync_on=True, oldest_unsynced_age_s=3600),
     {"sync_backlog_age"}),
    ("dead line", al.Inputs(silent_s=(0.0, 600.0)), {"dead_line"}),
    ("quiet but alive", al.Inputs(silent_s=(599.0,)), set()),
    ("clipping recent", al.Inputs(clip_age_s=(10.0,)), {"clipping"}),
    ("clipping long ago", al.Inputs(clip_age_s=(61.0,)), set()),
    ("stuck", al.Inputs(stuck_lines=(1,)), {"stuck_offhook"}),
])
def test_evaluate_table(name, inputs, raised):
    got = {k for k, v in al.evaluate(inputs, T).items() if v is not None}
    assert got == raised, name


def test_dead_line_names_the_line():
    assert al.evaluate(al.Inputs(silent_s=(0.0, 700.0, 800.0)))["dead_line"] == \
        {"lines": [1, 2]}


@pytest.mark.parametrize("active,code", [
    ({}, 0), ({"clipping": {}}, 7), ({"clipping": {}, "low_storage": {}}, 3),
    ({"identity_key": {}, "dead_line": {}}, 1), ({"something_new": {}}, 8),
])
def test_blink_code_is_the_most_urgent(active, code):
    assert al.blink_code(active) == code


def test_led_patterns():
    heartbeat = [al.led_on(0, s) for s in range(8)]
    assert heartbeat == [True] * 4 + [False] * 4
    three = [al.led_on(3, s) for s in range(al.CYCLE_SLOTS)]
    assert three == [True, False] * 3 + [False] * (al.CYCLE_SLOTS - 6)
    assert sum(al.led_on(3, s) for s in range(al.CYCLE_SLOTS * 5)) == 15


def test_alarm_set_raises_and_clears(caplog):
    a = al.Alarms()
    with caplog.at_level("INFO"):
        a.set("clipping", True, lines=[0])
        a.set("clipping", True, lines=[0])
        a.set("clipping", False)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("alarm raised: clipping" in m for m in msgs) == 1
    assert sum("alarm cleared: clipping" in m for m in msgs) == 1
    assert a.snapshot() == {}


def test_stuck_off_hook_rolls_over_into_a_linked_call(sim):
    sim.run([{"at": 0.0, "line": 0, "type": "tone", "hz": 600, "duration": 150},
             {"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 140.0, "line": 0, "type": "onhook"}], duration=150,
            timing__max_call_s=60.0)
    calls, failures = sim.export()
    assert failures == 0
    metas = sorted((m for m, _ in calls.values()), key=lambda m: m["offhook"])
    assert [m["end_reason"] for m in metas] == ["max_call", "max_call", "hangup"]
    assert metas[1]["rollover_of"] == metas[0]["call_id"]
    assert metas[2]["rollover_of"] == metas[1]["call_id"]
    assert metas[0]["end"] == metas[1]["offhook"] == "2026-11-25T09:01:01.000Z"
    # No audio is lost or doubled at the seams: the parts add up to the whole call.
    total = sum(len(pcm) for _, pcm in calls.values())
    assert total == (140 - 0.5) * 8000


def test_identity_alarm_is_left_for_status(sim, practice_keys, capsys):
    sim.run([], duration=1)
    (sim.data / "keys" / "identity.key").unlink()
    from recorder.errors import LinetapError
    with pytest.raises(LinetapError):
        sim.run([], duration=1)
    st = json.loads((sim.data / "run" / "status.json").read_text())
    assert st["running"] is False and "identity_key" in st["alarms"]
    from recorder import cli
    assert cli.main(["status", "--data-dir", str(sim.data)]) == 0
    assert "ALARM identity_key" in capsys.readouterr().out


@pytest.mark.parametrize("alive,age,ok", [
    (True, 0.1, True), (True, 4.9, True), (True, 5.0, False), (False, 0.1, False),
])
def test_watchdog_is_fed_only_while_audio_arrives(alive, age, ok):
    from recorder.runtime.daemon import watchdog_ok
    assert watchdog_ok(alive, age) is ok



def test_disk_full_is_recognised_through_the_exception_chain():
    import errno
    import sqlite3

    from recorder.storage.writer import disk_full
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    full = sqlite3.OperationalError("database or disk is full")
    try:
        try:
            raise full
        except sqlite3.OperationalError:
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")  # noqa: B904 - the implicit context is the point
    except sqlite3.OperationalError as exc:
        assert disk_full(exc)
    assert not disk_full(sqlite3.OperationalError("no such table: call"))


def test_shutdown_survives_a_checkpoint_refused_by_a_full_disk():
    import sqlite3

    from recorder.config import Config
    from recorder.runtime.daemon import Daemon
    from recorder.runtime.hardware import Hardware

    class FullDiskStore:
        closed = False

        def checkpoint(self):
            raise sqlite3.OperationalError("database or disk is full")

        def close(self):
            self.closed = True

    d = Daemon(Config(), Hardware("none", "none"))
    d.store = FullDiskStore()
    assert d.shutdown() == []
    assert d.store.closed and d.done.is_set()
