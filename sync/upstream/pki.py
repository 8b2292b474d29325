"""The upstream's small PKI: one CA, the broker's and ingest's certificates, each box's
client certificate (CN = device id), a CRL, and the Ed25519 command-signing and
audit-signing keys.

Everything is made with ``cryptography`` (no shell scripts, no openssl CLI). Keys are
EC P-256 (the box's TLS key is too, see :mod:`provisioning.tlscert`), except the
command and audit keys, which are Ed25519 like the box's identity. Files are written
atomically (temp, fsync, rename, fsync dir) with their final mode set before the first
byte.

Validity periods are in days: the CA 3650, server and client certificates
``DEFAULT_DAYS`` (825, the common ceiling browsers and most tools accept), the CRL
``CRL_DAYS`` (365; it is re-signed on every enrolment and revocation).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from recorder.errors import KeyFileError
from recorder.fsutil import atomic_write

CA_DAYS = 3650
DEFAULT_DAYS = 825
CRL_DAYS = 365


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def name(cn: str, org: str = "") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write(path: Path, data: bytes, mode: int, group: int | None = None) -> None:
    """Write atomically with ``mode``; give the file to ``group`` (a gid) when set, so a
    service running as its own user (mosquitto drops to ``mosquitto``) can read it."""
    atomic_write(path, data, mode=mode)
    if group is not None:
        os.chown(path, -1, group)


def load_key(path: Path):
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from exc


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a PEM certificate") from exc


def make_ca(cn: str = "linetap-upstream-ca"):
    """A new self-signed CA: (key, certificate). Path length 0: it signs only leaves."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, subject: x509.Name, pub, *, server_names=(), days=DEFAULT_DAYS):
    if not 1 <= days <= 3650:
        raise ValueError(f"certificate lifetime {days} days: must be 1..3650")
    now = _now()
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
         .public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             ca_key.public_key()), critical=False))
    if server_names:
        sans = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def issue(ca_key, ca_cert, cn: str, *, server_names=(), org: str = "", days=DEFAULT_DAYS):
    """A new EC P-256 key and its certificate for ``cn``: (key, certificate). With
    ``server_names`` (host names or IP addresses) a server certificate with those SANs,
    else a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _leaf(ca_key, ca_cert, name(cn, org), key.public_key(),
                      server_names=server_names, days=days)


def sign_csr(ca_key, ca_cert, csr_pem: bytes, expect_cn: str, *, days=DEFAULT_DAYS):
    """A client certificate for the key in ``csr_pem`` (the box keeps its TLS key). The
    CSR's CN must be ``expect_cn`` (the device id), else :class:`KeyFileError` naming
    both: a mismatch is exactly the mistake that makes the broker's ACL drop every
    upload silently."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise KeyFileError(f"not a PEM certificate request: {exc}") from exc
    if not csr.is_signature_valid:
        raise KeyFileError("the certificate request's signature does not verify")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    if cn != expect_cn:
        raise KeyFileError(f"the certificate request is for CN '{cn}', not the device id "
                           f"'{expect_cn}'")
    return _leaf(ca_key, ca_cert, csr.subject, csr.public_key(), days=days)


def make_crl(ca_key, ca_cert, serials: list[int]) -> x509.CertificateRevocationList:
    """The CRL listing ``serials`` (valid ``CRL_DAYS``). mosquitto's ``crlfile`` needs a
    CRL even when nothing is revoked, so one exists from ``init`` on."""
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
         .last_update(now - dt.timedelta(minutes=5))
         .next_update(now + dt.timedelta(days=CRL_DAYS)))
    for s in sorted(set(serials)):
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now).build())
    return b.sign(ca_key, hashes.SHA256())


def pem_crl(crl) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def signing_key():
    """A new Ed25519 signing key (the command key, the audit key): (private PEM,
    public PEM)."""
    k = ed25519.Ed25519PrivateKey.generate()
    pub = k.public_key().public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem_key(k), pub


def cn_of(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cns[0].value if cns else ""


def verify_chain(cert: x509.Certificate, ca_cert: x509.Certificate) -> str | None:
    """None if ``cert`` is signed by ``ca_cert`` and valid now, else the reason."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError) as exc:
        return f"not issued by {cn_of(ca_cert)}: {exc}"
    except Exception as exc:   # InvalidSignature has no message
        return f"signature does not verify against {cn_of(ca_cert)} ({type(exc).__name__})"
    now = _now()
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"expired {cert.not_valid_after_utc:%Y-%m-%d} UTC"
    return None


def key_matches(cert: x509.Certificate, key) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
