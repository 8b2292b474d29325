"""Segment audio codecs, in memory only: plaintext audio never touches the disk.

FLAC (lossless, the default) and Opus (in Ogg) through libsndfile via soundfile.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from recorder.errors import SegmentFormatError

CODECS = {"flac": ("FLAC", "PCM_16"), "opus": ("OGG", "OPUS")}


def encode(pcm: np.ndarray, rate: int, codec: str = "flac") -> bytes:
    """Encode mono int16 ``pcm`` at ``rate`` Hz; returns the compressed bytes."""
    fmt, subtype = CODECS[codec]
    bio = io.BytesIO()
    with sf.SoundFile(bio, "w", samplerate=rate, channels=1, format=fmt,
                      subtype=subtype) as f:
        f.write(pcm)
    return bio.getvalue()


def decode(data: bytes, samples: int, codec: str = "flac") -> np.ndarray:
    """Decode to mono int16 of exactly ``samples`` (Opus may differ by its padding)."""
    try:
        pcm, _sr = sf.read(io.BytesIO(data), dtype="int16", always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise SegmentFormatError(f"{codec} audio does not decode: {exc}") from exc
    if pcm.ndim != 1:
        pcm = pcm[:, 0]
    if len(pcm) > samples:
        pcm = pcm[:samples]
    elif len(pcm) < samples:
        if codec == "flac":
            raise SegmentFormatError(f"FLAC audio has {len(pcm)} samples, header says "
                                     f"{samples}")
        pcm = np.concatenate([pcm, np.zeros(samples - len(pcm), np.int16)])
    return pcm
