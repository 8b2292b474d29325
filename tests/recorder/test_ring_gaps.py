"""Frames the sound card dropped are skipped in the ring: silence of their true length at
their true sample index, listed as gaps until the ring no longer holds them."""

from __future__ import annotations

import numpy as np
import pytest

from recorder.capture.ring import Overrun, RingBuffer


def _ring(size=100):
    r = RingBuffer(size, 1)
    r.write(np.full((30, 1), 7, np.int16))
    return r


def test_a_skip_is_silence_at_the_true_index_and_a_gap():
    r = _ring()
    r.skip(20)
    r.write(np.full((10, 1), 9, np.int16))
    assert r.written == 60
    x = r.read(0, 0, 60)
    assert (x[:30] == 7).all() and (x[30:50] == 0).all() and (x[50:] == 9).all()
    assert r.gaps == [(30, 50)]


@pytest.mark.parametrize("start,end,want", [
    (0, 30, []),                   # before the gap
    (25, 35, [(30, 35)]),          # into it
    (30, 50, [(30, 50)]),          # exactly it
    (45, 60, [(45, 50)]),          # out of it
    (50, 60, []),                  # after it
    (0, 60, [(30, 50)]),           # across it
])
def test_gaps_in_a_range(start, end, want):
    r = _ring()
    r.skip(20)
    r.write(np.full((10, 1), 9, np.int16))
    assert r.gaps_in(start, end) == want


def test_a_skip_longer_than_the_ring_wraps_and_old_gaps_are_forgotten():
    r = _ring()
    r.skip(20)                         # (30, 50)
    r.write(np.full((10, 1), 9, np.int16))
    r.skip(250)                        # longer than the ring: all of it is silence
    assert r.written == 310
    assert r.gaps == [(60, 310)]       # (30, 50) is no longer held
    assert (r.read(0, 210, 310) == 0).all()
    with pytest.raises(Overrun):
        r.read(0, 200, 210)
    r.skip(0)                          # nothing dropped: nothing recorded
    assert r.gaps == [(60, 310)] and r.written == 310
