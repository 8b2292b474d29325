"""The health gate after an update: mark the new slot good, or go back to the old one.

``linetap update gate`` (run by ``linetap-mark-good.service`` at every boot) asks, every
few seconds until its deadline (``update.gate_deadline_s``):

* is the recorder running, with its systemd watchdog fed (audio arriving)?
* is capture live on every configured line (each line in the status, no
  ``capture_stalled`` alarm, none of them in a ``dead_line`` alarm)?
* does the store open and pass SQLite's integrity check?
* has sync connected, when it is enabled?

All yes: ``rauc status mark-good booted`` (on a trial boot the tryboot backend makes the
slot the firmware's default). Still no at the deadline on a trial boot: the verdict
``failed`` is saved for the updater to report, ``rauc status mark-bad booted``, and
the box reboots; the firmware's one-shot tryboot is spent, so it starts the old slot.
A hang before any of this is cut short by the hardware watchdog, with the same result.
On a boot that is not a trial (the slot is already the default) a failing gate is
logged and nothing is rolled back: there is nothing proven to go back to.

:func:`problems` and :func:`step` are the decisions (pure, table-tested).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recorder.errors import LinetapError, ProtocolError, StoreError
from recorder.runtime.control_client import request, socket_path
from recorder.storage.store import Store
from sync.update import stages
from sync.update.rauc import Rauc

log = logging.getLogger(__name__)

POLL_S = 5.0


@dataclass(frozen=True)
class Health:
    """One look at the box. ``status`` is the recorder's status (None: not running);
    ``lines`` the configured line count (1..4); ``store`` None when the store opened
    and verified, else what is wrong; ``sync_enabled`` from the config."""

    status: dict | None
    lines: int
    store: str | None
    sync_enabled: bool


def problems(h: Health) -> list[str]:
    """Why the box is not healthy yet, in plain words; empty when it is (pure)."""
    if h.status is None:
        return ["recorder not running"]
    out = []
    st = h.status
    if not st.get("watchdog_fed"):
        out.append("recorder's watchdog not fed (no audio arriving)")
    alarms = st.get("alarms") or {}
    seen = {ln.get("line") for ln in st.get("lines") or []}
    dead = set((alarms.get("dead_line") or {}).get("lines") or [])
    missing = [n for n in range(h.lines) if n not in seen or n in dead]
    if missing:
        out.append(f"capture not live on line(s) {', '.join(map(str, missing))}")
    if "capture_stalled" in alarms:
        out.append("capture stalled")
    if h.store is not None:
        out.append(f"store: {h.store}")
    if h.sync_enabled and not (st.get("sync") or {}).get("online"):
        out.append("sync not connected")
    return out


class Step(enum.Enum):
    MARK_GOOD = "mark the slot good"
    WAIT = "look again"
    ROLL_BACK = "mark the slot bad and reboot into the old one"
    GIVE_UP = "log it: this slot is already the default, nothing to roll back to"


def step(found: list[str], elapsed_s: float, deadline_s: float, trial: bool) -> Step:
    """The gate's next step (pure): ``found`` from :func:`problems`, ``elapsed_s`` since
    the gate started, ``deadline_s`` its limit, ``trial`` whether this boot is a trial
    of a slot not yet committed."""
    if not found:
        return Step.MARK_GOOD
    if elapsed_s < deadline_s:
        return Step.WAIT
    return Step.ROLL_BACK if trial else Step.GIVE_UP


def look(data_dir: Path, lines: int, sync_enabled: bool) -> Health:
    """Ask the running recorder for its status and open the store."""
    try:
        reply = request(socket_path(data_dir), {"cmd": "status"})
        status = reply if reply.get("ok") else None
    except (LinetapError, OSError) as exc:
        log.info("recorder: %s", exc)
        status = None
    store = "not checked (recorder not running)"
    if status is not None:
        try:
            s = Store(data_dir)
            try:
                result = s.integrity_check()
            finally:
                s.close()
            store = None if result == "ok" else f"integrity check says {result}"
        except (StoreError, ProtocolError, OSError) as exc:
            store = str(exc)
    return Health(status, lines, store, sync_enabled)


def run(data_dir: Path, *, lines: int, sync_enabled: bool, deadline_s: float,
        rauc: Rauc, reboot: Callable[[], None],
        probe: Callable[[], Health] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep) -> str:
    """Run the gate until it decides; return ``good``, ``failed`` or ``unhealthy``."""
    probe = probe or (lambda: look(data_dir, lines, sync_enabled))
    folder = Path(data_dir) / "update"
    slots = rauc.slots()
    log.info("health gate on slot %s (%s), deadline %.0f s", slots.booted,
             "trial boot" if slots.trial else "default slot", deadline_s)
    start = monotonic()
    while True:
        found = problems(probe())
        action = step(found, monotonic() - start, deadline_s, slots.trial)
        if action is Step.MARK_GOOD:
            rauc.mark("good")
            _verdict(folder, slots.booted, "good", "")
            log.info("health gate passed: slot %s marked good", slots.booted)
            return "good"
        if action is Step.ROLL_BACK:
            reason = f"health gate on slot {slots.booted}: " + "; ".join(found)
            log.error("%s; back to the old slot", reason)
            _verdict(folder, slots.booted, "failed", reason)
            rauc.mark("bad")
            reboot()
            return "failed"
        if action is Step.GIVE_UP:
            log.error("health gate failed on the default slot %s: %s", slots.booted,
                      "; ".join(found))
            return "unhealthy"
        sleep(POLL_S)


def _verdict(folder: Path, slot: str | None, stage: str, reason: str) -> None:
    """Save the verdict for the updater, when an update to this slot is pending."""
    st = stages.load(folder)
    if st is None or st.stage not in stages.ARMED or st.to_slot != slot:
        return
    stages.save_gate(folder, bundle=st.bundle, slot=slot, stage=stage, reason=reason)
