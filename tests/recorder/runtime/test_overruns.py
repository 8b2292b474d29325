"""Overruns can happen in simulation, as on a Pi, and are never silent.

A free-running simulated card (``linetap simulate --realtime``) never waits for the
daemon: a stalled call processor is lapped in the ring, and a stalled capture thread
loses periods to an xrun. Both are counted and raise ``capture_overruns``; the frames
the card dropped are a gap in the call's metadata, and later times stay true.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from recorder import config
from recorder.runtime import simulate
from recorder.timebase import parse_iso

# Slow (`make test-fast` leaves it out): real-time runs with a stalled thread.
pytestmark = pytest.mark.slow

RATE, PERIOD = 8000, 400
START = "2026-11-25T09:00:00Z"


def _run(sim, events, duration, before_start, **over):
    sc = sim.scenario(events, duration)
    cfg = simulate.sim_config(config.Config(), sc, str(sim.data), str(sim.pub))
    cfg = cfg.replace(audio__period_frames=PERIOD, **over)
    return simulate.run(sc, cfg, speed=2.0, free_running=True, before_start=before_start)


def _stall_once(obj, name: str, when, seconds: float) -> threading.Event:
    """Make ``obj.name`` (a method or the hardware's pacer) block for ``seconds`` of
    wall time the first time ``when(*args)`` holds. Returns an Event set once it has."""
    real, done = getattr(obj, name), threading.Event()

    def stalled(*args):
        if not done.is_set() and when(*args):
            time.sleep(seconds)
            done.set()
        return real(*args)
    setattr(obj, name, stalled)
    return done


def test_a_stalled_processor_is_lapped_counted_and_alarmed(sim):
    """The calls thread blocks for 4 s of wall time (8 s of line at 2x) with a 5 s ring:
    the card goes on, the ring is lapped, and the overrun is counted, alarmed and left
    as a gap in the call. (In lockstep the line would have waited: nothing lost.)"""
    stalled = {}

    def hook(daemon, _line):
        calls_loop = daemon._calls_loop      # the processor exists once the daemon starts

        def stalled_loop():
            stalled["done"] = _stall_once(daemon.processor, "process",
                                          lambda upto: upto >= 2 * RATE, 4.0)
            calls_loop()
        daemon._calls_loop = stalled_loop

    res = _run(sim, [{"at": 0.0, "line": 0, "type": "tone", "hz": 600, "duration": 18},
                     {"at": 1.0, "line": 0, "type": "offhook"},
                     {"at": 17.0, "line": 0, "type": "onhook"}], 18.0, hook,
               audio__ring_s=5.0)
    assert stalled["done"].is_set()
    assert res.status["overruns"]["consumer"] >= 1
    assert res.status["alarms"]["capture_overruns"]["count"] >= 1
    calls, failures = sim.export()
    assert failures == 0
    (meta, pcm), = calls.values()
    assert meta["gaps"], meta
    assert all(g["frames"] == g["end_sample"] - g["start_sample"] > 0 for g in meta["gaps"])
    # The call keeps its true length: the lost audio is silence, not cut out.
    assert len(pcm) == (17.0 - 0.5) * RATE


def test_an_xrun_is_a_gap_of_the_right_length_and_later_times_stay_true(sim):
    """The capture thread is held for 1 s of wall time (2 s of line): the card keeps
    4 periods and drops the rest. The call lists exactly the spans the card dropped
    (where and how long), and a tone played after the gap is found in the recording
    within one period of its true line time (without the gap on the sample clock it
    would be 1.8 s early). A loaded machine may add short xruns of its own; they are
    listed the same way."""
    held = {}

    def hook(daemon, line):
        held["line"] = line
        held["done"] = _stall_once(daemon.hw, "pacer",
                                   lambda wanted: wanted >= 3 * RATE, 1.0)

    tone_at = 6.0
    res = _run(sim, [{"at": 1.0, "line": 0, "type": "offhook"},
                     {"at": tone_at, "line": 0, "type": "tone", "hz": 1000, "duration": 2.0},
                     {"at": 9.0, "line": 0, "type": "onhook"}], 10.0, hook)
    line = held["line"]
    assert held["done"].is_set()
    assert res.status["overruns"]["alsa_xruns"] == line.xruns >= 1
    assert res.status["alarms"]["capture_overruns"]["count"] >= 1
    calls, failures = sim.export()
    assert failures == 0
    (meta, pcm), = calls.values()
    first, end = meta["first_sample"], meta["first_sample"] + len(pcm)
    dropped = [[max(a, first), min(b, end)] for a, b in line.drops if a < end and b > first]
    assert [[g["start_sample"], g["end_sample"]] for g in meta["gaps"]] == dropped
    assert all(g["frames"] == g["end_sample"] - g["start_sample"] for g in meta["gaps"])
    # The held reader stopped at 3 s; the card kept 4 periods, then dropped 1.8 s or so.
    # Where the drop starts after 3 s depends on how far the reader got before the hold
    # took it (scheduling: 3.35 s seen at load 14), so only the lower end is a rule; the
    # exact span is the card's own record, compared above.
    big = max(meta["gaps"], key=lambda g: g["frames"])
    assert big["frames"] >= RATE
    assert big["start_sample"] >= 3 * RATE
    tone = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 1000)[0]
    heard = parse_iso(meta["start"]) + tone / RATE - parse_iso(START)
    assert abs(heard - tone_at) <= PERIOD / RATE, heard
    assert len(pcm) == (9.0 - 0.5) * RATE                    # true length, gaps as silence


def test_a_free_running_line_needs_a_speed(sim):
    from hw.errors import SimulationError
    sc = sim.scenario([], 1.0)
    cfg = simulate.sim_config(config.Config(), sc, str(sim.data), str(sim.pub))
    with pytest.raises(SimulationError, match="needs a speed"):
        simulate.run(sc, cfg, speed=0.0, free_running=True)
