"""One shape for every service thread (see docs/architecture.md).

A named thread, a shared stop Event, ``while not stop.wait(interval)``, every tick
guarded so one bad tick is logged with its traceback and counted instead of killing
the thread, a heartbeat the watchdog can read, and a join that names a thread that
will not stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (``/proc/<pid>/task/<tid>/comm``,
    at most 15 bytes), so ``top -H``, ``ps -L`` and the power-cut campaign's starvation
    measure tell the daemon's threads apart: CPython 3.11 leaves every thread named after
    the process. Best effort: where the kernel refuses, the name stays as it was."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


class ServiceThread(threading.Thread):
    """Run ``tick()`` every ``interval`` seconds until ``stop`` is set."""

    def __init__(self, name: str, interval: float, tick: Callable[[], None],
                 stop: threading.Event, *, first_tick: bool = True):
        super().__init__(name=name, daemon=True)
        self.interval, self._tick, self.stop_event = interval, tick, stop
        self.first_tick = first_tick
        self.errors = 0
        self.heartbeat = time.monotonic()
        self.cpu_s = 0.0          # this thread's CPU seconds, updated every tick

    def _guarded(self) -> None:
        try:
            self._tick()
        except Exception:
            self.errors += 1
            log.exception("%s: tick failed (%d so far)", self.name, self.errors)
        self.heartbeat = time.monotonic()
        self.cpu_s = time.thread_time()

    def run(self) -> None:
        name_os_thread(self.name)
        if self.first_tick:
            self._guarded()
        while not self.stop_event.wait(self.interval):
            self._guarded()


class LoopThread(threading.Thread):
    """A thread around a blocking loop ``body()`` (capture, processing, writing).

    ``body`` returns when ``stop`` is set or its input ends; an exception is logged with
    its traceback, stored in :attr:`error` and sets ``stop`` so the daemon shuts down
    in order rather than running half-alive.
    """

    def __init__(self, name: str, body: Callable[[], None], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self._body, self.stop_event = body, stop
        self.error: BaseException | None = None
        self.heartbeat = time.monotonic()
        self.cpu_s = 0.0          # this thread's CPU seconds, set when the body returns

    def run(self) -> None:
        name_os_thread(self.name)
        try:
            self._body()
        except BaseException as exc:
            self.error = exc
            log.exception("%s failed; stopping the daemon", self.name)
            self.stop_event.set()
        finally:
            self.cpu_s = time.thread_time()


def join_all(threads, timeout: float = 10.0) -> list[str]:
    """Join ``threads`` in order; return the names of any that did not stop."""
    stuck = []
    deadline = time.monotonic() + timeout
    for t in threads:
        if t is None or not t.is_alive():
            continue
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            stuck.append(t.name)
            log.error("thread %s did not stop within %.0f s", t.name, timeout)
    return stuck
