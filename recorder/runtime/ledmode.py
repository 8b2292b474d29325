"""The status LED while the provisioning window is waiting or open.

Patterns (slots of :data:`recorder.runtime.alarms.SLOT_S`, 0.25 s):

* **waiting for a press**: lit steadily (by the recorder, which owns the LED while it
  runs, from the marker below; by the agent itself only when the recorder is not
  running);
* **provisioning mode**: fast flashing, 0.25 s on / 0.25 s off without pause, for as long
  as the window is open. No alarm code looks like it: alarm codes are flash groups
  followed by a dark pause, and the heartbeat is 1 s on / 1 s off;
* **window closed** (end, apply done, timeout): back to the heartbeat or alarm code.

The agent and the recorder are separate processes; the agent writes the marker file
``<data_dir>/run/provisioning-mode.json`` ``{"until_monotonic": T, "mode": M}``
(CLOCK_MONOTONIC is system-wide on Linux; M is ``waiting`` while it watches for the
press, ``provisioning`` while the window is open) and deletes it when the window closes
or the press never came; the recorder's LED tick shows the pattern while the marker is
current.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from recorder.fsutil import atomic_write

log = logging.getLogger(__name__)

MARKER = "run/provisioning-mode.json"


def marker_path(data_dir) -> Path:
    return Path(data_dir) / MARKER


def led_on(slot: int) -> bool:
    """Fast flashing: lit in every other slot."""
    return slot % 2 == 0


WAITING, PROVISIONING = "waiting", "provisioning"


def current_mode(data_dir, now: float | None = None) -> str | None:
    """:data:`WAITING`, :data:`PROVISIONING`, or None when no current marker says
    either (read by the recorder's LED tick; ``now`` in monotonic seconds)."""
    try:
        marker = json.loads(marker_path(data_dir).read_bytes())
        until = float(marker["until_monotonic"])
        mode = marker.get("mode", PROVISIONING)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if (time.monotonic() if now is None else now) >= until:
        return None
    return WAITING if mode == WAITING else PROVISIONING


def mode_active(data_dir, now: float | None = None) -> bool:
    """True while the marker says the window is open (read by the recorder)."""
    return current_mode(data_dir, now) == PROVISIONING


def publish(data_dir, presence) -> None:
    """Write or delete the marker to match ``presence`` (its ``on_change`` hook)."""
    path = marker_path(data_dir)
    if presence.active():
        mode, until = PROVISIONING, time.monotonic() + presence.remaining_s()
    elif presence.state() == "waiting_for_press":
        mode, until = WAITING, time.monotonic() + presence.window_s + presence.hold_s
    else:
        mode = None
    if mode is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"until_monotonic": until, "mode": mode}).encode(),
                     mode=0o644, sync=False)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class AgentLed:
    """The agent's own hold on the status LED during the press window (gpiozero LED)."""

    def __init__(self, pin: int, pin_factory=None):
        from gpiozero import LED
        self.led = LED(pin, pin_factory=pin_factory)

    def show(self, presence) -> None:
        st = presence.state()
        if st == "waiting_for_press":
            self.led.on()
        elif st == "active":
            self.led.blink(on_time=0.25, off_time=0.25)
        else:
            self.led.off()

    def close(self) -> None:
        self.led.close()
