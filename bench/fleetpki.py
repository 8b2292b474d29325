"""The fleet bench's PKI, made once and cached: a CA, the broker's server certificate,
the ingest's client certificate and one client certificate per simulated box.

Everything is issued by :mod:`sync.upstream.pki`, the code ``linetap upstream init`` and
``enrol`` use (EC P-256 keys, CN = device id, O = site), so the broker checks the same
kind of identity it checks in production. Making 2,000 device certificates costs a few
CPU-seconds, so they are kept under the cache folder (``--cache``, default
``$XDG_CACHE_HOME/linetap/bench-fleet`` or ``~/.cache/...``) and only the missing ones
are issued on the next run. The cache is dropped and made again when its CA no longer
verifies or expires within ``MIN_LEFT_DAYS``.

Each box's Ed25519 identity (which signs its manifests) is derived from its device id
(:func:`identity`), so it needs no file and the upstream's config can list its public
half without reading anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric import ed25519

from sync.upstream import pki

MIN_LEFT_DAYS = 7
INGEST_CN = "ingest"           # the ACL template's `user ingest` (sync.upstream.setup)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "linetap" / "bench-fleet"


def identity(device: str) -> ed25519.Ed25519PrivateKey:
    """The simulated box's Ed25519 identity: fixed by its device id (a bench key, never
    a real box's)."""
    return ed25519.Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"linetap-bench-fleet-identity\0" + device.encode()).digest())


def _pair(d: Path, cn: str) -> SimpleNamespace:
    return SimpleNamespace(cert=str(d / f"{cn}.pem"), key=str(d / f"{cn}.key"), cn=cn)


def _valid(ca_pem: Path) -> bool:
    try:
        ca = pki.load_cert(ca_pem)
    except Exception:       # noqa: BLE001 - anything unreadable means: make it again
        return False
    if pki.verify_chain(ca, ca) is not None:
        return False
    left = ca.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return left.days >= MIN_LEFT_DAYS


class FleetPKI:
    """The cached PKI in ``cache/pki``: ``ca`` (path), ``server``, ``ingest`` and
    :meth:`device` (each with ``cert``, ``key``, ``cn``)."""

    def __init__(self, cache: Path):
        self.dir = Path(cache) / "pki"
        self.ca = self.dir / "ca.pem"
        if not _valid(self.ca):
            shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "devices").mkdir(parents=True, exist_ok=True)
        if not self.ca.exists():
            key, cert = pki.make_ca("linetap-bench-fleet-ca")
            pki.write(self.dir / "ca.key", pki.pem_key(key), 0o600)
            pki.write(self.ca, pki.pem_cert(cert), 0o644)
        self._ca_key = pki.load_key(self.dir / "ca.key")
        self._ca_cert = pki.load_cert(self.ca)
        self.issued = 0
        self.server = self._ensure(self.dir, "broker", server_names=("localhost", "127.0.0.1"))
        self.ingest = self._ensure(self.dir, INGEST_CN)

    def _ensure(self, d: Path, cn: str, *, server_names=(), org: str = "") -> SimpleNamespace:
        p = _pair(d, cn)
        if not (Path(p.cert).exists() and Path(p.key).exists()):
            k, c = pki.issue(self._ca_key, self._ca_cert, cn, server_names=server_names,
                             org=org)
            # Key first: a cut between leaves no certificate without its key.
            pki.write(Path(p.key), pki.pem_key(k), 0o600)
            pki.write(Path(p.cert), pki.pem_cert(c), 0o644)
            self.issued += 1
        return p

    def device(self, device: str, site: str) -> SimpleNamespace:
        """The client certificate and key of ``device`` (CN = device, O = site), issued
        now if the cache does not have it."""
        return self._ensure(self.dir / "devices", device, org=site)
