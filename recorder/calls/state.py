"""Call and pause decisions as pure functions on the sample clock.

Nothing here does I/O or reads a clock: every input carries its sample index, and
:func:`step` / :func:`button_step` return a new state plus the actions that follow.
The daemon feeds edges in sample order and a ``tick`` whenever audio advances.

Line rules (docs/architecture.md, "Time"):

* Hook edges are debounced: a level counts only once it has held for ``debounce``
  samples, and then it counts *from its first edge*, so call times are sample-exact.
* A debounced on-hook shorter than ``hangup`` is a hook flash, recall or dial pulse and
  never ends a call; the call ends at the on-hook edge once the break reaches ``hangup``.
* Ringing is detected by counting ring-opto pulses in a sliding window, not by
  debouncing them. Ringing that stops for ``ring_end`` samples without an answer is a
  missed call.
* Off-hook while ringing is an inbound answer; off-hook from idle is outbound.
* A call reaching ``max_call`` samples raises the stuck-off-hook alarm and rolls over
  into a new call linked to the first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from recorder.config import PauseConfig, TimingConfig

# -- inputs ---------------------------------------------------------------------------


class Hook(NamedTuple):
    sample: int
    off: bool        # True = off-hook (loop current flowing)


class RingPulse(NamedTuple):
    sample: int      # rising edge of one ring-opto pulse


class Tick(NamedTuple):
    sample: int      # audio has been captured up to here


# -- actions --------------------------------------------------------------------------


class RingStart(NamedTuple):
    sample: int


class Missed(NamedTuple):
    ring_start: int
    ring_end: int


class CallStart(NamedTuple):
    sample: int            # the off-hook edge
    direction: str         # "inbound" | "outbound"
    ring_start: int | None
    rollover: bool = False  # continues a call that reached max_call


class CallEnd(NamedTuple):
    sample: int            # the on-hook edge (or the rollover point)
    reason: str            # "hangup" | "max_call"


class Flash(NamedTuple):
    sample: int
    length: int            # samples on-hook


class StuckOffHook(NamedTuple):
    sample: int


@dataclass(frozen=True)
class Timing:
    """Line timing in samples, from :class:`~recorder.config.TimingConfig` at ``rate``."""

    debounce: int
    hangup: int
    ring_window: int
    ring_min_pulses: int
    ring_end: int
    max_call: int

    @classmethod
    def from_config(cls, t: TimingConfig, rate: int) -> Timing:
        return cls(debounce=round(t.debounce_s * rate), hangup=round(t.hangup_s * rate),
                   ring_window=round(t.ring_window_s * rate),
                   ring_min_pulses=t.ring_min_pulses, ring_end=round(t.ring_end_s * rate),
                   max_call=round(t.max_call_s * rate))

    @property
    def decision_lag(self) -> int:
        """Samples by which a call end can be decided after its edge."""
        return self.debounce + self.hangup


@dataclass(frozen=True)
class LineState:
    phase: str = "idle"                 # idle | ringing | offhook
    raw_off: bool = False               # last raw hook level
    raw_since: int = 0                  # sample of the last raw hook edge
    off: bool = False                   # debounced hook level
    pulses: tuple[int, ...] = ()        # ring pulses inside the window
    ring_start: int | None = None
    last_ring: int | None = None
    call_start: int | None = None
    segment_start: int | None = None    # start of the current call part (rollover)
    direction: str | None = None
    onhook_at: int | None = None        # pending hang-up: debounced on-hook edge


def step(state: LineState, event, t: Timing) -> tuple[LineState, list]:
    """Apply one input to one line. Inputs must arrive in non-decreasing sample order."""
    state, actions = _advance(state, event.sample, t)
    if isinstance(event, Hook):
        if event.off != state.raw_off:
            state = replace(state, raw_off=event.off, raw_since=event.sample)
            # A debounce of zero samples accepts the edge at once.
            state, more = _advance(state, event.sample, t)
            actions += more
    elif isinstance(event, RingPulse):
        s = event.sample
        pulses = tuple(p for p in state.pulses if s - p < t.ring_window) + (s,)
        state = replace(state, pulses=pulses, last_ring=s)
        if state.phase == "idle" and len(pulses) >= t.ring_min_pulses:
            state = replace(state, phase="ringing", ring_start=pulses[0])
            actions.append(RingStart(pulses[0]))
    return state, actions


def _advance(state: LineState, now: int, t: Timing) -> tuple[LineState, list]:
    """Resolve every decision that is due by sample ``now``."""
    actions: list = []
    if state.raw_off != state.off and now - state.raw_since >= t.debounce:
        state, acts = _debounced(replace(state, off=state.raw_off), state.raw_since,
                                 state.raw_off, t)
        actions += acts
    if state.onhook_at is not None and now - state.onhook_at >= t.hangup:
        actions.append(CallEnd(state.onhook_at, "hangup"))
        state = replace(state, phase="idle", onhook_at=None, call_start=None,
                        segment_start=None, direction=None, ring_start=None, pulses=())
    if state.phase == "ringing" and state.last_ring is not None \
            and now - state.last_ring >= t.ring_end:
        actions.append(Missed(state.ring_start, state.last_ring))
        state = replace(state, phase="idle", ring_start=None, pulses=())
    if state.phase == "offhook" and state.onhook_at is None \
            and state.segment_start is not None \
            and now - state.segment_start >= t.max_call:
        at = state.segment_start + t.max_call
        actions += [StuckOffHook(at), CallEnd(at, "max_call"),
                    CallStart(at, state.direction, None, rollover=True)]
        state = replace(state, segment_start=at)
    return state, actions


def _debounced(state: LineState, at: int, off: bool, t: Timing) -> tuple[LineState, list]:
    if off:
        if state.phase == "offhook" and state.onhook_at is not None:
            flash = Flash(state.onhook_at, at - state.onhook_at)
            return replace(state, onhook_at=None), [flash]
        if state.phase in ("idle", "ringing"):
            direction = "inbound" if state.phase == "ringing" else "outbound"
            st = replace(state, phase="offhook", call_start=at, segment_start=at,
                         direction=direction, pulses=())
            return st, [CallStart(at, direction, state.ring_start)]
        return state, []
    if state.phase == "offhook" and state.onhook_at is None:
        return replace(state, onhook_at=at), []
    return state, []


def tick(state: LineState, sample: int, t: Timing) -> tuple[LineState, list]:
    return step(state, Tick(sample), t)


# -- the pause button -----------------------------------------------------------------


class PauseStart(NamedTuple):
    line: int
    sample: int


class PauseEnd(NamedTuple):
    line: int
    sample: int
    reason: str            # "button" | "timeout"


class RecordingEnded(NamedTuple):
    line: int
    sample: int            # the press that ended it (a long press)


@dataclass(frozen=True)
class ButtonState:
    pressed_at: int | None = None
    long_done: bool = False
    targets: tuple[int, ...] = ()            # lines this press acts on
    was_paused: tuple[int, ...] = ()         # of those, lines paused before the press
    paused: tuple[tuple[int, int], ...] = ()  # (line, paused since)
    ended: tuple[int, ...] = ()              # lines whose recording was ended


@dataclass(frozen=True)
class PauseTiming:
    end_hold: int          # samples
    max_pause: int         # samples; 0 = no limit
    lines: tuple[int, ...]  # lines the button acts on; () = every active call

    @classmethod
    def from_config(cls, p: PauseConfig, rate: int) -> PauseTiming:
        return cls(round(p.end_hold_s * rate), round(p.max_s * rate), tuple(p.button_lines))


def button_step(state: ButtonState, kind: str, sample: int, active_lines, pt: PauseTiming
                ) -> tuple[ButtonState, list]:
    """One button input: ``kind`` is 'press', 'release' or 'tick'.

    ``active_lines`` are the lines with a call in progress at ``sample``. A short press
    toggles pause on the lines it maps to (pausing at the press, resuming at the
    release); a press held for ``end_hold`` ends recording for the rest of the call
    from the press onward. A pause ends by itself after ``max_pause``.
    """
    actions: list = []
    state, acts = _button_due(state, sample, pt)
    actions += acts
    paused = dict(state.paused)
    if kind == "press" and state.pressed_at is None:
        targets = tuple(ln for ln in sorted(active_lines)
                        if (not pt.lines or ln in pt.lines) and ln not in state.ended)
        was = tuple(ln for ln in targets if ln in paused)
        for ln in targets:
            if ln not in paused:
                paused[ln] = sample
                actions.append(PauseStart(ln, sample))
        state = replace(state, pressed_at=sample, long_done=False, targets=targets,
                        was_paused=was, paused=tuple(sorted(paused.items())))
    elif kind == "release" and state.pressed_at is not None:
        if not state.long_done:
            for ln in state.was_paused:
                if ln in paused:
                    del paused[ln]
                    actions.append(PauseEnd(ln, sample, "button"))
        state = replace(state, pressed_at=None, long_done=False, targets=(), was_paused=(),
                        paused=tuple(sorted(paused.items())))
    return state, actions


def _button_due(state: ButtonState, now: int, pt: PauseTiming) -> tuple[ButtonState, list]:
    if (state.pressed_at is None or state.long_done) and not (pt.max_pause and state.paused):
        return state, []             # nothing can be due (the common case, every period)
    actions: list = []
    paused = dict(state.paused)
    ended = set(state.ended)
    if state.pressed_at is not None and not state.long_done \
            and now - state.pressed_at >= pt.end_hold:
        for ln in state.targets:
            actions.append(RecordingEnded(ln, state.pressed_at))
            ended.add(ln)
            paused.pop(ln, None)
        state = replace(state, long_done=True)
    if pt.max_pause:
        for ln, since in list(paused.items()):
            if now - since >= pt.max_pause:
                del paused[ln]
                actions.append(PauseEnd(ln, since + pt.max_pause, "timeout"))
    return replace(state, paused=tuple(sorted(paused.items())),
                   ended=tuple(sorted(ended))), actions


def button_call_ended(state: ButtonState, line: int) -> ButtonState:
    """Forget the pause and end-of-recording of ``line`` when its call ends."""
    return replace(state, paused=tuple(p for p in state.paused if p[0] != line),
                   ended=tuple(x for x in state.ended if x != line),
                   targets=tuple(x for x in state.targets if x != line),
                   was_paused=tuple(x for x in state.was_paused if x != line))
