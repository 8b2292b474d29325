"""Windowed single-bin DFTs (a Goertzel filter bank), evaluated for many frames at once.

A Goertzel filter computes one DFT coefficient ``X(f) = sum_n w[n] x[n] exp(-j 2 pi f n / fs)``
with a two-tap recursion. In numpy the same number is cheapest as one matrix product of the
framed audio with a precomputed ``(frame_len, 2 * n_freqs)`` basis of windowed cosines and
sines, which runs as a single BLAS call for any number of frames. The result is identical to
a windowed Goertzel filter at each (non-integer-bin) frequency.

Phase reference: ``n = 0`` is the first sample of each frame, so a steady tone of frequency
``f0 + df`` advances the phase of ``X(f0)`` between frames ``hop`` samples apart by
``2 pi (f0 + df) hop / fs``; :meth:`ToneBank.freq_error` uses that to measure ``df``.
"""

from __future__ import annotations

import numpy as np


def hann(n: int) -> np.ndarray:
    """Symmetric-about-the-centre Hann window of ``n`` samples (all samples > 0), float64."""
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * (k + 0.5) / n)


class ToneBank:
    """Hann-windowed DFT coefficients at fixed frequencies.

    ``freqs``: Hz. ``frame_len``: samples per frame. Tone power estimates are normalised so a
    sine of amplitude A exactly on a bank frequency reads ``A**2 / 2`` (its mean power).
    """

    def __init__(self, freqs, rate: int, frame_len: int):
        self.freqs = np.asarray(freqs, dtype=np.float64)
        self.rate = int(rate)
        self.frame_len = int(frame_len)
        self.window = hann(self.frame_len)
        n = np.arange(self.frame_len, dtype=np.float64)
        ang = 2.0 * np.pi * np.outer(n, self.freqs) / self.rate
        basis = np.concatenate(
            [self.window[:, None] * np.cos(ang), -self.window[:, None] * np.sin(ang)], axis=1
        )
        self._basis = basis.astype(np.float32)
        self._wsq = (self.window**2).astype(np.float32)
        self._wsum = float(self.window.sum())
        self._wsq_sum = float((self.window**2).sum())
        # 2|X|^2 / (sum w)^2 gives A^2/2 for an on-bin sine of amplitude A.
        self.power_scale = 2.0 / self._wsum**2

    def analyse_raw(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`analyse` but returns the real and imaginary parts side by side.

        Returns ``(raw, frame_power)`` with raw of shape (F, 2 * n_freqs): real parts first.
        """
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        raw = frames @ self._basis
        frame_power = (frames * frames) @ self._wsq
        frame_power *= 1.0 / self._wsq_sum
        return raw, frame_power

    def analyse_hops(self, buf: np.ndarray, hop: int, n_frames: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`analyse_raw` of the ``n_frames`` frames starting every ``hop`` samples
        in ``buf``, when ``frame_len`` is a whole number of hops (DTMF: 160 = 4 x 40).

        No frame matrix is built: ``buf`` is viewed as rows of one hop, each row is
        multiplied once by every hop-long piece of the basis, and each frame sums its
        pieces from consecutive rows. Same products as the frame matrix, a quarter of
        the memory traffic.
        """
        k = self.frame_len // hop
        if k * hop != self.frame_len:
            raise ValueError(f"frame_len {self.frame_len} is not a multiple of hop {hop}")
        pieces = self._hop_basis(hop)
        rows = np.ascontiguousarray(buf[:(n_frames + k - 1) * hop],
                                    dtype=np.float32).reshape(-1, hop)
        y = rows @ pieces[0]
        w = (rows * rows) @ pieces[1]
        nb = self._basis.shape[1]
        raw = y[:n_frames, :nb].copy()
        pf = w[:n_frames, 0].copy()
        for j in range(1, k):
            raw += y[j:j + n_frames, j * nb:(j + 1) * nb]
            pf += w[j:j + n_frames, j]
        pf *= 1.0 / self._wsq_sum
        return raw, pf

    def _hop_basis(self, hop: int):
        cached = getattr(self, "_hop_cache", None)
        if cached is None or cached[0] != hop:
            k = self.frame_len // hop
            b = np.concatenate([self._basis[j * hop:(j + 1) * hop] for j in range(k)], axis=1)
            w = np.stack([self._wsq[j * hop:(j + 1) * hop] for j in range(k)], axis=1)
            cached = self._hop_cache = (hop, (np.ascontiguousarray(b, dtype=np.float32),
                                              np.ascontiguousarray(w, dtype=np.float32)))
        return cached[1]

    def analyse(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """DFT coefficients and mean frame power for ``frames`` of shape (F, frame_len).

        Returns ``(X, frame_power)``: X is complex64 (F, n_freqs); frame_power is the
        window-weighted mean power of each frame (a sine of amplitude A reads A**2/2).
        """
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        re_im = frames @ self._basis
        k = self.freqs.size
        x = re_im[:, :k] + 1j * re_im[:, k:]
        frame_power = (frames * frames) @ self._wsq / self._wsq_sum
        return x.astype(np.complex64), frame_power

    def gain(self, df_hz: float) -> float:
        """Power gain (0..1] of the window for a tone ``df_hz`` away from a bank frequency."""
        n = np.arange(self.frame_len, dtype=np.float64)
        resp = np.abs(np.sum(self.window * np.exp(2j * np.pi * df_hz * n / self.rate)))
        return float((resp / self._wsum) ** 2)

    def freq_error(self, x_prev: np.ndarray, x_next: np.ndarray, f0: float, hop: int):
        """Frequency error (Hz) of the tone in bin ``f0`` from frame-to-frame phase steps.

        ``x_prev``/``x_next``: coefficients of frame pairs ``hop`` samples apart (same length).
        Unambiguous for ``|df| < rate / (2 * hop)``. None if there is no pair.
        """
        if x_prev.size == 0:
            return None
        z = np.sum(x_next * np.conj(x_prev)) * np.exp(-2j * np.pi * f0 * hop / self.rate)
        return float(np.angle(z) * self.rate / (2.0 * np.pi * hop))
