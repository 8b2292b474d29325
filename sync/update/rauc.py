"""The ``rauc`` client: install a bundle, read the slots, mark the booted slot.

Every call goes through the ``rauc`` command line to the RAUC service on the system
D-Bus (``rauc service``, running as root on the box); the D-Bus policy in
``firmware/rauc/`` lets the ``linetap`` group talk to it. ``rauc install`` checks the
bundle's signature against the keyring and refuses plain bundles
(``firmware/rauc/system.conf``): this module never judges a bundle itself.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from recorder.errors import UpdateError

log = logging.getLogger(__name__)

INSTALL_TIMEOUT_S = 1800.0     # a 1.5 GiB root onto an SD card
QUERY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Slots:
    """What RAUC says about the boot slots: ``booted`` and ``primary`` are bootnames
    (A or B; None if unknown); ``good`` maps each bootname to whether its boot status
    is good (the firmware boots it by default)."""

    booted: str | None
    primary: str | None
    good: dict[str, bool]

    @property
    def other(self) -> str | None:
        """The bootname of the slot not booted now (the one an update writes)."""
        names = [n for n in self.good if n != self.booted]
        return names[0] if len(names) == 1 else None

    @property
    def trial(self) -> bool:
        """Whether this boot is a trial of a slot not yet committed (after an update)."""
        return self.booted is not None and not self.good.get(self.booted, True)


def parse_status(text: str) -> Slots:
    """:class:`Slots` from ``rauc status --output-format=json`` (pure)."""
    try:
        raw = json.loads(text)
        slots = {name: info for entry in raw["slots"] for name, info in entry.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpdateError(f"rauc status is not what was expected: {exc}") from exc
    good, primary = {}, None
    for name, info in slots.items():
        boot = info.get("bootname") if isinstance(info, dict) else None
        if boot:
            good[boot] = info.get("boot_status") == "good"
            if name == raw.get("boot_primary"):
                primary = boot
    return Slots(raw.get("booted") or None, primary, good)


def why_failed(stdout: str, stderr: str) -> str:
    """The reason in a failed ``rauc`` run's output (pure): the install's ``LastError``
    if it printed one, else the last line that is not an info message."""
    lines = [ln.strip() for ln in (stdout + "\n" + stderr).splitlines()
             if ln.strip() and "rauc-Message" not in ln]
    for ln in lines:
        if ln.startswith("LastError:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else "no output"


class Rauc:
    """Runs ``rauc`` (``binary``) with ``conf`` (a system.conf path; None = RAUC's
    default, /etc/rauc/system.conf) and the environment ``env`` (None = inherited)."""

    def __init__(self, conf: str | None = None, *, binary: str = "rauc",
                 env: dict | None = None):
        self.base = [binary] + ([f"--conf={conf}"] if conf else [])
        self.env = env

    def _run(self, args: list[str], timeout_s: float) -> str:
        try:
            r = subprocess.run(self.base + args, capture_output=True, text=True,  # noqa: S603
                               timeout=timeout_s, env=self.env, check=False)
        except FileNotFoundError as exc:
            raise UpdateError(f"rauc is not installed ({self.base[0]})") from exc
        except subprocess.TimeoutExpired as exc:
            raise UpdateError(f"rauc {args[0]} did not finish within {timeout_s:.0f} s",
                              retry=True) from exc
        if r.returncode != 0:
            raise UpdateError(f"rauc {args[0]} failed: {why_failed(r.stdout, r.stderr)}"
                              if (r.stdout + r.stderr).strip()
                              else f"rauc {args[0]} failed: exit {r.returncode}")
        return r.stdout

    def install(self, bundle: Path) -> None:
        """Install ``bundle`` into the other slot and arm it for one trial boot. Raises
        :class:`UpdateError` with RAUC's reason (bad signature, plain format, wrong
        compatible, a slot that cannot be written)."""
        log.info("rauc install %s", bundle)
        self._run(["install", str(bundle)], INSTALL_TIMEOUT_S)

    def slots(self) -> Slots:
        return parse_status(self._run(["status", "--output-format=json"], QUERY_TIMEOUT_S))

    def mark(self, verdict: str, slot: str = "booted") -> None:
        """``rauc status mark-good|mark-bad|mark-active SLOT``. ``slot`` is booted,
        other or a slot name; mark-active on the other slot arms it for one trial boot
        again (the firmware's tryboot flag does not survive a power cut)."""
        if verdict not in ("good", "bad", "active"):
            raise UpdateError(f"a slot is marked good, bad or active, not {verdict!r}")
        self._run(["status", f"mark-{verdict}", slot], QUERY_TIMEOUT_S)
