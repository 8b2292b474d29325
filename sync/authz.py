"""Who may change a provisioned box: presence AND a token signed by the upstream.

In ``sync`` because both sides use it: the upstream mints tokens
(:mod:`sync.upstream.authorise`) and the box's provisioning agent verifies them.

A box is *provisioned* once it pins an upstream command key (``sync.command_key`` in
the config in force names a readable Ed25519 public key). From then on the protected
operations below need, besides physical presence, a **provisioning token** signed by
the matching upstream command-signing key (the same key that signs delete and hold
commands, so the box trusts nothing new). A factory-fresh box (no pinned command key)
is provisioned with presence alone: there is nothing yet to verify a token with.

Token (JSON, the same envelope as :mod:`sync.signed_commands`)::

    {"body": "<canonical JSON>", "sig": "<hex Ed25519 signature of body>"}

    body = {"v": 1, "kind": "provision", "device": "lt-...", "ops": ["practice_key"],
            "destroy_unsynced": false, "nonce": "<32 hex>", "issued": 1764990000.0,
            "expires": 1764993600.0}

``expires - issued`` is at most :data:`MAX_TTL_S` (24 h). A token is accepted once:
its nonce is kept in ``<data_dir>/provision-nonces.json`` until it expires, so a token
copied off a laptop cannot be replayed on the same box. Mint one with
``linetap upstream --config U.toml authorise --device D --op OP`` (:mod:`sync.upstream.authorise`).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from recorder.errors import KeyFileError, LinetapError
from recorder.evidence import keys
from recorder.fsutil import atomic_write
from sync import signed_commands as commands

# Operations a token can name, and what each one covers.
OPS = {
    "practice_key": "install a different practice public key (recording.public_key)",
    "broker": "change the broker (sync.enabled, host, port), its CA, or the TLS key",
    "command_key": "install a different upstream command key (sync.command_key)",
    "device_id": "change device.id",
    "factory_reset": "erase recordings, keys and config",
}
KIND = "provision"
MAX_TTL_S = 24 * 3600.0
DEFAULT_TTL_S = 3600.0
NONCE_FILE = "provision-nonces.json"


class AuthorisationError(LinetapError, PermissionError):
    """A provisioning token is missing, malformed, forged, expired, replayed or for
    another device or operation; the message says which."""


def pinned_command_key(path: str | os.PathLike | None):
    """The Ed25519 public key the box trusts, or None if the box pins none (fresh).

    A file that exists but does not load is treated as pinned-but-broken: the caller
    gets :class:`AuthorisationError`, never "fresh", so corrupting the key file cannot
    turn a provisioned box back into a fresh one.
    """
    if not path or not Path(path).exists():
        return None
    try:
        return keys.load_ed25519_public(Path(path))
    except KeyFileError as exc:
        raise AuthorisationError(f"the pinned command key {path} does not load ({exc}); "
                                 "only a token can be accepted and none can be verified: "
                                 "factory-reset the box with the vendor's recovery "
                                 "image") from exc


def mint(key, device: str, ops: list[str], *, ttl_s: float = DEFAULT_TTL_S,
         destroy_unsynced: bool = False, now: float | None = None) -> bytes:
    """A signed token for ``device`` allowing ``ops`` for ``ttl_s`` seconds (1..86400)."""
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise AuthorisationError(f"unknown operation(s) {', '.join(bad) or '(none)'}; "
                                 f"one or more of {', '.join(OPS)}")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise AuthorisationError(f"token lifetime {ttl_s:g} s is outside 1..{MAX_TTL_S:g} s")
    if destroy_unsynced and "factory_reset" not in ops:
        raise AuthorisationError("destroy_unsynced only makes sense with --op factory_reset")
    return commands.sign(key, KIND, device, now=now, lifetime_s=ttl_s,
                         ops=sorted(set(ops)), destroy_unsynced=bool(destroy_unsynced))


def verify(token: bytes, key, device: str, now: float | None = None) -> dict:
    """Check signature, kind, device, expiry, lifetime and shape; return the body.

    Replay is checked separately (:class:`NonceBook`). Raises
    :class:`AuthorisationError` naming the reason.
    """
    try:
        body, raw, sig = commands.parse(token)
    except LinetapError as exc:
        raise AuthorisationError(f"token is not a provisioning token ({exc})") from None
    if key is None:
        raise AuthorisationError("the box pins no command key; no token is needed")
    try:
        key.verify(sig, raw)
    except InvalidSignature:
        raise AuthorisationError("token signature does not verify with the box's pinned "
                                 "command key (signed by another upstream?)") from None
    if body.get("kind") != KIND:
        raise AuthorisationError(f"token kind {body.get('kind')!r} is not {KIND!r}")
    if body.get("device") != device:
        raise AuthorisationError(f"token is for device {body.get('device')!r}, this box is "
                                 f"{device!r}")
    try:
        issued, expires = float(body["issued"]), float(body["expires"])
    except (KeyError, TypeError, ValueError):
        raise AuthorisationError("token has no valid expiry") from None
    if not (math.isfinite(issued) and math.isfinite(expires)):
        raise AuthorisationError("token has no valid expiry")
    now = time.time() if now is None else now
    if expires <= now:
        raise AuthorisationError(f"token expired {now - expires:.0f} s ago; fetch a new one")
    if expires - issued > MAX_TTL_S:
        raise AuthorisationError("token lifetime is longer than 24 h")
    ops = body.get("ops")
    if not isinstance(ops, list) or not ops or not all(o in OPS for o in ops):
        raise AuthorisationError(f"token ops {ops!r} are not a list of {', '.join(OPS)}")
    if not isinstance(body.get("destroy_unsynced", False), bool):
        raise AuthorisationError("token destroy_unsynced must be true or false")
    nonce = body.get("nonce")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
        raise AuthorisationError("token has no valid nonce")
    return body


class NonceBook:
    """Nonces of tokens already used on this box, kept until they expire.

    A JSON object ``{nonce: expires_epoch_s}`` written with the atomic-write helper, so
    a power cut leaves the old book or the new one.
    """

    def __init__(self, path: Path):
        self.path = path

    def _load(self) -> dict:
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # A damaged book must not re-open replays silently: refuse every token
            # until it is fixed (a factory reset or deleting the file with presence).
            raise AuthorisationError(f"nonce book {self.path} is unreadable; cannot check "
                                     "tokens for replay") from None
        return obj if isinstance(obj, dict) else {}

    def use(self, body: dict, now: float | None = None) -> None:
        """Record the token's nonce, or raise if it was used before."""
        now = time.time() if now is None else now
        book = {n: e for n, e in self._load().items()
                if isinstance(e, (int, float)) and e > now}
        if body["nonce"] in book:
            raise AuthorisationError("token already used on this box (replay); fetch a new "
                                     "one")
        book[body["nonce"]] = float(body["expires"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(book, sort_keys=True).encode(), mode=0o640)
