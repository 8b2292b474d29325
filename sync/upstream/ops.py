"""Upstream operations on stored calls: retention, delete, hold, commands, export.

Used by the ingest workers (retention tick, command delivery) and by
``linetap upstream``. Every deletion and hold is written to the ``uaudit`` table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from recorder.errors import CommandRejected, KeyFileError, StoreError
from recorder.evidence import chain as evidence
from recorder.evidence.export import decode_segments, export_json, open_manifest, write_call
from recorder.privacy import mask_number, number_matches
from sync import signed_commands as commands
from sync.upstream.portal import decisions
from sync.upstream.store import (
    Command,
    DeviceState,
    ManifestHistory,
    Problem,
    UCall,
    USegment,
    audit,
    db,
)

log = logging.getLogger(__name__)


def load_command_key(path: str):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"upstream command key {path} unreadable: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"upstream command key {path} is not Ed25519")
    return key


def find_call(call: str, device: str | None = None) -> UCall:
    q = UCall.select().where(UCall.call == call)
    if device:
        q = q.where(UCall.device == device)
    rows = list(q)
    if not rows:
        raise StoreError(f"no such call {call}")
    if len(rows) > 1:
        raise StoreError(f"call id {call} exists on several devices; pass --device")
    return rows[0]


def delete_call(objects, row: UCall, reason: str) -> bool:
    """Mark the call ``deleting``, delete its blobs, then its rows; keep a tombstone.
    False if already deleted (or finished by another worker meanwhile).

    The mark is committed first so that a crash between the blobs and the rows never
    leaves a live call naming blobs that are gone: :func:`expire` finishes every call
    left ``deleting`` (audited ``resumed``), and the ingest already refuses its
    segments. The tombstone and its audit row commit together, and only the worker
    whose update made the tombstone audits it."""
    if row.state == "deleted":
        return False
    resumed = row.state == "deleting"
    if not resumed:
        if row.legal_hold:
            raise CommandRejected(f"call {row.call} is on legal hold")
        marked = UCall.update(state="deleting", delete_reason=reason).where(
            (UCall.id == row.id) & (UCall.state == "live")
            & (UCall.legal_hold == False)).execute()  # noqa: E712
        if not marked:                  # changed since it was read
            row = UCall.get_by_id(row.id)
            if row.state == "deleted":
                return False
            if row.state == "live":
                raise CommandRejected(f"call {row.call} is on legal hold")
            resumed = True              # another worker's deletion, cut short or not
    if resumed:
        reason = row.delete_reason or reason
    segs = list(USegment.select().where((USegment.device == row.device)
                                        & (USegment.call == row.call)))
    for s in segs:
        objects.delete(s.key)
    if row.manifest_key:
        objects.delete(row.manifest_key)
    hist = list(ManifestHistory.select().where((ManifestHistory.device == row.device)
                                               & (ManifestHistory.call == row.call)))
    for h in hist:
        objects.delete(h.key)        # replaced manifests go with the call
    kept = list(Problem.select().where((Problem.device == row.device)
                                       & (Problem.call == row.call)
                                       & Problem.key.is_null(False)))
    for p in kept:
        objects.delete(p.key)        # so do copies kept aside as conflicts
    with db.atomic():
        USegment.delete().where((USegment.device == row.device)
                                & (USegment.call == row.call)).execute()
        ManifestHistory.delete().where((ManifestHistory.device == row.device)
                                       & (ManifestHistory.call == row.call)).execute()
        Problem.update(key=None).where((Problem.device == row.device)
                                       & (Problem.call == row.call)).execute()
        done = UCall.update(state="deleted", deleted_time=time.time(), delete_reason=reason,
                            manifest_key=None, expected=None).where(
            (UCall.id == row.id) & (UCall.state != "deleted")).execute()
        if done:
            audit("retention_expiry" if reason == "retention_expiry" else "delete",
                  device=row.device, call=row.call, reason=reason, segments=len(segs),
                  history=len(hist), kept_aside=len(kept),
                  **({"resumed": True} if resumed else {}))
    # A worker whose batch read the call as live just before the mark may have stored
    # a segment after the listing above; its row went with the others, its blob goes now.
    late = objects.list(f"seg/{row.device}/{row.call}")
    for k in late:
        objects.delete(k)
    if late:
        log.warning("call %s of %s: removed %d segment(s) stored during its deletion",
                    row.call, row.device, len(late))
    return bool(done)


EXPIRE_BATCH = 500        # calls read per query by expire()


def expire(objects, now: float | None = None, batch: int = EXPIRE_BATCH) -> int:
    """Finish every deletion a crash interrupted (state ``deleting``), then delete every
    live call past its deadline and not on hold.

    In bounded batches: ``batch`` calls are read per query (oldest deadline first, by
    the partial indexes of :mod:`sync.upstream.pgschema`), and each call is deleted in
    its own short transaction (its segment rows, a few hundred at most), so no lock is
    held across a whole day's expiry and the ingest keeps writing meanwhile."""
    now = time.time() if now is None else now
    n, refused = 0, set()
    while True:
        # A finished call leaves the predicate, so each query reads the next batch.
        rows = list(UCall.select().where(UCall.state == "deleting")
                    .order_by(UCall.id).limit(batch))
        for row in rows:
            log.warning("call %s of %s: finishing a deletion cut short", row.call, row.device)
            n += delete_call(objects, row, row.delete_reason or "delete")
        if len(rows) < batch:
            break
    decisions.remind(now)                   # managers' appraisal (docs/portal.md)
    while True:
        rows = list(UCall.select().where(
            (UCall.state == "live") & (UCall.legal_hold == False)  # noqa: E712
            & (UCall.deadline <= now) & UCall.id.not_in(refused or [0]))
            .order_by(UCall.deadline).limit(batch))
        for row in rows:
            if decisions.waiting(row, now):
                refused.add(row.id)     # awaiting a manager's approval: not read again
                continue
            try:
                n += delete_call(objects, row, "retention_expiry")
            except CommandRejected:
                refused.add(row.id)     # put on hold meanwhile: not read again
                continue
        if len(rows) < batch:
            break
    return n


