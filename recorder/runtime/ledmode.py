"""The status LED while the provisioning window is waiting or open.

Patterns (slots of :data:`recorder.runtime.alarms.SLOT_S`, 0.25 s):

* **waiting for a press**: lit steadily (the agent drives the LED itself, before the
  recorder starts and claims the pin);
* **provisioning mode**: fast flashing, 0.25 s on / 0.25 s off without pause, for as long
  as the window is open. No alarm code looks like it: alarm codes are flash groups
  followed by a dark pause, and the heartbeat is 1 s on / 1 s off;
* **window closed** (end, apply done, timeout): back to the heartbeat or alarm code.

The agent and the recorder are separate processes; the agent writes the marker file
``<data_dir>/run/provisioning-mode.json`` ``{"until_monotonic": T}`` (CLOCK_MONOTONIC is
system-wide on Linux) while the window is open and deletes it when it closes, and the
recorder's LED tick shows the fast pattern while the marker is current.
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


def mode_active(data_dir, now: float | None = None) -> bool:
    """True while the marker says the window is open (read by the recorder)."""
    try:
        until = float(json.loads(marker_path(data_dir).read_bytes())["until_monotonic"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (time.monotonic() if now is None else now) < until


def publish(data_dir, presence) -> None:
    """Write or delete the marker to match ``presence`` (its ``on_change`` hook)."""
    path = marker_path(data_dir)
    if presence.active():
        path.parent.mkdir(parents=True, exist_ok=True)
        until = time.monotonic() + presence.remaining_s()
        atomic_write(path, json.dumps({"until_monotonic": until}).encode(), mode=0o644,
                     sync=False)
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
