"""Fetch an update bundle over HTTPS with the box's device certificate, resumably.

The bundle goes to ``DIR/<sha256>.part`` on the data partition while it arrives, and
is renamed to ``DIR/<sha256>.raucb`` only once its size and SHA-256 match the signed
command (temp name, fsync, rename, fsync the folder). An interrupted download is
resumed from the bytes already on disk with an HTTP ``Range`` request; a server that
answers a range with the whole file (200) starts it again from zero. The ``.part``
name is deliberately not the ``.tmp`` that start-up sweeps away, so a reboot or a crash
of the recorder keeps what was fetched.

The hash here only proves the right file arrived; ``rauc install`` checks its signature.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from recorder.errors import UpdateError
from recorder.fsutil import fsync_dir

log = logging.getLogger(__name__)

CHUNK = 256 * 1024          # bytes read and hashed at a time
SYNC_EVERY = 8 * 2**20      # fsync the .part at least this often (bytes), so a power cut
                            # loses at most this much of the download
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Wanted:
    """What the signed command promises: ``url`` (https), ``size`` (bytes) and
    ``sha256`` (64 lower-case hex digits)."""

    url: str
    size: int
    sha256: str


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """A client context that trusts ``ca`` (the upstream's CA from the sync config) and
    presents the device certificate ``cert`` with its ``key`` (PEM paths)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def paths(folder: Path, sha256: str) -> tuple[Path, Path]:
    """(the partial file, the finished bundle) for a bundle of hash ``sha256``."""
    return folder / f"{sha256}.part", folder / f"{sha256}.raucb"


def fetch(want: Wanted, folder: Path, ctx: ssl.SSLContext, *,
          progress: Callable[[int], None] | None = None, timeout_s: float = 60.0) -> Path:
    """Download ``want`` into ``folder`` and return the finished bundle's path.

    ``progress(bytes_on_disk)`` is called as data arrives. A finished bundle already
    there is returned at once. Raises :class:`UpdateError` with ``retry=True`` when the
    connection fails or drops (call again to resume), and ``retry=False`` when the file
    is wrong (size or hash; the partial file is removed so the next try starts afresh).
    """
    folder.mkdir(parents=True, exist_ok=True)
    part, done = paths(folder, want.sha256)
    if done.exists() and done.stat().st_size == want.size:
        return done
    have = part.stat().st_size if part.exists() else 0
    if have > want.size:
        part.unlink()
        have = 0
    digest = hashlib.sha256()
    if have:
        with part.open("rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
    if have < want.size:
        have, digest = _receive(want, part, have, digest, ctx, progress, timeout_s)
    if have != want.size:
        part.unlink(missing_ok=True)
        raise UpdateError(f"bundle is {have} bytes, the command says {want.size}")
    if digest.hexdigest() != want.sha256:
        part.unlink(missing_ok=True)
        raise UpdateError("bundle SHA-256 does not match the command "
                          f"(got {digest.hexdigest()[:16]}..., want {want.sha256[:16]}...)")
    os.replace(part, done)
    fsync_dir(folder)
    log.info("update bundle %s... downloaded (%d bytes)", want.sha256[:12], want.size)
    return done


def _receive(want: Wanted, part: Path, have: int, digest, ctx: ssl.SSLContext,
             progress, timeout_s: float):
    """Append the rest of the bundle to ``part`` (holding ``have`` bytes, hashed into
    ``digest``) and return (bytes now on disk, the hash of exactly those bytes)."""
    u = urlsplit(want.url)
    if u.scheme != "https" or not u.hostname:
        raise UpdateError(f"refusing to fetch a bundle from a non-https URL ({u.scheme}://)")
    target = u.path + (f"?{u.query}" if u.query else "") or "/"
    conn = http.client.HTTPSConnection(u.hostname, u.port or 443, context=ctx,
                                       timeout=timeout_s)
    try:
        try:
            conn.request("GET", target, headers={"Range": f"bytes={have}-"} if have else {})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise UpdateError(f"cannot reach {u.hostname}: {exc}", retry=True) from exc
        start = _start_of(resp, have, want.size)
        if start == 0 and have:
            log.info("server ignored the range: downloading %s... from the start",
                     want.sha256[:12])
            digest, have = hashlib.sha256(), 0
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if have else os.O_TRUNC)
        fd = os.open(part, flags, 0o640)
        unsynced = 0
        try:
            while have < want.size:
                try:
                    block = resp.read(min(CHUNK, want.size - have))
                except (OSError, http.client.HTTPException) as exc:
                    raise UpdateError(f"download interrupted at {have} bytes: {exc}",
                                      retry=True) from exc
                if not block:
                    raise UpdateError(f"download interrupted at {have} bytes "
                                      "(connection closed)", retry=True)
                os.write(fd, block)
                digest.update(block)
                have += len(block)
                unsynced += len(block)
                if unsynced >= SYNC_EVERY:
                    os.fsync(fd)
                    unsynced = 0
                if progress is not None:
                    progress(have)
            if resp.read(1):
                raise UpdateError(f"server sent more than the {want.size} bytes the "
                                  "command names")
        finally:
            os.fsync(fd)
            os.close(fd)
        return have, digest
    finally:
        conn.close()


def _start_of(resp: http.client.HTTPResponse, have: int, size: int) -> int:
    """Where the response body starts in the bundle (0 or ``have``), or UpdateError."""
    if resp.status == 206:
        m = _RANGE.match(resp.getheader("Content-Range", ""))
        if m is None or int(m.group(1)) != have:
            raise UpdateError(f"server answered range {have}- with "
                              f"{resp.getheader('Content-Range')!r}", retry=True)
        if m.group(3) != "*" and int(m.group(3)) != size:
            raise UpdateError(f"server says the bundle is {m.group(3)} bytes, the command "
                              f"says {size}")
        return have
    if resp.status == 200:
        length = resp.getheader("Content-Length")
        if length is not None and int(length) != size:
            raise UpdateError(f"server says the bundle is {length} bytes, the command "
                              f"says {size}")
        return 0
    if 500 <= resp.status < 600 or resp.status in (408, 429):
        raise UpdateError(f"server answered {resp.status} {resp.reason}", retry=True)
    raise UpdateError(f"server answered {resp.status} {resp.reason}")