def clean_partials(objects, max_age_s: float, now: float | None = None) -> int:
    """Remove abandoned partial chunk uploads (``partial/<device>/<call>/<file>``
    folders whose newest chunk is older than ``max_age_s``); audit what went. A box
    that still wants the file resends every chunk, so nothing is lost. Returns how
    many folders were removed."""
    now = time.time() if now is None else now
    groups: dict[str, list[tuple[str, float]]] = {}
    for key, mtime in objects.walk("partial"):
        groups.setdefault(key.rsplit("/", 1)[0], []).append((key, mtime))
    gone, chunks = [], 0
    for folder, items in sorted(groups.items()):
        if now - max(m for _k, m in items) < max_age_s:
            continue
        for k, _m in items:
            objects.delete(k)
        gone.append(folder)
        chunks += len(items)
    if gone:
        # Folder names carry device, call and segment: no personal data.
        audit("partial_cleanup", folders=len(gone), chunks=chunks,
              max_age_days=round(max_age_s / 86400, 3), removed=gone[:100])
        log.info("removed %d abandoned partial upload(s) (%d chunk(s))", len(gone), chunks)
    return len(gone)


_deadlines_done: dict = {}   # (database, site) -> retention days last applied


def refresh_deadlines(ucfg) -> None:
    """Deadline = start + the site's retention (which may have changed in the config).

    The ingest sets each call's deadline as it stores it, so this only has work when a
    site's retention changed: it runs once per site and value in a process, and writes
    only the rows whose deadline differs (never all of a site's calls every tick).
    A retention period set in the portal overrides the config's first."""
    decisions.apply_retention(ucfg)
    for site in ucfg.sites.values():
        k = (id(db.obj), db.obj.database, site.name)
        if _deadlines_done.get(k) == site.retention_days:
            continue
        want = UCall.start_time + site.retention_days * 86400
        UCall.update(deadline=want).where(
            (UCall.site == site.name) & UCall.start_time.is_null(False)
            & (UCall.deadline.is_null() | (UCall.deadline != want))).execute()
        _deadlines_done[k] = site.retention_days
    decisions.apply_keeps()                 # a manager's keep moves the deadline


def queue_command(ucfg, device: str, kind: str, **args) -> str:
    """Sign a command for ``device`` and queue it for the workers to deliver."""
    key = load_command_key(ucfg.command_key)
    env = commands.sign(key, kind, device, lifetime_s=ucfg.command_lifetime_s, **args)
    body, _raw, _sig = commands.parse(env)
    Command.create(nonce=body["nonce"], device=device, kind=kind, envelope=env.decode(),
                   expires=body["expires"])
    audit("command_queued", device=device, kind=kind, nonce=body["nonce"],
          call=args.get("call"))
    return body["nonce"]


def queue_retention(ucfg) -> int:
    """Queue a retention command to every device whose box has another value."""
    n = 0
    for site in ucfg.sites.values():
        for dev in site.devices:
            st, _ = DeviceState.get_or_create(device=dev)
            if st.retention_pushed != site.retention_days:
                queue_command(ucfg, dev, "retention", days=site.retention_days)
                DeviceState.update(retention_pushed=site.retention_days).where(
                    DeviceState.device == dev).execute()
                n += 1
    return n


def user_delete(ucfg, objects, call: str, device: str | None = None) -> UCall:
    """The practice deletes a call: here now, and on the box by signed command."""
    row = find_call(call, device)
    if row.state == "live" and row.legal_hold:
        raise CommandRejected(f"call {row.call} is on legal hold")
    # The box's command first: a crash after it still deletes the call everywhere (the
    # box answers "absent" to a repeat); a crash inside delete_call is finished by
    # expire().
    queue_command(ucfg, row.device, "delete", call=row.call)
    delete_call(objects, row, "upstream_delete")
    return row


