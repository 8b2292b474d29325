"""Physical presence from the pause button, driven on gpiozero's MockFactory."""

from __future__ import annotations

import threading

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from provisioning import presence

# Slow (`make test-fast` leaves it out): button scripts in real time.
pytestmark = pytest.mark.slow


class FingerPin(MockPin):
    """A button pin with a finger on it: the pull-up cannot lift it while ``held``.

    MockPin follows its pull resistor when a device sets the pull, which would release
    a button held from power-on; a real held button shorts the pull-up to ground.
    """

    held = False

    def _set_pull(self, value):
        super()._set_pull(value)
        if self.held:
            self.drive_low()

    def press(self):
        self.held = True
        self.drive_low()

    def release(self):
        self.held = False
        self.drive_high()


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


def finger(factory) -> FingerPin:
    return factory.pin(16, pin_class=FingerPin)


def press_when_watched(pin, after_s=0.2):
    """An ``on_change`` hook: a finger arriving once the button is watched (LED lit)."""
    def hook(p):
        if p.state() == presence.WAITING:
            threading.Timer(after_s, pin.press).start()
    return hook


def test_fresh_press_and_hold_grants(factory):
    pin = finger(factory)
    pin.release()
    p = presence.from_button(16, pin_factory=factory, hold_s=0.2, window_s=5.0,
                             timeout_s=1800, on_change=press_when_watched(pin))
    assert p.active() and p.state() == presence.ACTIVE
    assert 0 < p.remaining_s() <= 1800
    assert p.describe()["opened_at"] is not None


def test_button_held_from_power_on_does_not_count(factory):
    finger(factory).press()  # held through power-on, or stuck: never released
    p = presence.from_button(16, pin_factory=factory, hold_s=0.1, window_s=0.3)
    assert not p.active()
    assert "stuck" in p.reason and "fresh press" in p.reason


def test_held_at_start_then_released_and_pressed_again_counts(factory):
    pin = finger(factory)
    pin.press()

    def release_then_press(p):
        if p.state() == presence.WAITING:
            threading.Timer(0.2, pin.release).start()
            threading.Timer(0.5, pin.press).start()
    p = presence.from_button(16, pin_factory=factory, hold_s=0.2, window_s=5.0,
                             on_change=release_then_press)
    assert p.active()


def test_button_not_pressed_denies(factory):
    p = presence.from_button(16, pin_factory=factory, hold_s=0.2, window_s=0.05)
    assert not p.active()
    assert p.reason == "no press within 0.05 s"


def test_button_released_early_denies(factory):
    pin = finger(factory)
    pin.release()
    released = threading.Event()

    class Spy:
        """Wraps the Button: presses when the wait starts, releases when the hold starts."""

        def __init__(self, button):
            self.b = button

        def wait_for_press(self, timeout):
            pin.press()
            return self.b.wait_for_press(timeout)

        def wait_for_release(self, timeout):
            pin.release()
            released.set()
            return self.b.wait_for_release(timeout)

        @property
        def is_pressed(self):
            return self.b.is_pressed

    from gpiozero import Button
    b = Button(16, pin_factory=factory)
    try:
        assert presence.button_held(Spy(b), hold_s=5.0, window_s=1.0) == \
            (False, "released before 5 s")
    finally:
        b.close()
    assert released.is_set()


def test_window_states_and_messages():
    now, wall = [100.0], [1_764_990_000.0]
    seen = []
    p = presence.Presence(False, timeout_s=60, clock=lambda: now[0], wall=lambda: wall[0],
                          on_change=lambda pr: seen.append(pr.state()))
    assert p.state() == presence.NONE and "press and hold the pause button for 5 s" in \
        p.refusal("x")
    p.waiting()
    assert "waiting for presence" in p.refusal("x")
    p.grant()
    assert p.describe()["opened_at"] == "2025-12-06T03:00:00Z"
    now[0] += 61
    assert p.state() == presence.EXPIRED
    msg = p.refusal("install_key")
    assert "expired at 2025-12-06T03:01:00Z" in msg and "opened at 2025-12-06T03:00:00Z" in msg
    p2 = presence.Presence(True, timeout_s=60, clock=lambda: now[0], wall=lambda: wall[0])
    p2.end("apply completed")
    assert p2.state() == presence.ENDED and "apply completed" in p2.refusal("x")
    assert seen == [presence.WAITING, presence.ACTIVE, presence.EXPIRED]


def test_released_button_denies(factory):
    finger(factory).release()
    assert not presence.from_button(16, active_low=True, pin_factory=factory, hold_s=0.1,
                                    window_s=0.05).active()


def test_pin_released_for_the_recorder(factory):
    pin = finger(factory)
    assert presence.from_button(16, pin_factory=factory, hold_s=0.1, window_s=5.0,
                                on_change=press_when_watched(pin)).active()
    from gpiozero import Button
    Button(16, pin_factory=factory).close()  # the recorder can claim the pin afterwards


