"""Key files: the practice's X25519 key pair and the box's Ed25519 identity.

The practice private key never comes near the box: ``linetap keygen`` runs on the
practice's own machine and the box is given only ``K.pub``. The box's identity key
signs call manifests; it is made once, on first start, and never silently replaced.

All private keys are written 0600 with the atomic-write helper, so a power cut leaves
either the old file or the new one, never half a key.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from recorder.errors import KeyFileError
from recorder.evidence.practice_key import encrypt_pkcs8, get_passphrase, is_encrypted
from recorder.fsutil import atomic_write

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.key"


def keys_dir(data_dir: str | os.PathLike) -> Path:
    """The folder under the data dir holding the box's own keys (mode 0700)."""
    return Path(data_dir) / "keys"


def fingerprint(public_raw: bytes) -> str:
    """A short label-friendly fingerprint: first 8 bytes of sha256, as 4 groups of hex."""
    h = hashlib.sha256(public_raw).hexdigest()[:16]
    return "-".join(h[i:i + 4] for i in range(0, 16, 4))


def raw_public(key) -> bytes:
    """Raw 32-byte encoding of an X25519 or Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


# -- practice key (X25519, HPKE recipient) -------------------------------------------------

def practice_keygen(out: str | os.PathLike, passphrase: bytes | None = None) -> \
        tuple[Path, Path]:
    """Write a new practice X25519 private key to ``out`` (0600) and its public half.

    The public half is ``NAME.pub`` for ``out`` = ``NAME.key`` (``practice.key`` ->
    ``practice.pub``, the names the site file examples use), else ``out.pub``.

    With ``passphrase`` the private key is encrypted PKCS#8 (PBES2, see
    :mod:`recorder.evidence.practice_key`); ``linetap keygen`` always gives one. Without
    it the key is unencrypted PEM (tests and simulations only). Refuses to overwrite an
    existing key: losing it loses every recording.
    """
    out = Path(out)
    pub = out.with_suffix(".pub") if out.suffix == ".key" else out.with_name(out.name + ".pub")
    for p in (out, pub):
        if p.exists():
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key")
    key = x25519.X25519PrivateKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    if passphrase is None:
        pem = _pem_private(key)
    else:
        pem = encrypt_pkcs8(key, passphrase)
    atomic_write(out, pem, mode=0o600)
    atomic_write(pub, _pem_public(key.public_key()), mode=0o644)
    return out, pub


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise KeyFileError(f"{what} unreadable: {path}: {exc.strerror}") from exc


def load_practice_public(path: str | os.PathLike) -> x25519.X25519PublicKey:
    """Load the practice public key (PEM SubjectPublicKeyInfo, or 32 raw bytes)."""
    data = _read(path, "practice public key")
    try:
        if len(data) == 32:
            return x25519.X25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"practice public key {path} is not a PEM public key") from exc
    if not isinstance(key, x25519.X25519PublicKey):
        raise KeyFileError(f"practice public key {path} is not an X25519 key")
    return key


def load_practice_private(path: str | os.PathLike, passphrase: bytes | None = None) -> \
        x25519.X25519PrivateKey:
    """Load the practice private key written by :func:`practice_keygen` (``passphrase``
    for an encrypted one; :func:`recorder.evidence.keys.open_practice_private`
    asks for it)."""
    data = _read(path, "practice private key")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise KeyFileError(f"practice key {path} is encrypted: a passphrase is "
                               "needed") from exc
        raise KeyFileError(f"practice key {path} is not encrypted, but a passphrase "
                           "was given") from exc
    except ValueError as exc:
        if passphrase is not None:
            raise KeyFileError(f"practice key {path}: wrong passphrase, or not a PEM "
                               "private key") from exc
        raise KeyFileError(f"practice key {path} is not a PEM private key") from exc
    if not isinstance(key, x25519.X25519PrivateKey):
        raise KeyFileError(f"practice key {path} is not an X25519 private key")
    return key


# -- device identity (Ed25519) -------------------------------------------------------------

def identity_path(data_dir: str | os.PathLike) -> Path:
    return keys_dir(data_dir) / IDENTITY_FILE


def load_identity(data_dir: str | os.PathLike) -> ed25519.Ed25519PrivateKey:
    """Load the box's identity key; raise :class:`KeyFileError` if missing or corrupt."""
    path = identity_path(data_dir)
    data = _read(path, "device identity key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"device identity key {path} is corrupt") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"device identity key {path} is not an Ed25519 key")
    return key


def ensure_identity(data_dir: str | os.PathLike, *, first_start: bool) -> \
        ed25519.Ed25519PrivateKey:
    """Return the identity key, creating it only on the box's first start.

    ``first_start`` is true only when the store has never been initialised. On any
    later start a missing or corrupt key raises :class:`KeyFileError`, so the daemon
    refuses to record and alarms instead of minting a new identity over the old one.
    """
    path = identity_path(data_dir)
    if path.exists() or not first_start:
        return load_identity(data_dir)
    kd = keys_dir(data_dir)
    kd.mkdir(parents=True, exist_ok=True)
    os.chmod(kd, 0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    atomic_write(path, _pem_private(key), mode=0o600)
    log.info("created device identity %s", fingerprint(raw_public(key.public_key())))
    return key


def identity_public(data_dir: str | os.PathLike) -> tuple[bytes, str]:
    """(raw 32-byte public key, fingerprint) of the box's identity."""
    pub = raw_public(load_identity(data_dir).public_key())
    return pub, fingerprint(pub)


def load_ed25519_public(path_or_bytes) -> ed25519.Ed25519PublicKey:
    """An Ed25519 public key from a PEM file path, PEM bytes or 32 raw bytes."""
    data = path_or_bytes
    if isinstance(path_or_bytes, (str, os.PathLike)):
        data = _read(path_or_bytes, "Ed25519 public key")
    try:
        if len(data) == 32:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError("not an Ed25519 public key") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 public key")
    return key


def pem_public(key) -> bytes:
    """PEM SubjectPublicKeyInfo for an Ed25519 or X25519 public key."""
    return _pem_public(key)


def open_practice_private(path: str | os.PathLike,
                          passphrase_file: str | os.PathLike | None = None, *,
                          prompt=getpass.getpass, isatty=None):
    """Load the practice private key for ``export``, ``calls --number`` and the upstream
    tools: an encrypted key asks for its passphrase (file or terminal); an unencrypted
    key (written before keys were encrypted) still opens, with a warning on stderr."""
    try:
        pem = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"practice private key not found: {path}") from None
    except OSError as exc:
        raise KeyFileError(f"practice private key unreadable: {path}: {exc.strerror}") \
            from exc
    if not is_encrypted(pem):
        msg = (f"practice key {path} is not encrypted: anyone who copies the file can open "
               "every recording; re-create it with 'linetap keygen' (passphrase) when you can")
        log.warning("%s", msg)
        print(f"WARNING: {msg}", file=sys.stderr)
        return load_practice_private(path)
    pw = get_passphrase(passphrase_file, prompt=prompt, isatty=isatty)
    return load_practice_private(path, passphrase=pw)
