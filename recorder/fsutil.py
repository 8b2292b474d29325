"""Crash-safe file writes.

Power can be cut at any instant. A file is written under a temp name in the same
folder, fsynced, renamed into place, and the folder is fsynced, so after a cut the
path holds either the old content or the new, never a torn mix.
"""

from __future__ import annotations

import os
from pathlib import Path

TEMP_SUFFIX = ".tmp"

# Test hook for crash campaigns: LINETAP_CRASH_AT=<point>[:<n>] makes the process die
# with SIGKILL at the n-th time (default 1st) it reaches that point, exactly as a power
# cut would: before_fsync, before_rename, before_dirsync (here); journal_before_sync
# (recorder/storage/journal.py); delete_marked, delete_unlinked, evict_marked,
# delete_committed,
# delete_audited (recorder/storage/retention/); ingest_before_ack (sync/upstream/ingest.py).
# Unset in production, where it costs one string test per write.
_CRASH_AT, _, _CRASH_N = os.environ.get("LINETAP_CRASH_AT", "").partition(":")
_crash_seen = {"n": 0}


def crash_point(name: str) -> None:
    if _CRASH_AT and _CRASH_AT == name:
        _crash_seen["n"] += 1
        if _crash_seen["n"] >= int(_CRASH_N or 1):
            os.kill(os.getpid(), 9)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename or unlink in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int = 0o640,
                 sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp, fsync, rename, fsync dir).

    ``mode`` is applied to the temp file before any byte is written, so a private key
    is never readable by others even for an instant.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        crash_point("before_fsync")
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    crash_point("before_rename")
    os.replace(tmp, path)
    crash_point("before_dirsync")
    if sync:
        fsync_dir(path.parent)


def remove_temp_files(root: str | os.PathLike) -> list[Path]:
    """Delete temp files left by an interrupted :func:`atomic_write` under ``root``."""
    removed = []
    for p in Path(root).rglob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
