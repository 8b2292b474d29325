"""Signed commands from the upstream to one box (delete, legal hold, retention, update).

Envelope (JSON)::

    {"body": "<canonical JSON of the command>", "sig": "<hex Ed25519 signature of body>"}

The body names ``kind`` (``delete`` | ``hold`` | ``retention`` | ``update``), ``device``,
``nonce`` (128-bit hex), ``issued`` and ``expires`` (epoch seconds), and the kind's
arguments: ``call`` for delete; ``call`` and ``on`` for hold; ``days`` for retention;
``url`` (an https URL of the RAUC bundle), ``size`` (bytes, 1 to
:data:`MAX_BUNDLE_BYTES`), ``sha256`` (64 lower-case hex digits) and ``version`` for
update (checked by :func:`update_problem`; docs/updates.md).

The box accepts a command only if the signature verifies with the upstream command key
it trusts, the device is its own, its times pass :func:`judge_time`, and the nonce has
never been seen.

Clocks (decided by the pure :func:`judge_time`, table-tested):

* "Now" is ``max(box clock, floor)``, where the *floor* is the latest ``issued`` of
  any command the box has accepted (kept in the store's ``meta`` table). The floor is
  time as signed by the upstream, so it only moves forward, and a box clock stepped
  backwards cannot revive an expired command.
* ``issued`` more than :data:`MAX_SKEW_S` ahead of now is refused: a command cannot
  come from the future, and a pre-dated one would outlive its window.
* ``expires`` at or before now is refused.
* While the box's clock is not NTP-synchronised, expiry is judged conservatively: a
  command must still have more than :data:`UNSYNC_MARGIN_S` to run, because a Pi
  without an RTC boots with a saved time that is typically behind.
* Used nonces are purged only once their ``expires`` is at or below the floor, never
  by the box's own clock: a forward step of the box clock therefore purges nothing,
  and a replay after the clock is corrected still finds its nonce. A purged nonce
  belongs to a command the floor already makes expired.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.errors import CommandRejected
from recorder.evidence.segfile import canonical

KINDS = {"delete": {"call": str}, "hold": {"call": str, "on": bool},
         "retention": {"days": (int, float)},
         "update": {"url": str, "size": int, "sha256": str, "version": str}}
# An update bundle holds a root file system (1.5 GiB slot) and a boot partition (256 MiB):
# anything larger cannot fit a slot and is refused before a byte is downloaded.
MAX_BUNDLE_BYTES = 2 * 2**30
MAX_URL_CHARS = 2048
_HEX = frozenset("0123456789abcdef")
_VERSION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+~_-")
RETENTION_RANGE = (0.01, 3650.0)  # days a box accepts in a retention command
MAX_LIFETIME_S = 30 * 86400      # a command valid for longer than this is refused
DEFAULT_LIFETIME_S = 7 * 86400
MAX_SKEW_S = 300.0               # ``issued`` may lead the box's clock by at most this
UNSYNC_MARGIN_S = 86400.0        # unsynchronised clock: a command must have > 1 day left
FLOOR_KEY = "command_time_floor"  # store meta key: latest ``issued`` accepted (epoch s)


@dataclass(frozen=True)
class BoxClock:
    """What the box knows about the time when a command arrives.

    ``now``: the box's wall clock (epoch s). ``synchronised``: whether the kernel says
    that clock is NTP-synchronised. ``floor``: the latest ``issued`` (epoch s, the
    upstream's signed time) of any command accepted before, 0.0 if none.
    """
    now: float
    synchronised: bool = True
    floor: float = 0.0


def judge_time(issued: float, expires: float, clock: BoxClock) -> str | None:
    """The reason to refuse a command on its times, or None to accept (pure).

    ``issued`` and ``expires`` are the command's epoch seconds; see the module
    docstring for the rules.
    """
    if not (math.isfinite(expires) and math.isfinite(issued)):
        return "command has no valid expiry"     # NaN compares false
    if expires <= issued:
        return "command expires before it was issued"
    if expires - issued > MAX_LIFETIME_S:
        return "command lifetime too long"
    now = max(clock.now, clock.floor)     # true time is at least the floor
    if issued > now + MAX_SKEW_S:
        return (f"command issued {issued - now:.0f} s in the future "
                f"(allowed skew {MAX_SKEW_S:.0f} s)")
    if expires <= now:
        return "command expired"
    if not clock.synchronised and expires <= now + UNSYNC_MARGIN_S:
        return ("command expires within the margin allowed while the box's clock is "
                f"not synchronised ({UNSYNC_MARGIN_S:.0f} s)")
    return None


def update_problem(body: dict) -> str | None:
    """What is wrong with an ``update`` command's arguments, or None (pure; the types
    are already checked). The URL must be https with a host (the box fetches it with its
    device certificate, never in clear); the size 1..``MAX_BUNDLE_BYTES``; the hash 64
    lower-case hex digits; the version 1..64 characters of ``[A-Za-z0-9.+~_-]``."""
    url, size, digest, version = body["url"], body["size"], body["sha256"], body["version"]
    if len(url) > MAX_URL_CHARS or any(c.isspace() or not c.isprintable() for c in url):
        return "update: url is too long or holds spaces or control characters"
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if scheme.lower() != "https" or not sep or not host or host.startswith(":"):
        return f"update: url must be https://HOST/... (got scheme {scheme[:16]!r})"
    if not 0 < size <= MAX_BUNDLE_BYTES:
        return f"update: size {size} out of range 1..{MAX_BUNDLE_BYTES} bytes"
    if len(digest) != 64 or not set(digest) <= _HEX:
        return "update: sha256 must be 64 lower-case hex digits"
    if not 0 < len(version) <= 64 or not set(version) <= _VERSION_CHARS:
        return "update: version must be 1..64 characters of A-Z a-z 0-9 . + ~ _ -"
    return None


def purgeable(expires: float, floor: float) -> bool:
    """Whether a used nonce whose command expires at ``expires`` may be forgotten (pure):
    only once the floor (upstream-signed time) has passed it, so that a replay is refused
    as expired by :func:`judge_time` whatever the box's clock says."""
    return expires <= floor


