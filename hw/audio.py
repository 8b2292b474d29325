"""ALSA capture and playback through pyalsaaudio.

All lines are channels of one PCM (a stereo HAT gives 2 lines, a USB multichannel
interface 4). Samples are S16_LE. ``alsaaudio`` is imported only when a PCM is opened,
so the package imports on any machine.

In simulation the same classes open an ALSA ``file`` PCM (see :mod:`hw.alsa_sim`),
whose slave is ``null`` and so has no clock of its own: the simulated line then passes
a *pacer* that blocks each read until the simulator has written a whole period, the
job a codec's crystal does on real hardware.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from hw.errors import HardwareError

log = logging.getLogger(__name__)

# pacer(frames_wanted_total) -> bool: block until that many frames exist; False = line ended.
Pacer = Callable[[int], bool]
_S16 = np.dtype("<i2")


def _pcm(kind: str, device: str, channels: int, rate: int, period: int, nonblock=False):
    try:
        import alsaaudio
    except ImportError as exc:  # pragma: no cover - pyalsaaudio is a hard dependency
        raise HardwareError("pyalsaaudio is not installed") from exc
    mode = alsaaudio.PCM_NONBLOCK if nonblock else alsaaudio.PCM_NORMAL
    typ = alsaaudio.PCM_CAPTURE if kind == "capture" else alsaaudio.PCM_PLAYBACK
    try:
        pcm = alsaaudio.PCM(typ, mode, device=device, channels=channels, rate=rate,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=period,
                            periods=4)
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
    """Reads interleaved S16_LE periods from one PCM.

    :param device: ALSA PCM name.
    :param channels: number of lines, 1-4.
    :param rate: 8000 or 16000 Hz.
    :param period: frames per read.
    :param pacer: simulation only, see the module docstring.
    """

    def __init__(self, device: str, channels: int, rate: int, period: int,
                 pacer: Pacer | None = None):
        self.channels, self.rate, self.period = channels, rate, period
        self.frames = 0          # total frames delivered so far: the sample clock
        self.short_reads = 0     # reads that returned fewer frames than a period
        self.xruns = 0
        self._pacer = pacer
        self._pcm = _pcm("capture", device, channels, rate, period)
        self.period = self._pcm.info().get("period_size", period)

    def read(self) -> np.ndarray | None:
        """Block for the next period; returns int16 array (frames, channels), or None at the
        end of a simulated line. Never returns an empty array."""
        if self._pacer is not None and not self._pacer(self.frames + self.period):
            return None
        while True:
            n, data = self._pcm.read()
            if n > 0:
                break
            if n < 0:
                # -EPIPE: the consumer (us) was late and ALSA dropped audio. Counted and
                # alarmed by the daemon; pyalsaaudio has already re-prepared the stream.
                self.xruns += 1
                log.warning("ALSA capture overrun (%d so far)", self.xruns)
        if n != self.period:
            self.short_reads += 1
        self.frames += n
        # A view of pyalsaaudio's bytes, no copy (read-only, like the bytes).
        return np.ndarray((n, self.channels), _S16, data)

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
