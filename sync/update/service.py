"""The updater: one signed update at a time, from command to reboot, in the background.

Stages (reported upstream as they are reached; :mod:`.stages` has the contract):
``accepted`` -> ``downloading`` (HTTPS with the device certificate, resumable;
:mod:`.download`) -> ``downloaded`` (size and SHA-256 match) -> ``installing``
(``rauc install`` checks the signature and writes the other slot) -> ``installed`` ->
``waiting_idle`` (the reboot waits for idle lines, the maintenance window and a
countdown a call cancels; :mod:`.policy`) -> ``rebooting``. After the reboot the health
gate (:mod:`recorder.runtime.healthgate`) decides ``good`` or ``failed``; a slot that
never reached the gate is found out here at the next start (:func:`.stages.settle`).
Any error on the way is ``failed`` with the reason; a dropped download is retried.

The state is saved on the data partition at every stage, so a crash or power cut
resumes where it stopped (a download from the bytes already on disk).
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from recorder.errors import CommandRejected, UpdateError
from recorder.maintenance import in_window, parse_window
from sync.update import download, stages
from sync.update.policy import Countdown, Step, lines_idle, reboot_step
from sync.update.rauc import Rauc

log = logging.getLogger(__name__)

TICK_S = 1.0
SLOTS_RETRY_S = 30.0           # RAUC did not answer: ask which slot runs again after this
RETRY_S = (10.0, 600.0)        # a dropped download is retried after 10 s, doubling to 10 min
PROGRESS_STEP = 0.1            # report download progress every tenth of the bundle
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
REBOOT = ("systemctl", "reboot")


def boot_id() -> str | None:
    """This boot's id from the kernel (changes at every boot), None if unreadable."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def system_reboot() -> None:
    """Reboot through systemd (polkit lets the linetap user; firmware/rootfs)."""
    subprocess.run(REBOOT, check=True, timeout=60)  # noqa: S603


