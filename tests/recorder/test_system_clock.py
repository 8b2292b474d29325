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
    assert clock_synchronised(adjtimex=state, markers=()) is ok


def test_real_adjtimex_answers():
    """The ctypes call into the kernel works on this machine: it returns a clock state
    (TIME_OK 0 .. TIME_ERROR 5), not an error, and the check follows that state."""
    from recorder.timebase import _adjtimex
    state = _adjtimex()
    assert 0 <= state <= TIME_ERROR
    assert clock_synchronised(adjtimex=lambda: state) is (state != TIME_ERROR)


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
        daemon.hw.line_timebase.synchronised = False

    from hw import scenario as scen  # noqa: F401 - keeps the import graph as in production
    from recorder import config
    from recorder.runtime import simulate
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


def test_rtc_less_boot_calls_are_restamped_and_never_expired_early(sim):
    """A box boots at 1970 (no RTC, no NTP yet), records, then NTP synchronises: calls
    already made move to the true time, keep clock_synchronised false, and retention
    never treats their 1970 deadlines as passed."""
    import threading

    from recorder import config
    from recorder.runtime import simulate
    from recorder.storage.retention.service import Retention
    from recorder.timebase import parse_iso
    true_start = parse_iso("2026-11-25T09:00:00Z")

    def rtc_less(daemon, _line):
        daemon.hw.line_timebase.epoch0, daemon.hw.line_timebase.synchronised = 0.0, False
        line_pacer, synced = daemon.hw.pacer, threading.Event()

        def pacer(wanted: int) -> bool:
            # NTP synchronises at line time 12 s, between the second call's start (8 s)
            # and the third's (22 s). Done on the capture thread, before its next read,
            # so the point does not depend on how fast the machine runs the simulation.
            if not synced.is_set() and daemon.ring.written >= 12 * 8000:
                synced.set()
                daemon.clock_synced(true_start + daemon.ring.written / 8000)
            return line_pacer(wanted)
        daemon.hw.pacer = pacer

    sc = sim.scenario([{"at": 1.0, "line": 0, "type": "offhook"},
                       {"at": 5.0, "line": 0, "type": "onhook"},
                       {"at": 8.0, "line": 0, "type": "offhook"},
                       {"at": 20.0, "line": 0, "type": "onhook"},
                       {"at": 22.0, "line": 0, "type": "offhook"},
                       {"at": 26.0, "line": 0, "type": "onhook"}], duration=28)
    cfg = simulate.sim_config(config.Config(), sc, str(sim.data), str(sim.pub))
    simulate.run(sc, cfg.replace(audio__period_frames=400), before_start=rtc_less)
    store = sim.store()
    rows = store.calls()
    assert len(rows) == 3
    for r in rows:
        assert abs(r.offhook_time - (true_start + r.offhook_sample / 8000)) < 1e-3, r.id
        assert r.deadline > true_start                       # not 1970 + 90 days
    first, second, third = rows
    assert first.meta["clock_synchronised"] is False and first.meta["clock_corrected_s"]
    assert second.meta["clock_synchronised"] is False      # began before the sync
    assert third.meta["clock_synchronised"] is True and third.meta["clock_corrected_s"] is None
    calls, failures = sim.export()
    assert failures == 0                                   # re-signed manifests verify
    meta = next(m for m, _ in calls.values() if m["call_id"] == first.id)
    assert meta["offhook"] == "2026-11-25T09:00:01.000Z"
    # An un-re-stamped unsynchronised call has no deadline retention could act on.
    C = store.m.Call
    C.update(meta={**first.meta, "clock_corrected_s": None}).where(C.id == first.id).execute()
    views = {v.id: v for v in Retention(store, sim.data, cfg).views()}
    assert views[first.id].deadline is None and views[third.id].deadline is not None


def test_the_writer_reanchors_in_queue_order(tmp_path, practice_keys):
    """Jobs queued before the sync were stamped with the old anchor and are moved by the
    step; jobs queued after it are stamped with the new anchor and are not moved again
    (re-anchoring outside the queue moved a call still queued twice)."""
    from recorder.calls.jobs import CallInfo, CloseCall, OpenCall
    from recorder.evidence import keys
    from recorder.storage.store import Store
    from recorder.storage.writer import Restamp, Writer
    data = tmp_path / "data"
    tb = Timebase(8000, epoch0=0.0, synchronised=False)          # booted at 1970
    w = Writer(Store(data), device="dev-c", rate=8000, codec_name="flac",
               aead="chacha20poly1305", public_key=keys.load_practice_public(practice_keys[1]),
               identity=keys.ensure_identity(data, first_start=True), timebase=tb,
               retention_s=86400)
    true0 = 1_795_000_000.0
    a = CallInfo(id="A", line=0, direction="inbound", offhook_sample=8000)
    b = CallInfo(id="B", line=1, direction="outbound", offhook_sample=24000)
    a.first_sample, b.first_sample = 8000, 24000
    for job in (OpenCall(a), Restamp(16000, true0 + 2.0), OpenCall(b)):
        w.handle(job)
    a.end_sample, b.end_sample = 32000, 40000
    w.handle(CloseCall(b))
    w.handle(CloseCall(a))
    ra, rb = w.store.call("A"), w.store.call("B")
    assert (ra.offhook_time, ra.end_time) == (true0 + 1.0, true0 + 4.0)
    assert (rb.offhook_time, rb.end_time) == (true0 + 3.0, true0 + 5.0)
    assert ra.deadline == true0 + 1.0 + 86400 and rb.deadline == true0 + 3.0 + 86400
    assert ra.meta["clock_synchronised"] is False and ra.meta["clock_corrected_s"] == true0
    assert rb.meta["clock_synchronised"] is True and rb.meta["clock_corrected_s"] is None
