"""How long a process's threads waited for a CPU (``/proc/<pid>/task/*/schedstat``).

A power-cut campaign kills the daemon at a random instant and measures the audio lost.
The design bounds that loss (about 2 s) for a box that keeps up with real time; on a
machine saturated by other work the daemon can be runnable and still not run, and what
it had not yet captured, processed or written at the kill is lost on top. The daemon's
own status (written once a second) cannot show a starvation that began after it was
written, and a starved daemon is the last to notice it. The kernel counts it instead:
the second field of ``/proc/<pid>/task/<tid>/schedstat`` is the time, in nanoseconds,
that thread spent runnable on a run queue waiting for a CPU (``Documentation/scheduler/
sched-stats.rst``). The campaign samples it while the daemon runs and reads, at the
kill, how long the most-delayed thread waited in the last moments: the box was behind
real time by at least that much wall time (times the pacing speed in line time).

Reading is done from outside (the campaign), so a starved daemon does not delay it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """Run-queue wait per thread at one instant.

    ``t``: wall time of the reading (``time.time()``, seconds); ``waits``: thread id ->
    cumulative run-queue wait since the thread started, in nanoseconds (>= 0).
    """

    t: float
    waits: dict[int, int]


def read(pid: int) -> dict[int, int]:
    """Cumulative run-queue wait (ns) of every live thread of ``pid``; empty once it is gone."""
    out: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            out[int(tid)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue       # the thread ended between the listing and the read
    return out


@dataclass(frozen=True)
class Delay:
    """The most-delayed thread in a window: ``seconds`` of wall time it waited for a CPU
    (>= 0), and its thread id (None when no thread waited at all)."""

    seconds: float
    tid: int | None


def most_delayed(samples: list[Sample], t_end: float, window_s: float,
                 only: set[int] | None = None) -> Delay | None:
    """The thread that spent the longest waiting for a CPU in the ``window_s`` seconds
    before ``t_end``, and how long (wall seconds); among the thread ids in ``only`` if
    given (e.g. the threads the audio waits on, leaving out a status LED's).

    Measured between the last sample at or before ``t_end`` and the earliest sample at or
    after ``t_end - window_s`` (so over at most ``window_s``; the sampling interval is the
    resolution). A thread first seen in the window counts from zero: its whole wait falls
    inside it, at most. None when fewer than two samples fall in the window: nothing was
    measured, which is not the same as no wait.
    """
    inside = [s for s in samples if t_end - window_s <= s.t <= t_end]
    if len(inside) < 2:
        return None
    first, last = inside[0], inside[-1]
    worst, who = 0, None
    for tid, ns in last.waits.items():
        if only is not None and tid not in only:
            continue
        if ns - first.waits.get(tid, 0) > worst:
            worst, who = ns - first.waits.get(tid, 0), tid
    return Delay(worst / 1e9, who)


def starved_s(samples: list[Sample], t_end: float, window_s: float) -> float | None:
    """:func:`most_delayed`'s wait in wall seconds (>= 0), or None when not measured."""
    d = most_delayed(samples, t_end, window_s)
    return None if d is None else d.seconds


def names(pid: int) -> dict[int, str]:
    """Thread id -> kernel name (``comm``) of every live thread of ``pid``."""
    out: dict[int, str] = {}
    for tid in read(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                out[tid] = f.read().strip()
        except OSError:
            continue
    return out


def allowance_s(status_behind_s: float, starved_lag_s: float | None) -> float:
    """Line seconds (>= 0) a power-cut loss may exceed its bound by: how far the box was
    measurably behind at the kill, the larger of its backlog at its last status
    (``status_behind_s``) and the starvation measured at the kill itself
    (``starved_lag_s``: :func:`starved_s` times the pacing speed; None if not measured).
    The larger, not the sum: a backlog at the last status is mostly the same starvation,
    seen earlier."""
    return max(0.0, status_behind_s, starved_lag_s or 0.0)


def split_loss(loss_s: float, lag_s: float) -> tuple[float, float]:
    """A loss (line seconds) attributed: (durability loss, lag), both >= 0, summing to the
    loss (0 for a negative one). The lag is audio the box had not yet reached at the kill
    (not captured, processed or written, because it was not running), up to the whole
    loss; the rest is what the journal design gives up (the hold and up to ``journal_s``
    not yet synced), which must stay within the bound."""
    loss = max(0.0, loss_s)
    lag = min(max(0.0, lag_s), loss)
    return loss - lag, lag


class Sampler:
    """Samples one process every ``interval_s`` seconds on a thread of its own, keeping
    the last ``keep_s`` seconds; :meth:`stop` before the process is killed or waited for.

    ``nice``: the sampling thread's own niceness (-20..19), e.g. the measured daemon's,
    so that a loaded machine does not starve the instrument while the daemon runs (a
    campaign is often started under ``nice -n 10``); None, or not permitted: unchanged.
    """

    def __init__(self, pid: int, interval_s: float = 0.05, keep_s: float = 5.0,
                 nice: int | None = None):
        self.pid, self.interval_s, self.keep_s, self.nice = pid, interval_s, keep_s, nice
        self.samples: deque[Sample] = deque()
        self.names: dict[int, str] = {}      # thread names, read by stop()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"schedstat-{pid}",
                                        daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        if self.nice is not None:
            try:       # niceness is per thread on Linux: this thread only
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except OSError:
                pass   # not permitted (not root): sample at the campaign's priority
        while True:
            self.take(time.time())
            if self._stop.wait(self.interval_s):
                return

    def take(self, t: float) -> None:
        """Read the process now (``t``: the wall time to stamp it with, seconds)."""
        waits = read(self.pid)
        if not waits:
            return                 # gone: keep the samples taken while it lived
        with self._lock:
            self.samples.append(Sample(t, waits))
            while self.samples and self.samples[0].t < t - self.keep_s:
                self.samples.popleft()

    def stop(self) -> None:
        """Take one last sample, read the thread names, and stop the thread."""
        self._stop.set()
        self._thread.join(5.0)
        self.names = names(self.pid)
        self.take(time.time())

    def starved_s(self, t_end: float, window_s: float) -> float | None:
        """:func:`starved_s` over the samples kept."""
        with self._lock:
            samples = list(self.samples)
        return starved_s(samples, t_end, window_s)
