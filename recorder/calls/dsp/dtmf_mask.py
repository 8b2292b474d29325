"""DTMF *masking* detector: where might a keyed digit be, even one that cannot be named?

The recogniser (:mod:`recorder.calls.dsp.dtmf`) is tuned for zero talk-off: it names a digit
only when the two tones hold 90 % of the frame power, so digits keyed while someone
talks are often not named, and so were not masked. Masking needs the other trade-off:
a false mask costs a syllable of silence, a missed one leaves card digits in the
recording (PCI DSS 3.3.1). This detector marks any stretch where **a low-group and a
high-group DTMF tone both stand out from the spectrum around them**, for long enough
and at a steady frequency; it never says which digit.

Per frame (50 ms Hann window, 5 ms hop, power spectrum with 7.8 Hz bins, of which 447
to 1883 Hz are used):

* for each DTMF frequency ``f``, the peak ``P`` within ``f * (1 +- FREQ_TOL)`` and the
  strongest bin ``B`` of the *surroundings*: 50 ... 250 Hz from ``f``, leaving out the
  main lobe of every tone of the other group (so digit ``*``'s 1209 Hz is not the
  surroundings of its own 941 Hz);
* a group "stands out" when its best frequency has ``P >= B`` times the group's factor:
  0 dB for the low group (just the strongest peak around it: speech has most of its
  power below 1 kHz, so a low tone under a vowel is often only a little above the
  harmonics next to it), 7 dB for the high group (speech is weaker there, so a real
  high tone clears it, and most speech never does), and each tone at least
  ``MIN_LEVEL_DBFS``;
* a frame is a candidate when both groups stand out.

Runs of candidate frames with the same tone pair (gaps of one frame bridged) of at least
``MIN_FRAMES`` frames whose peak bins stay steady (standard deviation <= 1.5 bins in
each group: DTMF is a fixed frequency, speech harmonics glide) become a mask span: the
union of their windows, widened by ``MARGIN_S`` on each side (the frames that see a
tone under loud speech may sit in the middle of it). A run longer than ``MAX_RUN_S``
(a held key, a steady chord) is reported in pieces, so the recorder never waits long.

Figures (``bench/dsp.py``, docs/dsp.md): 70 ms digits over speech, share wholly masked
(with the call processor's 30 ms guard) at 6/10/20 dB DTMF-to-speech, and the share of
talk-off speech time blanked. The frame stage is vectorised per block (one float32
``rfft`` per frame, then slice maxima); audio is analysed once 100 ms is waiting.
"""

from __future__ import annotations

import numpy as np

from hw.linesignals import HIGH_GROUP, LOW_GROUP
from recorder.calls.dsp.common import DspInputError, check_rate, to_float
from recorder.calls.dsp.goertzel import hann

FRAME_S = 0.050          # window: resolves a tone from speech harmonics 100 Hz apart
HOP_S = 0.005
BIN_HZ = 7.8125          # spectrum bin (FFT of 1024 points at 8 kHz, 2048 at 16 kHz)
FREQ_TOL = 0.020         # the recogniser accepts 2 %; Q.24 requires 1.5 %
EXCLUDE_HZ = 50.0        # main lobe of a 50 ms Hann window: +-40 Hz
AROUND_HZ = 250.0        # the surroundings a tone must stand out from
STAND_OUT_LOW_DB = 0.0
STAND_OUT_HIGH_DB = 7.0
MIN_LEVEL_DBFS = -50.0   # per tone; the recogniser's floor is -38 dBFS
MIN_FRAMES = 4           # candidate frames in a run (20 ms of steady pair; 3 blanked 0.99 %
                         # of talk-off speech time, 4 blanks 0.77 %)
GAP_FRAMES = 1           # a run survives this many non-candidate frames
MAX_BIN_STD = 1.5        # peak bins' standard deviation within a run, per group
MARGIN_S = 0.020         # each span is widened by this on each side
MAX_RUN_S = 1.0          # a longer run is reported in pieces of this length
BATCH_S = 0.1            # audio is analysed once this much is waiting (numpy's fixed
                         # cost per call would dominate at 20 ms blocks)
_SLICE_FRAMES = 400      # frames analysed per matrix product (2 s): bounds memory


