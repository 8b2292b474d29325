"""A disk filled to the last byte, for the full-disk tests and campaign."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fill_to_last_byte(ballast: Path) -> None:
    """Append zeros to ``ballast`` until the file system refuses even one byte (ENOSPC):
    64 KiB writes, halved at each refusal down to 1 byte. Any other error is raised."""
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[:len(block) // 2]
    finally:
        os.close(fd)
