"""The simulated line's fast paths (pre-quantised clips, per-line copies, silence that
costs nothing, batched wake-ups of capture) give exactly what plain float mixing and a
period-by-period pacer give."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import soundfile as sf

from hw import alsa_sim, audio, scenario, simline
from hw.clock import SimClock
from hw.gpio import make_factory
from hw.pins import PinMap
from recorder.config import PinsConfig

RATE = 8000


def _scenario(tmp_path, events, lines, duration, **top):
    return scenario.from_dict({"rate": RATE, "start": "2026-11-25T09:00:00Z",
                               "duration": duration, "lines": lines, "events": events,
                               **top}, base=tmp_path)


def _line(tmp_path, sc, period, **kw):
    sa = alsa_sim.make(tmp_path / "alsa")
    os.environ["ALSA_CONFIG_PATH"] = str(sa.conf)
    pm = PinMap.from_config(PinsConfig(), sc.lines)
    kw.setdefault("loopback", False)
    line = simline.SimulatedLine(sc, sa, make_factory("mock"), pm, SimClock(RATE), period,
                                 **kw)
    return sa, line


def _capture(sa, line, period, max_reads):
    """Everything capture reads until the line ends; fails instead of looping forever
    if the line never says it has ended."""
    cap = audio.AlsaCapture(sa.capture_pcm, line.lines, RATE, period, pacer=line.pacer)
    out = []
    for _ in range(max_reads):
        b = cap.read()
        if b is None:
            break
        out.append(b.copy())
    else:
        cap.close()
        raise AssertionError(f"capture still reading after {max_reads} periods")
    cap.close()
    return np.concatenate(out)


def _reference(sc, total):
    """Plain mixing: every line in float32, sounds added in start order, quantised."""
    mix = np.zeros((total, sc.lines), np.float32)
    sounds = sorted((e for e in sc.events if e.type in ("audio", "tone")),
                    key=lambda e: e.sample(RATE))
    for e in sounds:
        s0 = e.sample(RATE)
        if e.type == "audio":
            a = sc.audio[e.args["path"]] * np.float32(10 ** (e.args.get("gain_db", 0.0) / 20))
        else:
            t = np.arange(int(round(e.args["duration"] * RATE))) / RATE
            a = (np.sin(2 * np.pi * e.args["hz"] * t)
                 * 10 ** (e.args.get("level_dbfs", -12.0) / 20)).astype(np.float32)
        a = a[: max(0, total - s0)]
        mix[s0:s0 + len(a), e.line] += a
    return np.clip(np.rint(mix * np.float32(32768)), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("period", [160, 400, 1024])
def test_fast_paths_match_plain_float_mixing(tmp_path, period):
    rng = np.random.default_rng(7)
    # float WAVs, so quantisation really rounds; one clip loud enough to clip
    sf.write(tmp_path / "a.wav", (rng.standard_normal(6001) * 0.2).astype(np.float32),
             RATE, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", (rng.standard_normal(2500) * 0.9).astype(np.float32),
             RATE, subtype="FLOAT")
    ev = [
        # line 0: the same clip back to back, ends and starts inside periods
        {"at": 0.0, "line": 0, "type": "audio", "file": "a.wav"},
        {"at": 6001 / RATE, "line": 0, "type": "audio", "file": "a.wav"},
        {"at": 1.7, "line": 0, "type": "audio", "file": "a.wav", "gain_db": -6},
        # line 1: overlapping clips (mixed, then quantised), one of them clipping
        {"at": 0.3, "line": 1, "type": "audio", "file": "a.wav"},
        {"at": 0.5, "line": 1, "type": "audio", "file": "b.wav", "gain_db": 6},
        {"at": 2.5, "line": 1, "type": "audio", "file": "b.wav"},
        {"at": 2.5, "line": 1, "type": "audio", "file": "b.wav"},     # twice at once
        # line 2: a tone under a clip, then the tone alone
        {"at": 0.9, "line": 2, "type": "tone", "hz": 440, "duration": 1.5},
        {"at": 1.0, "line": 2, "type": "audio", "file": "b.wav"},
        # line 3: silence, then one short clip with a gap before the next
        {"at": 2.0, "line": 3, "type": "audio", "file": "b.wav", "gain_db": -20},
        {"at": 2.5, "line": 3, "type": "audio", "file": "b.wav", "gain_db": -20},
    ]
    sc = _scenario(tmp_path, ev, lines=4, duration=3.3)
    sa, line = _line(tmp_path, sc, period)
    line.start()
    got = _capture(sa, line, period, line.total_frames // period + 2)
    line.join(10)
    assert got.shape == (line.total_frames, 4)
    exp = _reference(sc, line.total_frames)
    for k in range(4):
        bad = np.flatnonzero(got[:, k] != exp[:, k])
        assert bad.size == 0, f"line {k} differs first at sample {bad[:1]}"


@pytest.mark.parametrize("periods", [1, 2, 3, 4, 5, 9])
def test_capture_ends_exactly_where_the_line_ends(tmp_path, periods):
    """Batched wake-ups never let capture read past the end, whatever the remainder."""
    period = 200
    sc = _scenario(tmp_path, [{"at": 0.0, "line": 0, "type": "tone", "hz": 1000,
                               "duration": periods * period / RATE}],
                   lines=1, duration=periods * period / RATE)
    sa, line = _line(tmp_path, sc, period)
    line.start()
    got = _capture(sa, line, period, periods + 2)
    line.join(10)
    assert len(got) == periods * period


def test_capture_is_woken_once_per_batch_not_per_period(tmp_path, monkeypatch):
    monkeypatch.setattr(simline, "PACER_GRACE_S", 3600.0)
    period, periods = 200, 80
    sc = _scenario(tmp_path, [{"at": 0.0, "line": 0, "type": "tone", "hz": 700,
                               "duration": 5.0}], lines=2, duration=periods * period / RATE)
    sa, line = _line(tmp_path, sc, period)
    calls, blocked = [0], set()
    wait = line._cond.wait

    def counted_wait(timeout=None):
        blocked.add(calls[0])
        return wait(timeout)
    line._cond.wait = counted_wait

    def pacer(wanted):
        calls[0] += 1
        return line.pacer(wanted)
    line.start()
    cap = audio.AlsaCapture(sa.capture_pcm, 2, RATE, period, pacer=pacer)
    frames = 0
    for _ in range(periods + 2):
        b = cap.read()
        if b is None:
            break
        frames += len(b)
    cap.close()
    line.join(10)
    assert frames == periods * period
    assert line._batch == simline.PACER_BATCH > 1
    # A read that finds capture caught up sleeps until a whole batch is written, so the
    # next batch - 1 reads never sleep.
    assert len(blocked) <= -(-periods // line._batch) + 1, (len(blocked), line._batch)


def test_batching_never_waits_on_a_line_that_waits_on_the_device(tmp_path, monkeypatch):
    """With loopback the line needs the device's playback before it can write, and this
    device plays only a fixed lead ahead of what it has captured (as the daemon does),
    less than a batch beyond ALSA's own playback buffer: capture must be woken as soon
    as its period is there, not when a whole batch is."""
    monkeypatch.setattr(simline, "PACER_GRACE_S", 3600.0)
    period, periods, lead = 200, 30, 6
    sc = _scenario(tmp_path, [], lines=1, duration=periods * period / RATE)
    sa, line = _line(tmp_path, sc, period, loopback=True)
    line.start()
    pb = audio.AlsaPlayback(sa.playback_pcm, 1, RATE, period)
    cap = audio.AlsaCapture(sa.capture_pcm, 1, RATE, period, pacer=line.pacer)
    tone = ((np.arange(period * (periods + lead + 1)) % 40) * 500 - 10000).astype(np.int16)
    got, captured, done = [], threading.Semaphore(0), threading.Event()
    pb.write(tone[:lead * period, None])

    def device():
        for k in range(lead, periods + lead):
            captured.acquire()                 # one period played per period captured
            if done.is_set():
                break
            pb.write(tone[k * period:(k + 1) * period, None])
        pb.close()

    def capture():
        for _ in range(periods + 2):
            b = cap.read()
            if b is None:
                break
            got.append(b.copy())
            captured.release()
        done.set()
        captured.release()
    t_dev = threading.Thread(target=device, daemon=True)
    t_cap = threading.Thread(target=capture, daemon=True)
    t_dev.start()
    t_cap.start()
    t_cap.join(60)          # deadlock detection only; this takes well under a second
    deadlocked = t_cap.is_alive()
    if deadlocked:
        line.stop()
        done.set()
        captured.release()
    t_cap.join(10)
    t_dev.join(10)
    cap.close()
    line.join(10)
    assert not deadlocked, "capture waited for a batch the line could not write"
    got = np.concatenate(got)[:, 0]
    assert len(got) == periods * period
    assert np.array_equal(got, tone[:len(got)])
