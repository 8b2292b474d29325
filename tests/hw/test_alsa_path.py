"""The real ALSA path: samples written by the simulator come back bit-exact through
pyalsaaudio, and what the device plays arrives in the simulator's output."""

from __future__ import annotations

import threading

import numpy as np

from hw import alsa_sim, audio, scenario, simline
from hw.clock import SimClock
from hw.gpio import Board, make_factory
from hw.pins import PinMap
from recorder.config import PinsConfig


def _line(tmp_path, events, lines=2, duration=3.0, loopback=False, period=400, **kw):
    sa = alsa_sim.make(tmp_path / "alsa")
    import os
    os.environ["ALSA_CONFIG_PATH"] = str(sa.conf)
    sc = scenario.from_dict({"rate": 8000, "start": "2026-11-25T09:00:00Z",
                             "duration": duration, "lines": lines, "events": events})
    f = make_factory("mock")
    clock = SimClock(8000)
    pm = PinMap.from_config(PinsConfig(), lines)
    edges = []
    board = Board(pm, f, clock, edges.append)
    line = simline.SimulatedLine(sc, sa, f, pm, clock, period, loopback=loopback, **kw)
    return sa, line, board, edges


def _capture_all(sa, line, lines, period=400):
    cap = audio.AlsaCapture(sa.capture_pcm, lines, 8000, period, pacer=line.pacer)
    out = []
    while (b := cap.read()) is not None:
        out.append(b.copy())
    cap.close()
    return np.concatenate(out), cap


def test_capture_is_bit_exact_and_lines_are_separate(tmp_path):
    events = [{"at": 0.5, "line": 0, "type": "tone", "hz": 1000, "duration": 1.0},
              {"at": 1.0, "line": 1, "type": "tone", "hz": 300, "duration": 1.5,
               "level_dbfs": -6}]
    sa, line, board, _ = _line(tmp_path, events)
    line.start()
    got, cap = _capture_all(sa, line, 2)
    line.join(5)
    n = np.arange(len(got))
    exp0 = np.where((n >= 4000) & (n < 12000),
                    np.sin(2 * np.pi * 1000 * (n - 4000) / 8000) * 10 ** (-12 / 20), 0)
    exp1 = np.where((n >= 8000) & (n < 20000),
                    np.sin(2 * np.pi * 300 * (n - 8000) / 8000) * 10 ** (-6 / 20), 0)
    q = lambda x: np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)  # noqa: E731
    assert len(got) == 24000
    assert np.array_equal(got[:, 0], q(exp0.astype(np.float32)))
    assert np.array_equal(got[:, 1], q(exp1.astype(np.float32)))
    assert cap.short_reads == 0
    board.close()


def test_edges_are_sample_exact(tmp_path):
    events = [{"at": 0.25, "line": 1, "type": "offhook"},
              {"at": 1.0001, "line": 1, "type": "onhook"},
              {"at": 1.5, "type": "button", "button": "pause", "hold": 0.3},
              {"at": 2.0, "line": 0, "type": "ring", "until": 2.1}]
    sa, line, board, edges = _line(tmp_path, events)
    line.start()
    _capture_all(sa, line, 2)
    line.join(5)
    hook = [(e.sample, e.active) for e in edges if e.kind == "hook"]
    assert hook == [(2000, True), (8001, False)]
    button = [(e.sample, e.active) for e in edges if e.kind == "button"]
    assert button == [(12000, True), (14400, False)]
    ring = [(e.sample, e.active) for e in edges if e.kind == "ring"]
    # 25 Hz pulses: 20 ms on (160 samples), 20 ms off, from 2.0 s until 2.1 s
    assert ring[:4] == [(16000, True), (16160, False), (16320, True), (16480, False)]
    assert ring[-1] == (16800, False)
    board.close()


def test_device_playback_reaches_the_simulator_and_loops_back(tmp_path):
    period = 400
    sa, line, board, _ = _line(tmp_path, [], lines=1, duration=2.0, loopback=True,
                               keep_playback=True, period=period)
    line.start()
    pb = audio.AlsaPlayback(sa.playback_pcm, 1, 8000, period)
    cap = audio.AlsaCapture(sa.capture_pcm, 1, 8000, period, pacer=line.pacer)
    played = np.zeros((16000 + 10 * period, 1), np.int16)
    played[3000:3800, 0] = (np.arange(800) % 50) * 300 - 7000   # a sawtooth burst
    lead = 6 * period
    sent = 0
    got = []
    stop = threading.Event()

    def player():
        nonlocal sent
        while sent < len(played) and not stop.is_set():
            pb.write(played[sent:sent + period])
            sent += period
        pb.close()

    pb.write(played[:lead])
    sent = lead
    t = threading.Thread(target=player)
    t.start()
    while (b := cap.read()) is not None:
        got.append(b.copy())
    stop.set()
    t.join(5)
    line.join(5)
    got = np.concatenate(got)
    # What the device played arrives in the simulator's output ...
    assert np.array_equal(line.played[:16000, 0], played[:16000, 0])
    # ... and is heard on the line at the same sample index (playback frame p = capture p).
    assert np.array_equal(got[:, 0], played[:len(got), 0])
    board.close()
