"""The whole device path in seconds of audio per CPU-second, next to bare FLAC encoding
of the same audio in the same run; peak RSS with 4 lines; overruns with 4 lines paced
in real time while a CPU hog runs.

Path measured: simulated line -> ALSA capture -> ring -> call state machine -> DTMF scan
-> FLAC -> HPKE -> fsync'd atomic write -> SQLite row + chain -> signed manifest, with
the journal of the segment in progress (0.5 s records, fdatasync'd) on, as shipped; and
the same run with the journal off, to report what it costs.

    .venv/bin/python -m bench.pipeline [--minutes 30] [--realtime-seconds 30]
    .venv/bin/python -m bench.pipeline --realtime-only [--realtime-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recorder import lean_device_imports

ROOT = Path(__file__).resolve().parent.parent

# As `linetap run` and `simulate` do, before anything imports peewee: otherwise peewee
# loads psycopg2 (libpq and a second OpenSSL, 6.5 MB), which the box never uses.
lean_device_imports()

import numpy as np  # noqa: E402

from hw import scenario as scen  # noqa: E402
from recorder import config  # noqa: E402
from recorder.evidence import codec, keys  # noqa: E402
from recorder.runtime import simulate  # noqa: E402

# The environment systemd/linetap-recorder.service gives the daemon (memory settings).
UNIT_ENV = {"MALLOC_ARENA_MAX": "1", "OPENBLAS_NUM_THREADS": "1"}


def _scenario(lines: int, seconds: float, noise: float | None = -40.0) -> scen.Scenario:
    ev = []
    for ln in range(lines):
        ev += [{"at": 0.0, "line": ln, "type": "tone", "hz": [300 + 50 * ln, 1100],
                "duration": seconds, "level_dbfs": -18},
               {"at": 0.5, "line": ln, "type": "offhook"},
               {"at": seconds - 1.0, "line": ln, "type": "onhook"}]
    d = {"rate": 8000, "start": "2026-11-25T09:00:00Z", "duration": seconds,
         "lines": lines, "events": ev}
    if noise is not None:
        d["noise_dbfs"] = noise
    return scen.from_dict(d)


def device_path(lines: int, seconds: float, speed=0.0, period=4096, detector=True,
                journal_s: float | None = None, noise: float | None = -40.0,
                free_running: bool = False) -> dict:
    """Run the daemon on a simulated call of ``seconds`` on each of ``lines``.

    ``device_cpu_s`` sums the CPU time of the daemon's own threads (capture, playback,
    calls, writer, ...), leaving out the simulator that synthesises the line in the same
    process, including the pacing it does on the capture thread. ``detector=False``
    runs without the DTMF detector (for comparison only: the product always runs it,
    for dialled digits and masking).
    """
    import recorder.runtime.daemon as daemon_mod
    saved = daemon_mod.DtmfStream
    if not detector:
        daemon_mod.DtmfStream = None
    try:
        return _device_path(lines, seconds, speed, period, journal_s, noise, free_running)
    finally:
        daemon_mod.DtmfStream = saved


def _device_path(lines, seconds, speed, period, journal_s, noise, free_running) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        _priv, pub = keys.practice_keygen(Path(tmp) / "p.key")
        sc = _scenario(lines, seconds, noise)
        cfg = simulate.sim_config(config.Config(), sc, str(Path(tmp) / "data"), str(pub))
        cfg = cfg.replace(audio__period_frames=period)
        if journal_s is not None:
            cfg = cfg.replace(recording__journal_s=journal_s)
        t0, w0 = time.process_time(), time.monotonic()
        res = simulate.run(sc, cfg, speed=speed, free_running=free_running)
        cpu, wall = time.process_time() - t0, time.monotonic() - w0
    return {"cpu_s": cpu, "wall_s": wall, "audio_s": seconds * lines,
            # The simulated line's pacing runs on the capture thread (a Pi's capture
            # sleeps in the ALSA read instead): it is the simulator's CPU, not the box's.
            "device_cpu_s": sum(res.daemon.thread_cpu.values()) - res.daemon.hw.pacing_cpu_s,
            "sim_pacer_cpu_s": res.daemon.hw.pacing_cpu_s,
            "threads": res.daemon.thread_cpu,
            "overruns": res.status["overruns"]["consumer"] + res.status["overruns"]["alsa_xruns"],
            "consumer_overruns": res.status["overruns"]["consumer"],
            "xruns": res.status["overruns"]["alsa_xruns"],
            "lost_s": res.daemon.capture.stream.lost_frames / 8000,
            "segments": res.status["writer"]["segments"],
            "journal": {k: res.status["writer"][k] for k in
                        ("journal_records", "journal_bytes", "journal_syncs")},
            "writer_cpu_s": res.daemon.writer.cpu_s,
            "segment_bytes": res.daemon.writer.bytes_written}


def bare_flac(seconds: float) -> float:
    rng = np.random.default_rng(0)
    t = np.arange(80000) / 8000
    x = (np.sin(2 * np.pi * 300 * t) + np.sin(2 * np.pi * 1100 * t)) * 10 ** (-18 / 20)
    x = x + rng.standard_normal(len(x)) * 0.01
    pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)
    n = int(seconds / 10)
    t0 = time.process_time()
    for _ in range(n):
        codec.encode(pcm, 8000, "flac")
    return n * 10 / (time.process_time() - t0)


def _hwm_kb() -> int:
    """Peak resident set of this process image, KiB (VmHWM). Not ru_maxrss: Linux
    carries that over exec from the forked parent, so a child started by a bench that
    has already run the daemon would report the bench's own peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(lines: int, seconds: float) -> None:
    """Peak RSS of the daemon as the device runs it: the shipped period (160 frames),
    the unit's environment (set by the parent), and a line simulator without noise (the
    simulator's noise generator, numpy.random, is 2.3 MB that no device loads; the
    simulator itself still shares the process)."""
    import recorder.calls.dsp.callerid  # noqa: F401
    import recorder.calls.processor  # noqa: F401 - everything the daemon imports, before it runs
    import recorder.runtime.assembly  # noqa: F401
    import recorder.runtime.daemon  # noqa: F401
    base = _hwm_kb()
    device_path(lines, seconds, period=config.Config().audio.period_frames, noise=None)
    print(base, _hwm_kb())


