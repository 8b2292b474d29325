"""Plaintext audio on a disk that should hold only ciphertext: the scan the tests and the
campaigns share.

Two detectors run over every byte of every file:

* **Containers**: a WAV, FLAC or Ogg Opus/Vorbis stream at any offset
  (:data:`PLAINTEXT_ANYWHERE`).
* **Headerless PCM carrying a test tone** (:func:`tone_in_pcm`): the bytes are read as
  S16_LE at both byte alignments and cut into windows of :data:`WINDOW` samples every
  :data:`HOP`; a window is *tonal* when at least :data:`CONCENTRATION` of its energy
  (above the lowest :data:`LOW_BIN` bins, so DC and hum do not count) lies within
  two bins of its two strongest peaks, the peaks lie between :data:`LOW_BIN` and
  :data:`HIGH_BIN` (away from DC and Nyquist, where byte patterns with period 2 or
  4 land), and its RMS is above :data:`FLOOR_DBFS`. :data:`RUN` tonal windows in a row
  are a finding. The scenarios' and tests' tones (single tones from 300 to 2200 Hz,
  dial tone 350+440 Hz, DTMF pairs, the DT-AS 2130+2750 Hz, beeps; ``hw/linesignals.py``
  and the scenario files) are one or two sinusoids, so each window of them is tonal; a
  window of ciphertext is white noise, whose two strongest peaks hold about a fifth of
  its energy. The test depends only on bins, so it works at 8 and 16 kHz alike.

Minimum detectable length: :data:`MIN_TONE_SAMPLES` samples (2048 bytes; 128 ms at
8 kHz, 64 ms at 16 kHz) of a tone at -30 dBFS or louder, with line noise 10 dB or
more below it, anywhere in a file (``tests/reliability/test_plaintext_scan.py``). Speech
alone is not looked for (it is not a steady tone); pauses are zeros, never a finding.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

#: Audio containers anywhere in a file, not only at its start (a WAV inside a journal, a
#: FLAC stream appended to a record). Every pattern is 7 bytes or more, so ciphertext
#: matches one by chance about once in 2**56 positions: no false alarms.
PLAINTEXT_ANYWHERE = re.compile(
    rb"RIFF.{4}WAVE|fLaC[\x00\x80]\x00\x00\x22|OpusHead|\x01vorbis", re.S)

WINDOW = 256              # samples per FFT window (32 ms at 8 kHz)
HOP = 256                 # samples between windows (they do not overlap)
RUN = 3                   # tonal windows in a row that are a finding (768 samples)
LOW_BIN, HIGH_BIN = 3, WINDOW // 2 - 6     # peaks between 94 and 3812 Hz at 8 kHz
CONCENTRATION = 0.75      # share of the energy in the two strongest peaks
FLOOR_DBFS = -50.0        # quieter windows are silence, never a finding
MIN_TONE_SAMPLES = 1024   # shortest tone always found: RUN windows fit at any offset
_CHUNK = 1 << 18          # samples analysed at once (bounded memory)
_HANN = np.hanning(WINDOW).astype(np.float32)
# Mean square of a full-scale-relative window from its one-sided power spectrum
# (Parseval, the Hann window's power 0.375 divided out).
_MS_SCALE = 2.0 / (WINDOW * WINDOW * 0.375 * 32768.0 ** 2)
_FLOOR_MS = 10 ** (FLOOR_DBFS / 10)
_LOBE = np.arange(-2, 3)
# Bytes that repeat every m samples (fixed-size records, as in an SQLite index, with a
# field counting and now and then a different record) are periodic, so their energy
# sits at multiples of rate/m alone: a pure tone at rate/3 from a 6-byte record. A
# window in which most samples equal the one m = 2 to 7 samples before (the median
# difference below PERIODIC of the RMS) is such a pattern. A test tone never is: its
# median difference over m samples is 2 sin(pi f m / rate) times its amplitude or so,
# at least 0.1 of its RMS (1300 Hz at 8 kHz and m = 6, the nearest, gives 0.16).
PERIODIC = 0.02
_LAGS = range(2, 8)


def _tonal(x: np.ndarray) -> np.ndarray:
    """Per window of int16 samples ``x`` (every :data:`HOP`): is it tonal?"""
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::HOP]
    z = np.fft.rfft(frames * _HANN, axis=1)          # float32 in, complex64 out
    spec = z.real ** 2 + z.imag ** 2
    spec[:, :LOW_BIN] = 0.0
    total = spec.sum(axis=1)
    peaks = np.zeros(len(spec))
    rows = np.arange(len(spec))[:, None]
    for _ in range(2):
        k = np.argmax(spec[:, LOW_BIN:HIGH_BIN], axis=1)[:, None] + LOW_BIN + _LOBE
        peaks += spec[rows, k].sum(axis=1)
        spec[rows, k] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        conc = np.where(total > 0, peaks / total, 0.0)
    tonal = (conc >= CONCENTRATION) & (total * _MS_SCALE >= _FLOOR_MS)
    idx = np.flatnonzero(tonal)
    if len(idx):                       # rare: only candidates are checked for patterns
        f = frames[idx].astype(np.float32)
        rms = f.std(axis=1)
        pattern = np.zeros(len(idx), dtype=bool)
        for m in _LAGS:
            d = np.abs(f[:, m:] - f[:, :-m])
            pattern |= np.median(d, axis=1) < PERIODIC * rms
        tonal[idx[pattern]] = False
    return tonal


def tone_in_pcm(data: bytes) -> int | None:
    """Byte offset of a test tone in ``data`` read as headerless S16_LE PCM (either byte
    alignment), or None. See the module docstring for what counts."""
    if len(data) < 2 * (WINDOW + (RUN - 1) * HOP):
        return None
    for align in (0, 1):
        x = np.frombuffer(data, dtype="<i2", count=(len(data) - align) // 2, offset=align)
        step = _CHUNK - MIN_TONE_SAMPLES - WINDOW
        for c0 in range(0, max(1, len(x) - WINDOW + 1), step):
            chunk = x[c0:c0 + _CHUNK]
            if len(chunk) < WINDOW + (RUN - 1) * HOP:
                break
            t = _tonal(chunk).astype(np.int8)
            run = np.convolve(t, np.ones(RUN, dtype=np.int8), mode="valid")
            hit = np.flatnonzero(run >= RUN)
            if len(hit):
                return align + 2 * (c0 + int(hit[0]) * HOP)
    return None


def plaintext_in(data: bytes) -> str | None:
    """Why ``data`` holds plaintext audio (a container, or a tone's offset), or None."""
    m = PLAINTEXT_ANYWHERE.search(data)
    if m:
        return f"{m.group(0)[:8]!r} at byte {m.start()}"
    at = tone_in_pcm(data)
    return None if at is None else f"S16_LE test tone at byte {at}"


def plaintext_files(data: Path, clean: dict | None = None) -> list[Path]:
    """Files under ``data`` holding plaintext audio anywhere in their bytes (a WAV, FLAC
    or Ogg Opus/Vorbis stream at any offset, or a test tone as headerless PCM; every
    byte of every file is read).

    ``clean``: a dict kept between calls (a campaign checks the same folder after every
    restart) of files found clean, by path, with their size and mtime; such a file is
    read again only once it has changed (sealed segments never do)."""
    out = []
    for p in Path(data).rglob("*"):
        try:
            if not p.is_file():
                continue
            st = p.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if clean is not None and clean.get(p) == stamp:
                continue
            if plaintext_in(p.read_bytes()):
                out.append(p)
            elif clean is not None:
                clean[p] = stamp
        except OSError:
            continue
    return out
