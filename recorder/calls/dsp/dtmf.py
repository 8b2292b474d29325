"""DTMF detection (ITU-T Q.23 frequencies, Q.24 acceptance limits) with a Goertzel bank.

Two stages:

1. **Frames** (20 ms Hann window, 5 ms hop, both fixed in time so 8 and 16 kHz behave alike):
   the strongest low-group and high-group bins must each be 6 dB above the runner-up in their
   group, loud enough, and together hold at least half the frame power. Consecutive frames
   with the same pair form a *run*. This stage is vectorised over all frames of a block.
2. **Runs** -> digits: tone edges are where the (normalised) tone amplitude crosses half its
   peak, which for a symmetric window is where the window centre crosses the tone edge. A run
   is then measured (frequency error from the frame-to-frame phase step, window-corrected tone
   levels, twist, purity, duration) and judged by the pure function :func:`judge`.

Runs of the same digit less than 25 ms apart (edge to edge) are bridged into one digit, so a
short drop-out (<= 10 ms, e.g. a noise burst) never doubles a digit; pauses >= 40 ms always
separate digits.

Twist follows Q.24 / Bellcore: **twist = high-group level - low-group level (dB)**. *Normal*
twist (negative) means the high-group tone is weaker, as line loss rises with frequency;
*reverse* twist (positive) means it is stronger.

Everything is expressed in samples on the stream's own sample clock; :func:`detect` converts
to seconds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from hw.linesignals import DTMF_FREQS, HIGH_GROUP, KEYPAD, LOW_GROUP
from recorder.calls.dsp.common import DspInputError, check_rate, power_to_dbfs, to_float
from recorder.calls.dsp.goertzel import ToneBank

logger = logging.getLogger(__name__)

FRAME_S = 0.020  # analysis window: resolves 697/770 Hz (73 Hz apart) with a Hann window
HOP_S = 0.005  # frame step: edge timing resolution before interpolation

# --- acceptance limits (see docs/dsp.md for how they map to Q.24) ---
FREQ_TOL = 0.020  # |f - f0| / f0 accepted: spec accepts 1.5 %, rejects 3.5 %
MIN_DURATION_S = 0.030  # spec accepts 40 ms, rejects 20 ms
MIN_LEVEL_DBFS = -38.0  # per tone; spec min is -29 dBm0 = -32.1 dBFS
TWIST_NORMAL_DB = 10.0  # high group weaker by up to this: spec accepts 8 dB
TWIST_REVERSE_DB = 6.0  # high group stronger by up to this: spec accepts 4 dB
MIN_PURITY = 0.90  # share of frame power in the two tones (15 dB S/N gives 0.96)
# A note and its octave (music) can pass for 852+1633, 770+1477 or 697+1336 Hz, whose
# nominal ratio is 1.917; within +-1.5 % each the ratio stays below 1.975, so a measured
# ratio within 1 % of 2 is a harmonic series, never an in-spec digit.
OCTAVE_TOL = 0.010
MERGE_GAP_S = 0.025  # same digit again within this (edge to edge) is one digit
EDGE_MARGIN_S = 0.002  # reported [start, end) is widened by this on each side
EDGE_FRAMES = 8  # frames kept either side of a run to locate its edges (40 ms)
BATCH_S = 0.1  # DtmfDetector analyses once this much audio is waiting (adds <= 0.1 s delay)

# --- frame stage (loose: the run stage makes the real decision) ---
_FRAME_MIN_LEVEL_DBFS = MIN_LEVEL_DBFS - 6.0
_FRAME_GROUP_RATIO = 4.0  # strongest bin vs runner-up in its group: 6 dB
_FRAME_TWIST_DB = (-14.0, 10.0)
_FRAME_MIN_PURITY = 0.5

# Audio is analysed in slices of at most this many samples: 65536-sample slices measured 3x
# slower than 8000 (the frame matrix falls out of the CPU cache) and would cost memory.
_SLICE = 8000

_SYMBOLS = [KEYPAD[r][c] for r in range(4) for c in range(4)]


@dataclass(frozen=True)
class ToneMeasure:
    """What the run stage measured for one candidate digit.

    ``start``/``end``: half-amplitude tone edges in samples (fractional). Frequency errors are
    fractions of the nominal frequency; levels are dBFS per tone; ``twist_db`` is high minus
    low; ``purity`` is the share (0..1) of frame power carried by the two tones.
    """

    digit: str
    start: float
    end: float
    freq_error_lo: float
    freq_error_hi: float
    level_lo_dbfs: float
    level_hi_dbfs: float
    twist_db: float
    purity: float


def judge(m: ToneMeasure, rate: int) -> str | None:
    """Decide whether a measured tone is a valid DTMF digit.

    Returns None when accepted, otherwise a short reason (for debug logs and tests).
    """
    if max(abs(m.freq_error_lo), abs(m.freq_error_hi)) > FREQ_TOL:
        return "frequency"
    f_lo, f_hi = DTMF_FREQS[m.digit]
    ratio = f_hi * (1 + m.freq_error_hi) / (f_lo * (1 + m.freq_error_lo))
    if abs(ratio / 2.0 - 1.0) < OCTAVE_TOL:
        return "harmonic"
    if (m.end - m.start) < MIN_DURATION_S * rate:
        return "duration"
    if min(m.level_lo_dbfs, m.level_hi_dbfs) < MIN_LEVEL_DBFS:
        return "level"
    if m.twist_db < -TWIST_NORMAL_DB or m.twist_db > TWIST_REVERSE_DB:
        return "twist"
    if m.purity < MIN_PURITY:
        return "purity"
    return None


class _Run:
    """Consecutive frames classified as the same digit, plus frames either side for edges."""

    __slots__ = ("code", "k0", "x", "pf", "pre", "post", "start", "end")

    def __init__(self, code: int, k0: int, pre: np.ndarray):
        self.code = code
        self.k0 = k0  # frame index of the first frame
        self.x: list[np.ndarray] = []  # per frame: 8 complex bins
        self.pf: list[float] = []  # per frame: frame power
        self.pre = pre  # (P, 8) bins of frames k0-P .. k0-1, P <= EDGE_FRAMES
        self.post: list[np.ndarray] = []  # bins of up to EDGE_FRAMES frames after the run
        self.start = 0.0
        self.end = 0.0

    @property
    def k_end(self) -> int:
        """Index of the first frame after the run."""
        return self.k0 + len(self.x)


class DtmfDetector:
    """Streaming DTMF detector for one line.

    ``rate``: 8000 or 16000 Hz. :meth:`feed` takes blocks of any length (int16 or float) and
    returns digits completed so far as ``(digit, start_sample, end_sample)``, indices counted
    from the first sample ever fed, ``end`` exclusive. ``[start, end)`` brackets the whole
    tone (measured edges widened by 2 ms each side). A digit is reported 25-150 ms after
    its tone ends (feed() analyses once 100 ms of audio is waiting). Output does not depend
    on how the audio is cut into blocks. Cost: about 40 us per 20 ms block on a desktop x86
    core (see docs/dsp.md).
    """

    def __init__(self, rate: int):
        self.rate = check_rate(rate)
        self.frame_len = int(round(FRAME_S * self.rate))
        self.hop = int(round(HOP_S * self.rate))
        self._bank = ToneBank(LOW_GROUP + HIGH_GROUP, self.rate, self.frame_len)
        self._tail = np.zeros(0, dtype=np.float32)  # samples from frame self._k onwards
        self._k = 0  # index of the next frame to analyse; it starts at sample k * hop
        self._fed = 0  # samples fed so far
        self._hist = np.zeros((0, 8), dtype=np.complex64)  # bins of the frames before _k
        self._run: _Run | None = None
        self._closing: list[_Run] = []  # ended runs still collecting frames after their end
        self._pending: list[_Run] = []  # closed runs of one digit, possibly to be bridged
        self._closed = False
        self._min_power = 0.5 * 10.0 ** (_FRAME_MIN_LEVEL_DBFS / 10.0)
        self._merge_gap = MERGE_GAP_S * self.rate
        self._margin = EDGE_MARGIN_S * self.rate
        self._twist_lo, self._twist_hi = (10.0 ** (t / 10.0) for t in _FRAME_TWIST_DB)
        # Small blocks are collected until BATCH_S of audio is waiting: numpy's fixed cost
        # per call would otherwise dominate at 20 ms blocks. Results do not change.
        self._inbox: list[np.ndarray] = []
        self._inbox_len = 0
        self._batch = int(BATCH_S * self.rate)

    # ----------------------------------------------------------------- public API
    def feed(self, samples) -> list[tuple[str, int, int]]:
        """Analyse a block; return digits completed so far (see class docstring)."""
        if self._closed:
            raise DspInputError("DtmfDetector.feed() after flush(); make a new detector")
        x = to_float(samples, allow_empty=True)
        if x is samples or np.shares_memory(x, samples):
            x = x.copy()  # the caller may reuse its buffer (a ring buffer) before we analyse
        self._fed += x.size
        self._inbox.append(x)
        self._inbox_len += x.size
        if self._inbox_len < self._batch:
            return []
        return self._process(self._take_inbox())

    def flush(self) -> list[tuple[str, int, int]]:
        """End of stream: return any digit still in progress. The detector is then closed."""
        if self._closed:
            return []
        out = self._process(self._take_inbox())
        # Zero padding lets the last frames slide past the end, so a tone cut off by the end
        # of the stream gets a proper falling edge at the last real sample.
        pad = self.frame_len + (EDGE_FRAMES + 1) * self.hop
        out += self._process(np.zeros(pad, dtype=np.float32))
        if self._run is not None:
            self._closing.append(self._run)
            self._run = None
        while self._closing:
            self._complete(self._closing.pop(0), out)
        out += self._finish_pending()
        self._closed = True
        return out

    def settled_before(self) -> int:
        """Sample (counted like :meth:`feed`'s output) before which no digit can still be
        reported: audio before it may be cut and stored as it is.

        A digit not yet reported starts no earlier than EDGE_FRAMES + 1 frames before
        the first frame of its run, less the reported margin; runs still open or waiting
        to be bridged hold the point back, as does audio not yet analysed (frame ``_k``
        onwards, including the batching inbox).
        """
        k = self._k
        for run in (self._run, *self._closing, *self._pending):
            if run is not None:
                k = min(k, run.k0)
        return max(0, int((k - EDGE_FRAMES - 1) * self.hop - self._margin) - 1)

    def _take_inbox(self) -> np.ndarray:
        box, self._inbox, self._inbox_len = self._inbox, [], 0
        if len(box) == 1:
            return box[0]
        return np.concatenate(box) if box else np.zeros(0, dtype=np.float32)

    # ------------------------------------------------------------------ internals
    def _process(self, x: np.ndarray) -> list[tuple[str, int, int]]:
        """Analyse ``x`` in slices that keep the frame matrix small (and inside the cache)."""
        if x.size <= _SLICE:
            return self._process_slice(x)
        out: list[tuple[str, int, int]] = []
        for i in range(0, x.size, _SLICE):
            out += self._process_slice(x[i : i + _SLICE])
        return out

    def _process_slice(self, x: np.ndarray) -> list[tuple[str, int, int]]:
        buf = np.concatenate((self._tail, x)) if self._tail.size else x
        n_frames = 0 if buf.size < self.frame_len else (buf.size - self.frame_len) // self.hop + 1
        out: list[tuple[str, int, int]] = []
        if n_frames == 0:
            self._tail = buf.copy()
            return out
        raw, pf = self._bank.analyse_hops(buf, self.hop, n_frames)
        sq = raw * raw
        power = (sq[:, :8] + sq[:, 8:]) * self._bank.power_scale
        # Cheap necessary condition first: a digit's two tones hold at least half the
        # frame power and are each loud enough, so the 8 bins together must too. Speech
        # and noise almost never pass, and then the full frame stage is skipped.
        tones = power.sum(axis=1)
        maybe = ((tones >= _FRAME_MIN_PURITY * pf) & (tones >= 2.0 * self._min_power)).any()
        codes = self._classify(power, pf) if maybe else None
        if self._run is not None or self._closing or (codes is not None and codes.max() >= 0):
            if codes is None:
                codes = np.full(n_frames, -1)
            bins = raw[:, :8] + 1j * raw[:, 8:]
            self._walk(bins, pf, codes, out)
        else:  # nothing tone-like in this block: only keep the last frames as context
            self._expire_pending(self._k + n_frames, out)
            tail = raw[-EDGE_FRAMES:, :8] + 1j * raw[-EDGE_FRAMES:, 8:]
            self._hist = np.concatenate((self._hist, tail))[-EDGE_FRAMES:]
            self._k += n_frames
        self._tail = buf[n_frames * self.hop :].copy()
        return out

    def _classify(self, power: np.ndarray, pf: np.ndarray) -> np.ndarray:
        """Frame stage, vectorised: digit code 0..15 per frame, or -1.

        ``power``: (F, 8) tone power estimates, low group then high group; ``pf``: (F,)
        frame power.
        """
        groups = power.reshape(-1, 2, 4)
        best = groups.argmax(axis=2)
        ranked = np.sort(groups, axis=2)
        top, runner_up = ranked[:, :, 3], ranked[:, :, 2]
        plo, phi = top[:, 0], top[:, 1]
        ok = (
            (top.min(axis=1) >= self._min_power)
            & (top >= _FRAME_GROUP_RATIO * runner_up).all(axis=1)
            & (phi >= self._twist_lo * plo)
            & (phi <= self._twist_hi * plo)
            & (plo + phi >= _FRAME_MIN_PURITY * pf)
        )
        return np.where(ok, best[:, 0] * 4 + best[:, 1], -1)

    def _walk(self, bins, pf, codes, out) -> None:
        """Run stage: follow runs frame by frame, skipping idle stretches in one step."""
        n = codes.size
        active = np.flatnonzero(codes >= 0)
        i = 0
        while i < n:
            if self._run is None:
                j = np.searchsorted(active, i)
                if j == active.size:
                    break
                i = int(active[j])
                k = self._k + i
                self._expire_pending(k, out)
                pre = np.concatenate((self._hist, bins[:i]))[-EDGE_FRAMES:]
                self._run = _Run(int(codes[i]), k, pre)
            elif codes[i] != self._run.code:
                self._closing.append(self._run)
                self._run = None
                continue  # frame i may start a new run
            self._run.x.append(bins[i])
            self._run.pf.append(float(pf[i]))
            i += 1
        # Ended runs collect EDGE_FRAMES frames past their end, then are completed in order.
        for run in self._closing:
            first = run.k_end + len(run.post) - self._k
            if first < n:
                run.post.extend(bins[first : first + EDGE_FRAMES - len(run.post)])
        while self._closing and len(self._closing[0].post) >= EDGE_FRAMES:
            self._complete(self._closing.pop(0), out)
        if self._run is None:
            self._expire_pending(self._k + n, out)
        self._hist = np.concatenate((self._hist, bins[-EDGE_FRAMES:]))[-EDGE_FRAMES:]
        self._k += n

    def _complete(self, run: _Run, out) -> None:
        """An ended run has its edges: bridge it onto the pending digit or start a new one."""
        self._edges(run)
        if self._pending:
            last = self._pending[-1]
            if run.code == last.code and run.start - last.end < self._merge_gap:
                self._pending.append(run)
                return
            out += self._finish_pending()
        self._pending = [run]

    def _expire_pending(self, k_next: int, out) -> None:
        """Finish the pending digit once no later run could still be bridged onto it.

        ``k_next``: no run not yet seen can start before this frame. Runs still collecting
        their trailing frames may yet be bridged, so they hold the pending digit back.
        """
        if not self._pending:
            return
        if self._closing:
            k_next = min(k_next, self._closing[0].k0)
        earliest_start = (k_next - 1) * self.hop + self.frame_len / 2
        if earliest_start - self._pending[-1].end >= self._merge_gap:
            out += self._finish_pending()

    def _edges(self, run: _Run) -> None:
        """Half-amplitude edges of a run, in (fractional) samples.

        Each tone's amplitude is normalised to its peak inside the run; their sum is 2 on the
        plateau and 1 where the window centre sits on a tone edge. Frames before and after
        the run count too while both tones are present: the frame stage may reject the
        partly covered frames at an edge.
        """
        lo, hi = divmod(run.code, 4)
        hi += 4
        parts = [run.pre, np.array(run.x)]
        if run.post:
            parts.append(np.array(run.post))
        rows = np.concatenate(parts)
        p, r = len(run.pre), len(run.x)
        a_lo, a_hi = np.abs(rows[:, lo]), np.abs(rows[:, hi])
        n_lo, n_hi = a_lo / a_lo[p : p + r].max(), a_hi / a_hi[p : p + r].max()
        e = n_lo + n_hi
        inside = (e >= 1.0) & (np.minimum(n_lo, n_hi) >= 0.25)
        above = np.flatnonzero(e[p : p + r] >= 1.0)
        first, last = p + int(above[0]), p + int(above[-1])
        while first > 0 and inside[first - 1]:
            first -= 1
        while last + 1 < e.size and inside[last + 1]:
            last += 1
        k_first_row = run.k0 - p
        half = self.frame_len / 2
        if first == 0:  # on since before the frames we kept (or the stream start)
            start = float(k_first_row * self.hop)
        else:
            before = e[first - 1]
            frac = (1.0 - before) / (e[first] - before) if e[first] > before else 0.0
            start = (k_first_row + first - 1 + min(max(frac, 0.0), 1.0)) * self.hop + half
        if last + 1 == e.size:  # still on when the stream ended
            end = float(min(self._fed, (k_first_row + last) * self.hop + self.frame_len))
        else:
            after = e[last + 1]
            frac = (e[last] - 1.0) / (e[last] - after) if e[last] > after else 1.0
            end = (k_first_row + last + min(max(frac, 0.0), 1.0)) * self.hop + half
        run.start, run.end = start, end

    def measure(self, runs: list[_Run]) -> ToneMeasure:
        """Measure bridged runs of one digit (run stage)."""
        code = runs[0].code
        lo, hi = divmod(code, 4)
        hi += 4
        f_lo, f_hi = self._bank.freqs[lo], self._bank.freqs[hi]
        pairs_prev, pairs_next, core_x, core_pf = [], [], [], []
        half = self.frame_len / 2
        for run in runs:
            xs = np.array(run.x)
            # Measure on frames whose window lies wholly inside the tone: partly covered
            # windows see a frequency-dependent mix of tone and silence (biasing twist).
            centres = (run.k0 + np.arange(len(xs))) * self.hop + half
            core = (centres >= run.start + half - 1) & (centres <= run.end - half + 1)
            if core.sum() < 2:
                a_lo, a_hi = np.abs(xs[:, lo]), np.abs(xs[:, hi])
                e = a_lo / a_lo.max() + a_hi / a_hi.max()
                core = e >= 1.6
            idx = np.flatnonzero(core)
            core_x.append(xs[idx])
            core_pf.append(np.asarray(run.pf)[idx])
            consecutive = idx[1:][np.diff(idx) == 1]
            pairs_prev.append(xs[consecutive - 1])
            pairs_next.append(xs[consecutive])
        cx, cpf = np.concatenate(core_x), np.concatenate(core_pf)
        pp, pn = np.concatenate(pairs_prev), np.concatenate(pairs_next)
        df_lo = self._bank.freq_error(pp[:, lo], pn[:, lo], f_lo, self.hop)
        df_hi = self._bank.freq_error(pp[:, hi], pn[:, hi], f_hi, self.hop)
        if df_lo is None or df_hi is None:
            # A single-frame run is far too short for a digit; make judge() say so.
            df_lo = df_hi = math.inf
            g_lo = g_hi = 1.0
        else:
            g_lo, g_hi = self._bank.gain(df_lo), self._bank.gain(df_hi)
        scale = self._bank.power_scale
        p_lo = np.abs(cx[:, lo]) ** 2 * scale / g_lo
        p_hi = np.abs(cx[:, hi]) ** 2 * scale / g_hi
        purity = float(np.mean((p_lo + p_hi) / np.maximum(cpf, 1e-20)))
        lev_lo, lev_hi = (float(power_to_dbfs(np.mean(p))) for p in (p_lo, p_hi))
        return ToneMeasure(
            digit=_SYMBOLS[code],
            start=runs[0].start,
            end=runs[-1].end,
            freq_error_lo=df_lo / f_lo,
            freq_error_hi=df_hi / f_hi,
            level_lo_dbfs=lev_lo,
            level_hi_dbfs=lev_hi,
            twist_db=lev_hi - lev_lo,
            purity=purity,
        )

    def _finish_pending(self) -> list[tuple[str, int, int]]:
        runs, self._pending = self._pending, []
        if not runs:
            return []
        m = self.measure(runs)
        reason = judge(m, self.rate)
        if reason is not None:
            # The symbol is not logged: a rejected candidate may be a card digit.
            logger.debug(
                "DTMF candidate at %d rejected: %s (df %.3f/%.3f, lev %.1f/%.1f dBFS, "
                "dur %.1f ms, purity %.2f)",
                int(m.start),
                reason,
                m.freq_error_lo,
                m.freq_error_hi,
                m.level_lo_dbfs,
                m.level_hi_dbfs,
                (m.end - m.start) * 1000 / self.rate,
                m.purity,
            )
            return []
        start = max(0, int(math.floor(m.start - self._margin)))
        end = min(self._fed, int(math.ceil(m.end + self._margin)))
        return [(m.digit, start, end)]


def detect(samples, rate: int) -> list[tuple[str, float, float]]:
    """DTMF digits in a whole recording as ``(digit, start_s, end_s)``.

    ``samples``: mono int16 (full scale 32768) or float in [-1, 1]; ``rate``: 8000 or 16000
    Hz. Same result as feeding :class:`DtmfDetector` and calling ``flush()``; start/end are
    seconds from the first sample and bracket the whole tone.
    """
    rate = check_rate(rate)
    x = to_float(samples)
    det = DtmfDetector(rate)
    found = det.feed(x) + det.flush()
    return [(d, s / rate, e / rate) for d, s, e in found]
