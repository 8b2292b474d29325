"""The control socket answers status and plays a test tone that comes back captured."""

from __future__ import annotations

import threading

from recorder.runtime import control_client, control_socket


def test_status_and_tone_over_the_control_socket(sim):
    answers = {}

    def ask(daemon, line):
        def go():
            daemon.ring.wait_for(8000)
            while not (daemon.data_dir / control_socket.SOCKET).exists():
                daemon.stop.wait(0.01)
            path = control_client.socket_path(daemon.data_dir)
            answers["status"] = control_client.request(path, {"cmd": "status"})
            answers["tone"] = control_client.request(path, {
                "cmd": "tone", "line": 0, "hz": 1000, "seconds": 0.5, "dbfs": -12},
                timeout_s=30.0)
            answers["bad"] = control_client.request(path, {"cmd": "tone", "line": 9})
            answers["junk"] = control_client.request(path, {"cmd": "launch"})
        threading.Thread(target=go, daemon=True).start()

    from recorder import config
    from recorder.runtime import simulate
    sc = sim.scenario([], duration=4.0)
    cfg = simulate.sim_config(config.Config(), sc, str(sim.data), str(sim.pub))
    simulate.run(sc, cfg.replace(audio__period_frames=160), speed=4.0,
                 before_start=lambda d, ln: _later(d, ask, ln))
    assert answers["status"]["ok"] and answers["status"]["lines"][0]["state"] == "idle"
    assert answers["tone"]["ok"]
    assert abs(answers["tone"]["captured_dbfs"] - (-12.0)) < 0.5   # looped back whole
    assert answers["bad"]["ok"] is False and "out of range" in answers["bad"]["error"]
    assert answers["junk"] == {"ok": False, "error": "unknown cmd 'launch'"}


def _later(daemon, ask, line):
    """Run ``ask`` once the daemon has started (before_start runs before it does)."""
    def wait():
        while not hasattr(daemon, "ring"):
            daemon.stop.wait(0.01)
        ask(daemon, line)
    threading.Thread(target=wait, daemon=True).start()
