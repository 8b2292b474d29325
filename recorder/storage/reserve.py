"""The disk reserve: space kept back so that a full disk never stops recording.

A disk full to the last byte is a trap: SQLite cannot commit even the deletion that
would free space (its WAL needs a few pages), the writer cannot store the row of a call
already answered, and a box restarted on it cannot open its database or finish recovery.
Eviction alone cannot be relied on to get out: the files it frees can be taken by the
next write before its own commit.

So the box keeps a file of ``retention.reserve_mb`` preallocated (``posix_fallocate``:
real blocks, not a sparse hole) at ``DATA_DIR/reserve.space``. It is released (unlinked)
the moment anything meets a full disk: a write that fails with ENOSPC / SQLITE_FULL, a
deletion whose commit is refused, a start-up with less than ``retention.min_free_mb``
free. Recording, the commits and recovery then run in that space while retention evicts
per policy (synced first). Retention re-creates the reserve once there is room for it
above ``min_free_mb`` again, and evicts with the reserve counted in its target, so a
released reserve is a low-storage condition (the ``low_storage`` alarm stays up until
it is back). See docs/retention.md.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from recorder.fsutil import TEMP_SUFFIX, fsync_dir

log = logging.getLogger(__name__)

FILE = "reserve.space"


class Reserve:
    """A preallocated file of ``size`` bytes at ``path`` (``size`` 0: no reserve).

    Thread-safe: the writer, retention and start-up may all release it.
    """

    def __init__(self, path: str | os.PathLike, size: int):
        if size < 0:
            raise ValueError(f"reserve size {size} bytes is negative")
        self.path, self.size = Path(path), int(size)
        self._lock = threading.Lock()
        self.released_count = 0
        self.created_count = 0

    @property
    def held(self) -> bool:
        """Is the reserve on disk at its full size? (Always true with no reserve.)"""
        if self.size == 0:
            return True
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def shortfall(self) -> int:
        """Bytes the reserve still needs (0 when held): what retention adds to its
        free-space target so that there is room to re-create it."""
        return 0 if self.held else self.size

    def release(self, why: str) -> int:
        """Unlink the reserve (this is what frees its space); returns the bytes freed,
        0 if it was not held. Never raises: it is called from error paths."""
        if self.size == 0:
            return 0
        with self._lock:
            try:
                freed = self.path.stat().st_size
                self.path.unlink()
            except FileNotFoundError:
                return 0
            except OSError as exc:
                log.error("disk reserve could not be released: %s", exc)
                return 0
            try:
                fsync_dir(self.path.parent)
            except OSError:
                pass      # the unlink freed the space either way
            self.released_count += 1
        log.warning("disk full (%s): released the %.1f MB disk reserve", why, freed / 2**20)
        return freed

    def ensure(self, free_bytes: int, min_free_bytes: int) -> bool:
        """Create the reserve if it is missing and ``free_bytes`` leaves room for it
        above ``min_free_bytes``; True if it is held afterwards. A failure (the disk
        filled meanwhile) is logged and leaves no partial file."""
        if self.held:
            return True
        if free_bytes - self.size < min_free_bytes:
            return False
        with self._lock:
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}{TEMP_SUFFIX}")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
                fsync_dir(self.path.parent)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                log.warning("disk reserve not re-created: %s", exc)
                return False
            self.created_count += 1
        log.info("disk reserve of %.1f MB in place", self.size / 2**20)
        return True

