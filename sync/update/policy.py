"""When may the box reboot into an installed update? Pure decisions, table-tested.

Never mid-call: the box reboots only when every line is idle, inside the practice's
maintenance window when one is set (``update.window``, :mod:`recorder.maintenance`),
and only after a countdown (``update.countdown_s``) during which no call started. A call
that starts during the countdown cancels it; the countdown starts again from zero once
the lines are idle again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Line phases (recorder/calls/state.py) in which nothing is happening on the line.
IDLE_PHASES = frozenset({"idle"})


def lines_idle(lines: list[dict]) -> bool:
    """Whether every line in the recorder's status is idle: on hook, not ringing, no call
    open. ``lines`` is ``status()["lines"]``; an empty list (the recorder did not say)
    is not idle, because a box that cannot see its lines cannot promise silence."""
    if not lines:
        return False
    return all(ln.get("state") in IDLE_PHASES and ln.get("hook") == "on"
               and not ln.get("ringing") and ln.get("call") is None for ln in lines)


class Step(enum.Enum):
    WAIT_CALL = "wait for the lines to be idle"
    WAIT_WINDOW = "wait for the maintenance window"
    START = "start the countdown"
    COUNTING = "keep counting down"
    CANCEL = "a call started: cancel the countdown"
    REBOOT = "reboot now"


@dataclass(frozen=True)
class Countdown:
    """``started`` is when the countdown began (monotonic seconds) or None;
    ``length_s`` how long the lines must stay idle (seconds)."""

    started: float | None
    length_s: float


def reboot_step(cd: Countdown, now: float, idle: bool, in_window: bool) -> Step:
    """The next step towards the reboot (pure). ``now`` is monotonic seconds, ``idle``
    from :func:`lines_idle`, ``in_window`` from :func:`recorder.maintenance.in_window`."""
    if cd.started is not None:
        if not idle:
            return Step.CANCEL
        if not in_window:
            return Step.CANCEL
        return Step.REBOOT if now - cd.started >= cd.length_s else Step.COUNTING
    if not in_window:
        return Step.WAIT_WINDOW
    if not idle:
        return Step.WAIT_CALL
    return Step.START
