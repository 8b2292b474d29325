"""Retention review: the managers' appraisal decisions and what the upstream's
retention does with them (no web code here: the ingest workers import it).

NHS Records Management Code of Practice: a recording that is the only record of a
clinical interaction is kept for that record's period, and nothing is destroyed without
appraisal. So, per practice (``PSite.deletion``):

- ``auto`` (the box's behaviour): a call goes at its deadline unless on legal hold or
  **kept** (a manager's decision with a reason and a new deadline);
- ``approval``: a call past its deadline waits for a manager's **approval**. A
  reminder is audited ``remind_days`` before the deadline; at the deadline an unapproved
  call is escalated (audited, shown to every manager); ``escalate_days`` after the
  deadline it is deleted anyway, audited as such, so a forgotten queue cannot keep
  recordings for ever.

A keep moves the upstream deadline to its ``until``. The box's own copy still goes at
the box's deadline: the upstream holds the practice's copy (docs/portal.md).

The **retention period** a manager sets in the portal (:class:`PRetention`) overrides
the site's ``retention_days`` from the upstream config: :func:`apply_retention` lays it
over the loaded config at every retention tick of every worker (and at once in the
portal), so the ingest's new deadlines, the deadline refresh and the retention command
to the box all follow it.
"""

from __future__ import annotations

import logging
import math
import time

import peewee as pw

from recorder.errors import LinetapError
from sync.signed_commands import RETENTION_RANGE
from sync.upstream.store import Base, UCall, audit, db

log = logging.getLogger(__name__)
DAY = 86400.0


class PSite(Base):
    """Per-practice portal settings."""

    site = pw.CharField(primary_key=True)
    require_totp = pw.BooleanField(default=False)
    deletion = pw.CharField(default="auto")          # auto | approval
    remind_days = pw.DoubleField(default=7.0)        # reminder this long before a deadline
    escalate_days = pw.DoubleField(default=14.0)     # unapproved this long past: deleted

    class Meta:
        table_name = "portal_site"


class PDecision(Base):
    """A manager's appraisal of one call: ``keep`` (new deadline ``until``, reason) or
    ``approve`` (may be deleted at its deadline under approval-only deletion)."""

    device = pw.CharField()
    call = pw.CharField()
    site = pw.CharField(index=True)
    kind = pw.CharField()                 # keep | approve
    reason = pw.TextField()
    until = pw.DoubleField(null=True)     # keep: the new deadline (epoch s)
    user = pw.CharField()
    time = pw.DoubleField(default=time.time)
    reminded = pw.BooleanField(default=False)

    class Meta:
        table_name = "portal_decision"
        indexes = ((("device", "call"), True),)


class PNotice(Base):
    """Reminders and escalations already sent (one per call and kind)."""

    device = pw.CharField()
    call = pw.CharField()
    site = pw.CharField(index=True)
    kind = pw.CharField()                 # reminder | escalation
    time = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "portal_notice"
        indexes = ((("device", "call", "kind"), True),)


class PRetention(Base):
    """A practice's retention period as its manager last set it in the portal."""

    site = pw.CharField(primary_key=True)
    days = pw.DoubleField()                # 0.01..3650 days from each call's start
    user = pw.CharField()
    reason = pw.TextField()
    time = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "portal_retention"


class RetentionError(LinetapError, ValueError):
    """A retention period or its reason that cannot be set."""


def check_retention(days, reason) -> tuple[float, str]:
    """The (days, reason) a manager may set: ``days`` a number of days in
    :data:`sync.signed_commands.RETENTION_RANGE` (what a box accepts), ``reason`` a
    non-empty text (cut to 500 characters). Raises :class:`RetentionError`."""
    lo, hi = RETENTION_RANGE
    if isinstance(days, bool) or not isinstance(days, (int, float)) \
            or not math.isfinite(days) or not lo <= days <= hi:
        raise RetentionError(f"the retention period must be a number of days in {lo:g}..{hi:g}")
    if not isinstance(reason, str) or not reason.strip():
        raise RetentionError("a reason is required to change the retention period")
    return float(days), reason.strip()[:500]


