"""``linetap simulate``: the real daemon on the simulated line, as fast as the CPU allows.

Builds the ALSA ``file`` PCM config in a private temp folder, points
``ALSA_CONFIG_PATH`` at it, shares one gpiozero ``MockFactory`` and one
:class:`~hw.clock.SimClock` between the simulator and the daemon, runs the scenario,
and returns once the line has ended and every segment and manifest is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from hw import alsa_sim
from hw import scenario as scen
from hw.clock import SimClock
from hw.gpio import make_factory
from hw.pins import PinMap
from hw.simline import SimulatedLine
from recorder.config import Config
from recorder.runtime.daemon import Daemon, Hardware
from recorder.timebase import Timebase

log = logging.getLogger(__name__)


@dataclass
class SimResult:
    daemon: Daemon
    line: SimulatedLine
    status: dict


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
        before_start=None) -> SimResult:
    """Run ``sc`` through the daemon configured by ``cfg`` (see :func:`sim_config`)."""
    tmp = tempfile.mkdtemp(prefix="linetap-sim-")
    try:
        alsa = alsa_sim.make(tmp)
        os.environ["ALSA_CONFIG_PATH"] = str(alsa.conf)
        factory = make_factory("mock")
        clock = SimClock(sc.rate)
        pins = PinMap.from_config(cfg.pins, sc.lines)
        period = cfg.audio.period_frames
        line = SimulatedLine(sc, alsa, factory, pins, clock, period, speed=speed,
                             keep_playback=keep_playback)
        hw = Hardware(alsa.capture_pcm, alsa.playback_pcm, factory=factory, clock=clock,
                      pacer=line.pacer, timebase=Timebase(sc.rate, sc.start.timestamp()))
        daemon = Daemon(cfg, hw)
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
            status = daemon.status()
        finally:
            line.stop()
            daemon.shutdown()
        line.join(10)
        return SimResult(daemon, line, status)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

