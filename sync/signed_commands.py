"""Signed commands from the upstream to one box (delete, legal hold, retention).

Envelope (JSON)::

    {"body": "<canonical JSON of the command>", "sig": "<hex Ed25519 signature of body>"}

The body names ``kind`` (``delete`` | ``hold`` | ``retention``), ``device``, ``nonce``
(128-bit hex), ``issued`` and ``expires`` (epoch seconds), and the kind's arguments:
``call`` for delete; ``call`` and ``on`` for hold; ``days`` for retention.

The box accepts a command only if the signature verifies with the upstream command key
it trusts, the device is its own, ``expires`` is in the future (and not absurdly far),
and the nonce has never been seen (the ``nonce`` table keeps used nonces until they
expire, so a replay is caught for as long as the command would be valid).
"""

from __future__ import annotations

import json
import math
import secrets
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.errors import CommandRejected
from recorder.evidence.segfile import canonical

KINDS = {"delete": {"call": str}, "hold": {"call": str, "on": bool},
         "retention": {"days": (int, float)}}
MAX_LIFETIME_S = 30 * 86400      # a command valid for longer than this is refused
DEFAULT_LIFETIME_S = 7 * 86400


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
           now: float | None = None) -> dict:
    """Check signature, device, expiry and shape; return the body.

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
    if not (math.isfinite(expires) and math.isfinite(issued)):
        raise CommandRejected("command has no valid expiry")   # NaN compares false
    if expires <= now:
        raise CommandRejected("command expired")
    if expires - issued > MAX_LIFETIME_S:
        raise CommandRejected("command lifetime too long")
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
    if kind == "retention" and not 0.01 <= float(body["days"]) <= 3650:
        raise CommandRejected("retention days out of range")
    return body


def check_nonce(store, body: dict, now: float | None = None) -> None:
    """Record the command's nonce, or raise :class:`CommandRejected` if already used."""
    N = store.m.Nonce
    now = time.time() if now is None else now
    with store.db.atomic():
        N.delete().where(N.expires < now).execute()
        if N.get_or_none(N.nonce == body["nonce"]) is not None:
            raise CommandRejected("replayed command (nonce already used)")
        N.insert(nonce=body["nonce"], expires=float(body["expires"])).execute()
