"""Append-only, hash-chained audit log of security-relevant acts, signed by the box.

One JSON object per line in ``DATA_DIR/audit.log``::

    {"seq": 12, "ts": "2026-11-25T09:00:00.000Z", "action": "export",
     "detail": {...}, "prev": "<hex sha256 of the previous entry>",
     "signer": "<identity fingerprint>", "hash": "<hex>", "sig": "<hex Ed25519>"}

``hash`` is sha256 over the canonical JSON of the entry without ``hash`` and ``sig``;
``sig`` is the box identity's Ed25519 signature over ``b"linetap-audit-v1\\n" +
hash`` (:mod:`recorder.evidence.auditchain` has the rules and the checker). Every entry
is signed, not checkpoints: an entry is one small append and one fsync either way
(the signature adds 128 hex digits to the line, not a write), and a power cut can
then leave at most a torn last line, never an unsigned run of entries waiting for the
next checkpoint. An entry written while the identity key is unreadable (the first
entry after a factory reset, or the key gone) has no ``signer``/``sig``; verification
reports it. Entries from before signing verify as "unsigned (legacy)".

Lines are appended with O_APPEND and fsynced before the act is reported done; a
line torn by a power cut is left as it is (verify reports a torn tail, not tampering)
and the next entry starts on a new line, chained onto the last whole one.

:func:`verify` checks against a TRUSTED key passed in (the pinned identity, or
``--identity-pub``), never the ``signer`` named in the log.

Actions in use: export, verify, delete, retention_expiry, eviction, config_change,
key_change, identity_created, pause, resume, provision, provision_refused,
factory_reset_pending, factory_reset, command_rejected, command_applied, legal_hold.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from recorder.errors import KeyFileError
from recorder.evidence import auditchain, keys
from recorder.evidence.auditchain import GENESIS, Link, Report
from recorder.evidence.segfile import canonical

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.log"
_lock = threading.Lock()


def _path(data_dir) -> Path:
    return Path(data_dir) / AUDIT_FILE


def _tail_lines(path: Path, nbytes: int) -> list[bytes]:
    """The lines in the last ``nbytes`` of ``path`` (the first dropped when the window
    cuts it), [] for a log not yet written."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - nbytes))
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    return lines[1:] if size > nbytes else lines


def _last(path: Path) -> tuple[int, str]:
    """(seq, hash) of the last complete line, or (0, GENESIS) for a new log."""
    for raw in reversed(_tail_lines(path, 65536)):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
            return int(entry["seq"]), str(entry["hash"])
        except (ValueError, KeyError, TypeError):
            # A torn last line after a power cut: keep chaining from the line before
            # it; verify() reports the torn line so it is not hidden.
            continue
    return 0, GENESIS


def head(data_dir) -> tuple[int, str]:
    """(seq, hash) of the last whole entry; (0, GENESIS) for an empty or missing log."""
    return _last(_path(data_dir))


def _signer(data_dir):
    """The box's identity key, or None while there is none (logged: the entry is then
    written unsigned, and verify names it)."""
    try:
        return keys.load_identity(data_dir)
    except KeyFileError as exc:
        log.warning("audit entry written unsigned: %s", exc)
        return None


def record(data_dir, action: str, now: datetime | None = None, **detail) -> dict:
    """Append one signed entry and fsync it. ``detail`` must be JSON-serialisable.

    Never put keys, card data or full phone numbers in ``detail``.
    """
    path = _path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
    key = _signer(data_dir)
    with _lock:
        seq, prev = _last(path)
        entry = {"seq": seq + 1, "ts": ts.replace("+00:00", "Z"), "action": action,
                 "detail": detail, "prev": prev}
        if key is not None:
            entry["signer"] = keys.fingerprint(keys.raw_public(key.public_key()))
        entry = json.loads(canonical(entry))          # what a reader will see
        entry["hash"] = auditchain.entry_hash(entry)
        if key is not None:
            entry["sig"] = auditchain.sign(key, entry["hash"], auditchain.BOX_DOMAIN)
        line = canonical(entry) + b"\n"
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line    # the last line was torn by a power cut
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    log.info("audit: %s %s", action, {k: v for k, v in detail.items() if k != "reason"})
    return entry


def read(data_dir) -> list[dict]:
    """All parseable entries, oldest first (see :func:`verify` for integrity)."""
    return [ln.entry for ln in links(data_dir) if ln.entry is not None]


def tail(data_dir, nbytes: int = 1 << 20) -> list[dict]:
    """The parseable entries in the last ``nbytes`` of the log, oldest first."""
    out = []
    for line in _tail_lines(_path(data_dir), nbytes):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _parse(raw: bytes) -> dict | None:
    try:
        e = json.loads(raw)
    except ValueError:
        return None
    return e if isinstance(e, dict) else None


def lines_from(data_dir, offset: int = 0):
    """(byte offset of the line, entry or None if it does not parse, line number counted
    from ``offset``) for every non-empty line from ``offset`` on, oldest first."""
    try:
        f = open(_path(data_dir), "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        pos, lineno = offset, 0
        for raw in f:
            lineno += 1
            start, pos = pos, pos + len(raw)
            if raw.strip():
                yield start, _parse(raw), lineno


def links(data_dir):
    """Every non-empty line as a :class:`~.auditchain.Link` (``entry`` None for a line
    that does not parse), oldest first."""
    for _off, e, lineno in lines_from(data_dir):
        seq = e.get("seq") if e is not None else None
        yield Link(f"line {lineno}" + (f" (seq {seq})" if seq is not None else ""), e)


def size(data_dir) -> int:
    """The log's size in bytes (0 if there is none)."""
    try:
        return _path(data_dir).stat().st_size
    except FileNotFoundError:
        return 0


def verify(data_dir, public_key=None) -> Report:
    """Check the whole log against ``public_key``, the TRUSTED identity
    (:func:`recorder.evidence.trust.trusted_identity`); None: the chain is checked but
    signatures cannot be, and the result is "unverifiable"."""
    return auditchain.check(links(data_dir), public_key, auditchain.BOX_DOMAIN)

