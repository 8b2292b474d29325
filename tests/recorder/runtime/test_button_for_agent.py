"""The recorder owns the pause button's line and hands its edges to the provisioning
agent over the control socket, so the agent's press window never delays recording."""

from __future__ import annotations

import threading

from gpiozero import Button

from hw.clock import SimClock
from hw.gpio import Board, make_factory
from hw.pins import PinMap
from provisioning import presence
from recorder import config
from recorder.config import PinsConfig
from recorder.runtime import control_client, simulate


def test_press_in_the_scenario_reaches_the_agent_through_the_running_daemon(sim):
    """The simulated line presses the button (a person with a finger on it); the agent's
    presence check, reading through the daemon's control socket, grants the window."""
    result = {}

    def agent(daemon, _line):
        def go():
            while not hasattr(daemon, "board") and not daemon.stop.is_set():
                daemon.stop.wait(0.01)
            path = control_client.socket_path(daemon.data_dir)
            while not path.exists() and not daemon.stop.is_set():
                daemon.stop.wait(0.01)
            opened = []
            p = presence.Presence(False, 1800, hold_s=0.5, window_s=20.0)
            presence.check_button(p, daemon.cfg.pins.pause_button,
                                  pin_factory=daemon.board.factory, recorder_socket=path,
                                  on_open=opened.append)
            result.update(active=p.active(), reason=p.reason, opened=opened)
        threading.Thread(target=go, daemon=True).start()

    # Line time runs at twice wall time: pressed 1.5 s (wall) in, held 2 s (wall).
    sc = sim.scenario([{"at": 3.0, "type": "button", "button": "pause", "hold": 4.0}],
                      duration=9.0)
    cfg = simulate.sim_config(config.Config(), sc, str(sim.data), str(sim.pub))
    simulate.run(sc, cfg.replace(audio__period_frames=160), speed=2.0,
                 before_start=agent, services=None)
    assert result == {"active": True, "reason": "granted", "opened": ["recorder"]}, result


def test_board_records_without_a_busy_button_and_claims_it_once_free():
    """The agent opened the line itself (recorder down) and the recorder starts in its
    window: the board comes up, says why the button is missing, and claims it later."""
    f = make_factory("mock")
    pm = PinMap.from_config(PinsConfig(), 1)
    agent_holds = Button(pm.pause_button, pin_factory=f)
    edges = []
    board = Board(pm, f, SimClock(8000), edges.append)
    try:
        assert board.button is None and f"GPIO{pm.pause_button}" in board.button_error
        assert len(board.hook) == 1            # the line is watched all the same
        assert board.claim_button() is False   # still held
        agent_holds.close()
        assert board.claim_button() is True and board.button_error is None
        f.pin(pm.pause_button).drive_low()     # pressed (active low)
        assert [(e.kind, e.active) for e in edges] == [("button", True)]
    finally:
        board.close()
