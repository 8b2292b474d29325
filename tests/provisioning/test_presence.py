"""Physical presence from the pause button, driven on gpiozero's MockFactory."""

from __future__ import annotations

import threading

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from provisioning import presence


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


def test_button_held_grants(factory):
    finger(factory).press()  # active-low button, held from power-on
    p = presence.from_button(16, pin_factory=factory, hold_s=0.2, window_s=1.0,
                             timeout_s=1800)
    assert p.active()
    assert 0 < p.remaining_s() <= 1800


def test_button_not_pressed_denies(factory):
    p = presence.from_button(16, pin_factory=factory, hold_s=0.2, window_s=0.05)
    assert not p.active()


def test_button_released_early_denies(factory):
    pin = finger(factory)
    pin.press()
    released = threading.Event()

    class Spy:
        """Wraps the Button: releases the pin the moment the hold starts."""

        def __init__(self, button):
            self.b = button

        def wait_for_press(self, timeout):
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
        assert presence.button_held(Spy(b), hold_s=5.0, window_s=1.0) is False
    finally:
        b.close()
    assert released.is_set()


def test_released_button_denies(factory):
    finger(factory).release()
    assert not presence.from_button(16, active_low=True, pin_factory=factory, hold_s=0.1,
                                    window_s=0.05).active()


def test_pin_released_for_the_recorder(factory):
    finger(factory).press()
    presence.from_button(16, pin_factory=factory, hold_s=0.1, window_s=0.5)
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
