"""Per-line ring buffer of captured audio, indexed by absolute sample number.

The capture thread is the only writer and never waits: it overwrites the oldest audio.
Readers ask for absolute sample ranges and learn afterwards, by comparing against the
write position, whether the capture thread lapped them (an *overrun*, counted and
alarmed by the daemon, never silent).

Audio the sound card itself dropped (an xrun) is a *gap*: the capture thread skips its
frames (:meth:`RingBuffer.skip`), so every later sample keeps its true index, and the
span reads as silence and is listed in :attr:`RingBuffer.gaps` for the recorder to
put in the call's metadata.
"""

from __future__ import annotations

import threading

import numpy as np


class Overrun(Exception):
    """The requested audio has already been overwritten."""


class RingBuffer:
    """``lines`` channels of int16 audio, ``size`` frames long (frames = samples per line).

    :param size: frames kept, e.g. 30 s x 8000 Hz = 240000.
    :param lines: channels, 1-4.
    """

    def __init__(self, size: int, lines: int):
        self.size, self.lines = int(size), int(lines)
        self.buf = np.zeros((self.size, self.lines), dtype=np.int16)
        self.written = 0                      # absolute frames written so far
        self.cond = threading.Condition()
        #: Spans [start, end) (absolute samples) the sound card dropped, oldest first;
        #: those the ring no longer holds are forgotten.
        self.gaps: list[tuple[int, int]] = []

    def write(self, block: np.ndarray) -> None:
        """Append an int16 (n, lines) block (capture thread only)."""
        n = block.shape[0]
        if n > self.size:
            block, n = block[-self.size:], self.size
        i = self.written % self.size
        first = min(n, self.size - i)
        self.buf[i:i + first] = block[:first]
        if first < n:
            self.buf[: n - first] = block[first:]
        with self.cond:
            self.written += n
            self.cond.notify_all()

    def skip(self, n: int) -> None:
        """Frames ``n`` the card dropped before the next block (capture thread only):
        they become silence of their true length and a gap, so later samples keep their
        true index on the line."""
        if n <= 0:
            return
        start = self.written
        i, zero = start % self.size, min(n, self.size)
        first = min(zero, self.size - i)
        self.buf[i:i + first] = 0
        self.buf[: zero - first] = 0
        with self.cond:
            self.gaps = [g for g in self.gaps if g[1] > start + n - self.size]
            self.gaps.append((start, start + n))
            self.written += n
            self.cond.notify_all()

    def gaps_in(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) the card dropped (see :meth:`skip`)."""
        gaps = self.gaps                      # replaced, never changed in place
        return [(max(a, start), min(b, end)) for a, b in gaps if a < end and b > start]

    def oldest(self) -> int:
        """First absolute sample still held."""
        return max(0, self.written - self.size)

    def _slices(self, start: int, end: int):
        i, j = start % self.size, end % self.size
        if end - start == 0:
            return []
        if i < j:
            return [(i, j)]
        return [(i, self.size), (0, j)]

    def read(self, line: int, start: int, end: int) -> np.ndarray:
        """Copy of samples [start, end) of ``line``. Raises :class:`Overrun` if lapped."""
        if end > self.written:
            raise ValueError(f"samples up to {end} requested, only {self.written} captured")
        if start < self.oldest():
            raise Overrun(start)
        parts = [self.buf[a:b, line] for a, b in self._slices(start, end)]
        out = np.concatenate(parts) if len(parts) > 1 else (parts[0].copy() if parts
                                                          else np.zeros(0, np.int16))
        # The writer may have lapped us while we copied: check again afterwards.
        if start < self.oldest():
            raise Overrun(start)
        return out

    def zero(self, line: int, start: int, end: int) -> None:
        """Overwrite samples [start, end) of ``line`` with zeros (paused audio)."""
        start = max(start, self.oldest())
        end = min(end, self.written)
        for a, b in self._slices(start, end) if end > start else []:
            self.buf[a:b, line] = 0

    def wait_for(self, sample: int, timeout: float | None = None) -> bool:
        """Block until at least ``sample`` frames are written (or timeout)."""
        with self.cond:
            return self.cond.wait_for(lambda: self.written >= sample, timeout)
