"""The provisioning window's LED: steady while waiting, fast flashing while open, and
the recorder's LED tick shows it through the marker file."""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from provisioning.presence import Presence
from recorder.runtime import alarms, ledmode


def test_pattern_is_unlike_every_alarm_code():
    fast = [ledmode.led_on(s) for s in range(alarms.CYCLE_SLOTS)]
    assert fast == [True, False] * (alarms.CYCLE_SLOTS // 2)
    for code in range(0, 8):
        assert [alarms.led_on(code, s) for s in range(alarms.CYCLE_SLOTS)] != fast, code


def test_marker_follows_the_window(tmp_path):
    now = [0.0]
    p = Presence(False, timeout_s=60, on_change=lambda pr: ledmode.publish(tmp_path, pr))
    assert not ledmode.mode_active(tmp_path)
    p.grant()
    assert ledmode.mode_active(tmp_path)
    assert not ledmode.mode_active(tmp_path, now=10**9)      # past its end: over
    p.end("apply completed")
    assert not ledmode.marker_path(tmp_path).exists()
    assert now == [0.0]


def test_agent_led_states():
    f = MockFactory()
    try:
        led = ledmode.AgentLed(4, pin_factory=f)
        p = Presence(False)
        p.waiting()
        led.show(p)
        assert led.led.is_lit and not led.led._blink_thread
        p.grant()
        led.show(p)
        assert led.led._blink_thread is not None        # flashing
        p.end("end")
        led.show(p)
        assert not led.led.is_lit
        led.close()
    finally:
        f.reset()


def test_recorder_led_tick_shows_the_window(tmp_path):
    """The daemon's own _led_tick, on a stand-in board."""
    from types import SimpleNamespace

    from recorder.runtime.daemon import Daemon
    seen = []
    d = SimpleNamespace(_led_slot=0, data_dir=tmp_path,
                        board=SimpleNamespace(set_status_led=seen.append),
                        alarms=SimpleNamespace(snapshot=lambda: {}))
    p = Presence(True, on_change=lambda pr: ledmode.publish(tmp_path, pr))
    ledmode.publish(tmp_path, p)
    for _ in range(4):
        Daemon._led_tick(d)
    assert seen == [False, True, False, True]        # fast flashing
    p.end("end")
    seen.clear()
    for _ in range(4):
        Daemon._led_tick(d)
    assert seen == [alarms.led_on(0, s) for s in range(5, 9)]   # heartbeat again


def test_marker_says_waiting_while_the_agent_watches_through_the_recorder(tmp_path):
    """The recorder owns the LED while it runs: the marker tells it to light steadily
    while the agent waits for the press, and to flash once the window is open."""
    p = Presence(False, timeout_s=60, window_s=60, hold_s=5,
                 on_change=lambda pr: ledmode.publish(tmp_path, pr))
    assert ledmode.current_mode(tmp_path) is None
    p.waiting()
    assert ledmode.current_mode(tmp_path) == ledmode.WAITING
    assert not ledmode.mode_active(tmp_path)
    assert ledmode.current_mode(tmp_path, now=10**9) is None   # the window is long over
    p.grant()
    assert ledmode.current_mode(tmp_path) == ledmode.PROVISIONING
    p.end("apply completed")
    assert ledmode.current_mode(tmp_path) is None
    p2 = Presence(False, on_change=lambda pr: ledmode.publish(tmp_path, pr))
    p2.waiting()
    p2.deny("no press within 60 s")
    assert not ledmode.marker_path(tmp_path).exists()
