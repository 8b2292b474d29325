"""The journal of the segment in progress: the call's audio is durable within
``journal_s`` of being cut, not only when a whole segment is.

A segment is written once it is ``segment_s`` long (10 s), so without a journal a power
cut loses up to ``segment_s`` of every call in progress. Every ``journal_s`` (0.5 s) the
recorder hands the writer the audio cut since the last record. The writer seals it as a
complete segment file (same format, and the seq it would have as the call's next
segment; recovery chains it when it adopts it), raw (codec ``pcm``) under the content
key of the segment in progress, which is itself sealed to the practice key
(:class:`recorder.evidence.segfile.ContentKey`: one HPKE operation per segment, an AEAD per
record), and appends it to the call's journal with ``fdatasync``. Nothing in the
journal is plaintext, and the box cannot read it back.

When the segment itself is committed its records are obsolete, and the journal is cut
back to empty (:meth:`JournalFiles.reset`), so it holds at most the segment in progress
(about 160 KB per line at 8 kHz, raw) rather than the whole call twice over: on a disk
running full that is the difference between recording on and not (issue 22). It is
deleted once the call's manifest is written. After a power cut, recovery adopts the records that
continue the call past its last committed segment as segments
(:func:`recorder.storage.recovery.adopt_journal`), so what is lost is the audio not yet
journalled: the recorder's hold (hang-up decision + DTMF) plus up to ``journal_s``.

Wear: one append of about 8 KB (0.5 s at 8 kHz, raw) and one ``fdatasync`` per line per
``journal_s`` while
a call is up (fewer when the writer is behind: records waiting together share one), and
one ``ftruncate`` per segment; no file is created, renamed or deleted per record (see
docs/formats.md).

File ``<call dir>/journal.ltj``: a sequence of records::

    0   4  magic b"LTJ1"
    4   4  length L of the blob, unsigned big-endian
    8  32  SHA-256 of the blob
    40  L  blob: a sealed segment file (recorder.evidence.segfile, kind 1)

A torn tail (short record, wrong magic, wrong hash) ends the journal. Records before it
are intact: each was on disk before the next was written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from pathlib import Path

from recorder.errors import JournalError
from recorder.fsutil import crash_point, fsync_dir

log = logging.getLogger(__name__)

NAME = "journal.ltj"
MAGIC = b"LTJ1"
_REC = struct.Struct(">4sI32s")
MAX_BLOB = 16 * 1024 * 1024   # a record holds at most a few seconds of audio


def frame(blob: bytes, digest: bytes | None = None) -> bytes:
    """One journal record around a sealed segment ``blob`` (``digest``: its SHA-256,
    if the caller already has it)."""
    if not blob or len(blob) > MAX_BLOB:
        raise JournalError(f"journal record of {len(blob)} bytes (1..{MAX_BLOB})")
    return _REC.pack(MAGIC, len(blob), digest or hashlib.sha256(blob).digest()) + blob


def read(data: bytes) -> tuple[list[bytes], str | None]:
    """The intact records of a journal, and why reading stopped early (None: clean end).

    Never raises on bad bytes: a journal is read after a power cut, when its tail may be
    torn, and whatever precedes the damage is still good audio.
    """
    blobs: list[bytes] = []
    pos, view = 0, memoryview(data)
    while pos < len(data):
        if len(data) - pos < _REC.size:
            return blobs, f"torn record header at byte {pos}"
        magic, n, digest = _REC.unpack_from(data, pos)
        if magic != MAGIC:
            return blobs, f"bad record magic at byte {pos}"
        if n == 0 or n > MAX_BLOB or pos + _REC.size + n > len(data):
            return blobs, f"record at byte {pos} runs past the end (length {n})"
        blob = bytes(view[pos + _REC.size:pos + _REC.size + n])
        if hashlib.sha256(blob).digest() != digest:
            return blobs, f"record at byte {pos} fails its hash"
        blobs.append(blob)
        pos += _REC.size + n
    return blobs, None


class JournalFiles:
    """The writer's open journals, one append-only file per call in progress.

    :meth:`append` writes a whole record with one ``write``; :meth:`sync` makes every
    record written so far durable (``fdatasync`` of each journal written to). The writer
    syncs once it has no further record waiting, so when it is behind, several records
    share one ``fdatasync`` (group commit), and at real time each record gets its own.

    If a write or a sync fails (a full disk), the file is cut back to its last durable
    record, so a later record never follows a torn one; if even that fails, the call's
    journal is closed and that call goes on without one (its segments are unaffected).
    """

    def __init__(self):
        self._open: dict[str, list] = {}      # call -> [fd, durable size, written size]
        self._dirty: set[str] = set()
        self._broken: set[str] = set()
        self.records = 0
        self.bytes = 0
        self.syncs = 0

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def append(self, call_id: str, path: Path, blob: bytes,
               digest: bytes | None = None) -> bool:
        """Write one record (durable after :meth:`sync`); False if this call's journal
        is out of use."""
        if call_id in self._broken:
            return False
        rec = frame(blob, digest)
        f = self._open.get(call_id) or self._create(call_id, path)
        try:
            view = memoryview(rec)
            while view:
                view = view[os.write(f[0], view):]
        except OSError:
            self._cut_back(call_id)
            raise
        f[2] += len(rec)
        self._dirty.add(call_id)
        self.records += 1
        self.bytes += len(rec)
        return True

    def sync(self) -> None:
        """fdatasync every journal written to since the last sync."""
        failed = None
        for call_id in sorted(self._dirty):
            f = self._open.get(call_id)
            if f is None:
                continue
            try:
                crash_point("journal_before_sync")
                os.fdatasync(f[0])
                f[1] = f[2]
                self.syncs += 1
            except OSError as exc:
                failed = exc
                self._cut_back(call_id)
        self._dirty.clear()
        if failed is not None:
            raise failed

    def _create(self, call_id: str, path: Path) -> list:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        size = os.fstat(fd).st_size
        fsync_dir(path.parent)          # the file's name is durable before its records
        f = self._open[call_id] = [fd, size, size]
        return f

    def _cut_back(self, call_id: str) -> None:
        fd, durable, _ = self._open[call_id]
        try:
            os.ftruncate(fd, durable)
            os.fdatasync(fd)
            self._open[call_id][2] = durable
        except OSError:
            log.error("call %s: journal could not be cut back after a failed write; "
                      "journal off for this call", call_id)
            self._broken.add(call_id)
            self.close(call_id)
        self._dirty.discard(call_id)

    def reset(self, call_id: str) -> None:
        """The segment in progress was committed: every record in the journal is
        obsolete (records never span segments), so cut it back to empty. No sync: if a
        power cut loses the cut, recovery skips the obsolete records anyway, and the next
        record's ``fdatasync`` makes the new size durable with it."""
        f = self._open.get(call_id)
        if f is None:
            return
        try:
            os.ftruncate(f[0], 0)
        except OSError as exc:
            log.warning("call %s: journal not cut back after its segment: %s", call_id, exc)
            return
        f[1] = f[2] = 0
        self._dirty.discard(call_id)

    def close(self, call_id: str) -> None:
        """Close a call's journal, keeping the file (for shutdown: recovery reads it)."""
        f = self._open.pop(call_id, None)
        self._dirty.discard(call_id)
        if f is not None:
            os.close(f[0])

    def remove(self, call_id: str, path: Path) -> None:
        """The call is complete (manifest written): its journal is no longer needed."""
        self.close(call_id)
        self._broken.discard(call_id)
        path.unlink(missing_ok=True)

    def close_all(self) -> None:
        for call_id in list(self._open):
            self.close(call_id)
