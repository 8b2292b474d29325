"""Append-only, hash-chained audit log of security-relevant acts.

One JSON object per line in ``DATA_DIR/audit.log``::

    {"seq": 12, "ts": "2026-11-25T09:00:00.000Z", "action": "export",
     "detail": {...}, "prev": "<hex sha256 of the previous line>", "hash": "<hex>"}

``hash`` is sha256 over the canonical JSON of the entry without ``hash``. Each line
names the hash of the one before it, so editing, deleting or reordering any line
breaks the chain at that point, and :func:`verify` names the first broken line.
Lines are appended with O_APPEND and fsynced before the act is reported done; a
line torn by a power cut is left as it is (verify names it) and the next entry
starts on a new line, chained onto the last whole one.

Actions in use: export, verify, delete, retention_expiry, eviction, config_change,
key_change, identity_created, pause, resume, provision, provision_refused,
factory_reset_pending, factory_reset, command_rejected, command_applied, legal_hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from recorder.errors import IntegrityError
from recorder.evidence.segfile import canonical

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.log"
GENESIS = "0" * 64
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


def record(data_dir, action: str, now: datetime | None = None, **detail) -> dict:
    """Append one entry and fsync it. ``detail`` must be JSON-serialisable.

    Never put keys, card data or full phone numbers in ``detail``.
    """
    path = _path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
    with _lock:
        seq, prev = _last(path)
        entry = {"seq": seq + 1, "ts": ts.replace("+00:00", "Z"), "action": action,
                 "detail": detail, "prev": prev}
        entry["hash"] = hashlib.sha256(canonical(entry)).hexdigest()
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
    out = []
    try:
        with open(_path(data_dir), "rb") as f:
            for raw in f:
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out


def tail(data_dir, nbytes: int = 1 << 20) -> list[dict]:
    """The parseable entries in the last ``nbytes`` of the log, oldest first."""
    out = []
    for line in _tail_lines(_path(data_dir), nbytes):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def verify(data_dir) -> tuple[int, list[str]]:
    """Check the whole chain. Returns (entries checked, problems); no problems = intact."""
    problems: list[str] = []
    prev, expect_seq, n = GENESIS, 1, 0
    try:
        f = open(_path(data_dir), "rb")  # noqa: SIM115
    except FileNotFoundError:
        return 0, []
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            n += 1
            try:
                entry = json.loads(raw)
                claimed = entry.pop("hash")
            except (ValueError, KeyError, AttributeError):
                problems.append(f"line {lineno}: not a valid audit entry")
                continue
            if hashlib.sha256(canonical(entry)).hexdigest() != claimed:
                problems.append(f"line {lineno} (seq {entry.get('seq')}): altered")
            if entry.get("prev") != prev:
                problems.append(f"line {lineno} (seq {entry.get('seq')}): chain broken "
                                "(a line before it was removed, altered or reordered)")
            if entry.get("seq") != expect_seq:
                problems.append(f"line {lineno}: seq {entry.get('seq')} where {expect_seq} "
                                "was expected")
            prev = claimed
            expect_seq = (entry.get("seq") or expect_seq) + 1
    return n, problems


def verify_or_raise(data_dir) -> int:
    n, problems = verify(data_dir)
    if problems:
        raise IntegrityError("audit log: " + "; ".join(problems))
    return n
