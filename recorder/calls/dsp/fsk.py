"""1200 baud binary FSK receiver (V.23 and Bell 202) with asynchronous (UART) framing.

Demodulation: the audio is mixed down at the mark and at the space frequency and each product
is averaged over one bit (a moving average, i.e. a filter matched to a rectangular bit). The
sign of ``|mark|^2 - |space|^2`` is the bit. Because the averaging window is centred, a
mark->space change crosses zero at the true bit boundary; the crossing is interpolated to a
fraction of a sample.

Framing: every falling (mark->space) crossing is a candidate start bit. For all candidates at
once, the 10 bit centres ``edge + (i + 0.5) * samples_per_bit`` are sampled; a candidate is a
byte if its start bit is 0, its stop bit is 1 and the signal is loud enough at every centre.
Re-timing on every start bit makes a +-1 % bit-rate error harmless (0.1 bit over a byte).
Bytes are then chained: after a byte the next start bit is searched from the middle of its
stop bit on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

BAUD = 1200.0

#: Quietest FSK accepted, as a sine level in dBFS: well below the -42 dBFS tested limit.
MIN_LEVEL_DBFS = -50.0


@dataclass(frozen=True)
class Byte:
    """One received character.

    ``value`` 0..255; ``start`` = its start-bit edge (samples); ``mark_bits`` = how long (in
    bits) the line was steadily at mark just before that edge.
    """

    value: int
    start: float
    mark_bits: float


def _moving_average(x: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average of ``n`` samples, same length as ``x`` (zero padded)."""
    c = np.cumsum(np.concatenate([np.zeros(1, x.dtype), x]))
    lead = n // 2
    hi = np.minimum(np.arange(x.size) + (n - lead), x.size)
    lo = np.maximum(np.arange(x.size) - lead, 0)
    return (c[hi] - c[lo]) / n


@functools.lru_cache(maxsize=8)
def _oscillator(freq: float, rate: int, n: int) -> np.ndarray:
    """exp(-j 2 pi f t) for n samples; cached because decode() reuses one block length."""
    osc = np.exp(-2j * np.pi * freq * np.arange(n) / rate)
    osc.flags.writeable = False
    return osc


def demodulate(x: np.ndarray, rate: int, mark_hz: float, space_hz: float):
    """Soft bits and loudness per sample.

    Returns ``(soft, power)``: ``soft > 0`` means mark (1); ``power`` is the mean power over
    one bit around each sample (a sine of amplitude A reads A**2/2).
    """
    spb = rate / BAUD
    n = max(2, int(round(spb)))
    x64 = x.astype(np.float64)
    mark = _moving_average(x64 * _oscillator(mark_hz, rate, x.size), n)
    space = _moving_average(x64 * _oscillator(space_hz, rate, x.size), n)
    soft = (mark.real**2 + mark.imag**2) - (space.real**2 + space.imag**2)
    power = _moving_average(x64 * x64, n)
    return soft, power


def read_bytes(soft: np.ndarray, power: np.ndarray, rate: int) -> list[Byte]:
    """All asynchronously framed bytes in the demodulated signal, in time order."""
    spb = rate / BAUD
    ones = soft > 0
    loud = power >= 0.5 * 10.0 ** (MIN_LEVEL_DBFS / 10.0)
    falls = np.flatnonzero(ones[:-1] & ~ones[1:] & loud[1:])
    if falls.size == 0:
        return []
    # Interpolated zero crossing between sample i (mark) and i + 1 (space).
    a, b = soft[falls], soft[falls + 1]
    edges = falls + a / (a - b)
    centres = np.rint(edges[:, None] + (np.arange(10) + 0.5) * spb).astype(np.int64)
    inside = centres[:, -1] < soft.size
    centres = np.minimum(centres, soft.size - 1)
    bits = ones[centres]
    ok = inside & ~bits[:, 0] & bits[:, 9] & loud[centres].all(axis=1)
    values = bits[:, 1:9].astype(np.int64) @ (1 << np.arange(8))
    nxt = np.searchsorted(edges, edges + 9.5 * spb)
    # Length of the loud-mark stretch ending at each start edge.
    steady = ones & loud
    last_break = np.maximum.accumulate(np.where(steady, -1, np.arange(soft.size)))
    idle = (falls - last_break[falls]) / spb
    ok_l, val_l, nxt_l, edge_l = ok.tolist(), values.tolist(), nxt.tolist(), edges.tolist()
    idle_l = idle.tolist()
    out: list[Byte] = []
    i, n = 0, len(ok_l)
    while i < n:
        if ok_l[i]:
            out.append(Byte(val_l[i], edge_l[i], idle_l[i]))
            i = nxt_l[i]
        else:
            i += 1
    return out


def burst_start(power: np.ndarray, at: int, rate: int) -> int:
    """First sample of the FSK burst that contains sample ``at``.

    Walks back from ``at`` while the one-bit power stays within 10 dB of its level at ``at``.
    """
    ref = float(np.median(power[at : at + int(rate / BAUD * 10)]))
    quiet = np.flatnonzero(power[:at] < 0.1 * ref)
    return int(quiet[-1] + 1) if quiet.size else 0
