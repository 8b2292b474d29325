"""Hook, ring, pause button and LEDs on gpiozero devices.

Every input edge becomes an :class:`Edge` stamped with the sample clock and handed to
``sink``; the daemon never polls pins. Debounce is *not* done here (gpiozero's
``bounce_time`` runs on the wall clock): the call state machine debounces on the sample
clock, and ring pulses are counted in a window rather than debounced.

The pin factory is injected: lgpio (the kernel's GPIO character device) on a box, on
every Pi model, and the simulator passes a ``MockFactory`` whose pins it drives like a
wire. RPi.GPIO is not used: its edge detection writes ``/sys/class/gpio``, read-only
under the unit's ``ProtectKernelTunables``, and it does not run on a Pi 5.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from hw.clock import SampleClock
from hw.pins import PinMap

log = logging.getLogger(__name__)


class Edge(NamedTuple):
    """One input change. ``sample`` is the capture sample index at which it happened."""

    sample: int
    kind: str          # "hook", "ring" or "button"
    line: int | None   # 0-based line for hook and ring; None for the button
    active: bool       # hook: off-hook; ring: voltage present; button: pressed


def make_factory(name: str = ""):
    """A gpiozero pin factory by name: 'lgpio' (or '' : the box's default) or 'mock'."""
    if name == "mock":
        from gpiozero.pins.mock import MockFactory
        return MockFactory()
    if name in ("", "lgpio"):
        from gpiozero.pins.lgpio import LGPIOFactory
        return LGPIOFactory()
    raise ValueError(f"pins.factory = {name!r} is not supported: use 'lgpio' (or leave it "
                     "empty); RPi.GPIO and the others cannot run under the unit's sandbox")


class Board:
    """The line-interface board: per-line hook and ring inputs, the pause button, LEDs.

    :param pinmap: BCM pin numbers.
    :param factory: gpiozero pin factory (never the global one).
    :param clock: stamps each edge with a capture sample index.
    :param sink: called from the GPIO callback thread with each :class:`Edge`; must be
        quick and thread-safe (the daemon appends to a deque).
    """

    def __init__(self, pinmap: PinMap, factory, clock: SampleClock,
                 sink: Callable[[Edge], None]):
        from gpiozero import LED, DigitalInputDevice

        self.pinmap, self.factory, self.clock, self._sink = pinmap, factory, clock, sink
        pull_up = pinmap.active_low
        self._devices = []

        def inp(pin, kind, line):
            dev = DigitalInputDevice(pin, pull_up=pull_up, bounce_time=None,
                                     pin_factory=factory)
            dev.when_activated = lambda: self._edge(kind, line, True)
            dev.when_deactivated = lambda: self._edge(kind, line, False)
            self._devices.append(dev)
            return dev

        self._inp = inp
        self.hook = [inp(p, "hook", i) for i, p in enumerate(pinmap.hook)]
        self.ring = [inp(p, "ring", i) for i, p in enumerate(pinmap.ring)]
        self.button = None
        self.button_error: str | None = None
        self.claim_button()
        self.rec_led = [LED(p, pin_factory=factory) for p in pinmap.rec_led]
        self.status_led = LED(pinmap.status_led, pin_factory=factory)
        self._devices += [*self.rec_led, self.status_led]

    def claim_button(self) -> bool:
        """Open the pause button's line if it is not open yet; True once it is.

        The provisioning agent opens that line itself only while the recorder is not
        running (otherwise it asks the recorder: recorder/runtime/button_edges.py). If
        the recorder starts inside such a press window the line is busy for up to a
        minute: recording must not wait for it, so the board comes up without the
        button, ``button_error`` says why, and the caller tries again (each second).
        """
        if self.button is not None:
            return True
        try:
            self.button = self._inp(self.pinmap.pause_button, "button", None)
        except Exception as exc:  # noqa: BLE001 - lgpio's "GPIO busy" is a bare lgpio.error
            if self.button_error is None:
                log.warning("pause button on GPIO%d not available yet (%s); recording "
                            "without it until it is", self.pinmap.pause_button, exc)
            self.button_error = f"GPIO{self.pinmap.pause_button}: {exc}"
            return False
        if self.button_error is not None:
            log.info("pause button on GPIO%d claimed", self.pinmap.pause_button)
        self.button_error = None
        return True

    def _edge(self, kind: str, line: int | None, active: bool) -> None:
        self._sink(Edge(self.clock.now(), kind, line, active))

    def initial_edges(self) -> list[Edge]:
        """Edges describing the inputs' state at start (a line already off-hook, say)."""
        s = self.clock.now()
        out = [Edge(s, "hook", i, True) for i, d in enumerate(self.hook) if d.is_active]
        if self.button is not None and self.button.is_active:
            out.append(Edge(s, "button", None, True))
        return out

    def set_rec_led(self, line: int, mode: str) -> None:
        """Recording LED of ``line``: 'on' while recording, 'blink' while paused, 'off'."""
        led = self.rec_led[line]
        if mode == "on":
            led.on()
        elif mode == "blink":
            led.blink(on_time=0.25, off_time=0.25)
        else:
            led.off()

    def set_status_led(self, on: bool) -> None:
        self.status_led.value = bool(on)

    def close(self) -> None:
        for d in self._devices:
            try:
                d.close()
            except Exception:
                log.exception("closing %r", d)
        self._devices.clear()
