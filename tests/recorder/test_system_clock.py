"""The system clock: synchronisation as the kernel reports it, re-anchoring, metadata."""

from __future__ import annotations

import pytest

from recorder.timebase import TIME_ERROR, Timebase, clock_synchronised


def _raise():
    raise OSError(1, "not permitted")


@pytest.mark.parametrize("state,ok", [
    (lambda: 0, True), (lambda: 1, True), (lambda: 4, True),
    (lambda: TIME_ERROR, False), (lambda: -1, False), (_raise, False),
])
def test_clock_synchronised_follows_the_kernel(state, ok):
    assert clock_synchronised(adjtimex=state) is ok


def test_real_adjtimex_answers():
    assert clock_synchronised() in (True, False)


def test_resync_moves_labels_not_samples():
    tb = Timebase(8000, epoch0=0.0, synchronised=False)     # an RTC-less boot at 1970
    before = tb.epoch(80000)
    assert before == 10.0
    step = tb.resync(frames_now=160000, wall_now=1_795_000_000.0)
    assert tb.synchronised
    assert tb.epoch(160000) == 1_795_000_000.0
    assert step == pytest.approx(1_795_000_000.0 - 20.0)
    # sample spacing is untouched: a call 80000 samples long is still 10 s long
    assert tb.epoch(240000) - tb.epoch(160000) == 10.0


def test_unsynchronised_clock_is_noted_in_every_call(sim):
    def unsync(daemon, _line):
        daemon.hw.timebase.synchronised = False

    from hw import scenario as scen  # noqa: F401 - keeps the import graph as in production
    from recorder import config, simulate
    sc = sim.scenario([{"at": 1.0, "line": 0, "type": "offhook"},
                       {"at": 5.0, "line": 0, "type": "onhook"},
                       {"at": 6.0, "line": 0, "type": "ring", "until": 14.0}], duration=16)
    cfg = simulate.sim_config(config.Config(), sc, str(sim.data), str(sim.pub))
    simulate.run(sc, cfg.replace(audio__period_frames=400), before_start=unsync)
    rows = sim.store().calls()
    assert [r.state for r in rows] == ["closed", "missed"]
    assert all(r.meta["clock_synchronised"] is False for r in rows)
    calls, _ = sim.export()
    (meta, _pcm), = calls.values()
    assert meta["clock_synchronised"] is False
