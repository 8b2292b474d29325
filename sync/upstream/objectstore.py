"""Blob storage for the upstream: a filesystem object store (the default) and, behind the
same interface, S3 (:mod:`sync.upstream.s3store`).

Keys are ``/``-separated relative names (``seg/<device>/<call>/<seq>.<sha256>``). A
``put`` returns only once the bytes are durable (temp + fsync + rename + fsync dir),
because the ingest acks to the box right after it and the box then may delete its copy.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Protocol

from recorder.errors import ConfigError, StoreError
from recorder.fsutil import crash_point, fsync_dir

TMP = "tmp"               # FsObjectStore's temp files (not objects; see clean_temp)
TEMP_MAX_AGE_S = 3600.0   # a temp file this old belongs to a dead writer


class ObjectStore(Protocol):
    """What the ingest needs from a blob store (:class:`FsObjectStore`,
    :class:`sync.upstream.s3store.S3ObjectStore`)."""

    def put(self, key: str, data: bytes, *, durable: bool = True,
            dirs: set | None = None) -> None: ...
    def sync_dirs(self, dirs: set) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def walk(self, prefix: str) -> list[tuple[str, float]]: ...
    def set_hold(self, key: str, on: bool) -> bool: ...
    def clean_temp(self, max_age_s: float, now: float | None = None) -> int: ...


class FsObjectStore:
    """Objects as files under ``root`` (which may be shared by every ingest worker)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._n = itertools.count()

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"bad object key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, durable: bool = True,
            dirs: set | None = None) -> None:
        """Store ``data`` under ``key``. ``durable=False`` skips every fsync (for
        re-sendable scratch such as partial chunks). With a ``dirs`` set, the folder
        fsync is left to :meth:`sync_dirs` so a batch pays it once per folder.

        The bytes are written to a temp file under ``tmp/`` (same filesystem, so the
        rename is atomic), never beside the object: a worker killed mid-write leaves
        its temp file where :meth:`clean_temp` finds it without walking the store."""
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = self.root / TMP
        tmpdir.mkdir(exist_ok=True)
        tmp = tmpdir / f"{os.getpid()}.{threading.get_ident()}.{next(self._n)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            crash_point("before_fsync")
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        crash_point("before_rename")
        os.replace(tmp, p)
        crash_point("before_dirsync")
        if not durable:
            return
        if dirs is None:
            fsync_dir(p.parent)
        else:
            dirs.add(p.parent)

    def clean_temp(self, max_age_s: float, now: float | None = None) -> int:
        """Remove temp files older than ``max_age_s`` (left by a worker killed
        mid-write; a live write takes well under a second). Returns how many."""
        now = time.time() if now is None else now
        n = 0
        for key, mtime in self.walk(TMP):
            if now - mtime >= max_age_s:
                (self.root / key).unlink(missing_ok=True)
                n += 1
        return n

    def sync_dirs(self, dirs: set) -> None:
        """fsync folders whose renames :meth:`put` deferred."""
        for d in dirs:
            fsync_dir(d)
        dirs.clear()

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"object {key} not found") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove an object and any folders it leaves empty."""
        p = self._path(key)
        p.unlink(missing_ok=True)
        d = p.parent
        while d != self.root and self.root in d.parents:
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent

    def list(self, prefix: str) -> list[str]:
        """Keys directly under the folder ``prefix`` (sorted)."""
        d = self._path(prefix.rstrip("/"))
        if not d.is_dir():
            return []
        return sorted(f"{prefix.rstrip('/')}/{p.name}" for p in d.iterdir()
                      if p.is_file() and not p.name.startswith("."))
    def set_hold(self, key: str, on: bool) -> bool:
        """A filesystem has no per-object legal hold: the database's flag is the hold
        (:func:`sync.upstream.ops.delete_call` refuses a held call). Returns False."""
        return False

    def walk(self, prefix: str) -> list[tuple[str, float]]:
        """Every object under the folder ``prefix``, at any depth, with its modification
        time (epoch s), sorted by key (``walk("tmp")`` lists the temp files)."""
        d = self._path(prefix.rstrip("/"))
        if not d.is_dir():
            return []
        out = []
        for p in d.rglob("*"):
            try:
                if p.is_file():
                    out.append((p.relative_to(self.root).as_posix(), p.stat().st_mtime))
            except FileNotFoundError:
                continue          # removed meanwhile (another worker finished it)
        return sorted(out)


def open_objects(location) -> ObjectStore:
    """An object store from a path, a ``file://`` URL or an ``s3://bucket/prefix``
    location, or from an :class:`~sync.upstream.config.UpstreamConfig` (its
    ``objects`` path with its ``s3_*`` settings)."""
    s3: dict = {}
    if not isinstance(location, str):
        location, s3 = location.objects, location.s3
    if location.startswith("s3://"):
        from sync.upstream.s3store import S3ObjectStore, S3Options
        return S3ObjectStore(location, S3Options(**s3))
    if s3:
        raise ConfigError([f"objects.path {location}: s3_* settings need an s3:// path"])
    if location.startswith("file://"):
        location = location[len("file://"):]
    return FsObjectStore(location)
