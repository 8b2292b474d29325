"""The health gate's decisions (pure, table-tested), and its look at a real recorder
through the control socket with the real store."""

from __future__ import annotations

import pytest

from recorder.runtime.healthgate import Health, Step, look, problems, step

OK = {"watchdog_fed": True, "alarms": {}, "lines": [{"line": 0}, {"line": 1}],
      "sync": {"online": True}}


@pytest.mark.parametrize("status, lines, store, sync_on, found", [
    (OK, 2, None, True, []),
    (None, 2, None, True, ["recorder not running"]),
    ({**OK, "watchdog_fed": False}, 2, None, True,
     ["recorder's watchdog not fed (no audio arriving)"]),
    ({**OK, "lines": [{"line": 0}]}, 2, None, True, ["capture not live on line(s) 1"]),
    ({**OK, "alarms": {"dead_line": {"lines": [0]}}}, 2, None, True,
     ["capture not live on line(s) 0"]),
    ({**OK, "alarms": {"capture_stalled": {"seconds": 9}}}, 2, None, True,
     ["capture stalled"]),
    (OK, 2, "integrity check says row 3 missing", True,
     ["store: integrity check says row 3 missing"]),
    ({**OK, "sync": {"online": False}}, 2, None, True, ["sync not connected"]),
    ({**OK, "sync": None}, 2, None, True, ["sync not connected"]),
    ({**OK, "sync": None}, 2, None, False, []),                   # sync off: not asked
    ({**OK, "alarms": {"clock_unsynchronised": {}}}, 2, None, True, []),  # not a gate item
    ({**OK, "lines": [], "watchdog_fed": False, "sync": None}, 1, "locked", True,
     ["recorder's watchdog not fed (no audio arriving)", "capture not live on line(s) 0",
      "store: locked", "sync not connected"]),
])
def test_problems(status, lines, store, sync_on, found):
    assert problems(Health(status, lines, store, sync_on)) == found


@pytest.mark.parametrize("found, elapsed, trial, expect", [
    ([], 0.0, True, Step.MARK_GOOD),
    ([], 900.0, True, Step.MARK_GOOD),
    ([], 5.0, False, Step.MARK_GOOD),
    (["x"], 0.0, True, Step.WAIT),
    (["x"], 599.9, True, Step.WAIT),
    (["x"], 600.0, True, Step.ROLL_BACK),
    (["x"], 600.0, False, Step.GIVE_UP),       # the default slot: nothing to go back to
])
def test_step(found, elapsed, trial, expect):
    assert step(found, elapsed, 600.0, trial) is expect


def test_look_without_a_recorder(tmp_path):
    h = look(tmp_path, 2, True)
    assert h.status is None and problems(h) == ["recorder not running"]


def test_look_at_a_running_recorder(sim):
    """The real daemon on the simulated line, asked through its control socket, with
    its real store opened and checked: healthy; and a line it does not capture is named."""
    import threading

    from recorder import config
    from recorder.runtime import control_socket, simulate
    seen = {}
    sc = sim.scenario([], duration=4.0)
    cfg = simulate.sim_config(config.Config(), sc, str(sim.data), str(sim.pub))
    n = cfg.audio.lines

    def ask(daemon):
        while not hasattr(daemon, "ring"):
            daemon.stop.wait(0.01)
        daemon.ring.wait_for(8000)
        while not (daemon.data_dir / control_socket.SOCKET).exists():
            daemon.stop.wait(0.01)
        while "ok" not in seen:
            h = look(daemon.data_dir, n, False)
            if h.status is not None and h.status.get("watchdog_fed"):
                seen["ok"] = problems(h)
                seen["more"] = problems(look(daemon.data_dir, n + 1, False))
                seen["sync"] = problems(look(daemon.data_dir, n, True))
            daemon.stop.wait(0.05)

    simulate.run(sc, cfg.replace(audio__period_frames=160), speed=2.0,
                 before_start=lambda d, ln: threading.Thread(target=ask, args=(d,),
                                                             daemon=True).start())
    assert seen["ok"] == []
    assert seen["more"] == [f"capture not live on line(s) {n}"]
    assert seen["sync"] == ["sync not connected"]