def test_unusable_pin_denies(factory):
    from gpiozero import Button
    holder = Button(16, pin_factory=factory)
    try:
        assert not presence.from_button(16, pin_factory=factory, hold_s=0.1,
                                        window_s=0.05).active()
    finally:
        holder.close()


def test_messages_docs_and_unit_agree_on_the_timings():
    """The hold time the refusals give is the one the docs give; the agent's start
    timeout covers the whole press window."""
    import configparser
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "provisioning.md").read_text()
    p = presence.Presence(False)
    hold = f"press and hold the pause button for {presence.DEFAULT_HOLD_S:g} s"
    assert hold in p.how_to() and hold in doc
    assert f"watches the pause button for {presence.DEFAULT_WINDOW_S:g} s" in doc
    assert f"for {presence.DEFAULT_TIMEOUT_S / 60:g} minutes" in doc
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(root / "systemd" / "linetap-provision-agent.service")
    assert float(unit["Service"]["TimeoutStartSec"]) > \
        presence.DEFAULT_WINDOW_S + presence.DEFAULT_HOLD_S


# --- the button read through the running recorder (it owns the line) ----------------------

@pytest.fixture
def recorder_socket(tmp_path):
    """The recorder's real control socket server, on a daemon stand-in that holds only
    what the ``button`` command reads: the numbered edges the GPIO callback records."""
    import types

    from recorder.runtime.button_edges import ButtonEdges
    from recorder.runtime.control_socket import ControlServer
    (tmp_path / "run").mkdir()
    d = types.SimpleNamespace(data_dir=tmp_path, stop=threading.Event(),
                              button_edges=ButtonEdges())
    server = ControlServer(d)
    server.start()
    yield server.path, d
    d.stop.set()
    server.join(5)


def later(s, fn, *args):
    threading.Timer(s, fn, args).start()


def test_press_through_the_recorder_grants_and_never_opens_the_line(recorder_socket):
    path, d = recorder_socket
    opened = []

    def hook(p):
        if p.state() == presence.WAITING:
            later(0.2, d.button_edges.record, True)
    f = MockFactory()      # the line: never touched while the recorder answers
    p = presence.Presence(False, 1800, hold_s=0.3, window_s=5.0, on_change=hook)
    presence.check_button(p, 16, pin_factory=f, recorder_socket=path, on_open=opened.append)
    assert p.active(), p.reason
    assert opened == ["recorder"]
    assert not f.pins     # gpiozero never created pin 16: the recorder keeps it


@pytest.mark.parametrize("script, reason", [
    # held since before the watch (power-on, stuck): must be released first
    ([(0.0, True)], "stuck"),
    # a press and release shorter than the hold, even both between two polls
    ([(0.2, True), (0.25, False)], "released before 0.6 s"),
    # no press at all
    ([], "no press within 1.5 s"),
])
def test_press_edge_rules_hold_through_the_recorder(recorder_socket, script, reason):
    path, d = recorder_socket
    for at, pressed in script:
        if at == 0.0:
            d.button_edges.record(pressed)
    p = presence.Presence(False, 1800, hold_s=0.6, window_s=1.5, on_change=lambda pr: [
        later(at, d.button_edges.record, pressed) for at, pressed in script
        if at > 0 and pr.state() == presence.WAITING])
    presence.check_button(p, 16, pin_factory=MockFactory(), recorder_socket=path)
    assert not p.active() and reason in p.reason, p.reason


def test_recorder_stopping_mid_window_denies_and_says_why(recorder_socket):
    path, d = recorder_socket

    def hook(p):
        if p.state() == presence.WAITING:
            later(0.2, d.stop.set)     # the control server closes its socket
    p = presence.Presence(False, 1800, hold_s=0.2, window_s=5.0, on_change=hook)
    presence.check_button(p, 16, pin_factory=MockFactory(), recorder_socket=path)
    assert not p.active() and "recorder" in p.reason, p.reason


def test_no_recorder_running_opens_the_line_itself(factory, tmp_path):
    pin = finger(factory)
    pin.release()
    opened = []
    p = presence.Presence(False, 1800, hold_s=0.2, window_s=5.0,
                          on_change=press_when_watched(pin))
    presence.check_button(p, 16, pin_factory=factory,
                          recorder_socket=tmp_path / "run" / "control.sock",
                          on_open=opened.append)
    assert p.active() and opened == ["gpio"]


def test_recorder_refusing_the_button_denies_without_opening_the_line(tmp_path):
    def ask(path, obj, timeout_s):
        return {"ok": False, "error": "unknown cmd 'button'"}   # an older recorder

    with pytest.raises(presence.ButtonUnavailable, match="unknown cmd"):
        presence.RecorderButton(tmp_path / "control.sock", ask=ask)
