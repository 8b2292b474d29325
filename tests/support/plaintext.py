"""Plaintext audio on a disk that should hold only ciphertext: the scan the tests and the
campaigns share."""

from __future__ import annotations

import re
from pathlib import Path

#: Audio containers anywhere in a file, not only at its start (a WAV inside a journal, a
#: FLAC stream appended to a record). Every pattern is 7 bytes or more, so ciphertext
#: matches one by chance about once in 2**56 positions: no false alarms.
PLAINTEXT_ANYWHERE = re.compile(
    rb"RIFF.{4}WAVE|fLaC[\x00\x80]\x00\x00\x22|OpusHead|\x01vorbis", re.S)


def plaintext_files(data: Path) -> list[Path]:
    """Files under ``data`` holding plaintext audio anywhere in their bytes (a WAV, FLAC
    or Ogg Opus/Vorbis stream at any offset; every byte of every file is read)."""
    out = []
    for p in Path(data).rglob("*"):
        try:
            if p.is_file() and PLAINTEXT_ANYWHERE.search(p.read_bytes()):
                out.append(p)
        except OSError:
            continue
    return out
