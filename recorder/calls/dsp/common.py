"""Shared helpers for the DSP package: input checks and level conversion.

Level reference used everywhere in ``recorder.calls.dsp``: **0 dBFS is a full-scale sine**, i.e. a
sine of peak amplitude 1.0 in float samples (32768 in int16). Its mean power is 0.5. Telephony
levels in dBm0 map to dBFS with the G.711 convention that a 0 dBm0 sine sits 3.14 dB below
digital full scale: ``dBFS = dBm0 - 3.14``.
"""

from __future__ import annotations

import numpy as np

from hw.errors import DspInputError
from hw.linesignals import DBM0_TO_DBFS, SUPPORTED_RATES, check_rate, dbfs_to_amplitude

__all__ = ["DBM0_TO_DBFS", "SUPPORTED_RATES", "DspInputError", "check_rate", "dbfs_to_amplitude",
           "power_to_dbfs", "to_float"]

def to_float(samples, *, allow_empty: bool = False) -> np.ndarray:
    """Convert mono audio to float32 in [-1, 1].

    Accepts int16 (full scale 32768) or float (already in [-1, 1]) 1-D arrays or sequences.
    Raises :class:`DspInputError` for other dtypes, more than one dimension, NaN/inf, or an
    empty array (unless ``allow_empty``; streaming feeds may be empty).
    """
    try:
        arr = np.asarray(samples)
    except Exception as exc:  # noqa: BLE001 - anything unconvertible is bad input
        raise DspInputError(f"samples are not an array: {exc}") from exc
    if arr.ndim != 1:
        raise DspInputError(f"samples must be a 1-D mono array, got shape {arr.shape}")
    if arr.size == 0:
        if allow_empty:
            return np.zeros(0, dtype=np.float32)
        raise DspInputError("samples are empty")
    if arr.dtype == np.int16:
        return arr.astype(np.float32) * np.float32(1.0 / 32768.0)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float32, copy=False)
        # One float64 sum is NaN/inf iff some sample is (values in range cannot overflow);
        # much cheaper per call than isfinite().all() on the 20 ms blocks of the daemon.
        if not np.isfinite(np.add.reduce(out, dtype=np.float64)):
            raise DspInputError("samples contain NaN or infinity")
        return out
    raise DspInputError(f"samples must be int16 or float, got dtype {arr.dtype}")


def power_to_dbfs(power) -> np.ndarray:
    """Mean power of a sine (A**2/2) to dBFS; 0 power maps to -inf without a warning."""
    p = np.asarray(power, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(p / 0.5)
