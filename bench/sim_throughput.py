"""Seconds of line audio per CPU-second through the simulator and the real ALSA path,
next to a bare FIFO copy of the same bytes, measured side by side in one run.

    .venv/bin/python -m bench.sim_throughput [--seconds 1800]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from hw import alsa_sim, audio, scenario, simline
from hw.clock import SimClock
from hw.gpio import make_factory
from hw.pins import PinMap
from recorder.config import PinsConfig

PERIOD = 4096


def through_alsa(lines: int, seconds: float) -> tuple[float, float, float]:
    """Scenario audio as callers really are: WAV clips (10 s of voice-band noise each,
    back to back on every line), mixed, quantised and written by the simulator, read
    back through pyalsaaudio. Loading the clip is outside the timed part.

    Returns x real time per CPU-second of the whole process, and the CPU seconds per
    period of the line's writer thread and of the capture thread."""
    import numpy as np
    import soundfile as sf
    with tempfile.TemporaryDirectory() as tmp:
        sa = alsa_sim.make(tmp)
        os.environ["ALSA_CONFIG_PATH"] = str(sa.conf)
        rng = np.random.default_rng(0)
        sf.write(f"{tmp}/caller.wav", (rng.standard_normal(80000) * 0.05).astype("float32"),
                 8000, subtype="PCM_16")
        ev = [{"at": float(t), "line": ln, "type": "audio", "file": "caller.wav"}
              for ln in range(lines) for t in range(0, int(seconds) - 10, 10)]
        sc = scenario.from_dict({"rate": 8000, "start": "2026-11-25T09:00:00Z",
                                 "duration": seconds, "lines": lines, "events": ev},
                                base=tmp)
        f = make_factory("mock")
        pm = PinMap.from_config(PinsConfig(), lines)
        line = simline.SimulatedLine(sc, sa, f, pm, SimClock(8000), PERIOD, loopback=False)
        t0 = time.process_time()
        line.start()
        c0 = time.thread_time()
        cap = audio.AlsaCapture(sa.capture_pcm, lines, 8000, PERIOD, pacer=line.pacer)
        frames = 0
        while (b := cap.read()) is not None:
            frames += len(b)
        c_cap = time.thread_time() - c0
        line.join()
        cpu = time.process_time() - t0
        cap.close()
    periods = frames / PERIOD
    return frames / 8000 / cpu, line.cpu_s / periods, c_cap / periods


def bare_copy(lines: int, seconds: float) -> tuple[float, float, float]:
    """The floor: the same bytes through a FIFO with os.write/os.read, nothing else.
    Returns x real time per CPU-second, and writer and reader CPU seconds per chunk."""
    nbytes = int(seconds * 8000) * 2 * lines
    chunk = PERIOD * 2 * lines          # what the simulator writes: one period per write
    buf = bytes(chunk)
    with tempfile.TemporaryDirectory() as tmp:
        fifo = Path(tmp) / "f"
        os.mkfifo(fifo)

        def writer():
            c0 = time.thread_time()
            fd = os.open(fifo, os.O_WRONLY)
            try:
                fcntl.fcntl(fd, simline.F_SETPIPE_SZ, simline.pipe_bytes(chunk))
            except OSError:
                pass
            for _ in range(nbytes // chunk):
                os.write(fd, buf)
            os.close(fd)
            w_cpu.append(time.thread_time() - c0)

        w_cpu: list[float] = []
        t0 = time.process_time()
        th = threading.Thread(target=writer)
        th.start()
        c0 = time.thread_time()
        fd = os.open(fifo, os.O_RDONLY)
        got = 0
        while (d := os.read(fd, PERIOD * 2 * lines)):
            got += len(d)
        os.close(fd)
        r_cpu = time.thread_time() - c0
        th.join()
        cpu = time.process_time() - t0
    chunks = got / chunk
    return got / (2 * lines * 8000) / cpu, w_cpu[0] / chunks, r_cpu / chunks


def main() -> None:
    global PERIOD
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1800.0)
    ap.add_argument("--period", type=int, default=4096,
                    help="frames per ALSA period and per simulator write (32..8192)")
    args = ap.parse_args()
    PERIOD = args.period
    rows = {}
    for lines in (1, 4):
        sim, s_line, s_cap = through_alsa(lines, args.seconds)
        bare, b_w, b_r = bare_copy(lines, args.seconds)
        rows[lines] = (sim, bare)
        print(f"{lines} line(s): simulator+ALSA {sim:8.0f}x real time, bare FIFO copy "
              f"{bare:8.0f}x, ratio {sim / bare:.2f}")
        print(f"    CPU per {PERIOD}-frame period: line thread {s_line * 1e6:.1f} us, capture "
              f"thread {s_cap * 1e6:.1f} us; bare writer {b_w * 1e6:.1f} us, reader "
              f"{b_r * 1e6:.1f} us")
    one, four = rows[1], rows[4]
    print(json.dumps({"bench": "sim_throughput", "period": PERIOD,
                      "x_realtime_1line": round(one[0]),
                      "x_realtime_4line": round(four[0]), "bare_x_realtime_4line":
                      round(four[1]), "ratio": round(four[0] / four[1], 2),
                      "ratio_1line": round(one[0] / one[1], 2)}))


if __name__ == "__main__":
    main()
