"""Segment audio codecs, in memory only: plaintext audio never touches the disk.

FLAC (lossless, the default) and Opus (in Ogg) through libsndfile via soundfile, and
``pcm`` (raw signed 16-bit little-endian samples): the journal's records, where FLAC's
fixed cost per call would be most of the work for half a second of audio.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from recorder.errors import SegmentFormatError

CODECS = {"flac": ("FLAC", "PCM_16"), "opus": ("OGG", "OPUS")}
PCM = "pcm"
MAX_SEGMENT_SAMPLES = 16000 * 300     # the longest segment config allows: 300 s at 16 kHz


def encode(pcm: np.ndarray, rate: int, codec: str = "flac") -> bytes:
    """Encode mono int16 ``pcm`` at ``rate`` Hz; returns the compressed bytes."""
    if codec == PCM:
        return np.asarray(pcm, dtype="<i2").tobytes()
    fmt, subtype = CODECS[codec]
    bio = io.BytesIO()
    with sf.SoundFile(bio, "w", samplerate=rate, channels=1, format=fmt,
                      subtype=subtype) as f:
        f.write(pcm)
    return bio.getvalue()


def decode(data: bytes, samples: int, codec: str = "flac") -> np.ndarray:
    """Decode to mono int16 of exactly ``samples`` (Opus may differ by its padding).

    The stream's own length is checked before anything is allocated: a sealed segment
    can be made by anyone with the practice *public* key, so neither its header nor its
    FLAC STREAMINFO is trusted to size memory.
    """
    if type(samples) is not int or not 0 < samples <= MAX_SEGMENT_SAMPLES:   # not bool
        raise SegmentFormatError(f"segment length {samples!r} is not 1..{MAX_SEGMENT_SAMPLES}")
    if codec == PCM:
        if len(data) != 2 * samples:
            raise SegmentFormatError(f"pcm audio has {len(data)} bytes, header says "
                                     f"{samples} samples")
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    if not isinstance(codec, str) or codec not in CODECS:     # a header can hold any JSON
        raise SegmentFormatError(f"unknown codec {codec!r}")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.channels != 1:
                raise SegmentFormatError(f"{codec} audio has {f.channels} channels, not 1")
            if codec == "flac" and f.frames != samples:
                raise SegmentFormatError(f"FLAC audio has {f.frames} samples, header says "
                                         f"{samples}")
            pcm = f.read(frames=samples, dtype="int16", always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise SegmentFormatError(f"{codec} audio does not decode: {exc}") from exc
    if len(pcm) < samples:
        if codec == "flac":
            raise SegmentFormatError(f"FLAC audio has {len(pcm)} samples, header says "
                                     f"{samples}")
        pcm = np.concatenate([pcm, np.zeros(samples - len(pcm), np.int16)])
    return pcm
