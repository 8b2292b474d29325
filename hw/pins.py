"""The pin map: which BCM GPIO does what. Kept here, and only here, as data.

See ``hw/README.md`` for the line-interface circuit behind each pin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class PinSettings(Protocol):
    """What :meth:`PinMap.from_config` reads: the ``[pins]`` section of the box's config."""

    hook: list[int]
    ring: list[int]
    pause_button: int
    rec_led: list[int]
    status_led: int
    active_low: bool


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
    def from_config(cls, pins: PinSettings, lines: int) -> PinMap:
        return cls(hook=tuple(pins.hook[:lines]), ring=tuple(pins.ring[:lines]),
                   pause_button=pins.pause_button, rec_led=tuple(pins.rec_led[:lines]),
                   status_led=pins.status_led, active_low=pins.active_low)

    def all_inputs(self) -> list[int]:
        return [*self.hook, *self.ring, self.pause_button]


#: The line-interface board's wiring (hw/README.md), for up to 4 lines. The config's
#: ``[pins]`` defaults are taken from here.
DEFAULT = PinMap(hook=(17, 27, 22, 23), ring=(24, 25, 5, 6), pause_button=16,
                 rec_led=(12, 13, 19, 26), status_led=4, active_low=True)
