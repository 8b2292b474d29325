"""``linetap simulate``: the real daemon on the simulated line, as fast as the CPU allows.

Builds the ALSA ``file`` PCM config in a private temp folder, points
``ALSA_CONFIG_PATH`` at it, shares one gpiozero ``MockFactory`` and one
:class:`~hw.clock.SimClock` between the simulator and the daemon, runs the scenario,
and returns once the line has ended and every segment and manifest is written.

Everything the simulated box does differently from a Pi is :class:`SimHardware`'s, so
the daemon runs unchanged.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hw import alsa_sim
from hw import scenario as scen
from hw.audio import AlsaCapture
from hw.clock import SampleClock, SimClock
from hw.gpio import make_factory
from hw.pins import PinMap
from hw.simdisk import SimDisk
from hw.simline import SimulatedLine
from recorder.config import Config
from recorder.errors import LinetapError
from recorder.runtime.assembly import build_services
from recorder.runtime.daemon import Daemon
from recorder.runtime.hardware import Hardware, Reader
from recorder.storage.store import SEGMENTS
from recorder.timebase import Timebase

log = logging.getLogger(__name__)


#: How far (in periods) the simulated line may run ahead of the call processor.
PACE_PERIODS = 4


class SimHardware(Hardware):
    """The simulated line as the daemon's hardware: ALSA ``file`` PCMs, a MockFactory,
    the simulator's sample clock, and line time.

    * **Pacing.** A simulated line has no clock of its own, so capture reads a period
      only once the call processor is within :data:`PACE_PERIODS` periods of it (a real
      codec delivers in real time and the processor trails by two periods) and the
      writer is not behind, then waits for the simulator to render it (``pacer``).
      Decisions that set playback are then taken as promptly as on a Pi, and the
      recorders are never lapped. A free-running line (``free_running``: the
      ``--realtime`` runs) is paced by its own clock instead, as a card is: capture
      waits only for the line, a processor that falls behind is lapped in the ring,
      and a capture thread that falls behind loses periods to an xrun (``frame_of``
      says where), all counted and alarmed as on a Pi.
    * **Time.** Calls carry line time (the scenario's start + t), so retention judges
      deadlines by line time too, and the system clock's synchronisation never re-anchors
      them.
    * **Disk.** Free space is a virtual disk holding only the recordings
      (:class:`~hw.simdisk.SimDisk`), unless ``free_bytes`` names a real probe (the
      full-disk campaign fills a real tmpfs).
    """

    def __init__(self, alsa, factory, clock: SimClock, pacer: Callable[[int], bool],
                 start_epoch: float, *,
                 free_bytes: Callable[[], int] | None = None,
                 frame_of: Callable[[int], int] | None = None,
                 free_running: bool = False):
        super().__init__(alsa.capture_pcm, alsa.playback_pcm, pin_factory="mock")
        self.factory, self.clock = factory, clock
        self.pacer = pacer                    # the line's; tests may wrap it
        self.frame_of = frame_of              # the line's: where its frames really are
        self.free_running = free_running
        #: Line time: sample 0 is the scenario's start (tests may replace it, e.g. to
        #: boot "in 1970" like a Pi without an RTC).
        self.line_timebase = Timebase(clock.rate, start_epoch)
        self._free_bytes = free_bytes

    def pin_factory(self):
        return self.factory

    def sample_clock(self, rate: int) -> SampleClock:
        return self.clock

    def timebase(self, rate: int) -> Timebase:
        return self.line_timebase

    def open_capture(self, lines: int, rate: int, period: int, reader: Reader) -> AlsaCapture:
        limit = PACE_PERIODS * period
        if self.free_running:
            # The card runs on its own clock and never waits for the daemon.
            return AlsaCapture(self.capture_device, lines, rate, period,
                               pacer=lambda wanted: self.pacer(wanted),
                               frame_of=self.frame_of)

        def paced(wanted: int) -> bool:
            t0 = time.thread_time()
            try:
                with reader.cond:
                    reader.cond.wait_for(lambda: wanted - reader.position() <= limit
                                         or reader.stop.is_set())
                    # The writer never blocks the processor (it must not wait on the
                    # store), so the line waits here while the writer is behind, as
                    # it did when the processor blocked on a bounded queue; not while
                    # the writer is stuck on a full disk, when real time goes on.
                    while reader.store_behind() and not reader.stop.is_set():
                        reader.cond.wait(0.01)
                return self.pacer(wanted)
            finally:
                # The simulator's work on the capture thread, which a Pi's capture
                # (blocked in the ALSA read) never does: benches leave it out.
                self.pacing_cpu_s += time.thread_time() - t0
        return AlsaCapture(self.capture_device, lines, rate, period, pacer=paced,
                           frame_of=self.frame_of)

    def now(self) -> float:
        return self.line_timebase.epoch(self.clock.position)

    def free_bytes(self, data_dir: Path) -> Callable[[], int]:
        return self._free_bytes or SimDisk(Path(data_dir) / SEGMENTS)

    def reserve_bytes(self, configured: int) -> int:
        # The virtual disk holds only the recordings: a reserve on the host's disk would
        # mean nothing there. With a real probe (a tmpfs the campaign fills) it does.
        return configured if self._free_bytes is not None else 0

    def system_clock_synchronised(self) -> bool:
        return False


@dataclass
class SimResult:
    daemon: Daemon
    line: SimulatedLine
    status: dict
    synced: dict | None = None       # with until_synced_s: what was acked, and when


class NotSynced(LinetapError, TimeoutError):
    """``--until-synced``: the backlog was not acked in time (the message says why)."""


def unsynced(daemon: Daemon) -> tuple[int, int]:
    """(segments, manifests) the upstream has not acked yet."""
    m = daemon.store.m
    segs = m.Segment.select().where(m.Segment.acked == False).count()  # noqa: E712
    mans = m.Call.select().where(m.Call.manifest.is_null(False)
                                 & (m.Call.manifest_acked == False)   # noqa: E712
                                 & (m.Call.state != "deleted")).count()
    return segs, mans


def wait_synced(daemon: Daemon, timeout_s: float, poll_s: float = 0.2) -> dict:
    """Wait until every segment and manifest is acked upstream (``timeout_s`` seconds
    at most); :class:`NotSynced` naming the backlog and the link state if not."""
    if daemon.services is None or daemon.services.sync_status() is None:
        raise NotSynced("--until-synced: sync is not enabled ([sync] enabled = true, "
                        "host, ca, cert, key)")
    t0 = time.monotonic()
    # The line has ended but the writer may still be storing the last call: what is not
    # in the store yet would look synced.
    if not daemon.writer.drain(timeout_s):
        raise NotSynced(f"the writer did not finish within {timeout_s:g} s")
    while True:
        segs, mans = unsynced(daemon)
        if segs == 0 and mans == 0:
            return {"seconds": round(time.monotonic() - t0, 1),
                    **daemon.services.sync_status()}
        if time.monotonic() - t0 >= timeout_s:
            st = daemon.services.sync_status() or {}
            raise NotSynced(f"not synced after {timeout_s:g} s: {segs} segment(s) and "
                            f"{mans} manifest(s) not acked; link {st.get('link')}"
                            f"{' (' + st['detail'] + ')' if st.get('detail') else ''}")
        time.sleep(poll_s)


def sim_config(cfg: Config, sc: scen.Scenario, data_dir: str, public_key: str | None = None,
               announcement: str | None = None) -> Config:
    """The config a simulation runs with: the scenario fixes rate and lines."""
    over = {"device__hardware": "sim", "device__data_dir": str(data_dir),
            "audio__rate": sc.rate, "audio__lines": sc.lines}
    if public_key:
        over["recording__public_key"] = str(public_key)
    if announcement:
        over["announcement__file"] = str(announcement)
    if not cfg.device.id:
        over["device__id"] = "lt-sim0001"
    return cfg.replace(**over)


def run(sc: scen.Scenario, cfg: Config, *, speed: float = 0.0, keep_playback: bool = False,
        before_start=None, free_bytes: Callable[[], int] | None = None,
        services=build_services, until_synced_s: float | None = None,
        free_running: bool = False) -> SimResult:
    """Run ``sc`` through the daemon configured by ``cfg`` (see :func:`sim_config`).

    ``speed``: 0 = as fast as the daemon keeps up, 1.0 = real time, 4 = four times.
    ``free_running`` (with a speed; ``linetap simulate --realtime``): the simulated card
    never waits for the daemon, so a late reader loses audio as on a Pi (counted,
    alarmed, and a gap in the call); otherwise line and daemon move in lockstep.

    ``until_synced_s``: after the scenario, keep the daemon running until the upstream
    has acked every segment and manifest, for at most this many seconds
    (:func:`wait_synced`).

    ``free_bytes`` replaces the virtual disk's free-space probe (bytes); ``services``
    the service builder (None runs without retention and sync)."""
    tmp = tempfile.mkdtemp(prefix="linetap-sim-")
    try:
        alsa = alsa_sim.make(tmp)
        os.environ["ALSA_CONFIG_PATH"] = str(alsa.conf)
        factory = make_factory("mock")
        clock = SimClock(sc.rate)
        pins = PinMap.from_config(cfg.pins, sc.lines)
        period = cfg.audio.period_frames
        line = SimulatedLine(sc, alsa, factory, pins, clock, period, speed=speed,
                             keep_playback=keep_playback, free_running=free_running)
        hw = SimHardware(alsa, factory, clock, line.pacer, sc.start.timestamp(),
                         free_bytes=free_bytes, frame_of=line.frame_of,
                         free_running=free_running)
        daemon = Daemon(cfg, hw, services=services)
        if before_start:
            before_start(daemon, line)
        line.start()
        try:
            daemon.start()
        except BaseException:
            line.stop()
            daemon.shutdown()
            raise
        try:
            while not daemon.wait(0.5):
                if daemon.stop.is_set():
                    break
            synced = None
            if until_synced_s is not None:
                synced = wait_synced(daemon, until_synced_s)
            status = daemon.status()
        finally:
            line.stop()
            daemon.shutdown()
        line.join(10)
        return SimResult(daemon, line, status, synced)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

