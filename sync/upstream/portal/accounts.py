"""Portal accounts, sessions and per-practice settings, in the upstream database.

The tables live beside the upstream's own (same peewee ``db`` proxy), so one backup
holds everything. Passwords are Argon2id hashes (``argon2-cffi``, its RFC 9106 low-memory
profile); the TOTP secret (``pyotp``, RFC 6238, 30 s steps, 6 digits) is stored as
given because the server must compute codes to check them. Session tokens are stored
only as their SHA-256, so a copy of the database does not let anyone sign in.

Roles (per site = practice):

=========  ===========================================================
manager    everything: calls, play, export, delete, hold, retention, users, audit
staff      search, play, download and export
auditor    the audit trail and the call list, no playback or download
operator   the fleet view: every box and its alerts (docs/fleet.md), never a call
=========  ===========================================================
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

import peewee as pw
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from recorder.errors import LinetapError
from sync.upstream.portal.decisions import PDecision, PSite, site_settings
from sync.upstream.portal.decisions import _tables as _decision_tables
from sync.upstream.store import Base, db

ROLES = ("manager", "staff", "auditor", "operator")
PERMS = {
    "list": {"manager", "staff", "auditor"},
    "open": {"manager", "staff"},          # sealed blobs: play, download, export, search
    "audit": {"manager", "auditor"},
    "manage": {"manager"},                  # delete, hold, retention, users, settings
    "fleet": {"operator"},                  # every box's health and alerts, never calls
}
MAX_FAILURES = 5              # failed sign-ins in a row before the account locks
LOCK_S = 15 * 60              # how long a lock lasts (s)
SESSION_IDLE_S = 30 * 60      # a session unused this long ends (s)
SESSION_MAX_S = 12 * 3600     # no session lives longer than a working day (s)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD = 10

_hasher = PasswordHasher()    # Argon2id, argon2-cffi's RFC 9106 low-memory defaults


class AccountError(LinetapError, ValueError):
    """A bad user name, role, password or an unknown user."""


class PUser(Base):
    name = pw.CharField(unique=True)
    site = pw.CharField(index=True)
    role = pw.CharField()
    pw_hash = pw.CharField()
    totp_secret = pw.CharField(null=True)
    disabled = pw.BooleanField(default=False)
    failures = pw.IntegerField(default=0)
    locked_until = pw.DoubleField(default=0.0)
    created = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "portal_user"


class PSession(Base):
    token_sha = pw.CharField(primary_key=True)
    user = pw.ForeignKeyField(PUser, on_delete="CASCADE")
    csrf = pw.CharField()
    created = pw.DoubleField(default=time.time)
    seen = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "portal_session"


class PTotpPending(Base):
    """A TOTP secret shown on the enrolment page, not yet confirmed by a first code."""

    user = pw.ForeignKeyField(PUser, primary_key=True, on_delete="CASCADE")
    secret = pw.CharField()
    created = pw.DoubleField(default=time.time)

    class Meta:
        table_name = "portal_totp_pending"


MODELS = [PUser, PSession, PSite, PDecision, PTotpPending]
__all__ = ["PDecision", "PSite", "site_settings"]


def init_tables() -> None:
    db.obj.create_tables(MODELS, safe=True)
    _decision_tables()


def can(role: str, perm: str) -> bool:
    return role in PERMS[perm]


def _check_password(pw_: str) -> None:
    if len(pw_) < MIN_PASSWORD:
        raise AccountError(f"password must be at least {MIN_PASSWORD} characters")


def add_user(name: str, site: str, role: str, password: str, *, totp: bool = False) -> PUser:
    if not NAME_RE.match(name):
        raise AccountError(f"user name {name!r}: use 1-64 of a-z 0-9 . _ - (lower case)")
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not site:
        raise AccountError("a user needs a site")
    _check_password(password)
    if PUser.select().where(PUser.name == name).exists():
        raise AccountError(f"user {name} already exists")
    return PUser.create(name=name, site=site, role=role, pw_hash=_hasher.hash(password),
                        totp_secret=pyotp.random_base32() if totp else None)


def get_user(name: str) -> PUser:
    u = PUser.get_or_none(PUser.name == name)
    if u is None:
        raise AccountError(f"no such user {name}")
    return u


def set_disabled(name: str, disabled: bool = True) -> PUser:
    u = get_user(name)
    PUser.update(disabled=disabled).where(PUser.id == u.id).execute()
    if disabled:
        PSession.delete().where(PSession.user == u.id).execute()
    return get_user(name)


def reset(name: str, password: str | None = None, *, totp: bool | None = None) -> PUser:
    """New password and/or TOTP secret (``totp`` True: new secret, False: none); clears
    the lock and ends the user's sessions."""
    u = get_user(name)
    fields: dict = {"failures": 0, "locked_until": 0.0}
    if password is not None:
        _check_password(password)
        fields["pw_hash"] = _hasher.hash(password)
    if totp is not None:
        fields["totp_secret"] = pyotp.random_base32() if totp else None
    PUser.update(**fields).where(PUser.id == u.id).execute()
    PSession.delete().where(PSession.user == u.id).execute()
    return get_user(name)


