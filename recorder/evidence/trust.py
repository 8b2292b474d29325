"""Which identity key may vouch for a box's manifests: never one named by the manifest.

A manifest names its signer. Checking its signature against that key proves only that
*someone* signed it; anyone who can write the data dir can delete ``identity.key``,
make a key of their own and re-sign every manifest. So ``verify`` and ``export`` match
the signer against a key trusted from elsewhere, in this order:

1. ``--identity-pub FILE``: the identity public key recorded at provisioning (PEM, 32
   raw bytes, or 64 hex digits), the strongest reference: it lives off the box;
2. the key pinned in the store: ``meta.identity_public_key`` (hex), written by the
   daemon on first start beside ``meta.identity_fingerprint``, and checked against it;
3. for a store pinned before the public key was kept (only the fingerprint): the
   ``identity.key`` file, if its fingerprint matches the pinned one.

With none of these the answer is "no trusted key", and a call whose checks otherwise
pass is ``unverifiable``, never ``verified``. The store pin defends against the key
file being swapped or deleted; someone who can rewrite the whole data dir (database
included) can also rewrite the pin, which is why the upstream checks against its own
registry of device keys (``sites.<site>.devices`` in its config) and why
``--identity-pub`` exists.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from recorder.errors import KeyFileError
from recorder.evidence import keys

log = logging.getLogger(__name__)

PUB_KEY = "identity_public_key"       # store meta: hex of the raw 32-byte public key
FP_KEY = "identity_fingerprint"       # store meta: keys.fingerprint() of it
UNVERIFIABLE = ("no trusted identity key to match the signer to: pass --identity-pub FILE "
                "(the key recorded at provisioning) or restore the store's pinned key")


@dataclass(frozen=True)
class Trusted:
    """A trusted identity key (None: there is none) and where it came from."""
    key: object | None
    source: str


def load_identity_pub(path: str | os.PathLike):
    """An Ed25519 public key from a file: PEM, 32 raw bytes, or 64 hex digits."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"identity public key {path} unreadable: {exc.strerror}") from exc
    text = data.strip()
    if len(text) == 64:
        try:
            data = bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        return keys.load_ed25519_public(data)
    except KeyFileError as exc:
        raise KeyFileError(f"identity public key {path}: {exc}") from exc


def pin(store, key) -> None:
    """Record ``key`` (the box's identity public key) in the store, with its fingerprint."""
    raw = keys.raw_public(key)
    store.set_meta(PUB_KEY, raw.hex())
    store.set_meta(FP_KEY, keys.fingerprint(raw))


def trusted_identity(store, data_dir, identity_pub: str | os.PathLike | None = None
                     ) -> Trusted:
    """The key ``verify``/``export`` match manifest signers to (see module docstring)."""
    if identity_pub is not None:
        return Trusted(load_identity_pub(identity_pub), f"--identity-pub {identity_pub}")
    fp = store.get_meta(FP_KEY) if store is not None else None
    pinned = store.get_meta(PUB_KEY) if store is not None else None
    if pinned is not None:
        try:
            raw = bytes.fromhex(pinned)
            key = keys.load_ed25519_public(raw)
        except (ValueError, TypeError, KeyFileError):
            return Trusted(None, "the store's pinned identity key is unreadable")
        if fp is not None and keys.fingerprint(raw) != fp:
            return Trusted(None, "the store's pinned identity key does not match its "
                                 "pinned fingerprint")
        return Trusted(key, f"pinned in the store ({keys.fingerprint(raw)})")
    if fp is not None:
        try:
            key = keys.load_identity(data_dir).public_key()
        except KeyFileError:
            return Trusted(None, "only a fingerprint is pinned and identity.key is "
                                 "unreadable")
        if keys.fingerprint(keys.raw_public(key)) == fp:
            return Trusted(key, f"identity.key, matching the pinned fingerprint {fp}")
        return Trusted(None, f"identity.key does not match the pinned fingerprint {fp}")
    return Trusted(None, "no identity is pinned in this store")
