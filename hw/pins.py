"""The pin map: which BCM GPIO does what. Kept here, and only here, as data.

See ``hw/README.md`` for the line-interface circuit behind each pin.
"""

from __future__ import annotations

from dataclasses import dataclass

from recorder.config import PinsConfig


@dataclass(frozen=True)
class PinMap:
    """BCM pin numbers. Inputs are opto-isolator outputs; ``active_low`` is their polarity."""

    hook: tuple[int, ...]
    ring: tuple[int, ...]
    pause_button: int
    rec_led: tuple[int, ...]
    status_led: int
    active_low: bool = True

    @classmethod
    def from_config(cls, pins: PinsConfig, lines: int) -> PinMap:
        return cls(hook=tuple(pins.hook[:lines]), ring=tuple(pins.ring[:lines]),
                   pause_button=pins.pause_button, rec_led=tuple(pins.rec_led[:lines]),
                   status_led=pins.status_led, active_low=pins.active_low)

    def all_inputs(self) -> list[int]:
        return [*self.hook, *self.ring, self.pause_button]


DEFAULT = PinMap.from_config(PinsConfig(), 4)
