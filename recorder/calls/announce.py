"""What the box plays into each line: the consent announcement, warning beeps, test tones.

The playback thread asks :meth:`Announcer.render` for frames in line-time order; the
call processor schedules clips at absolute playback frames. Playback frame *p* is heard
on the line at capture sample *p* (the device queues playback ahead of capture), so a
clip's scheduled frame is exactly where it appears in the recording.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recorder.errors import ConfigError


@dataclass(frozen=True)
class Clip:
    """A mono clip ready to play: int16 samples, plus its identity for the metadata."""

    id: str
    sha256: str
    pcm: np.ndarray

    @property
    def frames(self) -> int:
        return len(self.pcm)


def load_clip(path: str, rate: int, level_db: float = 0.0) -> Clip:
    """Load a mono WAV at ``rate`` Hz. ``id`` is the file name, ``sha256`` of its bytes."""
    import soundfile as sf
    p = Path(path)
    try:
        raw = p.read_bytes()
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:
        raise ConfigError([f"announcement {p}: cannot read: {exc}"]) from exc
    if sr != rate:
        raise ConfigError([f"announcement {p} is {sr} Hz; the capture rate is {rate} Hz"])
    if data.shape[1] != 1:
        raise ConfigError([f"announcement {p} has {data.shape[1]} channels; it must be mono"])
    pcm = np.clip(np.rint(data[:, 0] * 10 ** (level_db / 20) * 32767), -32768, 32767)
    return Clip(p.name, hashlib.sha256(raw).hexdigest(), pcm.astype(np.int16))


def tone_clip(hz: float, seconds: float, rate: int, dbfs: float, name: str = "tone") -> Clip:
    """A sine tone with 5 ms raised-cosine edges (no clicks)."""
    n = max(1, int(round(seconds * rate)))
    t = np.arange(n) / rate
    x = np.sin(2 * np.pi * hz * t) * 10 ** (dbfs / 20)
    ramp = min(n // 2, int(0.005 * rate))
    if ramp:
        w = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        x[:ramp] *= w
        x[-ramp:] *= w[::-1]
    pcm = np.rint(x * 32767).astype(np.int16)
    return Clip(f"{name}-{hz:g}Hz", hashlib.sha256(pcm.tobytes()).hexdigest(), pcm)


class Announcer:
    """Per-line schedule of clips, rendered into interleaved playback frames."""

    def __init__(self, lines: int):
        self.lines = lines
        self._lock = threading.Lock()
        self._sched: list[tuple[int, int, Clip]] = []   # (line, start frame, clip)
        self.rendered = 0                                # frames handed to playback
        self._silence = np.zeros((0, lines), dtype=np.int16)

    def schedule(self, line: int, clip: Clip, at: int) -> int:
        """Play ``clip`` on ``line`` from playback frame ``at``, or from the first frame
        not yet handed to the device if ``at`` has passed. Returns the actual start."""
        with self._lock:
            start = max(at, self.rendered)
            self._sched.append((line, start, clip))
            return start

    def cancel(self, line: int, from_frame: int) -> None:
        """Stop everything on ``line`` from ``from_frame`` (the call ended)."""
        with self._lock:
            keep = []
            for ln, s, c in self._sched:
                if ln != line or s + c.frames <= from_frame:
                    keep.append((ln, s, c))
                elif s < from_frame:
                    keep.append((ln, s, Clip(c.id, c.sha256, c.pcm[: from_frame - s])))
            self._sched = keep

    def render(self, start: int, n: int) -> np.ndarray:
        """Frames [start, start+n) as int16 (n, lines); silence where nothing plays.

        The returned array may be a shared read-only block of silence: do not modify it.
        """
        with self._lock:
            if not self._sched:
                self.rendered = start + n
                if self._silence.shape[0] != n:
                    self._silence = np.zeros((n, self.lines), dtype=np.int16)
                    self._silence.flags.writeable = False
                return self._silence
        out = np.zeros((n, self.lines), dtype=np.int16)
        with self._lock:
            keep = []
            for ln, s, c in self._sched:
                lo, hi = max(start, s), min(start + n, s + c.frames)
                if hi > lo:
                    out[lo - start:hi - start, ln] = c.pcm[lo - s:hi - s]
                if s + c.frames > start + n:
                    keep.append((ln, s, c))
            self._sched = keep
            self.rendered = start + n
        return out

    def busy(self, line: int) -> bool:
        with self._lock:
            return any(ln == line for ln, _s, _c in self._sched)