def totp_uri(u: PUser, secret: str | None = None) -> str:
    """The ``otpauth://`` URI of ``secret`` (default: the user's own) for an
    authenticator app, labelled ``Linetap:<user name>``."""
    return pyotp.TOTP(secret or u.totp_secret).provisioning_uri(name=u.name,
                                                                issuer_name="Linetap")


PENDING_S = 15 * 60           # an unconfirmed enrolment secret is replaced after this (s)


def must_enrol(u: PUser) -> bool:
    """True while the user's practice requires one-time codes and the user has none:
    such a user reaches only the enrolment page (and sign-out)."""
    if u.totp_secret:
        return False
    s = PSite.get_or_none(PSite.site == u.site)
    return bool(s and s.require_totp)


def enrol_secret(u: PUser, now: float | None = None) -> str:
    """The secret to show on the enrolment page: the pending one if still fresh, else a
    new one. It becomes the user's only once :func:`confirm_enrolment` sees a code."""
    now = time.time() if now is None else now
    p = PTotpPending.get_or_none(PTotpPending.user == u.id)
    if p is not None and now - p.created < PENDING_S:
        return p.secret
    secret = pyotp.random_base32()
    PTotpPending.insert(user=u.id, secret=secret, created=now).on_conflict(
        conflict_target=[PTotpPending.user],
        update={PTotpPending.secret: secret, PTotpPending.created: now}).execute()
    return secret


def confirm_enrolment(u: PUser, code: str) -> bool:
    """Switch one-time codes on for ``u`` if ``code`` is valid for the pending secret
    (one 30 s step of drift either way). False, and nothing changed, otherwise. An
    account that already has codes is not re-enrolled here (a reset by the manager is)."""
    if u.totp_secret:
        raise AccountError("one-time codes are already on for this account")
    p = PTotpPending.get_or_none(PTotpPending.user == u.id)
    code = (code or "").replace(" ", "")
    if p is None or not code or not pyotp.TOTP(p.secret).verify(code, valid_window=1):
        return False
    with db.atomic():
        PUser.update(totp_secret=p.secret).where(PUser.id == u.id).execute()
        PTotpPending.delete().where(PTotpPending.user == u.id).execute()
    return True


class SignIn:
    """Outcome of :func:`authenticate`: ``user`` on success, else ``error``."""

    def __init__(self, user: PUser | None = None, error: str = "", need_code=False,
                 enrol=False):
        self.user, self.error, self.need_code, self.enrol = user, error, need_code, enrol


GENERIC = "Wrong username, password or one-time code."


def authenticate(name: str, password: str, code: str, now: float | None = None) -> SignIn:
    """Check a sign-in. Every failure counts toward the lock, which holds even for a
    right password; the message never says which part was wrong."""
    now = time.time() if now is None else now
    u = PUser.get_or_none(PUser.name == name)
    if u is None:
        _hasher.hash(password or "x")      # the same cost as a real check
        return SignIn(error=GENERIC)
    if u.locked_until > now:
        return SignIn(error="This account is locked after repeated failed sign-ins. "
                      "Try again later or ask your practice manager.")
    ok = False
    try:
        ok = _hasher.verify(u.pw_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    need = bool(u.totp_secret) or site_settings(u.site).require_totp
    if ok and u.totp_secret:
        ok = bool(code) and pyotp.TOTP(u.totp_secret).verify(code.strip(), valid_window=1)
    if not ok or u.disabled:
        failures = u.failures + 1
        lock = now + LOCK_S if failures >= MAX_FAILURES else u.locked_until
        PUser.update(failures=failures, locked_until=lock).where(PUser.id == u.id).execute()
        return SignIn(error=GENERIC, need_code=need)
    PUser.update(failures=0, locked_until=0.0).where(PUser.id == u.id).execute()
    # Required codes but none yet: signed in, but only to enrol (see must_enrol).
    return SignIn(user=u, enrol=need and not u.totp_secret)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(u: PUser) -> tuple[str, PSession]:
    token = secrets.token_urlsafe(32)
    s = PSession.create(token_sha=_sha(token), user=u.id, csrf=secrets.token_urlsafe(32))
    return token, s


def session_of(token: str | None, now: float | None = None) -> PSession | None:
    """The live session for a cookie value (touching it), or None."""
    if not token or len(token) > 128:
        return None
    now = time.time() if now is None else now
    s = PSession.get_or_none(PSession.token_sha == _sha(token))
    if s is None:
        return None
    if now - s.seen > SESSION_IDLE_S or now - s.created > SESSION_MAX_S or s.user.disabled:
        s.delete_instance()
        return None
    if now - s.seen > 30:                  # one write a half-minute, not one a request
        PSession.update(seen=now).where(PSession.token_sha == s.token_sha).execute()
    return s


def end_session(token: str | None) -> None:
    if token:
        PSession.delete().where(PSession.token_sha == _sha(token)).execute()
