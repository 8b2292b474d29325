"""On a Pi, GPIO edges are stamped from the monotonic clock through capture's marks."""

from __future__ import annotations

from hw.clock import CaptureClock, SimClock


class FakeMono:
    def __init__(self):
        self.ns = 1_000_000_000

    def __call__(self):
        return self.ns


def test_edge_between_reads_maps_to_the_right_sample():
    mono = FakeMono()
    clock = CaptureClock(8000, monotonic_ns=mono)
    assert clock.now() == 0
    mono.ns += 20_000_000                 # 20 ms later capture returns 160 frames
    clock.mark(160)
    assert clock.now() == 160
    mono.ns += 7_500_000                  # an edge 7.5 ms after that read returned
    assert clock.now() == 160 + 60
    mono.ns += 12_500_000
    clock.mark(320)                       # the next period arrives on time
    assert clock.now() == 320


def test_clock_never_runs_backwards_past_a_mark():
    mono = FakeMono()
    clock = CaptureClock(16000, monotonic_ns=mono)
    clock.mark(16000)
    mono.ns -= 5_000_000                  # a stale timestamp from another core
    assert clock.now() == 16000


def test_sim_clock_is_set_by_the_simulator():
    c = SimClock(8000)
    c.position = 12345
    assert c.now() == 12345
