"""The campaigns' plaintext scan reads every byte: audio hidden past a file's first bytes
is found, and ciphertext-like bytes are not mistaken for it."""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf

from tests.support.plaintext import plaintext_files


def _audio(fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(800, dtype=np.int16), 8000, format=fmt)
    return buf.getvalue()


def test_audio_anywhere_is_found_and_random_bytes_are_not(tmp_path):
    for name, fmt in (("a.ltj", "WAV"), ("b.seg", "FLAC"), ("c.seg", "OGG")):
        (tmp_path / name).write_bytes(os.urandom(5000) + _audio(fmt) + os.urandom(100))
    (tmp_path / "d.seg").write_bytes(os.urandom(4 * 2**20))       # 4 MiB of "ciphertext"
    found = sorted(p.name for p in plaintext_files(tmp_path))
    assert found == ["a.ltj", "b.seg", "c.seg"]
