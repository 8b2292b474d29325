"""The update's stages, as reported upstream, and the state kept across a reboot.

The contract with the upstream (docs/updates.md): for each stage the box publishes on
its ``report`` topic ::

    {"kind": "update", "nonce": <the update command's nonce>, "bundle": <sha256>,
     "version": <str>, "stage": <one of STAGES>, "reason": <str, when failed>,
     "bytes": <int downloaded so far, while downloading>}

and its health body carries ``"update": {"state": <last stage>, "version": <target>,
"reason": <str>}``.

Two files on the data partition (``DATA/update/``), each with one writer, both written
crash-safely: ``state.json`` by the updater (the command, its stage, the slots, the boot
it rebooted from and the last stage reported), and ``gate.json`` by the health gate
after booting the new slot (``good``, or ``failed`` with the reason).
:func:`settle` decides (pure) what a boot made of the update.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from recorder.errors import UpdateError
from recorder.fsutil import atomic_write

log = logging.getLogger(__name__)

STAGES = ("accepted", "downloading", "downloaded", "installing", "installed",
          "waiting_idle", "rebooting", "good", "failed")
FINAL = frozenset({"good", "failed"})
# Stages after ``rauc install`` succeeded: the new slot is armed for a trial boot, so a
# boot from here on may be the new slot's.
ARMED = frozenset({"installed", "waiting_idle", "rebooting"})
STATE_FILE = "state.json"
GATE_FILE = "gate.json"


@dataclass(frozen=True)
class UpdateState:
    """One update as the box knows it. ``size`` and ``bytes`` in bytes; ``from_slot`` and
    ``to_slot`` are bootnames (A or B; None until known); ``boot_id`` is the kernel's
    boot id when the reboot was started; ``reported`` the last stage published."""

    nonce: str
    bundle: str
    version: str
    url: str
    size: int
    stage: str = "accepted"
    reason: str = ""
    bytes: int | None = None
    from_slot: str | None = None
    to_slot: str | None = None
    boot_id: str | None = None
    reported: str = ""

    def with_(self, **changes) -> UpdateState:
        if "stage" in changes and changes["stage"] not in STAGES:
            raise ValueError(f"unknown update stage {changes['stage']!r}")
        return dataclasses.replace(self, **changes)


def report(st: UpdateState) -> dict:
    """The ``report`` message for the state's stage (the contract above)."""
    body = {"kind": "update", "nonce": st.nonce, "bundle": st.bundle,
            "version": st.version, "stage": st.stage}
    if st.stage == "failed":
        body["reason"] = st.reason or "unknown"
    if st.bytes is not None and st.stage in ("downloading", "downloaded"):
        body["bytes"] = st.bytes
    return body


def health(st: UpdateState | None) -> dict | None:
    """The ``update`` object of the health body; None when no update was ever offered."""
    if st is None:
        return None
    return {"state": st.stage, "version": st.version, "reason": st.reason}


def settle(st: UpdateState, booted: str | None, boot_id: str | None,
           gate: dict | None) -> tuple[str, str]:
    """(stage, reason) of ``st`` after a (re)start, given the slot ``booted`` now, this
    boot's ``boot_id`` and the health gate's verdict ``gate`` (``{"bundle", "slot",
    "stage", "reason"}`` or None). Pure.

    - An armed update (installed, waiting or rebooting) whose new slot the gate judged
      takes the gate's verdict.
    - One that rebooted (another boot id) and came up in the old slot with no verdict
      failed without reaching the gate: the new slot hung (the watchdog reset the
      board), lost power or could not boot, and the firmware's one-shot tryboot fell
      back.
    - Anything else is unchanged (still waiting, or booted into the new slot with the
      gate still running).
    """
    if st.stage not in ARMED:
        return st.stage, st.reason
    if gate is not None and gate.get("bundle") == st.bundle and gate.get("slot") == st.to_slot \
            and gate.get("stage") in FINAL:
        return gate["stage"], str(gate.get("reason") or "")
    rebooted = st.boot_id is not None and boot_id is not None and boot_id != st.boot_id
    if rebooted and booted is not None and booted == st.from_slot:
        return "failed", (f"came back up in slot {booted}: slot {st.to_slot} did not pass "
                          "its health gate (it hung and the watchdog reset the board, "
                          "lost power, or did not boot)")
    return st.stage, st.reason


def load(folder: Path) -> UpdateState | None:
    """The saved state, None if there is none. An unreadable file is logged and
    treated as none (the upstream sees no update and may offer it again)."""
    raw = _read_json(folder / STATE_FILE)
    if raw is None:
        return None
    try:
        st = UpdateState(**raw)
        if st.stage not in STAGES:
            raise ValueError(f"unknown stage {st.stage!r}")
        return st
    except (TypeError, ValueError) as exc:
        log.error("update state %s is unusable (%s): ignored", folder / STATE_FILE, exc)
        return None


def save(folder: Path, st: UpdateState) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / STATE_FILE, json.dumps(dataclasses.asdict(st)).encode(),
                 mode=0o640)


def load_gate(folder: Path) -> dict | None:
    return _read_json(folder / GATE_FILE)


def save_gate(folder: Path, *, bundle: str, slot: str, stage: str, reason: str = "") -> None:
    """The health gate's verdict on ``slot`` for ``bundle`` (stage good or failed)."""
    if stage not in FINAL:
        raise UpdateError(f"a gate verdict is good or failed, not {stage!r}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / GATE_FILE, json.dumps(
        {"bundle": bundle, "slot": slot, "stage": stage, "reason": reason}).encode(),
        mode=0o640)


def clear_gate(folder: Path) -> None:
    (folder / GATE_FILE).unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("%s is unreadable (%s): ignored", path, exc)
        return None
    return raw if isinstance(raw, dict) else None
