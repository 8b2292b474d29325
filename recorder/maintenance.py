"""The practice's maintenance window: when the box may reboot into an update (pure).

A window is written ``"HH:MM-HH:MM"`` in the box's local time (24-hour clock, start
inclusive, end exclusive) and may span midnight (``"22:00-05:30"``). An empty string
means no window: any time is allowed. ``"00:00-00:00"`` is refused (empty or whole day is
ambiguous; write "" for any time). The config checks it with :func:`parse_window`
(``update.window``); :func:`in_window` is the decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from recorder.errors import ConfigError

_FORM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class Window:
    """Start and end as minutes after local midnight (0..1439 each); start != end."""

    start: int
    end: int


def parse_window(text: str) -> Window | None:
    """The window ``text`` names, None for "" (any time), or :class:`ConfigError`
    naming what is wrong."""
    text = text.strip()
    if not text:
        return None
    m = _FORM.match(text)
    if m is None:
        raise ConfigError(f"maintenance window {text!r} is not HH:MM-HH:MM (24-hour, "
                          "local time, e.g. 01:00-05:00)")
    h1, m1, h2, m2 = map(int, m.groups())
    w = Window(h1 * 60 + m1, h2 * 60 + m2)
    if w.start == w.end:
        raise ConfigError(f"maintenance window {text!r} starts where it ends: write \"\" "
                          "to allow any time")
    return w


def in_window(window: Window | None, minute_of_day: int) -> bool:
    """Whether ``minute_of_day`` (0..1439, local time) is inside ``window``; always true
    without one. A window whose end is before its start runs over midnight."""
    if window is None:
        return True
    m = minute_of_day % MINUTES_PER_DAY
    if window.start < window.end:
        return window.start <= m < window.end
    return m >= window.start or m < window.end
