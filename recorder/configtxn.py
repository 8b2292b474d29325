"""Atomic apply: stage every file, then commit them as one durable step.

The provisioning agent applies a site this way; it is a shared basic of ``recorder`` so
that ``doctor`` can report what an interrupted apply left without importing
``provisioning`` (imports run one way: provisioning uses recorder, never back).

During an ``apply`` the agent writes each new file (config, practice key, command key,
broker CA, TLS key, certificate) *next to* its destination as ``.NAME.staged`` (same
folder, so the final rename never crosses a filesystem), and lists them in the staging
manifest ``<config dir>/provision-staging.json``. Nothing in force changes.

Commit:

1. write the journal ``<config dir>/provision-journal.json`` (every destination, its
   staged file and sha256) with the atomic-write helper: temp file, fsync, rename,
   fsync the folder. **The rename of the journal is the commit point.**
2. roll forward: rename each staged file over its destination and fsync its folder;
3. delete the journal, then the manifest.

After a power cut or a pulled cable at any point: no journal means the old state is in
force, complete (staged files are leftovers, reported by ``status`` and ``doctor`` and
discarded by the next apply); a journal means the new state, completed by
:func:`recover` (the agent runs it at start, before it serves or the recorder starts).
A journal entry whose staged file is gone and whose destination already has the right
sha256 was renamed before the cut; one with neither is reported as damage, never
guessed at.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from recorder.errors import LinetapError
from recorder.fsutil import atomic_write

MANIFEST = "provision-staging.json"
JOURNAL = "provision-journal.json"


class TransactionError(LinetapError, RuntimeError):
    """A journal cannot be completed (a staged file and its destination both wrong)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staged_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.staged")


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"damaged": True}
    return obj if isinstance(obj, dict) else {"damaged": True}


class Transaction:
    """The staged files of one apply, owned by session ``session``.

    ``config_dir``: the folder of the box config (journal and manifest live there).
    ``fault``: called with a step name (``"begin"`` before the journal, ``"journal"``,
    ``"rename:N"``) after each durable step of :meth:`commit`; tests raise from it to
    simulate a power cut there.
    """

    def __init__(self, config_dir: Path, session: str,
                 fault: Callable[[str], None] | None = None):
        self.config_dir = Path(config_dir)
        self.session = session
        self.files: dict[str, dict] = {}     # dest -> {"staged", "sha256", "mode"}
        self.fault = fault or (lambda step: None)

    @property
    def manifest_path(self) -> Path:
        return self.config_dir / MANIFEST

    @property
    def journal_path(self) -> Path:
        return self.config_dir / JOURNAL

    def stage(self, dest: Path, data: bytes, mode: int) -> Path:
        """Write ``data`` beside ``dest`` (atomically) and list it in the manifest."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = staged_name(dest)
        # The manifest names the file before it exists, so a cut between the two
        # writes still leaves the staged file findable (and discarded) later.
        self.files[str(dest)] = {"staged": str(staged), "sha256": _sha256(data),
                                 "mode": mode}
        self._write_manifest()
        atomic_write(staged, data, mode=mode)
        return staged

    def staged_data(self, dest: Path) -> bytes | None:
        """The staged bytes for ``dest``, or None if nothing is staged for it."""
        e = self.files.get(str(dest))
        return Path(e["staged"]).read_bytes() if e else None

    def _write_manifest(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifest_path, json.dumps(
            {"session": self.session, "files": self.files}, sort_keys=True).encode(),
            mode=0o640)

    def commit(self) -> list[str]:
        """Put every staged file in force as one durable step; return the destinations."""
        entries = [{"dest": d, **e} for d, e in sorted(self.files.items())]
        self.fault("begin")
        atomic_write(self.journal_path, json.dumps(
            {"session": self.session, "entries": entries}, sort_keys=True).encode(),
            mode=0o640)
        self.fault("journal")
        roll_forward(self.config_dir, self.fault)
        self.files = {}
        return [e["dest"] for e in entries]

    def discard(self) -> int:
        """Remove the staged files and the manifest; return how many files went."""
        n = discard_leftovers(self.config_dir)
        self.files = {}
        return n


def roll_forward(config_dir: Path, fault: Callable[[str], None] | None = None) -> int:
    """Complete the journal in ``config_dir``; return how many files were renamed."""
    fault = fault or (lambda step: None)
    jpath = Path(config_dir) / JOURNAL
    journal = _read_json(jpath)
    if journal is None:
        return 0
    if journal.get("damaged"):
        # atomic_write never leaves a torn journal, so this is damage from outside.
        raise TransactionError(f"{jpath} is damaged; cannot tell the committed files "
                               "apart: re-run apply")
    renamed = 0
    for i, e in enumerate(journal.get("entries", [])):
        dest, staged = Path(e["dest"]), Path(e["staged"])
        if staged.exists():
            os.replace(staged, dest)
            _fsync_dir(dest.parent)
            renamed += 1
        else:
            try:
                ok = _sha256(dest.read_bytes()) == e["sha256"]
            except FileNotFoundError:
                ok = False
            if not ok:
                raise TransactionError(f"journal names {dest}, but neither its staged copy "
                                       "nor the right content is there: re-run apply")
        fault(f"rename:{i}")
    jpath.unlink()
    (Path(config_dir) / MANIFEST).unlink(missing_ok=True)
    _fsync_dir(Path(config_dir))
    return renamed


def leftovers(config_dir: Path) -> dict | None:
    """What an interrupted apply left: ``{"journal": bool, "staged": [paths]}`` or None."""
    config_dir = Path(config_dir)
    journal = (config_dir / JOURNAL).exists()
    man = _read_json(config_dir / MANIFEST)
    staged = []
    if man and not man.get("damaged"):
        staged = [e["staged"] for e in (man.get("files") or {}).values()
                  if Path(e["staged"]).exists()]
    if not journal and man is None:
        return None
    return {"journal": journal, "staged": staged,
            "session": (man or {}).get("session")}


def discard_leftovers(config_dir: Path) -> int:
    """Delete the staged files a manifest lists, then the manifest (no journal only)."""
    config_dir = Path(config_dir)
    if (config_dir / JOURNAL).exists():
        raise TransactionError("a committed apply is half-done; run recovery first")
    man = _read_json(config_dir / MANIFEST)
    n = 0
    if man and not man.get("damaged"):
        for e in (man.get("files") or {}).values():
            p = Path(e["staged"])
            if p.exists():
                p.unlink()
                n += 1
    (config_dir / MANIFEST).unlink(missing_ok=True)
    return n
