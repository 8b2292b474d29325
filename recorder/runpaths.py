"""Where the daemon's volatile files go: ``status.json`` in RAM under systemd.

Under ``linetap-recorder.service`` systemd sets ``RUNTIME_DIRECTORY`` (``/run/linetap``,
a tmpfs; ``RuntimeDirectory=linetap``) and the status file, rewritten every second, goes
there: on the data partition it would wear the SD card even while the box is idle. Run
by hand or in simulation (no ``RUNTIME_DIRECTORY``) it stays in ``DATA/run/`` as before.
"""

from __future__ import annotations

import os
from pathlib import Path

STATUS_NAME = "status.json"
# Where `linetap status` looks first on a box: the unit's RuntimeDirectory.
BOX_RUNTIME_DIR = Path("/run/linetap")


def runtime_dir() -> Path | None:
    """The first folder of ``$RUNTIME_DIRECTORY`` (systemd may list several, ':'-joined),
    or None outside a unit that declares ``RuntimeDirectory=``."""
    value = os.environ.get("RUNTIME_DIRECTORY", "")
    first = value.split(":")[0]
    return Path(first) if first else None


def status_path(data_dir: Path) -> Path:
    """The status file the daemon writes: in the runtime directory when systemd gave one,
    else ``data_dir/run/status.json``."""
    rd = runtime_dir()
    return rd / STATUS_NAME if rd is not None else Path(data_dir) / "run" / STATUS_NAME


def status_candidates(data_dir: Path) -> list[Path]:
    """Where a reader (``linetap status``) looks, newest location first: this process's
    runtime directory, the box's ``/run/linetap``, then the data folder."""
    out = []
    rd = runtime_dir()
    if rd is not None:
        out.append(rd / STATUS_NAME)
    out += [BOX_RUNTIME_DIR / STATUS_NAME, Path(data_dir) / "run" / STATUS_NAME]
    return out
