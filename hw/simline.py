"""The simulated line: product code for demos, benchmarks and tests.

It plays a :class:`~hw.scenario.Scenario` into the real ALSA path and the gpiozero pins,
exactly as copper and opto-isolators would:

* **Audio** for every line is rendered period by period (scenario audio files, tones,
  DTMF, caller-ID signalling from :mod:`hw.linesignals`, plus the device's own
  playback looped back into the line) and written, interleaved S16_LE, into the FIFO
  that ALSA's ``file`` PCM reads as its capture ``infile``.
* **Pins** (hook, ring pulses at 25 Hz in the UK cadence, the pause button) are driven on
  a gpiozero ``MockFactory`` at their exact sample time: the :class:`~hw.clock.SimClock`
  is set to the sample first, so the daemon's edge stamps are sample-exact at any speed.
* **Loopback:** the device's playback arrives through ALSA's playback ``file`` PCM on a
  second FIFO. Playback frame *p* is mixed into capture sample *p*, which is the
  contract the device keeps on real hardware too (it queues playback ahead of capture).

The line is also the sample clock: :meth:`pacer` lets capture read a period only once
that period has been written, which is what a codec's crystal does on a real HAT.

A **free-running** line (``free_running``, the ``--realtime`` runs) is the card as
hardware is: it writes each period at its time and never waits for its reader. The
card holds :data:`hw.audio.BUFFER_PERIODS` periods unread (as the Pi's ALSA buffer
does); a period that finds it full is dropped and counted (:attr:`dropped`), an xrun,
and :meth:`frame_of` tells the reader where on the line its next frame really is.
It does not wait for the device's playback either: playback that is not there in time
is silence on the line, as a real card's underrun is. Otherwise (fast runs, tests and
benches) the line and its reader move in lockstep and nothing is ever lost.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import struct
import termios
import threading
import time
from dataclasses import dataclass

import numpy as np

from hw.alsa_sim import SimAlsa
from hw.audio import BUFFER_PERIODS
from hw.clock import SimClock
from hw.errors import HardwareError, SimulationError
from hw.pins import PinMap
from hw.scenario import Scenario

log = logging.getLogger(__name__)

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
RING_HZ = 25.0                # ring voltage pulses seen by the opto
UK_CADENCE = ((0.0, 0.4), (0.6, 1.0))   # bursts within each 3.0 s cycle
UK_CYCLE_S = 3.0
STALL_TIMEOUT_S = 30.0
PACER_BATCH = 4               # periods the line runs ahead before capture is woken
PACER_GRACE_S = 0.05          # longest capture waits for a batch it could do without
AUDIO_CACHE = 8               # (file, gain) renderings kept for clips played again
_NEVER = 1 << 62


def pipe_bytes(chunk: int) -> int:
    """Capture pipe size for writes of ``chunk`` bytes: room for two pacer batches,
    within the unprivileged limit (``/proc/sys/fs/pipe-max-size``, 1 MiB by default)."""
    return min(max(1 << 16, 2 * PACER_BATCH * chunk), 1 << 20)


def quantise(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Line audio in float32 (full scale 1.0) to S16 values: x * 32768 rounded half to
    even, clipped. With ``out`` (float32, may be ``x``) the values are left there, else
    an int16 copy is returned. Scaling by 2**15 is exact, so mixing then quantising
    gives the same samples however the mix is split up."""
    y = np.multiply(x, np.float32(32768.0), out=out, dtype=np.float32)
    np.rint(y, out=y)
    np.clip(y, -32768, 32767, out=y)
    return y if out is not None else y.astype("<i2")