def time_floor(store) -> float:
    """The floor kept in ``store`` (epoch s; 0.0 before the first accepted command)."""
    return float(store.get_meta(FLOOR_KEY, 0.0))


def sign(key: ed25519.Ed25519PrivateKey, kind: str, device: str, *, now: float | None = None,
         lifetime_s: float = DEFAULT_LIFETIME_S, nonce: str | None = None, **args) -> bytes:
    """Build a signed command envelope (bytes, ready to publish)."""
    now = time.time() if now is None else now
    body = {"v": 1, "kind": kind, "device": device, "nonce": nonce or secrets.token_hex(16),
            "issued": round(now, 3), "expires": round(now + lifetime_s, 3), **args}
    raw = canonical(body)
    return json.dumps({"body": raw.decode(), "sig": key.sign(raw).hex()}).encode()


def parse(envelope: bytes) -> tuple[dict, bytes, bytes]:
    """(body, body bytes, signature) or :class:`CommandRejected` if malformed."""
    try:
        env = json.loads(envelope)
        raw = env["body"].encode()
        sig = bytes.fromhex(env["sig"])
        body = json.loads(raw)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's stack (hostile input)
        raise CommandRejected(f"malformed command: {type(exc).__name__}") from exc
    if not isinstance(body, dict):
        raise CommandRejected("malformed command: body is not an object")
    return body, raw, sig


def verify(envelope: bytes, key: ed25519.Ed25519PublicKey | None, device: str,
           now: float | None = None, *, synchronised: bool = True,
           floor: float = 0.0) -> dict:
    """Check signature, device, times (:func:`judge_time`) and shape; return the body.

    ``now``: the box's clock (epoch s, default the system clock); ``synchronised``
    whether it is NTP-synchronised; ``floor`` from :func:`time_floor`.
    Replay is checked by the caller against its nonce table (:func:`check_nonce`).
    Raises :class:`CommandRejected` with the reason.
    """
    body, raw, sig = parse(envelope)
    if key is None:
        raise CommandRejected("no upstream command key is configured")
    try:
        key.verify(sig, raw)
    except InvalidSignature:
        raise CommandRejected("bad signature") from None
    now = time.time() if now is None else now
    if body.get("device") != device:
        raise CommandRejected(f"command is for device {body.get('device')!r}")
    try:
        expires, issued = float(body["expires"]), float(body["issued"])
    except (KeyError, TypeError, ValueError):
        raise CommandRejected("command has no valid expiry") from None
    reason = judge_time(issued, expires, BoxClock(now, synchronised, floor))
    if reason is not None:
        raise CommandRejected(reason)
    nonce = body.get("nonce")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
        raise CommandRejected("command has no valid nonce")
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise CommandRejected(f"unknown command kind {kind!r}")
    for name, tp in KINDS[kind].items():
        v = body.get(name)
        if not isinstance(v, tp) or isinstance(v, bool) and tp is not bool:
            raise CommandRejected(f"{kind}: argument {name!r} missing or wrong type")
    lo, hi = RETENTION_RANGE
    if kind == "retention" and not lo <= float(body["days"]) <= hi:
        raise CommandRejected("retention days out of range")
    if kind == "update" and (problem := update_problem(body)) is not None:
        raise CommandRejected(problem)
    return body


def check_nonce(store, body: dict, now: float | None = None) -> None:
    """Record the command's nonce and raise the floor to its ``issued``, or raise
    :class:`CommandRejected` if the nonce was already used.

    ``now`` (the box's clock) is accepted for compatibility and deliberately unused:
    nonces are purged by the floor (:func:`purgeable`), never by the box's clock.
    """
    del now
    N = store.m.Nonce
    with store.db.atomic():
        if N.get_or_none(N.nonce == body["nonce"]) is not None:
            raise CommandRejected("replayed command (nonce already used)")
        floor = max(time_floor(store), float(body["issued"]))
        store.set_meta(FLOOR_KEY, floor)
        N.delete().where(N.expires <= floor).execute()    # purgeable(), in SQL
        N.insert(nonce=body["nonce"], expires=float(body["expires"])).execute()
