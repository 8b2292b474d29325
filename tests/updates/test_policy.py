"""Never mid-call: the idle-lines rule, the maintenance window and the reboot countdown;
and what a boot makes of an armed update. All pure, all table tests."""

from __future__ import annotations

import pytest

from recorder.config import from_dict as load_dict
from recorder.errors import ConfigError
from recorder.maintenance import Window, in_window, parse_window
from sync.update import stages
from sync.update.policy import Countdown, Step, lines_idle, reboot_step

IDLE = {"line": 0, "state": "idle", "hook": "on", "ringing": False, "call": None}


@pytest.mark.parametrize("lines, idle", [
    ([IDLE], True),
    ([IDLE, {**IDLE, "line": 1}], True),
    ([], False),                                                       # lines unknown
    ([IDLE, {**IDLE, "line": 1, "state": "offhook", "hook": "off", "call": "c1"}], False),
    ([{**IDLE, "state": "ringing", "ringing": True}], False),           # about to answer
    ([{**IDLE, "hook": "off"}], False),                                 # handset lifted
    ([{**IDLE, "call": "c9"}], False),                                  # call still closing
    ([{**IDLE, "state": "offhook"}], False),
])
def test_lines_idle(lines, idle):
    assert lines_idle(lines) is idle


@pytest.mark.parametrize("text, window", [
    ("", None),
    ("  ", None),
    ("01:00-05:00", Window(60, 300)),
    ("22:30-05:15", Window(1350, 315)),
    ("00:00-23:59", Window(0, 1439)),
])
def test_parse_window(text, window):
    assert parse_window(text) == window


@pytest.mark.parametrize("text, match", [
    ("1:00-5:00", "HH:MM-HH:MM"),
    ("24:00-05:00", "HH:MM-HH:MM"),
    ("01:60-05:00", "HH:MM-HH:MM"),
    ("01:00", "HH:MM-HH:MM"),
    ("night", "HH:MM-HH:MM"),
    ("03:00-03:00", "starts where it ends"),
])
def test_bad_windows_are_named(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_window(text)


@pytest.mark.parametrize("window, minute, inside", [
    (None, 0, True),
    (None, 800, True),
    (Window(60, 300), 59, False),
    (Window(60, 300), 60, True),           # start inclusive
    (Window(60, 300), 299, True),
    (Window(60, 300), 300, False),         # end exclusive
    (Window(1350, 315), 1349, False),      # over midnight
    (Window(1350, 315), 1350, True),
    (Window(1350, 315), 1439, True),
    (Window(1350, 315), 0, True),
    (Window(1350, 315), 314, True),
    (Window(1350, 315), 315, False),
    (Window(1350, 315), 720, False),
])
def test_in_window(window, minute, inside):
    assert in_window(window, minute) is inside


def test_the_config_checks_the_window():
    assert load_dict({"update": {"window": "23:00-04:00"}}).update.window == "23:00-04:00"
    with pytest.raises(ConfigError, match="update.window: .*HH:MM-HH:MM"):
        load_dict({"update": {"window": "11pm-4am"}})
    with pytest.raises(ConfigError, match="countdown_s"):
        load_dict({"update": {"countdown_s": 1.0}})


@pytest.mark.parametrize("started, now, idle, window, step", [
    (None, 100.0, True, True, Step.START),
    (None, 100.0, False, True, Step.WAIT_CALL),
    (None, 100.0, True, False, Step.WAIT_WINDOW),
    (None, 100.0, False, False, Step.WAIT_WINDOW),
    (100.0, 130.0, True, True, Step.COUNTING),
    (100.0, 159.9, True, True, Step.COUNTING),
    (100.0, 160.0, True, True, Step.REBOOT),
    (100.0, 130.0, False, True, Step.CANCEL),     # a call started during the countdown
    (100.0, 170.0, False, True, Step.CANCEL),     # ... even at its very end
    (100.0, 130.0, True, False, Step.CANCEL),     # the window closed
])
def test_reboot_step(started, now, idle, window, step):
    assert reboot_step(Countdown(started, 60.0), now, idle, window) is step


ST = stages.UpdateState(nonce="n" * 32, bundle="ab" * 32, version="2.0", url="https://u/b",
                        size=10, stage="rebooting", from_slot="A", to_slot="B",
                        boot_id="boot-1")
GOOD = {"bundle": "ab" * 32, "slot": "B", "stage": "good", "reason": ""}
BAD = {"bundle": "ab" * 32, "slot": "B", "stage": "failed", "reason": "capture not live"}


@pytest.mark.parametrize("st, booted, boot_id, gate, expect", [
    (ST, "B", "boot-2", None, ("rebooting", "")),              # gate still running
    (ST, "B", "boot-2", GOOD, ("good", "")),
    (ST, "A", "boot-3", BAD, ("failed", "capture not live")),
    (ST, "A", "boot-2", None, ("failed", "came back up in slot A")),   # hang, watchdog
    (ST, "A", "boot-1", None, ("rebooting", "")),              # reboot not happened yet
    (ST, "A", "boot-2", {**GOOD, "bundle": "cd" * 32}, ("failed", "came back up")),
    (ST.with_(stage="installed"), "B", "boot-2", GOOD, ("good", "")),  # a power cut
    (ST.with_(stage="downloading"), "A", "boot-2", None, ("downloading", "")),
    (ST.with_(stage="failed", reason="x"), "A", "boot-2", GOOD, ("failed", "x")),
])
def test_settle(st, booted, boot_id, gate, expect):
    stage, reason = stages.settle(st, booted, boot_id, gate)
    assert stage == expect[0] and reason.startswith(expect[1])


def test_reports_follow_the_contract():
    assert stages.report(ST.with_(stage="downloading", bytes=5)) == {
        "kind": "update", "nonce": "n" * 32, "bundle": "ab" * 32, "version": "2.0",
        "stage": "downloading", "bytes": 5}
    assert stages.report(ST.with_(stage="failed", reason="hash"))["reason"] == "hash"
    assert "reason" not in stages.report(ST.with_(stage="good"))
    with pytest.raises(ValueError, match="unknown update stage"):
        ST.with_(stage="done")
    assert stages.health(ST.with_(stage="failed", reason="r")) == {
        "state": "failed", "version": "2.0", "reason": "r"}
    assert stages.health(None) is None