def _unread(fd: int) -> int:
    """Bytes in a pipe not read yet (FIONREAD works on either end of a Linux pipe)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


@dataclass
class PinStep:
    sample: int
    pin: int
    active: bool
    order: int = 0


def ring_steps(start_s: float, stop_s: float, rate: int) -> list[tuple[int, bool]]:
    """Ring-opto edges for ringing from ``start_s`` until ``stop_s`` (seconds of line time).

    UK cadence: 0.4 s on, 0.2 s off, 0.4 s on, 2.0 s off. During a burst the opto
    conducts for 20 ms in every 40 ms (25 Hz). Returns (sample, active) pairs.
    """
    out: list[tuple[int, bool]] = []
    half = 1.0 / (2 * RING_HZ)
    cycle = start_s
    while cycle < stop_s:
        for b0, b1 in UK_CADENCE:
            t = cycle + b0
            while t < min(cycle + b1, stop_s):
                out.append((int(round(t * rate)), True))
                t_off = min(t + half, stop_s)
                out.append((int(round(t_off * rate)), False))
                t += 2 * half
        cycle += UK_CYCLE_S
    return out


class SimulatedLine:
    """Drive ``scenario`` into ALSA FIFOs and mock pins.

    :param scenario: a validated scenario.
    :param alsa: FIFOs and config from :func:`hw.alsa_sim.make`.
    :param factory: gpiozero ``MockFactory`` shared with the daemon's :class:`~hw.gpio.Board`.
    :param pinmap: which mock pin is which input.
    :param clock: the :class:`SimClock` the daemon's board stamps edges with.
    :param period: frames per chunk; the daemon's capture period (so reads are whole).
    :param speed: 0 = as fast as the consumer reads; 1.0 = real time; 10 = ten times.
    :param loopback: mix the device's playback back into the line (needs a device that
        opens the playback PCM).
    :param keep_playback: keep everything the device played, in :attr:`played`.
    :param free_running: never wait for the reader (needs ``speed`` > 0): periods the
        card has no room for are dropped, as on hardware (module docstring).
    """

    def __init__(self, scenario: Scenario, alsa: SimAlsa, factory, pinmap: PinMap,
                 clock: SimClock, period: int, speed: float = 0.0, loopback: bool = True,
                 keep_playback: bool = False, free_running: bool = False):
        if free_running and speed <= 0:
            raise SimulationError("a free-running simulated line needs a speed to run at "
                                  "(1.0 = real time), not 0")
        self.sc, self.alsa, self.factory, self.pinmap = scenario, alsa, factory, pinmap
        self.clock, self.period, self.speed = clock, period, speed
        self.loopback, self.keep_playback = loopback, keep_playback
        self.free_running = free_running
        self.rate, self.lines = scenario.rate, scenario.lines
        total = scenario.total_frames
        self.total_frames = -(-total // period) * period   # whole periods only
        self.written = 0             # frames written into the capture FIFO (the stream)
        #: Frames a free-running card dropped because its reader was late, and the
        #: xruns (runs of dropped periods) they came in.
        self.dropped = 0
        self.xruns = 0
        #: The spans [start, end) of line frames the card dropped, one per xrun.
        self.drops: list[list[int]] = []
        # (stream position, frames dropped before it), one per run of drops: where the
        # stream and the line part.
        self._jumps: list[tuple[int, int]] = [(0, 0)]
        self.finished = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._pb = bytearray()
        self._pb_base = 0            # frame index of self._pb[0]
        self._pb_frames = 0          # total playback frames received
        self._pb_closed = False
        self._pb_opened = False
        self._soft = _NEVER          # frames a waiting pacer would like written first
        self._writer_held = False    # the line waits on the device (its playback)
        self._batch = 1 if speed > 0 else PACER_BATCH
        self._audio_cache: dict = {}
        self._played_chunks: list[bytes] = []
        self._steps = self._pin_schedule()
        self._clips = self._render_clips()
        self._threads: list[threading.Thread] = []
        self.wall_s = 0.0
        self.cpu_s = 0.0             # CPU time of the line's writer thread (benches)

    # -- schedule ----------------------------------------------------------------------
    def _pin_schedule(self) -> list[PinStep]:
        r, pm = self.rate, self.pinmap
        steps: list[PinStep] = []
        offhook_at: dict[int, list[float]] = {}
        for e in self.sc.events:
            if e.type in ("offhook",):
                offhook_at.setdefault(e.line, []).append(e.at)
        for e in self.sc.events:
            s = e.sample(r)
            if e.type == "offhook":
                steps.append(PinStep(s, pm.hook[e.line], True, e.index))
            elif e.type == "onhook":
                steps.append(PinStep(s, pm.hook[e.line], False, e.index))
            elif e.type == "flash":
                d = e.args.get("duration", 0.1)
                steps.append(PinStep(s, pm.hook[e.line], False, e.index))
                steps.append(PinStep(int(round((e.at + d) * r)), pm.hook[e.line], True,
                                     e.index))
            elif e.type == "button":
                hold = e.args.get("hold", 0.1)
                steps.append(PinStep(s, pm.pause_button, True, e.index))
                steps.append(PinStep(int(round((e.at + hold) * r)), pm.pause_button, False,
                                     e.index))
            elif e.type == "ring":
                # Ringing stops at 'until' or when the line is answered, whichever is first.
                stop = e.args["until"]
                answers = [t for t in offhook_at.get(e.line, []) if t > e.at]
                if answers:
                    stop = min(stop, min(answers))
                for smp, act in ring_steps(e.at, stop, r):
                    steps.append(PinStep(smp, pm.ring[e.line], act, e.index))
        steps.sort(key=lambda p: (p.sample, p.order, p.active))
        return steps

    def _render_clips(self) -> list[tuple[int, int, object]]:
        """(line, start sample, event) for every sound; each is rendered only when it
        starts playing and dropped when it ends, so memory stays flat on long scenarios."""
        clips = [(e.line, e.sample(self.rate), e) for e in self.sc.events
                 if e.type in ("audio", "tone", "dtmf", "cli")]
        clips.sort(key=lambda c: c[1])
        return clips

    def _render(self, e):
        """(length, get(lo, hi) -> float32, quantised int16 array or None) for one
        scenario event's audio.

        Tones are computed per period, so a day-long tone costs no memory (and has no
        quantised form). Clips backed by an array also come quantised exactly as the
        line quantises a mix (:func:`quantise`), so a line with only that clip in a
        period is one copy. Audio files are rendered once per (file, gain), however
        many events play them.
        """
        r = self.rate
        if e.type == "tone":
            hz = e.args["hz"] if isinstance(e.args["hz"], list) else [e.args["hz"]]
            amp = 10 ** (e.args.get("level_dbfs", -12.0) / 20)

            def get(lo, hi):
                t = np.arange(lo, hi) / r
                return (sum(np.sin(2 * np.pi * f * t) for f in hz) * amp).astype(np.float32)
            return int(round(e.args["duration"] * r)), get, None
        if e.type == "audio":
            key = (e.args["path"], e.args.get("gain_db", 0.0))
            hit = self._audio_cache.pop(key, None)
            if hit is None:
                a = self.sc.audio[e.args["path"]] * np.float32(10 ** (key[1] / 20))
                hit = (np.asarray(a, dtype=np.float32), quantise(a))
            self._audio_cache[key] = hit            # most recently used last
            while len(self._audio_cache) > AUDIO_CACHE:
                del self._audio_cache[next(iter(self._audio_cache))]
            a, q = hit
        else:
            if e.type == "dtmf":
                from hw import linesignals as gen
                a = gen.dtmf(e.args["digits"], r, on_ms=e.args.get("on_ms", 80.0),
                             off_ms=e.args.get("off_ms", 80.0),
                             level_dbfs=e.args.get("level_dbfs", -10.0))
            else:
                a = self._render_cli(e)
            a = np.asarray(a, dtype=np.float32)
            q = quantise(a)
        return len(a), lambda lo, hi: a[lo:hi], q

    def _render_cli(self, e) -> np.ndarray:
        from datetime import timedelta

        from hw import linesignals as gen
        when = self.sc.start + timedelta(seconds=e.at)
        std = e.args.get("standard", "uk")
        kw = {}
        if "level_dbfs" in e.args:
            kw["level_dbfs"] = e.args["level_dbfs"]
        if std == "uk":
            return gen.uk_clip(e.args.get("number"), e.args.get("name"), when, self.rate,
                               absence=e.args.get("absence"), **kw)
        if std == "bell202":
            return gen.bell202_clip(e.args.get("number"), e.args.get("name"), when,
                                    self.rate, **kw)
        return gen.etsi_dtmf_clip(e.args.get("number"), self.rate, **kw)

    # -- running -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer and (with loopback) the playback reader threads."""
        if self.loopback:
            t = threading.Thread(target=self._guard(self._read_playback), daemon=True,
                                 name="sim-playback")
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._guard(self._write_line), daemon=True,
                             name="sim-line")
        t.start()
        self._threads.append(t)

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported to the caller through .error
                log.exception("simulated line failed")
                with self._cond:
                    self.error = exc
                    self.finished = True
                    self._cond.notify_all()
        return run

    def pacer(self, wanted_total: int) -> bool:
        """Block until ``wanted_total`` frames are written; False once the line has ended.

        When capture has caught up with the line, it is woken once the line is
        ``batch`` periods ahead (or cannot get there on its own: it waits for the
        device's playback, or has ended), not after every period, so the two threads
        meet once per batch instead of once per period. Real-time runs (``speed``)
        wake capture every period.
        """
        if self.written >= wanted_total:        # the line is ahead: no lock, no wake-up
            return True
        cond = self._cond
        with cond:
            self._soft = max(wanted_total, min(wanted_total + (self._batch - 1) * self.period,
                                               self.total_frames))
            try:
                while True:
                    w = self.written
                    if w >= self._soft or (w >= wanted_total and self._writer_held):
                        return True
                    if self.finished:
                        return w >= wanted_total
                    if w < wanted_total:
                        cond.wait()
                    elif not cond.wait(PACER_GRACE_S):
                        return True     # a batch is a hint, never a requirement
            finally:
                self._soft = _NEVER

    def frame_of(self, stream_pos: int) -> int:
        """The line frame (sample clock) of the frame at ``stream_pos`` in the capture
        FIFO: the same in lockstep; later by what the card dropped before it when free
        running. Final once the line has written that frame (the reader's pacer waits
        for that first)."""
        with self._cond:
            i = bisect.bisect_right(self._jumps, (stream_pos, _NEVER)) - 1
            return stream_pos + self._jumps[i][1]

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)
        if self.error is not None:
            raise HardwareError(f"simulated line failed: {self.error}") from self.error

    def stop(self) -> None:
        """Unblock everything (used on daemon failure)."""
        with self._cond:
            self.finished = True
            self._cond.notify_all()
        self._unblock_fifo(self.alsa.playback_fifo, os.O_WRONLY)
        self._unblock_fifo(self.alsa.capture_fifo, os.O_RDONLY)

    @staticmethod
    def _unblock_fifo(path, flags):
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    def _read_playback(self) -> None:
        fd = os.open(self.alsa.playback_fifo, os.O_RDONLY)
        fb = 2 * self.lines
        with self._cond:
            self._pb_opened = True
        try:
            while True:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                with self._cond:
                    self._pb += data
                    self._pb_frames = self._pb_base + len(self._pb) // fb
                    if self.keep_playback:
                        self._played_chunks.append(data)
                    self._cond.notify_all()
        finally:
            os.close(fd)
            with self._cond:
                self._pb_closed = True
                self._cond.notify_all()

    def _loopback(self, n: int, p: int) -> np.ndarray | None:
        """Playback frames [n, n+p) as int16 (rows <= p, lines), waiting until they exist;
        None if there are none."""
        fb = 2 * self.lines
        deadline = time.monotonic() + STALL_TIMEOUT_S
        with self._cond:
            late = self._pb_frames < n + p and not self._pb_closed
            if late and not self.free_running:
                self._writer_held = True        # capture must not wait for a batch now
                self._cond.notify_all()
            try:
                while late and not self.free_running and self._pb_frames < n + p \
                        and not self._pb_closed:
                    if not self._cond.wait(timeout=1.0) and time.monotonic() > deadline:
                        raise HardwareError(f"device playback stalled at frame "
                                            f"{self._pb_frames}, line at {n}")
                    if self.finished and self.error is not None:
                        return None
            finally:
                self._writer_held = False
            lo = (n - self._pb_base) * fb
            hi = min(len(self._pb), (n + p - self._pb_base) * fb)
            if lo < 0 or hi <= lo:
                return None
            raw = bytes(self._pb[lo:hi])
            del self._pb[:lo]     # frames before n are no longer needed
            self._pb_base = n
        return np.frombuffer(raw, dtype="<i2").reshape(-1, self.lines)

    def _write_line(self) -> None:
        cpu0 = time.thread_time()
        fd = os.open(self.alsa.capture_fifo, os.O_WRONLY)
        chunk = self.period * 2 * self.lines
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, pipe_bytes(chunk))
        except OSError:
            log.debug("could not enlarge the capture pipe; periods stay small")
        try:
            size = fcntl.fcntl(fd, F_GETPIPE_SZ)
        except OSError:
            size = 1 << 16
        # A batch must fit in the pipe with room to spare, or the line would block on
        # the pipe while capture waits for the batch.
        self._batch = max(1, min(self._batch, size // (2 * chunk)))
        try:
            self._write_frames(fd)
        finally:
            os.close(fd)
            self.cpu_s = time.thread_time() - cpu0
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def _write_frames(self, fd: int) -> None:
        p, lines, r = self.period, self.lines, self.rate
        steps, si = self._steps, 0
        next_edge = steps[0].sample if steps else _NEVER
        clips, ci = self._clips, 0
        next_clip = clips[0][1] if clips else _NEVER
        # Sounding clips per line, in the order they started (the order they are mixed):
        # (start, end, get(lo, hi) -> float32, quantised int16 or None).
        playing: list[list[tuple]] = [[] for _ in range(lines)]
        next_end = _NEVER                      # earliest end among the sounding clips
        noise = self.sc.noise_dbfs
        noise_amp = None if noise is None else np.float32(10 ** (noise / 20))
        # numpy.random only when there is noise to make (2.3 MB of resident memory
        # that the daemon sharing this process would otherwise be charged for).
        rng = None if noise_amp is None else np.random.default_rng(1)
        # Everything is preallocated and reused period after period: the simulator must
        # cost far less than the daemon it feeds. The period is written straight from
        # `out`; a line's column is rewritten only when something sounds on it (or it
        # still holds the last sound), so silence and single clips cost one copy or none.
        out = np.zeros((p, lines), dtype="<i2")
        cols = [out[:, k] for k in range(lines)]
        dirty = [False] * lines                # column k holds samples from a past period
        mix = np.empty((p, lines), dtype=np.float32)    # noise or loopback: all lines
        one = np.empty(p, dtype=np.float32)             # one line with overlapping sounds
        view = memoryview(out).cast("B")
        nbytes = len(view)
        pinmap, factory, clock, cond = self.pinmap, self.factory, self.clock, self._cond
        pins = {}
        plan = None            # the copies of a steady period, see below
        loopback, speed = self.loopback, self.speed
        free, card = self.free_running, BUFFER_PERIODS * nbytes
        t0 = time.monotonic()
        for n in range(0, self.total_frames, p):
            if self.finished:
                return
            end = n + p
            # 1. pins whose edges fall in this period, each at its own sample
            if next_edge < end:
                while si < len(steps) and steps[si].sample < end:
                    st = steps[si]
                    clock.position = st.sample
                    pin = pins.get(st.pin) or pins.setdefault(st.pin, factory.pin(st.pin))
                    if st.active == pinmap.active_low:
                        pin.drive_low()
                    else:
                        pin.drive_high()
                    si += 1
                next_edge = steps[si].sample if si < len(steps) else _NEVER
            clock.position = end
            # 2. audio: clips overlapping [n, n+p), the device's playback, optional noise
            started = next_clip < end
            if started:
                while ci < len(clips) and clips[ci][1] < end:
                    line, s0, ev = clips[ci]
                    length, get, q = self._render(ev)
                    if length > 0:
                        playing[line].append((s0, s0 + length, get, q))
                        next_end = min(next_end, s0 + length)
                    ci += 1
                next_clip = clips[ci][1] if ci < len(clips) else _NEVER
            lb = self._loopback(n, p) if loopback else None
            if lb is not None and not lb.any():
                lb = None                      # silence played back adds nothing
            if noise_amp is not None or lb is not None:
                self._mix_all(mix, out, playing, n, lb, rng, noise_amp)
                dirty = [True] * lines
                plan = None
            elif plan is not None and not started and next_end >= end:
                # Steady: nothing starts or ends in this period or did since the plan
                # was made, so every line is still silent or one clip covering it all.
                for col, q, s0 in plan:
                    np.copyto(col, q[n - s0:end - s0])
            else:
                copies, steady = [], True
                for k in range(lines):
                    srcs = playing[k]
                    if not srcs:
                        if dirty[k]:
                            cols[k].fill(0)
                            dirty[k] = False
                        continue
                    if len(srcs) == 1:
                        s0, e0, get, q = srcs[0]
                        if q is not None and s0 <= n and e0 >= end:
                            np.copyto(cols[k], q[n - s0:end - s0])
                            dirty[k] = True
                            copies.append((cols[k], q, s0))
                            continue
                    self._mix_line(one, cols[k], srcs, n, end, dirty[k])
                    dirty[k] = True
                    steady = False
                plan = copies if steady else None
            if next_end <= end:
                plan = None
                for k in range(lines):
                    playing[k] = [c for c in playing[k] if c[1] > end]
                next_end = min((c[1] for pl in playing for c in pl), default=_NEVER)
            # 3. pace, then write the whole period at once
            if speed > 0:
                due = t0 + n / (r * speed)
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if free and _unread(fd) + nbytes > card:
                # The card's buffer is full: the reader is late, and a card never waits.
                with cond:
                    if self._jumps[-1][0] != self.written or not self.dropped:
                        self.xruns += 1
                        self.drops.append([n, end])
                    else:
                        self.drops[-1][1] = end
                    self.dropped += p
                    self._jumps = [j for j in self._jumps if j[0] < self.written]
                    self._jumps.append((self.written, self.dropped))
                continue
            # One write per period: the pacer never lets capture read past `written`,
            # so a reader cannot see part of a frame, and the pipe is sized to hold
            # several periods so this write does not wait on the reader mid-period.
            k = os.write(fd, view)
            while k < nbytes:
                k += os.write(fd, view[k:])
            self.written += p
            if self.written >= self._soft:
                with cond:
                    cond.notify_all()
        self.wall_s = time.monotonic() - t0

    @staticmethod
    def _mix_line(one, col, srcs, n, end, dirty) -> None:
        """Line audio for [n, end) from several clips (or a tone) into ``col``, an int16
        column of the period. Clips that do not overlap are copied already quantised;
        overlapping ones (and tones) are mixed in float32 in start order and quantised,
        sample for sample what mixing all lines at once gives."""
        spans, copy, last = [], True, n
        for s0, e0, _, q in srcs:              # in start order, so sorted by lo
            lo, hi = max(n, s0), min(end, e0)
            if hi > lo:
                spans.append((lo, hi, s0, q))
                copy = copy and q is not None and lo >= last
                last = hi
        if copy:
            if dirty:                          # else the column is still silence
                col.fill(0)
            for lo, hi, s0, q in spans:
                np.copyto(col[lo - n:hi - n], q[lo - s0:hi - s0])
            return
        one.fill(0.0)
        for s0, e0, get, _ in srcs:            # start order: the order of the sums
            lo, hi = max(n, s0), min(end, e0)
            if hi > lo:
                one[lo - n:hi - n] += get(lo - s0, hi - s0)
        quantise(one, out=one)
        np.copyto(col, one, casting="unsafe")

    @staticmethod
    def _mix_all(mix, out, playing, n, lb, rng, noise_amp) -> None:
        """All lines for [n, n+p) in float32: clips, then the device's playback, then
        noise, quantised into ``out``."""
        p = mix.shape[0]
        mix.fill(0.0)
        for k, srcs in enumerate(playing):
            for s0, e0, get, _ in srcs:
                lo, hi = max(n, s0), min(n + p, e0)
                if hi > lo:
                    mix[lo - n:hi - n, k] += get(lo - s0, hi - s0)
        if lb is not None:
            back = np.zeros_like(mix)
            back[: lb.shape[0]] = lb / 32768.0
            mix += back
        if noise_amp is not None:
            mix += rng.standard_normal(mix.shape).astype(np.float32) * noise_amp
        quantise(mix, out=mix)
        np.copyto(out, mix, casting="unsafe")

    @property
    def played(self) -> np.ndarray:
        """Everything the device played, int16 (frames, lines) (needs ``keep_playback``)."""
        with self._cond:
            raw = b"".join(self._played_chunks)
        return np.frombuffer(raw, dtype="<i2").reshape(-1, self.lines)
