"""Physical presence: state-changing commands need someone at the box.

Provisioning mode is entered by holding the pause button for ``hold_s`` (5 s) while the
box powers on; it then lasts ``timeout_s`` (30 min by default). Read-only commands work
at any time. The agent takes any object with the :class:`Presence` shape, so tests and
the simulator drive it directly and the Pi reads the real button through gpiozero.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_HOLD_S = 5.0
DEFAULT_WINDOW_S = 10.0
DEFAULT_TIMEOUT_S = 30 * 60.0


class Presence:
    """A provisioning-mode window on a monotonic clock.

    ``granted``: whether mode was entered at all. ``timeout_s``: how long it lasts from
    :meth:`grant` (seconds, > 0). ``clock``: a monotonic clock in seconds (injectable).
    """

    def __init__(self, granted: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.timeout_s = float(timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._until: float | None = None
        if granted:
            self.grant()

    def grant(self) -> None:
        """Enter provisioning mode now, for ``timeout_s`` seconds."""
        with self._lock:
            self._until = self._clock() + self.timeout_s
        log.info("provisioning mode entered for %.0f s", self.timeout_s)

    def revoke(self) -> None:
        """Leave provisioning mode (after a factory reset, or on request)."""
        with self._lock:
            self._until = None

    def active(self) -> bool:
        """True while provisioning mode lasts."""
        return self.remaining_s() > 0

    def remaining_s(self) -> float:
        """Seconds of provisioning mode left; 0 when not in the mode."""
        with self._lock:
            if self._until is None:
                return 0.0
            return max(0.0, self._until - self._clock())


def button_held(button, *, hold_s: float = DEFAULT_HOLD_S,
                window_s: float = DEFAULT_WINDOW_S) -> bool:
    """True if ``button`` is pressed within ``window_s`` and held for ``hold_s`` seconds.

    ``button`` is a gpiozero ``Button`` (or anything with ``wait_for_press(timeout)``,
    ``wait_for_release(timeout)`` and ``is_pressed``). A release before ``hold_s`` fails
    the check; the user powers the box on again to retry.
    """
    if not button.wait_for_press(timeout=window_s):
        return False
    released = button.wait_for_release(timeout=hold_s)
    return not released and bool(button.is_pressed)


def from_button(pin: int, *, active_low: bool = True, pin_factory=None,
                hold_s: float = DEFAULT_HOLD_S, window_s: float = DEFAULT_WINDOW_S,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Presence:
    """Check the pause button once, at agent start, and return the resulting Presence.

    The button is opened with gpiozero on BCM ``pin`` (``pin_factory`` None = gpiozero's
    default; tests pass a ``MockFactory``) and closed again so the recorder, started
    after the agent, can claim the pin. If the pin cannot be opened (not a Pi, pin busy)
    the box stays out of provisioning mode and says why in the log.
    """
    try:
        from gpiozero import Button
        from gpiozero.exc import GPIOZeroError
    except ImportError:  # pragma: no cover - gpiozero is a dependency
        log.warning("gpiozero not importable; provisioning mode unavailable")
        return Presence(False, timeout_s)
    try:
        button = Button(pin, pull_up=active_low, pin_factory=pin_factory)
    except (GPIOZeroError, OSError, RuntimeError) as exc:
        log.warning("cannot read the pause button on GPIO%d (%s); provisioning mode "
                    "unavailable", pin, exc)
        return Presence(False, timeout_s)
    try:
        held = button_held(button, hold_s=hold_s, window_s=window_s)
    finally:
        button.close()
    log.info("pause button %s at start", "held" if held else "not held")
    return Presence(held, timeout_s)