def call_keys(row: UCall) -> list[str]:
    """Every object key a stored call owns (segments, manifest, replaced manifests)."""
    keys = [s.key for s in USegment.select(USegment.key).where(
        (USegment.device == row.device) & (USegment.call == row.call))]
    if row.manifest_key:
        keys.append(row.manifest_key)
    keys += [h.key for h in ManifestHistory.select(ManifestHistory.key).where(
        (ManifestHistory.device == row.device) & (ManifestHistory.call == row.call))]
    return keys


def hold_objects(objects, row: UCall, on: bool) -> int:
    """Mirror a call's legal hold onto its objects where the store supports it (S3
    Object Lock); returns how many objects were set (0 on the filesystem)."""
    return sum(bool(objects.set_hold(k, on)) for k in call_keys(row))


def user_hold(ucfg, call: str, on: bool, device: str | None = None, objects=None) -> UCall:
    """Put a call on legal hold (or lift it): the database row, the objects (S3 Object
    Lock, when the bucket has it; ``objects`` defaults to the configured store) and the
    box, by signed command."""
    row = find_call(call, device)
    if row.state != "live":
        # A deletion already under way (or done) is not stopped by a hold: refuse it
        # rather than record a hold the next tick would ignore.
        raise CommandRejected(f"call {row.call} is {row.state}")
    if objects is None:
        from sync.upstream.objectstore import open_objects
        objects = open_objects(ucfg)
    # Lifting: the objects first, then the row (a crash between leaves the row held, so
    # retention never meets a locked object). Placing: the row first, for the same reason.
    if not on:
        hold_objects(objects, row, False)
    UCall.update(legal_hold=on).where(UCall.id == row.id).execute()
    if on:
        hold_objects(objects, row, True)
    audit("legal_hold", device=row.device, call=row.call, on=on)
    queue_command(ucfg, row.device, "hold", call=row.call, on=on)
    return row


def search_number(objects, private_key, number: str, site: str | None = None
                  ) -> tuple[list[UCall], int]:
    """Live calls whose sealed manifest names ``number``; returns (rows, unreadable).

    The upstream stores no phone number in clear: numbers live only inside each
    manifest's HPKE-sealed payload, which only the practice key opens. So a search by
    number opens every candidate manifest with the practice's private key (data
    minimisation: the upstream operator, its database and its backups cannot search,
    list or leak numbers). Cost is one manifest open per stored call. ``unreadable``
    counts manifests that did not open with this key (another practice's key, or a
    damaged object).
    """
    q = UCall.select().where((UCall.state == "live") & UCall.manifest_key.is_null(False))
    if site:
        q = q.where(UCall.site == site)
    found, unreadable = [], 0
    for r in q.order_by(UCall.start_time, UCall.device, UCall.call):
        try:
            body = open_manifest(objects.get(r.manifest_key), private_key)
        except StoreError:
            body = None
        if body is None:
            unreadable += 1
            continue
        if number_matches(body, number):
            found.append(r)
    audit("search_number", number=mask_number(number), site=site, matches=len(found),
          unreadable=unreadable)
    return found, unreadable


def export_call(ucfg, objects, private_key, out_dir, row: UCall, identity_key=None) -> dict:
    """Write ``<call>.wav`` and ``<call>.json`` exactly as ``linetap export`` on the box.

    The manifest's signer must be ``identity_key`` (``--identity-pub``) or else the key
    registered for the device in the config; with neither, an intact call is
    ``unverifiable``, never ``verified`` (the manifest's own signer proves nothing)."""
    site = ucfg.site_of(row.device)
    dkey = identity_key or (site.devices.get(row.device) if site else None)
    if row.state != "live":
        raise StoreError(f"call {row.call} is {row.state}")
    if row.manifest_key is None:
        raise StoreError(f"call {row.call}: no manifest upstream yet")
    mdata = objects.get(row.manifest_key)
    header, problems = evidence.check_manifest(mdata, row.call, row.device, dkey)
    segs = list(USegment.select().where((USegment.device == row.device)
                                        & (USegment.call == row.call)).order_by(USegment.seq))
    blobs = [(s.seq, objects.get(s.key)) for s in segs]
    found = {seq: evidence.Found.from_bytes(seq, data) for seq, data in blobs}
    problems += evidence.diagnose(evidence.expected_from_manifest(header), found)
    body = open_manifest(mdata, private_key)
    if body is None:
        raise StoreError(f"call {row.call}: manifest does not open with this key")
    pcm, p2 = decode_segments(blobs, private_key, body.get("first_sample"),
                              body.get("codec", "flac"))
    v = evidence.Verdict("failed" if problems or p2 else "verified", problems + p2)
    if v.status == "verified" and dkey is None:
        from recorder.evidence.trust import UNVERIFIABLE
        v = evidence.Verdict("unverifiable", [UNVERIFIABLE.replace(
            "the store's pinned key", f"register device {row.device} in the config")])
    meta = export_json(body, None, v.status, v.detail)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_call(out, row.call, pcm, int(body["rate"]), meta)
    audit("export", device=row.device, call=row.call, status=v.status)
    return {"call_id": row.call, "status": v.status, "duration_s": meta.get("duration_s")}