class DtmfMasker:
    """Streaming masking detector for one line.

    ``rate``: 8000 or 16000 Hz. :meth:`feed` takes blocks of any length (int16 or float)
    and returns completed mask spans ``(start, end)`` in samples counted from the first
    sample fed, ``end`` exclusive, already widened by ``MARGIN_S``. The output does not
    depend on how the audio is cut into blocks. :meth:`settled_before` says before which
    sample no span can still be reported.
    """

    def __init__(self, rate: int):
        self.rate = check_rate(rate)
        self.n = int(round(FRAME_S * self.rate))
        self.hop = int(round(HOP_S * self.rate))
        self.margin = int(round(MARGIN_S * self.rate))
        self.max_run = int(round(MAX_RUN_S / HOP_S))
        self.floor = 10.0 ** (MIN_LEVEL_DBFS / 10.0)
        # A zero-padded FFT per frame: 185 of its bins are used, but an FFT of 1024
        # points costs less than a Goertzel bank of 185 bins over 400 samples.
        self.nfft = int(round(self.rate / BIN_HZ))
        self.window = hann(self.n).astype(np.float32)
        self.scale = np.float32(2.0 / float(self.window.sum()) ** 2)   # sine A -> A**2/2
        first = int(np.floor((LOW_GROUP[0] - AROUND_HZ) / BIN_HZ))
        last = int(np.ceil((HIGH_GROUP[-1] + AROUND_HZ) / BIN_HZ))
        self._bins = (first, last + 1)
        fb = np.arange(first, last + 1) * BIN_HZ
        self.groups = []
        for group, other, t_db in ((LOW_GROUP, HIGH_GROUP, STAND_OUT_LOW_DB),
                                   (HIGH_GROUP, LOW_GROUP, STAND_OUT_HIGH_DB)):
            tones = []
            for f in group:
                b0 = int(np.floor(f * (1 - FREQ_TOL) / BIN_HZ)) - first
                b1 = int(np.ceil(f * (1 + FREQ_TOL) / BIN_HZ)) - first
                around = (np.abs(fb - f) <= AROUND_HZ) & (np.abs(fb - f) >= EXCLUDE_HZ)
                for g in other:
                    around &= np.abs(fb - g) >= EXCLUDE_HZ
                tones.append((b0, b1 + 1, _ranges(np.flatnonzero(around))))
            self.groups.append((tones, 10.0 ** (t_db / 10.0)))
        self._inbox: list[np.ndarray] = []
        self._inbox_len = 0
        self._batch = int(BATCH_S * self.rate)
        self._tail = np.zeros(0, dtype=np.float32)
        self._k = 0                  # index of the next frame to analyse
        self._fed = 0
        # open run: [code, first frame, last candidate frame, lo bins, hi bins]
        self._run: list | None = None
        self._closed = False

    # ----------------------------------------------------------------- public API
    def feed(self, samples) -> list[tuple[int, int]]:
        """Analyse a block; return mask spans completed so far."""
        if self._closed:
            raise DspInputError("DtmfMasker.feed() after flush(); make a new masker")
        x = to_float(samples, allow_empty=True)
        if x is samples or np.shares_memory(x, samples):
            x = x.copy()         # the caller may reuse its buffer before we analyse it
        self._fed += x.size
        self._inbox.append(x)
        self._inbox_len += x.size
        if self._inbox_len < self._batch:
            return []
        return self._analyse()

    def _analyse(self) -> list[tuple[int, int]]:
        box, self._inbox, self._inbox_len = self._inbox, [], 0
        buf = np.concatenate([self._tail, *box]) if len(box) > 1 or self._tail.size \
            else box[0]
        out: list[tuple[int, int]] = []
        n_frames = 0 if buf.size < self.n else (buf.size - self.n) // self.hop + 1
        for f0 in range(0, n_frames, _SLICE_FRAMES):
            f1 = min(n_frames, f0 + _SLICE_FRAMES)
            seg = buf[f0 * self.hop:(f1 - 1) * self.hop + self.n]
            codes, lo_bins, hi_bins = self.classify(seg, f1 - f0)
            self._walk(codes, lo_bins, hi_bins, out)
        self._tail = np.array(buf[n_frames * self.hop:], dtype=np.float32)
        return out

    def flush(self) -> list[tuple[int, int]]:
        """End of stream: pad with silence so the last frames are seen, return the rest."""
        if self._closed:
            return []
        real = self._fed
        self._inbox.append(np.zeros(self.n + (GAP_FRAMES + 1) * self.hop, dtype=np.float32))
        out = self._analyse()
        if self._run is not None:
            self._emit(out)
        self._closed = True
        return [(a, min(b, real)) for a, b in out if a < real]

    def settled_before(self) -> int:
        """Sample (counted like :meth:`feed`'s output) before which no span can still be
        reported: the open run's first frame, or else the next frame to be analysed,
        less the margin."""
        k = self._k if self._run is None else self._run[1]
        return max(0, k * self.hop - self.margin)

    # ------------------------------------------------------------------ internals
    def classify(self, seg: np.ndarray, n_frames: int):
        """Frame stage, vectorised: per frame the tone pair code (low * 4 + high, or -1
        when not both groups stand out) and the peak bin of each group."""
        frames = np.lib.stride_tricks.sliding_window_view(seg, self.n)[::self.hop][:n_frames]
        spec = np.fft.rfft(frames * self.window, self.nfft, axis=1)
        spec = spec[:, self._bins[0]:self._bins[1]]
        power = (spec.real ** 2 + spec.imag ** 2) * self.scale
        picks, bins = [], []
        for tones, factor in self.groups:
            best = np.zeros(n_frames, dtype=np.float32)
            pick = np.full(n_frames, -1)
            pbin = np.zeros(n_frames, dtype=np.int64)
            for i, (b0, b1, around) in enumerate(tones):
                band = power[:, b0:b1]
                peak = band.max(axis=1)
                near = power[:, around[0][0]:around[0][1]].max(axis=1)
                for a0, a1 in around[1:]:
                    near = np.maximum(near, power[:, a0:a1].max(axis=1))
                ratio = peak / (near + 1e-20)
                ok = (ratio >= factor) & (peak >= self.floor) & (ratio > best)
                best = np.where(ok, ratio, best)
                pick = np.where(ok, i, pick)
                pbin = np.where(ok, b0 + band.argmax(axis=1), pbin)
            picks.append(pick)
            bins.append(pbin)
        both = (picks[0] >= 0) & (picks[1] >= 0)
        return np.where(both, picks[0] * 4 + picks[1], -1), bins[0], bins[1]

    def _walk(self, codes, lo_bins, hi_bins, out) -> None:
        """Run stage: candidate frames -> runs -> spans (same decisions whatever the
        block boundaries: a run ends on the first frame that cannot continue it)."""
        for i in np.flatnonzero(codes >= 0):
            k = self._k + int(i)
            run = self._run
            if run is not None and k - run[2] > GAP_FRAMES + 1:
                self._emit(out)
                run = None
            c = int(codes[i])
            if run is not None and c != run[0]:
                self._emit(out)
                run = None
            if run is None:
                self._run = run = [c, k, k, [], []]
            run[2] = k
            run[3].append(int(lo_bins[i]))
            run[4].append(int(hi_bins[i]))
            if k - run[1] + 1 >= self.max_run:
                self._emit(out)
        k_next = self._k + codes.size
        if self._run is not None and k_next - 1 - self._run[2] > GAP_FRAMES:
            self._emit(out)
        self._k = k_next

    def _emit(self, out) -> None:
        run, self._run = self._run, None
        _code, k0, k1, lo, hi = run
        if len(lo) < MIN_FRAMES:
            return
        if np.std(lo) > MAX_BIN_STD or np.std(hi) > MAX_BIN_STD:
            return
        start = max(0, k0 * self.hop - self.margin)
        end = k1 * self.hop + self.n + self.margin     # may reach past the audio fed so far
        out.append((start, end))


def _ranges(idx: np.ndarray) -> list[tuple[int, int]]:
    """Sorted indexes as ``[start, stop)`` runs of consecutive values (slices, not
    fancy indexing, in the per-block loop)."""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    stops = np.concatenate((idx[breaks] + 1, [idx[-1] + 1]))
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def mask_spans(samples, rate: int) -> list[tuple[float, float]]:
    """Mask spans ``(start_s, end_s)`` of a whole recording (feed everything, then flush)."""
    rate = check_rate(rate)
    m = DtmfMasker(rate)
    found = m.feed(to_float(samples)) + m.flush()
    return [(a / rate, b / rate) for a, b in found]
