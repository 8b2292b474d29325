"""Staged rollouts of signed RAUC bundles to the fleet: the upstream side of docs/updates.md.

    linetap upstream --config U.toml update offer BUNDLE --version V [--site S]...
                                    [--device D]... [--canary-share 0.1]
                                    [--max-failure-rate 0.1]
    linetap upstream --config U.toml update status [--rollout ID] [--json]
    linetap upstream --config U.toml update pause [--rollout ID] --reason TEXT
    linetap upstream --config U.toml update resume [--rollout ID]
    linetap upstream --config U.toml update serve [--bind ADDR] [--port N]

(the command line is :mod:`sync.upstream.update_cli`)

**Offer.** ``offer`` copies the bundle into ``updates.dir`` under its SHA-256 (crash-safe),
records a *rollout* and picks its *canary*: a share of the chosen devices, fixed by a
hash of the bundle and the device id (:func:`canary_set`), so a retried offer picks the
same boxes. Each canary device gets a signed ``update`` command (the existing command
path: signed with the command key, resent by the ingest workers until the box reports)
naming the bundle's URL, size, SHA-256 and version. The box checks the signature of the
command, downloads the bundle over HTTPS with its device certificate (``update serve``),
checks size and hash, lets ``rauc install`` check the bundle's own signature, and
reports each stage on its ``report`` topic (:data:`BOX_STAGES`).

**Staging.** Every ingest worker's tick runs :func:`tick`. The decision is the pure
:func:`judge` over the counts of the phase (table-tested): the canary phase advances to
the rest of the devices once every canary box has finished (``good`` or ``failed``) or,
after ``canary_timeout_h``, once at least one reported ``good``; the rollout pauses by
itself when the share of failures among the devices that finished passes
``max_failure_rate`` (judged once ``min_reports`` have finished, or all of them if fewer
were offered); a rollout whose every device finished is ``done``. State changes are
conditional updates, so any number of workers may tick at once and only one advances.
A paused rollout offers nothing more; boxes that already had the command carry on (a
box never installs mid-call, so stopping one half-way would gain nothing). ``resume``
accepts the failures so far: the rate is judged again on what finishes after it.

A box whose command expires without a report (it stayed offline for the command's
lifetime) is counted *silent*, not failed: an unplugged box says nothing about the
bundle. The fleet view alerts on it as ``offline`` anyway.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from recorder.errors import ConfigError, LinetapError
from recorder.fsutil import TEMP_SUFFIX, crash_point, fsync_dir
from recorder.timebase import iso
from sync import signed_commands
from sync.upstream import ops
from sync.upstream.store import Command, Health, Rollout, RolloutTarget, audit, db

log = logging.getLogger(__name__)

VERBS = ("update",)
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
COPY_CHUNK = 1 << 20

# What a box reports on its ``report`` topic, in the order an install goes through them
# (docs/updates.md, "Stage reports"); ``offered`` is the upstream's own (command queued).
BOX_STAGES = ("accepted", "downloading", "downloaded", "installing", "installed",
              "waiting_idle", "rebooting", "good", "failed")
STAGES = ("offered", *BOX_STAGES)
FINISHED = ("good", "failed")
RANK = {s: i for i, s in enumerate(STAGES)}

UPDATE_KEYS = {"dir": str, "url": str, "bind": str, "port": int, "tls_cert": str,
               "tls_key": str, "crl": str, "canary_share": (int, float),
               "max_failure_rate": (int, float), "min_reports": int,
               "canary_timeout_h": (int, float)}


class RolloutError(LinetapError, ValueError):
    """An update request that cannot be done as asked (the message says what to change)."""


# -- settings ----------------------------------------------------------------------------

@dataclass(frozen=True)
class UpdateSettings:
    """``[updates]`` in upstream.toml.

    ``dir``: where bundles are kept (relative to the config's folder). ``url``: the base
    URL boxes fetch from (``https://HOST:PORT``; empty: the broker's host on ``port``).
    ``bind``/``port``: where ``update serve`` listens. ``tls_cert``/``tls_key``: its
    server certificate (empty: the broker's, ``pki/broker.pem``, whose names the boxes
    already trust); ``crl``: revoked device certificates (empty: ``pki/crl.pem`` if it
    exists). ``canary_share``: 0..1 of the devices offered first. ``max_failure_rate``:
    0..1, the failure share that pauses a rollout. ``min_reports``: finished devices
    needed before the rate is judged (1..1000). ``canary_timeout_h``: hours after which
    the canary phase advances on partial results (0.1..720).
    """

    dir: str = "bundles"
    url: str = ""
    bind: str = ""
    port: int = 8443
    tls_cert: str = ""
    tls_key: str = ""
    crl: str = ""
    canary_share: float = 0.1
    max_failure_rate: float = 0.1
    min_reports: int = 3
    canary_timeout_s: float = 24 * 3600


def settings_from(raw: dict, base: Path | None = None) -> UpdateSettings:
    """Build :class:`UpdateSettings` from the ``[updates]`` table (types already checked);
    every problem is reported at once, as :class:`ConfigError`."""
    problems: list[str] = []
    kw: dict = {}
    for k in ("dir", "tls_cert", "tls_key", "crl"):
        if k in raw:
            p = Path(raw[k])
            kw[k] = str(p if p.is_absolute() or base is None else base / p)
    if "dir" not in kw and base is not None:
        kw["dir"] = str(base / UpdateSettings.dir)
    if "url" in raw:
        url = raw["url"].rstrip("/")
        if not url.startswith("https://"):
            problems.append("updates.url must start with https:// (boxes fetch bundles "
                            "only over TLS)")
        kw["url"] = url
    if "bind" in raw:
        kw["bind"] = raw["bind"]
    if "port" in raw:
        if not 1 <= raw["port"] <= 65535:
            problems.append("updates.port must be 1..65535")
        kw["port"] = raw["port"]
    for k, lo, hi in (("canary_share", 0.0, 1.0), ("max_failure_rate", 0.0, 1.0)):
        if k in raw:
            v = raw[k]
            if isinstance(v, bool) or not lo <= v <= hi:
                problems.append(f"updates.{k} must be a number in {lo:g}..{hi:g}")
            kw[k] = float(v)
    if "min_reports" in raw:
        if not 1 <= raw["min_reports"] <= 1000:
            problems.append("updates.min_reports must be 1..1000")
        kw["min_reports"] = raw["min_reports"]
    if "canary_timeout_h" in raw:
        v = raw["canary_timeout_h"]
        if isinstance(v, bool) or not 0.1 <= v <= 720:
            problems.append("updates.canary_timeout_h must be a number in 0.1..720")
        kw["canary_timeout_s"] = float(v) * 3600
    if problems:
        raise ConfigError(problems, "[updates]")
    return UpdateSettings(**kw)


def base_url(ucfg) -> str:
    s = ucfg.updates
    return s.url or f"https://{ucfg.host}:{s.port}"


# -- decisions (pure) ---------------------------------------------------------------------

def canary_set(devices: list[str], share: float, salt: str) -> set[str]:
    """The devices offered first: ``ceil(share * n)`` of ``devices`` (at least one when
    ``share`` > 0), chosen by SHA-256 of ``salt`` (the bundle's hash) and the device id,
    so the same offer always picks the same boxes and different bundles spread the risk
    over different ones."""
    if share <= 0 or not devices:
        return set()
    k = min(len(devices), max(1, math.ceil(share * len(devices) - 1e-9)))
    order = sorted(devices, key=lambda d: hashlib.sha256(f"{salt}/{d}".encode()).digest())
    return set(order[:k])


@dataclass(frozen=True)
class Tally:
    """Counts for one phase of a rollout. ``targets``: devices in the phase; ``good``,
    ``failed``: finished; ``silent``: command expired with no report. Rollout-wide:
    ``offered``: devices sent the command so far; ``all_good``, ``all_failed``: finished
    now; ``base_good``, ``base_failed``: finished when the operator last resumed."""

    targets: int
    good: int = 0
    failed: int = 0
    silent: int = 0
    offered: int = 0
    all_good: int = 0
    all_failed: int = 0
    base_good: int = 0
    base_failed: int = 0


@dataclass(frozen=True)
class Verdict:
    action: str          # wait | advance | pause | done
    reason: str = ""


def judge(phase: str, t: Tally, *, max_failure_rate: float, min_reports: int,
          phase_age_s: float, canary_timeout_s: float) -> Verdict:
    """What an active rollout does next (pure; table-tested in tests/sync/upstream).

    ``phase`` is ``canary`` or ``rest``; ``phase_age_s`` the seconds since it began.
    Failures are judged first, over the devices that finished since the last resume:
    pause when more than ``max_failure_rate`` of them failed, once ``min_reports`` of
    them finished (or every device offered since, if fewer were)."""
    good, failed = t.all_good - t.base_good, t.all_failed - t.base_failed
    finished = good + failed
    need = max(1, min(min_reports, t.offered - t.base_good - t.base_failed))
    if failed > 0 and finished >= need:
        rate = failed / finished
        if rate > max_failure_rate:
            return Verdict("pause", f"{failed} of {finished} device(s) that finished failed "
                           f"({rate:.0%} > {max_failure_rate:.0%})")
    open_ = t.targets - t.good - t.failed - t.silent
    if phase == "canary":
        if open_ <= 0:
            if t.good == 0 and t.targets > 0:
                return Verdict("pause", "no canary device reported good "
                               f"({t.failed} failed, {t.silent} silent)")
            return Verdict("advance", f"canary finished: {t.good} good, {t.failed} failed, "
                           f"{t.silent} silent")
        if phase_age_s >= canary_timeout_s:
            if t.good == 0:
                return Verdict("pause", f"no canary device reported good within "
                               f"{canary_timeout_s / 3600:g} h ({open_} still open)")
            return Verdict("advance", f"canary timeout: {t.good} good, {t.failed} failed, "
                           f"{open_} still open")
        return Verdict("wait")
    if open_ <= 0:
        return Verdict("done", f"{t.good} good, {t.failed} failed, {t.silent} silent")
    return Verdict("wait")


def next_stage(old: str | None, new: str) -> str:
    """The stage to keep when a box reports ``new`` after ``old``: reports may arrive out
    of order (several workers), so a stage never moves backwards, except that a finished
    box may report again (a box that fails after ``good``, or a retried one)."""
    if old is None or new in FINISHED or old in FINISHED:
        return new
    return new if RANK[new] >= RANK[old] else old


# -- bundles --------------------------------------------------------------------------------

def store_bundle(src: Path, folder: Path) -> tuple[str, int]:
    """Copy ``src`` into ``folder`` as ``<sha256>.raucb`` (temp file, fsync, rename, fsync
    dir), hashing as it copies. Returns (sha256 hex, size in bytes)."""
    try:
        size = src.stat().st_size
    except OSError as exc:
        raise RolloutError(f"bundle {src}: {exc.strerror}") from None
    if not 0 < size <= signed_commands.MAX_BUNDLE_BYTES:
        # The box refuses more (it cannot fit a slot): refuse it here, before any offer.
        raise RolloutError(f"bundle {src}: {size} bytes (must be 1.."
                          f"{signed_commands.MAX_BUNDLE_BYTES})")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".incoming.{os.getpid()}{TEMP_SUFFIX}"
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        try:
            while chunk := fin.read(COPY_CHUNK):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    sha = h.hexdigest()
    crash_point("before_rename")
    os.replace(tmp, folder / f"{sha}.raucb")
    fsync_dir(folder)
    return sha, size


# -- rollouts -------------------------------------------------------------------------------

def _pick_devices(ucfg, sites: list[str], devices: list[str]) -> list[str]:
    enrolled = ucfg.enrolled()
    for s in sites:
        if s not in ucfg.sites:
            raise RolloutError(f"--site {s}: no such site in the config "
                              f"(sites: {', '.join(sorted(ucfg.sites)) or 'none'})")
    for d in devices:
        if d not in enrolled:
            raise RolloutError(f"--device {d}: not an enrolled device (revoked, or awaiting "
                              "its identity)")
    chosen = set(devices)
    for s in sites:
        chosen |= set(ucfg.sites[s].devices)
    if not sites and not devices:
        chosen = set(enrolled)
    return sorted(chosen)


def offer(ucfg, bundle: Path, version: str, *, sites=(), devices=(),
          canary_share: float | None = None, max_failure_rate: float | None = None,
          now: float | None = None) -> Rollout:
    """Store ``bundle``, create a rollout over the chosen devices (every enrolled device
    by default) and offer it to its canary (or to all when the canary share is 0)."""
    if not ucfg.command_key:
        raise RolloutError("no [commands] key in the config: updates are offered by signed "
                          "command")
    # The box's own rule for the command's arguments, checked before anything is stored.
    bad = signed_commands.update_problem({"url": f"{base_url(ucfg)}/bundles/{'0' * 64}.raucb",
                                          "size": 1, "sha256": "0" * 64, "version": version})
    if bad is not None:
        raise RolloutError(bad.removeprefix("update: "))
    s = ucfg.updates
    share = s.canary_share if canary_share is None else canary_share
    rate = s.max_failure_rate if max_failure_rate is None else max_failure_rate
    if not 0 <= share <= 1 or not 0 <= rate <= 1:
        raise RolloutError("--canary-share and --max-failure-rate must be in 0..1")
    chosen = _pick_devices(ucfg, list(sites), list(devices))
    if not chosen:
        raise RolloutError("no enrolled device to offer the update to")
    sha, size = store_bundle(Path(bundle), Path(s.dir))
    running = _running_versions(chosen)
    targets = [d for d in chosen if running.get(d) != version]
    if not targets:
        raise RolloutError(f"every chosen device already runs {version}")
    busy = {t.device for t in RolloutTarget.select(RolloutTarget.device).join(
        Rollout, on=(RolloutTarget.rollout == Rollout.id)).where(
        Rollout.state.in_(("active", "paused")) & RolloutTarget.device.in_(targets)
        & RolloutTarget.stage.not_in(FINISHED))}
    if busy:
        raise RolloutError(f"{len(busy)} device(s) are still in another rollout "
                          f"({', '.join(sorted(busy)[:5])}{', ...' if len(busy) > 5 else ''})"
                          ": pause it and let them finish, or leave them out with --device")
    canary = canary_set(targets, share, sha)
    now = time.time() if now is None else now
    with db.obj.atomic():
        r = Rollout.create(sha256=sha, size=size, version=version,
                           url=f"{base_url(ucfg)}/bundles/{sha}.raucb",
                           phase="canary" if canary else "rest", phase_since=now,
                           canary_share=share, max_failure_rate=rate, created=now)
        RolloutTarget.insert_many(
            [{"rollout": r.id, "device": d, "phase": "canary" if d in canary else "rest",
              "updated": now} for d in targets]).execute()
        audit("update_offered", rollout=r.id, version=version, sha256=sha, size=size,
              devices=len(targets), canary=len(canary), skipped_current=len(chosen) -
              len(targets))
    _offer_phase(ucfg, r, now)
    return Rollout.get_by_id(r.id)


def _running_versions(devices: list[str]) -> dict[str, str]:
    out = {}
    for h in Health.select(Health.device, Health.body).where(Health.device.in_(devices)):
        v = h.body.get("version") if isinstance(h.body, dict) else None
        if isinstance(v, str):
            out[h.device] = v
    return out


def _offer_phase(ucfg, r: Rollout, now: float) -> int:
    """Queue the signed ``update`` command to every device of the rollout's current phase
    that has none yet. Idempotent: a target's nonce is set in the same transaction as its
    command row, conditionally, so two workers never both offer one device."""
    n = 0
    for t in RolloutTarget.select().where((RolloutTarget.rollout == r.id)
                                          & (RolloutTarget.phase == r.phase)
                                          & RolloutTarget.nonce.is_null()):
        with db.obj.atomic() as txn:
            nonce = ops.queue_command(ucfg, t.device, "update", url=r.url, size=r.size,
                                      sha256=r.sha256, version=r.version)
            got = RolloutTarget.update(nonce=nonce, stage="offered", updated=now).where(
                (RolloutTarget.id == t.id) & RolloutTarget.nonce.is_null()).execute()
            if not got:
                txn.rollback()           # another worker offered it first
                continue
        n += 1
    if n:
        log.info("rollout %d (%s): offered to %d device(s) (%s)", r.id, r.version, n, r.phase)
    return n


def _commands(r: Rollout) -> dict[str, Command]:
    """The ``update`` commands of ``r``'s targets, by nonce (one query)."""
    return {c.nonce: c for c in Command.select(Command.nonce, Command.status,
                                               Command.expires, Command.result).join(
        RolloutTarget, on=(RolloutTarget.nonce == Command.nonce)).where(
        RolloutTarget.rollout == r.id)}


def tally(r: Rollout, now: float | None = None) -> dict[str, Tally]:
    """Per-phase :class:`Tally` of ``r``. A target whose command expired or was refused
    without a stage report is *silent* or *failed* respectively."""
    now = time.time() if now is None else now
    cmds = _commands(r)
    counts = {"canary": [0, 0, 0, 0], "rest": [0, 0, 0, 0]}   # targets, good, failed, silent
    offered = 0
    for t in RolloutTarget.select().where(RolloutTarget.rollout == r.id):
        c = counts[t.phase]
        c[0] += 1
        offered += t.nonce is not None
        st = effective_stage(t, cmds.get(t.nonce), now)
        if st == "good":
            c[1] += 1
        elif st == "failed":
            c[2] += 1
        elif st == "silent":
            c[3] += 1
    ag = counts["canary"][1] + counts["rest"][1]
    af = counts["canary"][2] + counts["rest"][2]
    return {p: Tally(c[0], c[1], c[2], c[3], offered, ag, af, r.base_good, r.base_failed)
            for p, c in counts.items()}


def effective_stage(t: RolloutTarget, cmd: Command | None, now: float) -> str:
    """A target's stage, with its command's fate folded in (pure over its inputs)."""
    if t.stage in FINISHED or cmd is None:
        return t.stage or "pending"
    if cmd.status == "rejected":
        return "failed"
    if t.stage == "offered" and cmd.status != "applied" and cmd.expires <= now:
        return "silent"
    return t.stage


def tick(ucfg, now: float | None = None) -> list[str]:
    """Judge every active rollout once (every worker runs this; changes are conditional
    updates, so concurrent ticks agree). Returns what happened, for the log."""
    now = time.time() if now is None else now
    events = []
    for r in Rollout.select().where(Rollout.state == "active"):
        t = tally(r, now)[r.phase]
        v = judge(r.phase, t, max_failure_rate=r.max_failure_rate,
                  min_reports=ucfg.updates.min_reports, phase_age_s=now - r.phase_since,
                  canary_timeout_s=ucfg.updates.canary_timeout_s)
        if v.action == "pause":
            if _transition(r, {"state": "paused", "reason": v.reason}, state="active",
                           phase=r.phase):
                audit("update_paused", rollout=r.id, version=r.version, by="auto",
                      reason=v.reason)
                events.append(f"rollout {r.id} paused: {v.reason}")
        elif v.action == "advance":
            if _transition(r, {"phase": "rest", "phase_since": now, "reason": v.reason},
                           state="active", phase="canary"):
                audit("update_advanced", rollout=r.id, version=r.version, reason=v.reason)
                events.append(f"rollout {r.id} past its canary: {v.reason}")
                _offer_phase(ucfg, Rollout.get_by_id(r.id), now)
        elif v.action == "done":
            if _transition(r, {"state": "done", "reason": v.reason}, state="active",
                           phase=r.phase):
                audit("update_done", rollout=r.id, version=r.version, reason=v.reason)
                events.append(f"rollout {r.id} done: {v.reason}")
        else:
            _offer_phase(ucfg, r, now)      # a worker that died mid-offer left some
    for e in events:
        log.info("%s", e)
    return events


def _transition(r: Rollout, changes: dict, **expect) -> bool:
    q = Rollout.update(**changes).where(Rollout.id == r.id)
    for k, v in expect.items():
        q = q.where(getattr(Rollout, k) == v)
    return q.execute() == 1


def pause(rollout_id: int, reason: str, by: str = "operator") -> Rollout:
    r = find(rollout_id)
    if r.state != "active":
        raise RolloutError(f"rollout {r.id} is {r.state}, not active")
    _transition(r, {"state": "paused", "reason": reason}, state="active")
    audit("update_paused", rollout=r.id, version=r.version, by=by, reason=reason)
    return Rollout.get_by_id(r.id)


def resume(ucfg, rollout_id: int, now: float | None = None) -> Rollout:
    """Resume a paused rollout, accepting the failures so far (the rate is judged again
    on the devices that finish from now on)."""
    now = time.time() if now is None else now
    r = find(rollout_id)
    if r.state != "paused":
        raise RolloutError(f"rollout {r.id} is {r.state}, not paused")
    t = tally(r, now)["canary"]
    if not _transition(r, {"state": "active", "reason": "", "base_good": t.all_good,
                           "base_failed": t.all_failed, "phase_since": now},
                       state="paused"):
        raise RolloutError(f"rollout {r.id} changed while resuming; look again")
    audit("update_resumed", rollout=r.id, version=r.version, accepted_failed=t.all_failed)
    r = Rollout.get_by_id(r.id)
    _offer_phase(ucfg, r, now)
    return r


def find(rollout_id: int | None) -> Rollout:
    if rollout_id is None:
        r = Rollout.select().where(Rollout.state.in_(("active", "paused"))).order_by(
            Rollout.id.desc()).first()
        if r is None:
            raise RolloutError("no active or paused rollout (give --rollout ID)")
        return r
    r = Rollout.get_or_none(Rollout.id == rollout_id)
    if r is None:
        raise RolloutError(f"no rollout {rollout_id}")
    return r


# -- box reports ------------------------------------------------------------------------------

def on_stage(device: str, body: dict, now: float | None = None) -> bool:
    """Record a box's ``{"kind": "update", "bundle", "stage", ...}`` report (the ingest's
    report handler calls this). Returns False, and changes nothing, for a report that
    names no rollout of this device or an unknown stage."""
    stage, sha = body.get("stage"), body.get("bundle")
    if stage not in BOX_STAGES or not isinstance(sha, str) or not SHA_RE.match(sha):
        log.warning("update report from %s ignored: stage %r, bundle %r", device, stage,
                    sha if isinstance(sha, str) and len(sha) < 80 else "?")
        return False
    t = (RolloutTarget.select().join(Rollout, on=(RolloutTarget.rollout == Rollout.id))
         .where((RolloutTarget.device == device) & (Rollout.sha256 == sha))
         .order_by(Rollout.id.desc()).first())
    if t is None:
        log.warning("update report from %s for bundle %s.. that was never offered to it",
                    device, sha[:12])
        return False
    now = time.time() if now is None else now
    keep = next_stage(t.stage if t.stage != "offered" else None, stage)
    reason = str(body.get("reason") or "")[:500]
    nbytes = body.get("bytes")
    RolloutTarget.update(stage=keep, updated=now,
                         reason=reason if keep == "failed" else t.reason,
                         bytes=nbytes if isinstance(nbytes, int) else t.bytes).where(
        RolloutTarget.id == t.id).execute()
    if keep in FINISHED and keep != t.stage:
        audit("update_" + keep, device=device, rollout=t.rollout, reason=reason)
    return True


# -- status -------------------------------------------------------------------------------

def status(rollout_id: int | None = None, now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    q = Rollout.select().order_by(Rollout.id.desc())
    if rollout_id is not None:
        q = q.where(Rollout.id == rollout_id)
    out = []
    for r in q:
        cmds = _commands(r)
        devs = []
        stages: dict[str, int] = {}
        for t in RolloutTarget.select().where(RolloutTarget.rollout == r.id).order_by(
                RolloutTarget.device):
            st = effective_stage(t, cmds.get(t.nonce), now)
            stages[st] = stages.get(st, 0) + 1
            cmd = cmds.get(t.nonce)
            devs.append({"device": t.device, "phase": t.phase, "stage": st,
                         "reason": t.reason or (cmd.result if cmd is not None
                                                and cmd.status == "rejected" else ""),
                         "bytes": t.bytes, "updated": iso(t.updated)})
        out.append({"rollout": r.id, "version": r.version, "sha256": r.sha256,
                    "size": r.size, "url": r.url, "state": r.state, "phase": r.phase,
                    "reason": r.reason, "canary_share": r.canary_share,
                    "max_failure_rate": r.max_failure_rate, "created": iso(r.created),
                    "stages": stages, "devices": devs})
    return out


# -- serving bundles ---------------------------------------------------------------------------

def server_tls(ucfg) -> ssl.SSLContext:
    """TLS for ``update serve``: the server certificate, and a device certificate signed
    by the upstream CA required of every client, checked against the CRL (a revoked box
    cannot fetch)."""
    s = ucfg.updates
    root = Path(s.dir).parent
    cert = s.tls_cert or str(root / "pki" / "broker.pem")
    key = s.tls_key or str(root / "pki" / "broker.key")
    crl = s.crl or str(root / "pki" / "crl.pem")
    if not ucfg.ca:
        raise RolloutError("[broker] ca is not set: it is the CA device certificates are "
                          "checked against")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=ucfg.ca)
        if Path(crl).exists():
            ctx.load_verify_locations(cafile=crl)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as exc:
        raise RolloutError(f"update serve TLS files ({cert}, {key}, {ucfg.ca}): {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_app(folder: str):
    """The bundle server: ``GET``/``HEAD /bundles/<sha256>.raucb`` of a bundle some
    rollout offered, with byte ranges (Starlette's ``FileResponse``), so a box on a
    poor line resumes an interrupted download. Anything else is 404."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, PlainTextResponse
    from starlette.routing import Route

    async def bundle(request):
        name = request.path_params["name"]
        sha = name.removesuffix(".raucb")
        if not name.endswith(".raucb") or not SHA_RE.match(sha):
            return PlainTextResponse("not found\n", status_code=404)
        # A bundle is served only while a rollout names it (not one that was removed).
        if Rollout.get_or_none(Rollout.sha256 == sha) is None:
            return PlainTextResponse("not found\n", status_code=404)
        path = Path(folder) / name
        if not path.is_file():
            return PlainTextResponse("not found\n", status_code=404)
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/bundles/{name}", bundle, methods=["GET", "HEAD"])])


def serve(ucfg, bind: str | None = None, port: int | None = None, *, ready=None) -> int:
    """Serve bundles until SIGTERM/SIGINT (``update serve``; uvicorn, as the portal)."""
    import uvicorn
    s = ucfg.updates
    # All interfaces by default, like the broker: the boxes are on other networks.
    host = (bind if bind is not None else s.bind) or "0.0.0.0"  # noqa: S104
    port = port or s.port
    ctx = server_tls(ucfg)
    config = uvicorn.Config(make_app(s.dir), host=host, port=port, log_level="warning")
    config.load()
    config.ssl = ctx          # ours, with CERT_REQUIRED and the CRL (uvicorn's has neither)
    server = uvicorn.Server(config)
    if ready is not None:
        ready(server)
    server.run()
    return 0
