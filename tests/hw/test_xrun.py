"""After an xrun the sample clock owes the frames of the time that passed: the estimate
(table-tested), and the real ALSA capture recovering from ``-EPIPE`` and from a read
that fails with ``EIO`` (snd-aloop under QEMU), with the lost frames added."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hw import alsa_sim, audio
from hw.xrun import ReadTimes, lost_frames

RATE, PERIOD = 8000, 400


@pytest.mark.parametrize("origin,now,frames,block,lost", [
    (None, 5.0, 800, 400, 0),          # nothing known yet: nothing counted
    (0.0, 0.15, 800, 400, 0),          # on time: the block ends at 0.15 s = 1200
    (0.0, 0.16, 800, 400, 80),         # 10 ms late: 80 frames
    (0.0, 1.15, 800, 400, 8000),       # 1 s of audio dropped
    (10.0, 11.15, 800, 400, 8000),     # the origin is not 0
    (0.0, 0.10, 800, 400, 0),          # the clock says early: never negative
    (0.0, 0.15, 1200, 400, 0),         # lost frames already on the clock are not counted twice
])
def test_lost_frames(origin, now, frames, block, lost):
    assert lost_frames(origin, now, frames, block, RATE) == lost


def test_origin_is_the_earliest_read_so_the_least_delayed():
    t = ReadTimes(RATE, reads=3)
    assert t.origin() is None
    t.note(0.05, 400)             # on time: origin 0.0
    t.note(0.13, 800)             # 30 ms late: origin 0.03
    assert t.origin() == 0.0
    t.note(0.20, 1200)
    t.note(0.25, 1600)            # the on-time read is out of the window now
    assert t.origin() == pytest.approx(0.03)


class Clock:
    """A monotonic clock the test moves: one period per read, plus any jump."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += PERIOD / RATE
        return self.t


@pytest.mark.parametrize("fault", ["epipe", "eio"])
def test_capture_recovers_and_counts_the_frames_lost(tmp_path, fault):
    """A real ALSA file PCM on a FIFO. The test holds the FIFO open read-write, so it
    outlives the PCM being closed and reopened, and writes a ramp into it. The fourth
    read fails (``-EPIPE``, or ``EIO`` as snd-aloop's does); 1 s passes meanwhile. The
    capture goes on with the next period, counts the xrun, and puts 8000 frames on the
    sample clock before it."""
    import alsaaudio
    sa = alsa_sim.make(tmp_path / "alsa")
    os.environ["ALSA_CONFIG_PATH"] = str(sa.conf)
    keep = os.open(sa.capture_fifo, os.O_RDWR)
    try:
        ramp = (np.arange(8 * PERIOD) % 30000).astype("<i2")
        os.write(keep, ramp.tobytes())
        clock = Clock()
        cap = audio.AlsaCapture(sa.capture_pcm, 1, RATE, PERIOD, monotonic=clock)
        blocks = [cap.read().copy() for _ in range(3)]
        assert cap.frames == 3 * PERIOD and cap.xruns == 0 and cap.lost_before == 0
        failed = []

        class FailsOnce:
            """The real PCM, whose next read fails once (fault injection)."""

            def __init__(self, pcm):
                self.pcm = pcm

            def read(self):
                if not failed:
                    failed.append(True)
                    clock.t += 1.0                 # the card ran on for 1 s meanwhile
                    if fault == "eio":
                        raise alsaaudio.ALSAAudioError("Input/output error [default]")
                    return -32, b""                # -EPIPE, as pyalsaaudio reports it
                return self.pcm.read()

            def close(self):
                self.pcm.close()
        cap._pcm = FailsOnce(cap._pcm)
        blocks.append(cap.read().copy())
        assert failed and cap.xruns == 1
        assert cap.lost_before == cap.lost_frames == RATE
        assert cap.frames == 4 * PERIOD + RATE
        # The stream itself lost nothing here (the FIFO kept it): the ramp goes on.
        assert np.array_equal(np.concatenate(blocks)[:, 0], ramp[:4 * PERIOD])
        cap.read()
        assert cap.lost_before == 0 and cap.frames == 5 * PERIOD + RATE
        cap.close()
    finally:
        os.close(keep)
