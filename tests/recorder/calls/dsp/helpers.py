"""Shared helpers for the DSP tests (signal padding, noise at a given S/N)."""

from __future__ import annotations

import numpy as np


def pad(x: np.ndarray, rate: int, before_s: float = 0.1, after_s: float = 0.1) -> np.ndarray:
    """Surround ``x`` with silence."""
    return np.concatenate(
        [np.zeros(int(before_s * rate), np.float32), x, np.zeros(int(after_s * rate), np.float32)]
    ).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, signal_power: float, seed: int) -> np.ndarray:
    """Add white Gaussian noise (full band 0..rate/2) at ``snr_db`` below ``signal_power``."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
    return (x + rng.normal(0.0, sigma, x.size)).astype(np.float32)


def sine_power(level_dbfs: float) -> float:
    """Mean power of a sine at ``level_dbfs``."""
    return 0.5 * 10.0 ** (level_dbfs / 10.0)
