"""The pause button's press and release edges, numbered, for the provisioning agent.

While the recorder runs it owns every GPIO line, the pause button's included. The
provisioning agent's presence check (a fresh press held for 5 s, :mod:`provisioning.presence`)
therefore asks the recorder for the button's edges over the control socket
(``{"cmd": "button", "after": N, "wait_s": S}``) instead of opening the line itself, so
the recorder never has to wait for the agent at boot. Only when the recorder is not
running does the agent open the line itself.

Edges are numbered from 1 in the order they happened; the agent passes the last number
it has seen and gets the ones after it, so none is missed between two requests.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

KEEP = 256          # edges kept; a poll every 0.5 s needs a handful
MAX_WAIT_S = 0.5    # the control socket serves one request at a time: never block it long


@dataclass(frozen=True)
class EdgeReport:
    """What the recorder answers: ``seq`` the number of the last edge (0: none yet),
    ``pressed`` the button's state now, ``edges`` the ``(seq, pressed)`` pairs after the
    number asked for, oldest first, and ``missed`` True when some of those were already
    dropped (more than :data:`KEEP` since) or the number is from before the recorder
    restarted: ``pressed`` is then the truth."""

    seq: int
    pressed: bool
    edges: tuple[tuple[int, bool], ...]
    missed: bool = False

    def as_dict(self) -> dict:
        return {"seq": self.seq, "pressed": self.pressed,
                "edges": [list(e) for e in self.edges], "missed": self.missed}


class ButtonEdges:
    """Thread-safe log of the button's edges: :meth:`record` from the GPIO callback
    thread, :meth:`since` from the control socket's thread."""

    def __init__(self, pressed: bool = False, keep: int = KEEP):
        self._cond = threading.Condition()
        self._seq = 0
        self._pressed = bool(pressed)
        self._edges: deque[tuple[int, bool]] = deque(maxlen=keep)

    def record(self, pressed: bool) -> None:
        """The button went down (True) or up (False); a repeat of the state is ignored."""
        with self._cond:
            if bool(pressed) == self._pressed:
                return
            self._seq += 1
            self._pressed = bool(pressed)
            self._edges.append((self._seq, self._pressed))
            self._cond.notify_all()

    def since(self, after: int | None, wait_s: float = 0.0) -> EdgeReport:
        """The edges numbered above ``after`` (None: none, just the state now), waiting
        up to ``wait_s`` seconds (0 to :data:`MAX_WAIT_S`) for one if there is none yet."""
        wait_s = min(max(float(wait_s), 0.0), MAX_WAIT_S)
        with self._cond:
            if after is not None and wait_s > 0:
                self._cond.wait_for(lambda: self._seq > after, timeout=wait_s)
            if after is None:
                return EdgeReport(self._seq, self._pressed, ())
            new = tuple(e for e in self._edges if e[0] > after)
            oldest = new[0][0] if new else self._seq + 1
            # A number above ours comes from before a restart of the recorder.
            return EdgeReport(self._seq, self._pressed, new,
                              missed=oldest > after + 1 or after > self._seq)