def peak_rss(lines: int, seconds: float) -> tuple[int, int]:
    """(after imports, peak) VmHWM in KiB of a child process running the daemon.

    The child gets the unit's environment and, like an installed box (firmware/
    install.sh compiles everything), bytecode for every module it imports: a first run
    writes it into a private cache, and the second run is the one measured. Compiling
    sources at import would add over a megabyte that no box pays.
    """
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(UNIT_ENV, PYTHONPYCACHEPREFIX=cache)
        cmd = [sys.executable, "-m", "bench.pipeline", "--rss-child", str(lines),
               str(seconds)]
        subprocess.run(cmd[:-1] + ["2"], capture_output=True, check=True, env=env, cwd=ROOT)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env=env, cwd=ROOT).stdout.split()
    return int(out[-2]), int(out[-1])


def realtime_hog(seconds: float, nice: int | None = None) -> dict:
    """4 lines in real time at the shipped period beside a CPU hog, on a free-running
    simulated card, as on a Pi: a daemon the hog makes late loses audio and it is
    counted (in lockstep the line would wait for it, and this could not fail).

    The daemon's threads run at ``nice`` (default: the recorder unit's ``Nice=``, as the
    box runs them; the hog stays at 0), when this process may set it. Niceness is per
    thread on Linux and new threads inherit it, so it is set on this thread before the
    daemon starts its own, and put back after."""
    from tests.support.simbox import can_renice, unit_nice
    want = unit_nice() if nice is None else nice
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    before = os.getpriority(os.PRIO_PROCESS, 0)
    ran_at = before
    try:
        if can_renice(want):
            os.setpriority(os.PRIO_PROCESS, 0, want)
            ran_at = want
        rt = device_path(4, seconds, speed=1.0, period=160, free_running=True)
    finally:
        hog.kill()
        if ran_at != before:
            os.setpriority(os.PRIO_PROCESS, 0, before)
    rt["nice"] = ran_at
    print(f"4 lines paced in real time with a CPU hog for {seconds:.0f} s, daemon at "
          f"nice {ran_at}: {rt['overruns']} overruns ({rt['consumer_overruns']} in the "
          f"ring, {rt['xruns']} xruns, {rt['lost_s']:.2f} s lost at the card)")
    return rt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--realtime-seconds", type=float, default=30.0)
    ap.add_argument("--realtime-only", action="store_true",
                    help="only the real-time run beside a CPU hog")
    ap.add_argument("--nice", type=int, help="the daemon's niceness in the real-time run "
                    "(default: the recorder unit's Nice=)")
    ap.add_argument("--rss-child", nargs=2, type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(int(args.rss_child[0]), args.rss_child[1])
        return
    if args.realtime_only:
        rt = realtime_hog(args.realtime_seconds, args.nice)
        # ratio: the share of the line's audio lost (0 is the goal).
        print(json.dumps({"bench": "pipeline_realtime", "overruns_4line_realtime_hog":
                          rt["overruns"], "consumer_overruns": rt["consumer_overruns"],
                          "xruns": rt["xruns"], "lost_s": round(rt["lost_s"], 3),
                          "daemon_nice": rt["nice"],
                          "ratio": round(rt["lost_s"] / args.realtime_seconds, 5)}))
        return
    secs = args.minutes * 60
    one = device_path(1, secs)
    nodet = device_path(1, secs, detector=False)
    bare = bare_flac(secs)
    nojournal = device_path(1, secs, journal_s=0.0)
    four = device_path(4, secs / 2)
    x4 = four["audio_s"] / four["device_cpu_s"]
    x1 = one["audio_s"] / one["device_cpu_s"]
    x1n = nodet["audio_s"] / nodet["device_cpu_s"]
    xproc = one["audio_s"] / one["cpu_s"]
    print(f"device path, 1 line (daemon threads' CPU):      {x1:8.0f}x real time")
    print(f"  per thread (CPU s): {one['threads']}; of capture's, the simulated line's "
          f"pacing (left out): {one['sim_pacer_cpu_s']:.3f}")
    print(f"device path without the DTMF detector:          {x1n:8.0f}x")
    print(f"device path, 4 lines, line-seconds per CPU-second: {x4:6.0f}x")
    print(f"whole process incl. the line simulator:         {xproc:8.0f}x")
    print(f"bare FLAC encode, same audio:                   {bare:8.0f}x")
    print(f"ratio to bare encode: {x1 / bare:.2f} (without the detector {x1n / bare:.2f})")
    # What the journal of the segment in progress costs (recording.journal_s = 0.5 by
    # default, 0 = off), per hour of one call: the writer's CPU, and what reaches the disk.
    per_h = 3600.0 / secs
    j = one["journal"]
    j_cpu_ms = (one["writer_cpu_s"] - nojournal["writer_cpu_s"]) * per_h * 1000
    seg_mb_h = one["segment_bytes"] * per_h / 1e6
    print(f"journal (0.5 s records), per call-hour: {j['journal_records'] * per_h:.0f} "
          f"records, {j['journal_syncs'] * per_h:.0f} fdatasyncs, "
          f"{j['journal_bytes'] * per_h / 1e6:.1f} MB appended (segments: {seg_mb_h:.1f} MB), "
          f"writer CPU +{j_cpu_ms:.0f} ms; device path without it "
          f"{nojournal['audio_s'] / nojournal['device_cpu_s']:.0f}x")
    base, rss = peak_rss(4, 120)
    print(f"peak RSS, 4 lines, period {config.Config().audio.period_frames}, whole process: "
          f"{rss / 1024:.1f} MB "
          f"(of which imports alone: {base / 1024:.1f} MB)")
    rt = realtime_hog(args.realtime_seconds, args.nice)
    print(json.dumps({"bench": "pipeline", "x_realtime": round(x1),
                      "x_realtime_no_detector": round(x1n), "x_realtime_process": round(xproc),
                      "bare_flac_x_realtime": round(bare), "ratio": round(x1 / bare, 2),
                      "x_realtime_per_line_4line": round(x4),
                      "x_realtime_no_journal": round(nojournal["audio_s"]
                                                     / nojournal["device_cpu_s"]),
                      "journal_cpu_ms_per_call_hour": round(j_cpu_ms),
                      "journal_mb_per_call_hour": round(j["journal_bytes"] * per_h / 1e6, 1),
                      "journal_syncs_per_call_hour": round(j["journal_syncs"] * per_h),
                      "peak_rss_mb_4line": round(rss / 1024, 1),
                      "import_rss_mb": round(base / 1024, 1),
                      "overruns_4line_realtime_hog": rt["overruns"]}))


if __name__ == "__main__":
    main()
