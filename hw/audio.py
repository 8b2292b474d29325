"""ALSA capture and playback through pyalsaaudio.

All lines are channels of one PCM (a stereo HAT gives 2 lines, a USB multichannel
interface 4). Samples are S16_LE. ``alsaaudio`` is imported only when a PCM is opened,
so the package imports on any machine.

In simulation the same classes open an ALSA ``file`` PCM (see :mod:`hw.alsa_sim`),
whose slave is ``null`` and so has no clock of its own: the simulated line then passes
a *pacer* that blocks each read until the simulator has written a whole period, the
job a codec's crystal does on real hardware. A *free-running* simulated line (the
``--realtime`` runs) never waits for the reader: like a card, it drops the periods the
reader was too late for, and says where (``frame_of``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from hw.errors import HardwareError
from hw.xrun import ReadTimes, lost_frames

log = logging.getLogger(__name__)

# pacer(frames_wanted_total) -> bool: block until that many frames exist; False = line ended.
Pacer = Callable[[int], bool]
_S16 = np.dtype("<i2")
BUFFER_PERIODS = 4      # the card's ring, in periods: a reader later than this overruns
REOPEN_TRIES = 5        # failed reads in a row before capture gives up
REOPEN_DELAY_S = 0.1    # wait before reopening, times the failures so far


def _alsa():
    try:
        import alsaaudio
    except ImportError as exc:  # pragma: no cover - pyalsaaudio is a hard dependency
        raise HardwareError("pyalsaaudio is not installed") from exc
    return alsaaudio


def _pcm(kind: str, device: str, channels: int, rate: int, period: int, nonblock=False):
    alsaaudio = _alsa()
    mode = alsaaudio.PCM_NONBLOCK if nonblock else alsaaudio.PCM_NORMAL
    typ = alsaaudio.PCM_CAPTURE if kind == "capture" else alsaaudio.PCM_PLAYBACK
    try:
        pcm = alsaaudio.PCM(typ, mode, device=device, channels=channels, rate=rate,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=period,
                            periods=BUFFER_PERIODS)
    except alsaaudio.ALSAAudioError as exc:
        raise HardwareError(f"cannot open ALSA {kind} device '{device}' "
                            f"({channels} ch, {rate} Hz): {exc}") from exc
    got = pcm.info()
    if got.get("rate") != rate or got.get("channels") != channels:
        raise HardwareError(f"ALSA {kind} device '{device}' gave {got.get('channels')} ch at "
                            f"{got.get('rate')} Hz, not {channels} ch at {rate} Hz")
    return pcm


def probe_capture(device: str, channels: int, rate: int, period: int) -> None:
    """Open and close ``device`` for capture exactly as :class:`AlsaCapture` will (S16_LE,
    ``channels`` at ``rate`` Hz, ``period`` frames), checking that the card gave what was
    asked. Raises :class:`HardwareError` naming the problem. ``linetap doctor`` uses it,
    so doctor passes a device only if the daemon can record from it."""
    _pcm("capture", device, channels, rate, period, nonblock=True).close()


class AlsaCapture:
    """Reads interleaved S16_LE periods from one PCM, and keeps the sample clock true
    across xruns.

    A card whose reader is late overruns (ALSA ``-EPIPE``; snd-aloop under QEMU then
    fails the next read with ``EIO``). The stream is recovered (re-prepared by
    pyalsaaudio, or closed and reopened after an error), the xrun counted, and the
    frames lost added to :attr:`frames` (:func:`hw.xrun.lost_frames`), so a sample's
    index stays its true time on the line. :attr:`lost_before` says how many frames
    were lost just before the block :meth:`read` last returned.

    :param device: ALSA PCM name.
    :param channels: number of lines, 1-4.
    :param rate: 8000 or 16000 Hz.
    :param period: frames per read.
    :param pacer: simulation only, see the module docstring. It is given stream
        positions (frames read from the PCM).
    :param frame_of: simulation only: the sample-clock frame of a stream position.
        The simulated card knows exactly what it dropped, so no estimate is made.
    :param monotonic: the monotonic clock, seconds (tests of the estimate may pass one).
    """

    def __init__(self, device: str, channels: int, rate: int, period: int,
                 pacer: Pacer | None = None, frame_of: Callable[[int], int] | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.device, self.channels, self.rate, self.period = device, channels, rate, period
        self.frames = 0          # the sample clock: frames delivered plus frames lost
        self.read_frames = 0     # frames read from the PCM (the stream position)
        self.short_reads = 0     # reads that returned fewer frames than a period
        self.xruns = 0           # overruns and failed reads the stream recovered from
        self.lost_frames = 0     # frames dropped by the card, in all
        self.lost_before = 0     # frames dropped just before the last block returned
        self._pacer, self._frame_of, self._mono = pacer, frame_of, monotonic
        self._times = ReadTimes(rate)
        self._pcm = _pcm("capture", device, channels, rate, period)
        self.period = self._pcm.info().get("period_size", period)

    def read(self) -> np.ndarray | None:
        """Block for the next period; returns int16 array (frames, channels), or None at the
        end of a simulated line. Never returns an empty array."""
        if self._pacer is not None and not self._pacer(self.read_frames + self.period):
            return None
        xrun, failures = False, 0
        while True:
            try:
                n, data = self._pcm.read()
            except _alsa().ALSAAudioError as exc:
                failures += 1
                self._reopen(exc, failures)
                xrun = True
                continue
            if n > 0:
                break
            if n < 0:
                # -EPIPE: we were late and the card dropped audio; pyalsaaudio has
                # already re-prepared the stream. Counted and alarmed by the daemon.
                self.xruns += 1
                xrun = True
                log.warning("ALSA capture overrun (%d so far)", self.xruns)
        now = self._mono()
        if self._frame_of is not None:
            lost = self._frame_of(self.read_frames) - self.frames
            if lost > 0:
                self.xruns += 1
        else:
            lost = lost_frames(self._times.origin(), now, self.frames, n, self.rate) \
                if xrun else 0
        if n != self.period:
            self.short_reads += 1
        if lost > 0:
            self.lost_frames += lost
            log.warning("ALSA capture: %d frame(s) lost at sample %d (%.3f s)", lost,
                        self.frames, lost / self.rate)
        self.lost_before = max(0, lost)
        self.read_frames += n
        self.frames += self.lost_before + n
        self._times.note(now, self.frames)
        # A view of pyalsaaudio's bytes, no copy (read-only, like the bytes).
        return np.ndarray((n, self.channels), _S16, data)

    def _reopen(self, exc: Exception, failures: int) -> None:
        """A read failed (``EIO`` after an overrun on snd-aloop): close the PCM and open
        it again, as ``snd_pcm_recover`` cannot. Gives up with :class:`HardwareError`
        after :data:`REOPEN_TRIES` failures in a row (systemd then restarts the
        daemon)."""
        self.xruns += 1
        log.warning("ALSA capture read failed (%s); reopening '%s' (xrun %d)", exc,
                    self.device, self.xruns)
        if failures > REOPEN_TRIES:
            raise HardwareError(f"ALSA capture '{self.device}' failed {failures} times "
                                f"in a row: {exc}") from exc
        try:
            self._pcm.close()
        except _alsa().ALSAAudioError:
            log.debug("closing the failed capture PCM", exc_info=True)
        time.sleep(REOPEN_DELAY_S * failures)
        self._pcm = _pcm("capture", self.device, self.channels, self.rate, self.period)

    def close(self) -> None:
        self._pcm.close()


class AlsaPlayback:
    """Writes interleaved S16_LE frames to one PCM (announcements, beeps, test tones)."""

    def __init__(self, device: str, channels: int, rate: int, period: int):
        self.channels, self.rate, self.period = channels, rate, period
        self.frames = 0
        self._pcm = _pcm("playback", device, channels, rate, period)

    def write(self, frames: np.ndarray) -> None:
        """Write an int16 array (frames, channels); blocks while the device buffer is full."""
        if frames.dtype != np.int16 or frames.ndim != 2 or frames.shape[1] != self.channels:
            raise ValueError(f"playback needs int16 (n, {self.channels}), got "
                             f"{frames.dtype} {frames.shape}")
        buf = np.ascontiguousarray(frames).astype("<i2", copy=False).tobytes()
        fb = 2 * self.channels
        step = self.period * fb
        for i in range(0, len(buf), step):
            chunk = buf[i:i + step]
            written = self._pcm.write(chunk)
            if written < 0:
                log.warning("ALSA playback underrun")
        self.frames += frames.shape[0]

    def close(self) -> None:
        self._pcm.close()
