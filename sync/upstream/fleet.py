"""The fleet view: every box's last health report, its history, and alerts that reach a person.

A box publishes a health report on its ``health`` topic every ``sync.health_interval_s``
(version, disk, backlog and its age, line states, overruns, alarms). Every ingest worker
stores what it receives (:func:`record_health`): the last report per device, a history
kept ``history_days``, and since when each of the box's alarms has been raised without a
break. The alert rules are one pure function (:func:`evaluate`, table-tested) over that
snapshot. They name the silent failures a practice cannot see for itself:

=============== ===========================================================================
``offline``     no report for ``offline_min`` minutes (unplugged, dead network, crashed),
                or a box that is enrolled but has never reported
``dead_line``   the box's ``dead_line`` alarm for ``dead_line_hours`` of *working* hours
                (a cut line is silent; so is a surgery at night)
``backlog``     the oldest recording not yet upstream is ``backlog_hours`` old
``disk``        less than ``disk_free_mb`` free on the box
``update``      the box reports a failed update
``clock``       the box's clock has been unsynchronised longer than ``alarm_grace_min``
``alarm:NAME``  any other alarm of the box, raised longer than ``alarm_grace_min``
=============== ===========================================================================

An offline box is judged by ``offline`` alone: its last report is stale. :class:`Fleet`
turns the rules into notices: one when an alert is raised, a reminder every
``reminder_hours`` while it lasts, and one when it clears. Notices wait up to
``group_s`` seconds and go out together, so 100 boxes lost at once (a broker restart)
are one message, not 100. Only the worker holding the ``fleet`` lease sends, so N
workers send each notice once. Delivery is by e-mail (SMTP) and by webhook (a JSON
POST); a notice that cannot be delivered stays pending and is tried again next tick.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import smtplib
import socket
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from recorder.errors import ConfigError
from sync.upstream.store import AlarmSeen, FleetAlert, Health, HealthHistory, Lease, db

log = logging.getLogger(__name__)

#: Alarms that have their own rule (so ``alarm:NAME`` does not repeat them).
OWN_RULES = {"dead_line", "clock_unsynchronised", "low_storage", "sync_backlog_age"}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class FleetSettings:
    """Thresholds and delivery, from ``[fleet]`` and ``[alerts]`` in upstream.toml.

    Times are seconds unless named otherwise; working hours are local time in
    ``timezone`` on ``work_days`` (0 = Monday), ``work_start``..``work_end`` minutes
    after midnight. The defaults are what a GP surgery open 08:00-18:30 on weekdays
    would accept.
    """

    offline_s: float = 15 * 60
    dead_line_s: float = 2 * 3600
    backlog_s: float = 4 * 3600
    disk_free_mb: float = 500.0
    alarm_grace_s: float = 30 * 60
    reminder_s: float = 24 * 3600
    group_s: float = 60.0
    history_days: float = 30.0
    timezone: str = "Europe/London"
    work_start: int = 8 * 60
    work_end: int = 18 * 60 + 30
    work_days: tuple[int, ...] = (0, 1, 2, 3, 4)
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_from: str = "linetap-fleet@localhost"
    smtp_to: tuple[str, ...] = ()
    webhook: str = ""


FLEET_KEYS = {"offline_min": (int, float), "dead_line_hours": (int, float),
              "backlog_hours": (int, float), "disk_free_mb": (int, float),
              "alarm_grace_min": (int, float), "reminder_hours": (int, float),
              "group_s": (int, float), "history_days": (int, float), "timezone": str,
              "working_hours": str, "working_days": list}
ALERT_KEYS = {"smtp_host": str, "smtp_port": int, "smtp_starttls": bool, "smtp_from": str,
              "smtp_to": list, "webhook": str}


def settings_from(fleet: dict, alerts: dict) -> FleetSettings:
    """Build :class:`FleetSettings` from the two TOML tables (types already checked);
    every problem is reported at once."""
    problems: list[str] = []
    kw: dict = {}

    def num(key, attr, scale, lo, hi):
        if key in fleet:
            v = fleet[key]
            if isinstance(v, bool) or not lo <= v <= hi:
                problems.append(f"fleet.{key} must be a number in {lo}..{hi}")
            else:
                kw[attr] = float(v) * scale
    num("offline_min", "offline_s", 60, 1, 7 * 24 * 60)
    num("dead_line_hours", "dead_line_s", 3600, 0.1, 24 * 14)
    num("backlog_hours", "backlog_s", 3600, 0.1, 24 * 30)
    num("disk_free_mb", "disk_free_mb", 1, 1, 10**6)
    num("alarm_grace_min", "alarm_grace_s", 60, 0, 7 * 24 * 60)
    num("reminder_hours", "reminder_s", 3600, 0.1, 24 * 30)
    num("group_s", "group_s", 1, 0, 3600)
    num("history_days", "history_days", 1, 1, 3650)
    if "timezone" in fleet:
        try:
            ZoneInfo(fleet["timezone"])
            kw["timezone"] = fleet["timezone"]
        except (KeyError, ValueError):
            problems.append(f"fleet.timezone: unknown time zone {fleet['timezone']!r}")
    if "working_hours" in fleet:
        try:
            a, b = (_minutes(x) for x in fleet["working_hours"].split("-"))
            if a >= b:
                raise ValueError
            kw["work_start"], kw["work_end"] = a, b
        except ValueError:
            problems.append(f"fleet.working_hours must be HH:MM-HH:MM with the start "
                            f"first, not {fleet['working_hours']!r}")
    if "working_days" in fleet:
        days = [str(d).lower()[:3] for d in fleet["working_days"]]
        bad = [d for d in days if d not in WEEKDAYS]
        if bad or not days:
            problems.append(f"fleet.working_days must list days from {', '.join(WEEKDAYS)}")
        else:
            kw["work_days"] = tuple(sorted({WEEKDAYS.index(d) for d in days}))
    for k in ("smtp_host", "smtp_port", "smtp_starttls", "smtp_from", "webhook"):
        if k in alerts:
            kw[k] = alerts[k]
    if "smtp_to" in alerts:
        kw["smtp_to"] = tuple(str(x) for x in alerts["smtp_to"])
    if kw.get("smtp_host") and not kw.get("smtp_to"):
        problems.append("alerts.smtp_host is set but alerts.smtp_to names nobody")
    if kw.get("webhook") and not str(kw["webhook"]).startswith(("http://", "https://")):
        problems.append("alerts.webhook must be an http:// or https:// URL")
    if problems:
        raise ConfigError(problems, "upstream config")
    return FleetSettings(**kw)


def _minutes(hhmm: str) -> int:
    h, m = hhmm.strip().split(":")
    v = int(h) * 60 + int(m)
    if not 0 <= v <= 24 * 60:
        raise ValueError(hhmm)
    return v


# -- pure rules --------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceView:
    """One device as the rules see it. ``last_seen`` is epoch s (None: never reported);
    ``alarms_since`` maps each raised alarm to the epoch s it was first reported."""

    device: str
    site: str
    last_seen: float | None
    body: dict = field(default_factory=dict)
    alarms_since: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Alert:
    device: str
    site: str
    kind: str
    detail: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.device, self.kind)


def working_seconds(start: float, end: float, s: FleetSettings) -> float:
    """Seconds of ``[start, end)`` (epoch s) that fall in working hours. Pure."""
    if end <= start:
        return 0.0
    tz = ZoneInfo(s.timezone)
    total = 0.0
    day = dt.datetime.fromtimestamp(start, tz).date()
    last = dt.datetime.fromtimestamp(end, tz).date()
    while day <= last:
        if day.weekday() in s.work_days:
            midnight = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
            a = (midnight + dt.timedelta(minutes=s.work_start)).timestamp()
            b = (midnight + dt.timedelta(minutes=s.work_end)).timestamp()
            total += max(0.0, min(b, end) - max(a, start))
        day += dt.timedelta(days=1)
    return total


def _ago(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def evaluate(devices: Iterable[DeviceView], now: float, s: FleetSettings) -> list[Alert]:
    """Every alert that holds at ``now`` (epoch s). Pure."""
    out: list[Alert] = []
    for d in devices:
        def add(kind: str, detail: str, d=d) -> None:
            out.append(Alert(d.device, d.site, kind, detail))
        if d.last_seen is None:
            add("offline", "enrolled but has never reported")
            continue
        if now - d.last_seen >= s.offline_s:
            add("offline", f"not seen for {_ago(now - d.last_seen)}")
            continue                        # the rest of its report is stale
        b, since = d.body, d.alarms_since
        if "dead_line" in since:
            dead = working_seconds(since["dead_line"], now, s)
            if dead >= s.dead_line_s:
                add("dead_line", f"no signal on a line for {_ago(dead)} of working hours")
        age = b.get("oldest_unsynced_age_s")
        if isinstance(age, int | float) and age >= s.backlog_s:
            add("backlog", f"oldest recording not yet upstream is {_ago(age)} old "
                f"({b.get('backlog', '?')} segment(s) waiting)")
        free = b.get("disk_free_mb")
        if isinstance(free, int | float) and free < s.disk_free_mb:
            add("disk", f"{free:.0f} MB free (alert below {s.disk_free_mb:.0f} MB)")
        upd = b.get("update") or {}
        if isinstance(upd, dict) and upd.get("state") == "failed":
            add("update", f"update to {upd.get('version', '?')} failed: "
                f"{upd.get('reason', 'no reason given')}")
        for name, t0 in sorted(since.items()):
            if now - t0 < s.alarm_grace_s:
                continue
            if name == "clock_unsynchronised":
                add("clock", f"clock not synchronised for {_ago(now - t0)}")
            elif name not in OWN_RULES:
                add(f"alarm:{name}", f"alarm {name} raised for {_ago(now - t0)}")
    return out


# -- what the ingest stores ----------------------------------------------------------------

def record_health(device: str, site: str, body: dict, now: float) -> None:
    """Store one health report: the last per device, its history, and alarm onsets."""
    raised = {str(a) for a in (body.get("alarms") or ()) if isinstance(a, str | int)}
    with db.atomic():
        # ON CONFLICT ... DO UPDATE works on SQLite and PostgreSQL alike (REPLACE does not).
        Health.insert(device=device, site=site, body=body, time=now).on_conflict(
            conflict_target=[Health.device],
            update={Health.site: site, Health.body: body, Health.time: now}).execute()
        HealthHistory.insert(device=device, time=now, body=body).execute()
        AlarmSeen.delete().where((AlarmSeen.device == device)
                                 & AlarmSeen.name.not_in(raised or {""})).execute()
        for name in raised:
            AlarmSeen.insert(device=device, name=name, since=now).on_conflict_ignore() \
                .execute()


def snapshot(enrolled: dict[str, str]) -> list[DeviceView]:
    """Every device that reported or is enrolled (``enrolled``: device -> site)."""
    since: dict[str, dict] = {}
    for a in AlarmSeen.select():
        since.setdefault(a.device, {})[a.name] = a.since
    out, seen = [], set()
    for h in Health.select():
        seen.add(h.device)
        out.append(DeviceView(h.device, enrolled.get(h.device, h.site), h.time,
                              h.body or {}, since.get(h.device, {})))
    for dev, site in sorted(enrolled.items()):
        if dev not in seen:
            out.append(DeviceView(dev, site, None))
    return sorted(out, key=lambda v: (v.site, v.device))


def history(device: str, since: float) -> list[tuple[float, dict]]:
    """A device's reports since ``since`` (epoch s), oldest first."""
    q = HealthHistory.select().where((HealthHistory.device == device)
                                     & (HealthHistory.time >= since)).order_by(
        HealthHistory.time)
    return [(r.time, r.body) for r in q]