class Updater:
    """Runs updates for one box. ``folder`` is on the data partition
    (``DATA/update``); ``status()`` is the recorder's status dict (its ``lines``);
    ``report(obj)`` publishes on ``report`` and returns whether it went out (the stage
    is reported again on the next tick otherwise); ``tls()`` builds the client TLS
    context from the sync config; ``stop`` ends a download early at shutdown.
    ``window`` is ``update.window``, ``countdown_s`` ``update.countdown_s``.
    """

    def __init__(self, folder: Path, *, status: Callable[[], dict],
                 report: Callable[[dict], bool], tls: Callable[[], ssl.SSLContext],
                 rauc: Rauc | None = None, reboot: Callable[[], None] = system_reboot,
                 window: str = "", countdown_s: float = 60.0,
                 stop: threading.Event | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 local_minute: Callable[[], int] | None = None,
                 this_boot: Callable[[], str | None] = boot_id):
        self.folder, self.status, self.report_fn, self.tls = folder, status, report, tls
        self.rauc, self.reboot = rauc or Rauc(), reboot
        self.window, self.countdown_s = parse_window(window), countdown_s
        self.stop = stop or threading.Event()
        self.monotonic, self.this_boot = monotonic, this_boot
        self.local_minute = local_minute or _local_minute
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.state = stages.load(folder)
        self.slot: str | None = None
        self._settled = False
        self._slots_retry_at = 0.0
        self._countdown: float | None = None
        self._retry_at = 0.0
        self._retry_s = RETRY_S[0]
        self._progress_mark = 0

    # -- the command (uploader thread) ------------------------------------------------
    def offer(self, body: dict) -> str:
        """Take a verified ``update`` command; return the result for the command report.
        Raises :class:`CommandRejected` while another update is on its way."""
        with self.lock:
            cur = self.state
            if cur is not None and cur.stage not in stages.FINAL:
                if cur.bundle == body["sha256"]:
                    return f"update {cur.version} already under way ({cur.stage})"
                raise CommandRejected(f"update {cur.version} is still under way "
                                      f"({cur.stage}); offer this one when it is done")
            self.state = stages.UpdateState(
                nonce=body["nonce"], bundle=body["sha256"], version=body["version"],
                url=body["url"], size=body["size"])
            stages.save(self.folder, self.state)
            # A verdict on an earlier offer of the same bundle must not judge this one.
            stages.clear_gate(self.folder)
            self._retry_at, self._retry_s = 0.0, RETRY_S[0]
        self.wake.set()
        return f"update {body['version']} accepted"

    # -- health --------------------------------------------------------------------------
    def health(self) -> dict:
        """``slot`` (the booted bootname) and ``update`` for the health body."""
        return {"slot": self.slot, "update": stages.health(self.state)}

    # -- the thread ----------------------------------------------------------------------
    def tick(self) -> None:
        if not self._settled:
            self._settle()
        st = self.state
        if st is None:
            return
        if st.stage in stages.ARMED:
            self._judge()
        st = self.state
        if st.reported != st.stage and self.report_fn(stages.report(st)):
            self._set(reported=st.stage)
        st = self.state
        if st.stage in ("accepted", "downloading"):
            self._download()
        elif st.stage == "downloaded":
            self._install()
        elif st.stage in ("installed", "waiting_idle"):
            self._wait_and_reboot()

    def _settle(self) -> None:
        """Which slot runs (asked until RAUC answers: its service may start after us)."""
        if self.monotonic() < self._slots_retry_at:
            return
        try:
            self.slot = self.rauc.slots().booted
            self._settled = True
        except UpdateError as exc:
            log.warning("slot unknown (asking again in %.0f s): %s", SLOTS_RETRY_S, exc)
            self._slots_retry_at = self.monotonic() + SLOTS_RETRY_S

    def _judge(self) -> None:
        """What this boot, and the health gate, made of an armed update."""
        st = self.state
        stage, reason = stages.settle(st, self.slot, self.this_boot(),
                                      stages.load_gate(self.folder))
        if (stage, reason) != (st.stage, st.reason):
            log.log(logging.ERROR if stage == "failed" else logging.INFO,
                    "update %s: %s %s", st.version, stage, reason)
            self._set(stage=stage, reason=reason)

    def _set(self, **changes) -> None:
        with self.lock:
            self.state = self.state.with_(**changes)
            stages.save(self.folder, self.state)

    def _advance(self, stage: str, **changes) -> None:
        """Move to ``stage``, save, and report it at once (again next tick if it did
        not go out)."""
        self._set(stage=stage, **changes)
        if self.report_fn(stages.report(self.state)):
            self._set(reported=stage)

    def _fail(self, reason: str) -> None:
        log.error("update %s failed: %s", self.state.version, reason)
        _part, done = download.paths(self.folder, self.state.bundle)
        done.unlink(missing_ok=True)
        self._advance("failed", reason=reason)

    # -- stages ----------------------------------------------------------------------------
    def _download(self) -> None:
        st = self.state
        if self.monotonic() < self._retry_at:
            return
        if st.stage == "accepted":
            self._advance("downloading", bytes=0)
        self._progress_mark = 0

        def progress(n: int) -> None:
            if self.stop.is_set():
                raise UpdateError("stopped", retry=True)
            mark = int(n / max(1, st.size) / PROGRESS_STEP)
            if mark > self._progress_mark:
                self._progress_mark = mark
                self.report_fn(stages.report(self.state.with_(bytes=n)))

        try:
            path = download.fetch(download.Wanted(st.url, st.size, st.bundle), self.folder,
                                  self.tls(), progress=progress)
        except UpdateError as exc:
            if not exc.retry:
                self._fail(f"download: {exc}")
                return
            part, _done = download.paths(self.folder, st.bundle)
            have = part.stat().st_size if part.exists() else 0
            self._set(bytes=have)
            self._retry_at = self.monotonic() + self._retry_s
            log.warning("update download paused at %d of %d bytes (%s); again in %.0f s",
                        have, st.size, exc, self._retry_s)
            self._retry_s = min(self._retry_s * 2, RETRY_S[1])
            return
        except (OSError, ssl.SSLError, ValueError) as exc:
            # The device certificate or CA cannot be read: nothing to retry until the
            # sync config is fixed.
            self._fail(f"download: {exc}")
            return
        self._advance("downloaded", bytes=path.stat().st_size)

    def _install(self) -> None:
        st = self.state
        _part, path = download.paths(self.folder, st.bundle)
        if not path.exists():
            self._fail("downloaded bundle is gone")
            return
        self._advance("installing")
        try:
            before = self.rauc.slots()
            self.rauc.install(path)
        except UpdateError as exc:
            self._fail(f"install: {exc}")
            return
        finally:
            # The slot holds it now (or it was refused): free the data partition.
            path.unlink(missing_ok=True)
        self._advance("installed", from_slot=before.booted, to_slot=before.other)

    def _wait_and_reboot(self) -> None:
        try:
            idle = lines_idle(self.status().get("lines") or [])
        except Exception:
            log.exception("recorder status for the reboot decision failed")
            idle = False
        inside = in_window(self.window, self.local_minute())
        step = reboot_step(Countdown(self._countdown, self.countdown_s), self.monotonic(),
                           idle, inside)
        if self.state.stage != "waiting_idle" and step is not Step.REBOOT:
            self._advance("waiting_idle")
        if step is Step.START:
            log.info("lines idle: rebooting into %s in %.0f s unless a call starts",
                     self.state.version, self.countdown_s)
            self._countdown = self.monotonic()
        elif step is Step.CANCEL:
            log.info("reboot into %s cancelled: %s", self.state.version,
                     "a call started" if not idle else "the maintenance window closed")
            self._countdown = None
        elif step is Step.REBOOT:
            self._countdown = None
            try:
                # Arm the trial boot again: the firmware forgets it at a power cut.
                self.rauc.mark("active", "other")
            except UpdateError as exc:
                self._fail(f"arming slot {self.state.to_slot}: {exc}")
                return
            self._advance("rebooting", boot_id=self.this_boot())
            log.warning("rebooting into %s (slot %s)", self.state.version, self.state.to_slot)
            try:
                self.reboot()
            except (OSError, subprocess.SubprocessError) as exc:
                self._fail(f"reboot: {exc}")


def _local_minute() -> int:
    now = datetime.now().astimezone()
    return now.hour * 60 + now.minute
