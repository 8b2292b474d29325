"""A box in a folder for ``linetap simulate`` subprocesses: spawn, SIGKILL, read the log.

Used by the reliability campaigns (``bench/campaigns/common.py``) and by the tests that
cut power at a chosen point (``tests/reliability/``). The daemon runs as ``python -m
recorder.cli`` from the repository root, exactly as a box would start it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Box:
    """A data dir plus config for ``linetap simulate`` subprocesses."""

    dir: Path
    practice_pub: Path
    practice_priv: Path
    config: Path | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = None
    boots: int = 0
    extra_env: dict = field(default_factory=dict)
    prefix: list = field(default_factory=list)     # e.g. ["ip", "netns", "exec", "lt-dev"]
    # Niceness to run the daemon at (-20..19); None: inherit ours. The campaigns give it
    # the recorder unit's (unit_nice()), so they test the box as it ships.
    nice: int | None = None

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def spawn(self, scenario: Path, speed: float, env: dict | None = None) -> subprocess.Popen:
        self.boots += 1
        self.log = self.dir / f"boot-{self.boots:04d}.log"
        cmd = [*self.prefix, *nice_prefix(self.nice), sys.executable, "-m", "recorder.cli",
               "-q", "simulate", str(scenario),
               "--data-dir", str(self.data), "--public-key", str(self.practice_pub),
               "--speed", str(speed)]
        if self.config:
            cmd += ["--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env={**os.environ, **self.extra_env,
                                                              **(env or {})},
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"))  # noqa: SIM115
        return self.proc

    def kill(self) -> float:
        """SIGKILL the daemon; returns the wall time of the kill."""
        t = time.time()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(30)
        return t

    def log_tail(self, n=1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


UNIT = ROOT / "systemd" / "linetap-recorder.service"


def unit_nice(unit: Path = UNIT) -> int:
    """The ``Nice=`` of the recorder's systemd unit (-20..19; 0 when it sets none)."""
    nice = 0
    for line in unit.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "Nice":
            nice = int(value)
    return nice


def can_renice(nice: int) -> bool:
    """Whether this process may start a child at ``nice`` (a lower value needs root or
    CAP_SYS_NICE, or an RLIMIT_NICE that allows it)."""
    import resource
    if nice >= os.getpriority(os.PRIO_PROCESS, 0) or os.geteuid() == 0:
        return True
    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or 20 - nice <= soft


def nice_prefix(nice: int | None) -> list[str]:
    """A command prefix that starts a child at niceness ``nice`` whatever ours is (coreutils
    ``nice`` adds to the current value), so a campaign started under ``nice -n 10`` still
    runs the daemon as the unit does; [] for None. Set before exec, while the child has
    one thread: niceness is per thread on Linux and the daemon's threads inherit it."""
    if nice is None:
        return []
    return ["nice", "-n", str(nice - os.getpriority(os.PRIO_PROCESS, 0))]


def new_box(root: Path) -> Box:
    from recorder.evidence import keys
    root.mkdir(parents=True, exist_ok=True)
    priv, pub = keys.practice_keygen(root / "practice.key")
    return Box(root, Path(pub), Path(priv))
