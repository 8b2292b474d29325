"""Physical presence: state-changing commands need someone at the box.

The agent starts, lights the status LED steadily (``waiting``) and watches the pause
button for ``window_s`` (60 s). Only a **press edge** counts: a button already held at
start-up (a finger on it while powering on, or a stuck button) must first be released.
The press must then be held for ``hold_s`` (5 s). Provisioning mode then lasts
``timeout_s`` (30 min) and the status LED flashes fast (:mod:`recorder.runtime.ledmode`).
The window closes early when the engineer sends ``end``, or when ``apply`` completes.

The agent takes any object with the :class:`Presence` shape, so tests and the bench
drive it directly and the Pi reads the real button through gpiozero.

Who reads the button: while the recorder runs it owns every GPIO line, so the agent
asks it for the button's edges over its control socket (:class:`RecorderButton`,
``recorder/runtime/button_edges.py``); only when the recorder is not running does the
agent open the line itself. Neither waits for the other at boot.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from recorder.errors import LinetapError, ProtocolError
from recorder.runtime import control_client
from recorder.runtime.control_client import RecorderNotRunning

log = logging.getLogger(__name__)

DEFAULT_HOLD_S = 5.0
DEFAULT_WINDOW_S = 60.0
DEFAULT_TIMEOUT_S = 30 * 60.0

# States of the window, as hello and status report them.
NONE, WAITING, ACTIVE, EXPIRED, ENDED = "none", "waiting_for_press", "active", "expired", \
    "ended"


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


class Presence:
    """A provisioning-mode window on a monotonic clock.

    ``granted``: open the window at once (bench only). ``timeout_s``: how long it lasts
    from :meth:`grant` (seconds, > 0). ``hold_s``/``window_s``: the button rule, for the
    messages. ``clock``: monotonic seconds; ``wall``: epoch seconds (both injectable).
    ``on_change``: called with this object after every state change (the LED).
    """

    def __init__(self, granted: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic, *,
                 hold_s: float = DEFAULT_HOLD_S, window_s: float = DEFAULT_WINDOW_S,
                 wall: Callable[[], float] = time.time,
                 on_change: Callable[[Presence], None] | None = None):
        self.timeout_s = float(timeout_s)
        self.hold_s = float(hold_s)
        self.window_s = float(window_s)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._until: float | None = None
        self._state = NONE
        self.reason = "not pressed"
        self.opened_at: float | None = None     # epoch s the window opened
        self.closed_at: float | None = None     # epoch s it ended or expired
        self.on_change = on_change
        if granted:
            self.grant()

    def how_to(self) -> str:
        """The one instruction every message and the docs give."""
        return (f"power the box on (or re-plug it), wait for the status LED to light "
                f"steadily, then press and hold the pause button for {self.hold_s:g} s "
                f"(within {self.window_s:g} s); the LED then flashes fast")

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:  # noqa: BLE001 - an LED must never break provisioning
                log.exception("presence change hook failed")

    def waiting(self) -> None:
        """The button check has started (the LED lights steadily)."""
        with self._lock:
            self._state = WAITING
        self._changed()

    def deny(self, reason: str) -> None:
        """The check ended without a valid press; ``reason`` says why."""
        with self._lock:
            self._state, self.reason = NONE, reason
        self._changed()

    def grant(self) -> None:
        """Enter provisioning mode now, for ``timeout_s`` seconds."""
        with self._lock:
            self._until = self._clock() + self.timeout_s
            self._state = ACTIVE
            self.opened_at, self.closed_at, self.reason = self._wall(), None, "granted"
        log.info("provisioning mode entered for %.0f s", self.timeout_s)
        self._changed()

    def end(self, why: str = "ended") -> None:
        """Close the window now (``end`` from the engineer, apply done, factory reset)."""
        with self._lock:
            if self._state != ACTIVE:
                return
            self._until = None
            self._state, self.reason, self.closed_at = ENDED, why, self._wall()
        log.info("provisioning mode closed: %s", why)
        self._changed()

    revoke = end

    def state(self) -> str:
        with self._lock:
            if self._state == ACTIVE and self._until is not None \
                    and self._clock() >= self._until:
                self._state, self.reason = EXPIRED, "timed out"
                self.closed_at = (self.opened_at or self._wall()) + self.timeout_s
                self._until = None
                expired = True
            else:
                expired = False
            st = self._state
        if expired:
            self._changed()
        return st

    def active(self) -> bool:
        """True while provisioning mode lasts."""
        return self.state() == ACTIVE

    def remaining_s(self) -> float:
        """Seconds of provisioning mode left; 0 when not in the mode."""
        if not self.active():
            return 0.0
        with self._lock:
            return max(0.0, (self._until or 0.0) - self._clock())

    def describe(self) -> dict:
        """What ``hello`` and ``status`` report about the window."""
        st = self.state()
        return {"active": st == ACTIVE, "state": st, "remaining_s": round(self.remaining_s(), 1),
                "opened_at": _iso(self.opened_at), "closed_at": _iso(self.closed_at),
                "reason": self.reason, "hold_s": self.hold_s, "window_s": self.window_s,
                "timeout_s": self.timeout_s}

    def refusal(self, cmd: str) -> str:
        """Why ``cmd`` is refused now: each state gets its own message."""
        st = self.state()
        if st == EXPIRED:
            return (f"'{cmd}' refused: the provisioning window opened at "
                    f"{_iso(self.opened_at)} expired at {_iso(self.closed_at)} "
                    f"({self.timeout_s / 60:g} min); to open a new one, {self.how_to()}")
        if st == ENDED:
            return (f"'{cmd}' refused: the provisioning window opened at "
                    f"{_iso(self.opened_at)} was closed at {_iso(self.closed_at)} "
                    f"({self.reason}); to open a new one, {self.how_to()}")
        if st == WAITING:
            return (f"'{cmd}' refused: waiting for presence: press and hold the pause "
                    f"button for {self.hold_s:g} s now")
        return (f"'{cmd}' needs provisioning mode ({self.reason}): "
                f"{self.how_to()}")


def button_held(button, *, hold_s: float = DEFAULT_HOLD_S, window_s: float = DEFAULT_WINDOW_S,
                clock: Callable[[], float] = time.monotonic) -> tuple[bool, str]:
    """(True, "held") if a fresh press of ``button`` comes within ``window_s`` and is held
    for ``hold_s`` seconds; else (False, reason).

    ``button`` is a gpiozero ``Button`` (or anything with ``wait_for_press(timeout)``,
    ``wait_for_release(timeout)`` and ``is_pressed``). Only a press edge counts: a
    button pressed when the check starts must be released first, so a stuck button or
    one held through power-on never opens the window.
    """
    t0 = clock()
    if button.is_pressed:
        if not button.wait_for_release(timeout=window_s):
            return False, (f"button held since start-up for {window_s:g} s (stuck?); only "
                           "a fresh press counts")
    left = window_s - (clock() - t0)
    if left <= 0 or not button.wait_for_press(timeout=left):
        return False, f"no press within {window_s:g} s"
    if button.wait_for_release(timeout=hold_s) or not button.is_pressed:
        return False, f"released before {hold_s:g} s"
    return True, "held"


class ButtonUnavailable(LinetapError, RuntimeError):
    """The recorder answered but cannot report the button (why is in the message)."""


class RecorderButton:
    """The pause button as the running recorder sees it, read over its control socket.

    Has the part of gpiozero's ``Button`` that :func:`button_held` uses. Edges are
    taken in the order they happened (numbered by the recorder), so a press and release
    between two requests is seen as both. ``path``: the control socket;
    ``poll_s``: the longest a request waits for an edge (seconds, 0 < poll_s <= 0.5);
    ``ask``: :func:`recorder.runtime.control_client.request` (injectable).
    Raises :class:`RecorderNotRunning` when nobody listens (also from the constructor,
    which reads the state), :class:`ButtonUnavailable` for a refusal and
    :class:`~recorder.errors.ProtocolError` for a garbled answer.
    """

    def __init__(self, path: str | Path, *, poll_s: float = 0.5,
                 ask=control_client.request, clock: Callable[[], float] = time.monotonic):
        self.path, self.poll_s, self._ask, self._clock = path, poll_s, ask, clock
        self._seq: int | None = None
        self._state = False
        self._pending: deque[bool] = deque()
        self._fetch(0.0)

    def _fetch(self, wait_s: float) -> None:
        reply = self._ask(self.path, {"cmd": "button", "after": self._seq,
                                      "wait_s": round(wait_s, 3)}, timeout_s=wait_s + 5.0)
        if not reply.get("ok"):
            raise ButtonUnavailable(f"the recorder cannot report the pause button: "
                                    f"{reply.get('error')}")
        try:
            seq, pressed = int(reply["seq"]), bool(reply["pressed"])
            edges = [bool(p) for _, p in reply["edges"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"recorder's button reply is malformed: {exc}") from None
        if self._seq is None or reply.get("missed"):
            self._pending.clear()
            self._state = pressed
        else:
            self._pending.extend(edges)
        self._seq = seq

    def _wait_for(self, pressed: bool, timeout: float) -> bool:
        deadline = self._clock() + max(0.0, timeout)
        while True:
            if self._state == pressed:
                return True
            if self._pending:
                self._state = self._pending.popleft()
                continue
            left = deadline - self._clock()
            if left <= 0:
                return False
            self._fetch(min(self.poll_s, left))

    def wait_for_press(self, timeout: float) -> bool:
        """True once the button is (or goes) down within ``timeout`` seconds."""
        return self._wait_for(True, timeout)

    def wait_for_release(self, timeout: float) -> bool:
        """True once the button is (or goes) up within ``timeout`` seconds."""
        return self._wait_for(False, timeout)

    @property
    def is_pressed(self) -> bool:
        """Down now (every edge up to now taken)."""
        self._fetch(0.0)
        while self._pending:
            self._state = self._pending.popleft()
        return self._state

    def close(self) -> None:
        """Nothing to release: the recorder keeps the line."""


def open_button(pin: int, *, active_low: bool = True, pin_factory=None,
                recorder_socket: str | Path | None = None):
    """The pause button to watch, and who reads it: ``(button, "recorder")`` when the
    recorder answers on ``recorder_socket``, else ``(button, "gpio")`` with the line
    opened here by gpiozero on BCM ``pin`` (``pin_factory`` None = gpiozero's default;
    tests pass a ``MockFactory``). Raises :class:`ButtonUnavailable` saying why neither
    works."""
    if recorder_socket is not None:
        try:
            return RecorderButton(recorder_socket), "recorder"
        except RecorderNotRunning:
            log.info("recorder not running: reading the pause button on GPIO%d directly", pin)
        except (ButtonUnavailable, ProtocolError) as exc:
            # The recorder runs and holds the line: opening it here would fail too.
            raise ButtonUnavailable(str(exc)) from None
    try:
        from gpiozero import Button
        from gpiozero.exc import GPIOZeroError
    except ImportError:  # pragma: no cover - gpiozero is a dependency
        raise ButtonUnavailable("gpiozero not importable") from None
    try:
        return Button(pin, pull_up=active_low, pin_factory=pin_factory), "gpio"
    except (GPIOZeroError, OSError, RuntimeError) as exc:
        raise ButtonUnavailable(f"cannot read the pause button on GPIO{pin}: {exc}") \
            from None


def check_button(pres: Presence, pin: int, *, active_low: bool = True,
                 pin_factory=None, recorder_socket: str | Path | None = None,
                 on_open: Callable[[str], None] | None = None) -> None:
    """Watch the pause button once and grant or deny ``pres`` (run in a thread).

    The button comes from :func:`open_button` (the running recorder's, or the line
    opened here and closed again afterwards). ``on_open`` is called with who reads it
    (``"recorder"`` or ``"gpio"``) before the watch starts: the agent drives the status
    LED itself only in the second case. If the button cannot be read (not a Pi, pin
    busy, the recorder stopped mid-window) the box stays out of provisioning mode and
    says why.
    """
    try:
        button, owner = open_button(pin, active_low=active_low, pin_factory=pin_factory,
                                    recorder_socket=recorder_socket)
    except ButtonUnavailable as exc:
        log.warning("%s", exc)
        pres.deny(str(exc))
        return
    if on_open is not None:
        on_open(owner)
    pres.waiting()      # the button is being watched now (the LED lights steadily)
    try:
        held, why = button_held(button, hold_s=pres.hold_s, window_s=pres.window_s)
    except (RecorderNotRunning, ButtonUnavailable, ProtocolError) as exc:
        held, why = False, f"the recorder stopped reporting the pause button: {exc}"
    finally:
        button.close()
    log.info("pause button at start: %s", why)
    if held:
        pres.grant()
    else:
        pres.deny(why)


def from_button(pin: int, *, active_low: bool = True, pin_factory=None,
                hold_s: float = DEFAULT_HOLD_S, window_s: float = DEFAULT_WINDOW_S,
                timeout_s: float = DEFAULT_TIMEOUT_S, on_change=None,
                recorder_socket: str | Path | None = None) -> Presence:
    """Check the pause button now (blocking) and return the resulting Presence."""
    pres = Presence(False, timeout_s, hold_s=hold_s, window_s=window_s, on_change=on_change)
    check_button(pres, pin, active_low=active_low, pin_factory=pin_factory,
                 recorder_socket=recorder_socket)
    return pres
