"""The power-cut campaign's measure of a starved box (tests/support/schedstat.py) and the
priority it runs the daemon at (tests/support/simbox.py): table tests for the pure parts,
and the kernel's run-queue wait read from real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.support import schedstat
from tests.support.simbox import nice_prefix, unit_nice

S = schedstat.Sample
MS = 1_000_000        # ns


@pytest.mark.parametrize("samples, t_end, window, expected", [
    # no samples, or one: nothing measured (None), not "no wait"
    ([], 10.0, 1.0, None),
    ([S(9.5, {1: 0})], 10.0, 1.0, None),
    # the most-delayed thread decides: thread 2 waited 300 ms in the window
    ([S(9.0, {1: 0, 2: 0}), S(10.0, {1: 100 * MS, 2: 300 * MS})], 10.0, 1.0, 0.3),
    # samples before the window are left out: the wait before 9.0 does not count
    ([S(8.0, {1: 0}), S(9.0, {1: 900 * MS}), S(10.0, {1: 950 * MS})], 10.0, 1.0, 0.05),
    # samples after t_end are left out (the kill came first)
    ([S(9.0, {1: 0}), S(9.5, {1: 10 * MS}), S(10.5, {1: 800 * MS})], 10.0, 1.0, 0.01),
    # a thread born in the window counts from zero
    ([S(9.0, {1: 0}), S(10.0, {1: 0, 7: 200 * MS})], 10.0, 1.0, 0.2),
    # a thread gone by the last sample is not counted (its wait is unknown)
    ([S(9.0, {1: 0, 7: 0}), S(10.0, {1: 20 * MS})], 10.0, 1.0, 0.02),
])
def test_starved_s(samples, t_end, window, expected):
    got = schedstat.starved_s(samples, t_end, window)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("samples, expected", [
    ([S(9.0, {1: 0, 2: 0}), S(10.0, {1: 100 * MS, 2: 300 * MS})], schedstat.Delay(0.3, 2)),
    ([S(9.0, {1: 5, 2: 7}), S(10.0, {1: 5, 2: 7})], schedstat.Delay(0.0, None)),  # no wait
])
def test_most_delayed_names_the_thread(samples, expected):
    assert schedstat.most_delayed(samples, 10.0, 1.0) == expected


def test_thread_names_are_read_from_the_kernel():
    got = schedstat.names(os.getpid())
    assert got[os.getpid()] and set(got) == set(schedstat.read(os.getpid()))


@pytest.mark.parametrize("status_behind, starved, expected", [
    (0.0, None, 0.0),      # nothing measured, nothing behind: the bound alone
    (0.3, None, 0.3),      # only the last status: its backlog
    (0.3, 1.2, 1.2),       # starved at the kill beyond the last status's backlog
    (1.5, 0.2, 1.5),       # a backlog the box was still working off
    (-0.1, 0.0, 0.0),      # never negative
])
def test_allowance_s(status_behind, starved, expected):
    assert schedstat.allowance_s(status_behind, starved) == pytest.approx(expected)


@pytest.mark.parametrize("loss, lag, expected", [
    (1.1, 0.0, (1.1, 0.0)),    # a box that kept up: all of it is durability loss
    (2.7, 1.2, (1.5, 1.2)),    # a starved box: 1.2 s it had not reached
    (0.8, 1.5, (0.0, 0.8)),    # lag beyond the loss: the whole loss is lag
    (-0.2, 0.5, (0.0, 0.0)),   # recorded past the estimated kill: nothing lost
])
def test_split_loss(loss, lag, expected):
    assert schedstat.split_loss(loss, lag) == pytest.approx(expected)


def _started(code: str) -> subprocess.Popen:
    """A Python child that prints a line once started, then runs ``code``."""
    p = subprocess.Popen([sys.executable, "-c", f"print(flush=True)\n{code}"],
                         stdout=subprocess.PIPE)
    p.stdout.readline()             # started: its own start-up's waits are behind us
    return p


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_a_process_sharing_one_cpu_with_another_is_measured_waiting():
    # Two busy processes pinned to one CPU: each waits while the other runs, whatever
    # else the machine does. A sleeping process never waits on a run queue.
    cpu = min(os.sched_getaffinity(0))
    procs = []
    try:
        for _ in range(2):
            procs.append(_started("while True: pass"))
            os.sched_setaffinity(procs[-1].pid, {cpu})
        sleeper = _started("import time; time.sleep(60)")
        procs.append(sleeper)
        sa = schedstat.Sampler(procs[0].pid).start()
        ss = schedstat.Sampler(sleeper.pid).start()
        time.sleep(0.8)
        sa.stop()
        ss.stop()
        assert sa.starved_s(sa.samples[-1].t, 0.7) > 0.1
        assert ss.starved_s(ss.samples[-1].t, 0.7) < 0.05
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_the_recorder_unit_raises_its_priority():
    assert unit_nice() < 0


def test_the_daemon_is_started_at_the_niceness_asked_whatever_ours_is():
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    want = unit_nice() if os.geteuid() == 0 else min(19, mine + 5)
    out = subprocess.run([*nice_prefix(want), sys.executable, "-c",
                          "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
                         capture_output=True, text=True, check=True).stdout
    assert int(out) == want
    assert nice_prefix(None) == []


def test_most_delayed_among_the_threads_asked_for():
    samples = [S(9.0, {1: 0, 2: 0, 3: 0}), S(10.0, {1: 100 * MS, 2: 300 * MS, 3: 50 * MS})]
    # thread 2 (say, the status LED's) waited longest, but only 1 and 3 carry audio
    assert schedstat.most_delayed(samples, 10.0, 1.0, only={1, 3}) == schedstat.Delay(0.1, 1)