def apply_retention(ucfg) -> list[str]:
    """Lay each practice's portal retention over ``ucfg.sites[...].retention_days``
    (the config's value stays for practices that never set one). Returns the sites
    whose value changed."""
    _tables()
    changed = []
    for r in PRetention.select():
        site = ucfg.sites.get(r.site)
        if site is not None and site.retention_days != r.days:
            site.retention_days = r.days
            changed.append(r.site)
    return changed


def set_retention(ucfg, site: str, days, reason, user: str) -> float:
    """Record a manager's retention period for ``site`` (audited with the previous value
    and the reason) and apply it to ``ucfg``. Returns the previous period (days)."""
    days, reason = check_retention(days, reason)
    if site not in ucfg.sites:
        raise RetentionError(f"site {site!r} is not in the upstream config")
    _tables()
    before = ucfg.sites[site].retention_days
    with db.atomic():
        now = time.time()
        PRetention.insert(site=site, days=days, user=user, reason=reason, time=now).on_conflict(
            conflict_target=[PRetention.site],
            update={PRetention.days: days, PRetention.user: user, PRetention.reason: reason,
                    PRetention.time: now}).execute()
        audit("portal_retention", user=user, site=site, days=days, previous=before,
              reason=reason)
    apply_retention(ucfg)
    return before


def _tables() -> None:
    """Create the tables once per open database (marked on the database object itself:
    an id() could be reused by the next database a process opens)."""
    d = db.obj
    if not getattr(d, "_linetap_portal_tables", False):
        d.create_tables([PSite, PDecision, PNotice, PRetention], safe=True)
        d._linetap_portal_tables = True


def site_settings(site: str) -> PSite:
    _tables()
    s, _ = PSite.get_or_create(site=site)
    return s


def apply_keeps() -> int:
    """Move each kept call's deadline to its keep's ``until`` (run after the deadlines
    are recomputed from the site's retention). Returns calls changed."""
    _tables()
    n = 0
    for d in PDecision.select().where(PDecision.kind == "keep"):
        n += UCall.update(deadline=d.until).where(
            (UCall.device == d.device) & (UCall.call == d.call)
            & (UCall.deadline != d.until)).execute()
    return n


def waiting(row: UCall, now: float | None = None) -> bool:
    """Should :func:`sync.upstream.ops.expire` leave this expired call for now?

    True for a call of an approval-only practice that no manager has approved, until
    ``escalate_days`` past its deadline. Sends (audits) the escalation once."""
    _tables()
    now = time.time() if now is None else now
    s = PSite.get_or_none(PSite.site == row.site)
    if s is None or s.deletion != "approval":
        return False
    d = PDecision.get_or_none((PDecision.device == row.device) & (PDecision.call == row.call))
    if d is not None and d.kind == "approve":
        return False
    if d is not None and d.kind == "keep" and d.until is not None and d.until <= now:
        return False                      # a keep ran out: its own appraisal is done
    _notice(row, "escalation", deadline=row.deadline)
    if row.deadline is not None and now >= row.deadline + s.escalate_days * DAY:
        audit("retention_unapproved_deleted", device=row.device, call=row.call,
              site=row.site, escalate_days=s.escalate_days)
        return False
    return True


def remind(now: float | None = None) -> int:
    """Audit a reminder for each call of an approval-only practice whose deadline falls
    within ``remind_days`` and that has no decision yet. Returns reminders sent."""
    _tables()
    now = time.time() if now is None else now
    n = 0
    for s in PSite.select().where(PSite.deletion == "approval"):
        q = UCall.select().where((UCall.site == s.site) & (UCall.state == "live")
                                 & (UCall.deadline <= now + s.remind_days * DAY))
        decided = {(d.device, d.call) for d in
                   PDecision.select().where(PDecision.site == s.site)}
        for row in q:
            if (row.device, row.call) not in decided:
                n += _notice(row, "reminder", deadline=row.deadline)
    return n


def _notice(row: UCall, kind: str, **detail) -> int:
    try:
        with db.atomic():
            PNotice.create(device=row.device, call=row.call, site=row.site, kind=kind)
    except pw.IntegrityError:
        return 0
    audit(f"retention_{kind}", device=row.device, call=row.call, site=row.site, **detail)
    return 1
