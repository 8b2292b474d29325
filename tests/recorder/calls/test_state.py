"""Table tests of the pure call and pause decisions (samples at 8 kHz)."""

from __future__ import annotations

import pytest

from recorder.calls import state as cs
from recorder.config import PauseConfig, TimingConfig

T = cs.Timing.from_config(TimingConfig(), 8000)   # debounce 200, hangup 4000
PT = cs.PauseTiming.from_config(PauseConfig(), 8000)


def run(events, end):
    st, out = cs.LineState(), []
    for ev in events:
        st, acts = cs.step(st, ev, T)
        out += acts
    st, acts = cs.tick(st, end, T)
    return st, out + acts


def ring_burst(start, pulses=10):
    return [cs.RingPulse(start + i * 320) for i in range(pulses)]


@pytest.mark.parametrize("name,events,end,expect", [
    ("outbound call", [cs.Hook(1000, True), cs.Hook(50000, False)], 60000,
     [cs.CallStart(1000, "outbound", None), cs.CallEnd(50000, "hangup")]),
    ("debounce swallows a 10 ms blip", [cs.Hook(1000, True), cs.Hook(1080, False)], 9000,
     []),
    ("hook bounce settles: call starts at the first edge of the stable level",
     [cs.Hook(1000, True), cs.Hook(1050, False), cs.Hook(1100, True)], 9000,
     [cs.CallStart(1100, "outbound", None)]),
    ("hook flash (0.3 s) never ends a call",
     [cs.Hook(1000, True), cs.Hook(20000, False), cs.Hook(22400, True),
      cs.Hook(50000, False)], 60000,
     [cs.CallStart(1000, "outbound", None), cs.Flash(20000, 2400),
      cs.CallEnd(50000, "hangup")]),
    ("break of exactly hangup_s ends the call",
     [cs.Hook(1000, True), cs.Hook(20000, False), cs.Hook(24000, True)], 30000,
     [cs.CallStart(1000, "outbound", None), cs.CallEnd(20000, "hangup"),
      cs.CallStart(24000, "outbound", None)]),
    ("answered ring is inbound", [*ring_burst(0), cs.Hook(20000, True),
                                  cs.Hook(90000, False)], 100000,
     [cs.RingStart(0), cs.CallStart(20000, "inbound", 0), cs.CallEnd(90000, "hangup")]),
    ("ring never answered is a missed call", ring_burst(0), 100000,
     [cs.RingStart(0), cs.Missed(0, 2880)]),
    ("two stray pulses are not ringing", [cs.RingPulse(0), cs.RingPulse(320)], 100000, []),
])
def test_line_table(name, events, end, expect):
    _st, acts = run(events, end)
    assert acts == expect, name


def test_stuck_off_hook_rolls_over():
    t = cs.Timing(200, 4000, 1600, 3, 48000, 80000)
    st, acts = cs.LineState(), []
    for ev in [cs.Hook(1000, True), cs.Tick(100000), cs.Tick(200000)]:
        st, a = cs.step(st, ev, t)
        acts += a
    assert acts == [cs.CallStart(1000, "outbound", None),
                    cs.StuckOffHook(81000), cs.CallEnd(81000, "max_call"),
                    cs.CallStart(81000, "outbound", None, rollover=True),
                    cs.StuckOffHook(161000), cs.CallEnd(161000, "max_call"),
                    cs.CallStart(161000, "outbound", None, rollover=True)]


def press(state, s, lines, hold):
    out = []
    state, a = cs.button_step(state, "press", s, lines, PT)
    out += a
    state, a = cs.button_step(state, "tick", s + hold, lines, PT)
    out += a
    state, a = cs.button_step(state, "release", s + hold, lines, PT)
    return state, out + a


@pytest.mark.parametrize("name,presses,lines,expect", [
    ("short press pauses every active call", [(1000, 800)], [0, 1],
     [cs.PauseStart(0, 1000), cs.PauseStart(1, 1000)]),
    ("second short press resumes at its release", [(1000, 800), (40000, 800)], [0],
     [cs.PauseStart(0, 1000), cs.PauseEnd(0, 40800, "button")]),
    ("long press ends recording from the press", [(1000, 16000)], [0],
     [cs.PauseStart(0, 1000), cs.RecordingEnded(0, 1000)]),
    ("long press while paused ends recording", [(1000, 800), (40000, 16000)], [0],
     [cs.PauseStart(0, 1000), cs.RecordingEnded(0, 40000)]),
    ("no active call, nothing happens", [(1000, 800)], [], []),
])
def test_button_table(name, presses, lines, expect):
    st, acts = cs.ButtonState(), []
    for s, hold in presses:
        st, a = press(st, s, lines, hold)
        acts += a
    assert acts == expect, name


def test_button_mapped_to_one_line():
    pt = cs.PauseTiming(16000, 0, (1,))
    st, acts = cs.button_step(cs.ButtonState(), "press", 10, [0, 1], pt)
    assert acts == [cs.PauseStart(1, 10)]


def test_pause_times_out_after_pause_max():
    st, acts = press(cs.ButtonState(), 1000, [0], 800)
    st, more = cs.button_step(st, "tick", 1000 + PT.max_pause + 5, [0], PT)
    assert more == [cs.PauseEnd(0, 1000 + PT.max_pause, "timeout")]