# -- notices -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Notice:
    """One message: the alerts raised, still open (reminders) and cleared since the last."""

    raised: tuple[FleetAlert, ...]
    reminders: tuple[FleetAlert, ...]
    cleared: tuple[FleetAlert, ...]

    @property
    def subject(self) -> str:
        parts = [f"{len(x)} {w}" for x, w in ((self.raised, "raised"),
                                              (self.reminders, "still open"),
                                              (self.cleared, "cleared")) if x]
        return "Linetap fleet: " + ", ".join(parts)

    def text(self) -> str:
        lines = []
        for title, rows in (("Raised", self.raised), ("Still open", self.reminders),
                            ("Cleared", self.cleared)):
            if not rows:
                continue
            lines.append(f"{title}:")
            by_kind: dict[str, list[FleetAlert]] = {}
            for r in rows:
                by_kind.setdefault(r.kind, []).append(r)
            for kind, rs in sorted(by_kind.items()):
                if len(rs) > 5:         # a storm: one line for the kind
                    names = ", ".join(f"{r.site}/{r.device}" for r in rs)
                    lines.append(f"  {kind} on {len(rs)} devices: {names}")
                    continue
                for r in rs:
                    at = dt.datetime.fromtimestamp(r.raised, dt.UTC).strftime("%Y-%m-%d %H:%M")
                    lines.append(f"  {r.site}/{r.device} {kind}: {r.detail} "
                                 f"(since {at} UTC)")
            lines.append("")
        return "\n".join(lines)

    def json(self) -> dict:
        def row(r):
            return {"device": r.device, "site": r.site, "kind": r.kind, "detail": r.detail,
                    "raised": r.raised, "cleared": r.cleared}
        return {"raised": [row(r) for r in self.raised],
                "still_open": [row(r) for r in self.reminders],
                "cleared": [row(r) for r in self.cleared]}


def send_email(s: FleetSettings, n: Notice) -> None:
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = n.subject, s.smtp_from, ", ".join(s.smtp_to)
    msg.set_content(n.text())
    with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=20) as smtp:
        if s.smtp_starttls:
            smtp.starttls()
        smtp.send_message(msg)


def send_webhook(s: FleetSettings, n: Notice) -> None:
    # The URL's scheme is checked when the config loads (http or https only).
    req = urllib.request.Request(s.webhook, data=json.dumps(n.json()).encode(),  # noqa: S310
                                 headers={"Content-Type": "application/json"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=20) as r:   # noqa: S310
        if not 200 <= r.status < 300:
            raise OSError(f"webhook answered {r.status}")


def notifiers(s: FleetSettings) -> list[Callable[[Notice], None]]:
    out = []
    if s.smtp_host:
        out.append(lambda n: send_email(s, n))
    if s.webhook:
        out.append(lambda n: send_webhook(s, n))
    return out


class Fleet:
    """Alerts from the rules, notices from the alerts (see the module docstring)."""

    LEASE = "fleet"

    def __init__(self, s: FleetSettings, enrolled: dict[str, str], *, holder: str = "",
                 send: list[Callable[[Notice], None]] | None = None,
                 lease_s: float = 300.0):
        self.s, self.enrolled = s, enrolled
        self.holder = holder or f"{socket.gethostname()}-{id(self):x}"
        self.send = notifiers(s) if send is None else send
        self.lease_s = lease_s

    def _lease(self, now: float) -> bool:
        """Hold the ``fleet`` lease (a conditional update: one holder at a time)."""
        with db.atomic():
            Lease.insert(name=self.LEASE, holder=self.holder, until=now + self.lease_s) \
                .on_conflict_ignore().execute()
            n = Lease.update(holder=self.holder, until=now + self.lease_s).where(
                (Lease.name == self.LEASE)
                & ((Lease.holder == self.holder) | (Lease.until < now))).execute()
        return n == 1

    def tick(self, now: float | None = None) -> Notice | None:
        """Update alerts and send what is due; returns the notice sent, if any."""
        now = time.time() if now is None else now
        if not self._lease(now):
            return None
        HealthHistory.delete().where(
            HealthHistory.time < now - self.s.history_days * 86400).execute()
        current = {a.key: a for a in evaluate(snapshot(self.enrolled), now, self.s)}
        with db.atomic():
            open_rows = {(r.device, r.kind): r
                         for r in FleetAlert.select().where(FleetAlert.cleared.is_null())}
            for key, a in current.items():
                r = open_rows.get(key)
                if r is None:
                    FleetAlert.create(device=a.device, site=a.site, kind=a.kind,
                                      detail=a.detail, raised=now, pending="raised",
                                      pending_since=now)
                    log.warning("fleet alert raised: %s %s: %s", a.device, a.kind, a.detail)
                    continue
                upd: dict = {FleetAlert.detail: a.detail}
                if r.pending is None and r.last_notice is not None \
                        and now - r.last_notice >= self.s.reminder_s:
                    upd.update({FleetAlert.pending: "reminder",
                                FleetAlert.pending_since: now})
                FleetAlert.update(upd).where(FleetAlert.id == r.id).execute()
            for key, r in open_rows.items():
                if key in current:
                    continue
                log.info("fleet alert cleared: %s %s", r.device, r.kind)
                if r.pending == "raised":
                    # Raised and gone before anyone was told: nothing to tell.
                    FleetAlert.update(cleared=now, pending=None).where(
                        FleetAlert.id == r.id).execute()
                else:
                    FleetAlert.update(cleared=now, pending="cleared",
                                      pending_since=now).where(
                        FleetAlert.id == r.id).execute()
        return self._send_due(now)

    def _send_due(self, now: float) -> Notice | None:
        pending = list(FleetAlert.select().where(FleetAlert.pending.is_null(False))
                       .order_by(FleetAlert.site, FleetAlert.device, FleetAlert.kind))
        if not pending or min(r.pending_since for r in pending) + self.s.group_s > now:
            return None
        notice = Notice(tuple(r for r in pending if r.pending == "raised"),
                        tuple(r for r in pending if r.pending == "reminder"),
                        tuple(r for r in pending if r.pending == "cleared"))
        if not self.send:
            log.warning("%s (no [alerts] delivery configured)", notice.subject)
        for fn in self.send:
            try:
                fn(notice)
            except (OSError, smtplib.SMTPException) as exc:
                log.error("fleet notice not delivered, will retry: %s", exc)
                return None
        ids = [r.id for r in pending]
        FleetAlert.update(pending=None, last_notice=now,
                          notices=FleetAlert.notices + 1).where(
            FleetAlert.id.in_(ids)).execute()
        return notice


def open_alerts() -> list[FleetAlert]:
    return list(FleetAlert.select().where(FleetAlert.cleared.is_null())
                .order_by(FleetAlert.site, FleetAlert.device, FleetAlert.kind))


def table(now: float, enrolled: dict[str, str]) -> list[dict]:
    """``linetap upstream fleet``: one row per device with its state and open alerts."""
    alerts: dict[str, list[str]] = {}
    for r in open_alerts():
        alerts.setdefault(r.device, []).append(r.kind)
    rows = []
    for v in snapshot(enrolled):
        b = v.body
        rows.append({
            "device": v.device, "site": v.site, "version": b.get("version"),
            "slot": b.get("slot"),
            "last_seen_s": None if v.last_seen is None else round(now - v.last_seen),
            "disk_free_mb": b.get("disk_free_mb"), "backlog": b.get("backlog"),
            "backlog_age_s": b.get("oldest_unsynced_age_s"),
            "lines": [ln.get("state") for ln in b.get("lines") or []],
            "alarms": sorted(v.alarms_since), "alerts": sorted(alerts.get(v.device, [])),
            "state": "alert" if alerts.get(v.device) else
            ("never seen" if v.last_seen is None else "ok")})
    return rows


__all__ = ["Alert", "DeviceView", "Fleet", "FleetSettings", "Notice", "evaluate",
           "history", "record_health", "settings_from", "snapshot", "table",
           "working_seconds"]
