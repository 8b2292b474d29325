"""Device TLS key, CSR and certificate handling (EC P-256, X.509).

The box makes its own TLS private key and never lets it out: it hands over a CSR, and
the engineer's laptop (or the practice's PKI) signs it. The same helpers check a
certificate against its key for ``linetap doctor``.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from recorder.errors import KeyFileError
from recorder.fsutil import atomic_write

DEFAULT_DAYS = 825


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private(path: str | os.PathLike):
    """The PEM private key at ``path``; :class:`KeyFileError` if missing or corrupt."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"TLS key {path}: {exc.strerror or exc}") from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"TLS key {path} is not an unencrypted PEM private key") from exc


def ensure_tls_key(path: str | os.PathLike, *, new: bool = False):
    """Return the EC P-256 key at ``path``, creating it (mode 0600) if absent or ``new``."""
    path = Path(path)
    if path.exists() and not new:
        return load_private(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    atomic_write(path, _pem_private(key), mode=0o600)
    return key


def make_csr(key, common_name: str, organisation: str = "") -> bytes:
    """A PEM CSR for ``key`` with CN = device id and O = site (if given)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name(attrs))
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise KeyFileError(f"not a PEM CSR: {exc}") from exc
    if not csr.is_signature_valid:
        raise KeyFileError("CSR signature does not verify")
    return csr


def load_certs(pem: bytes, what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; :class:`KeyFileError` if there are none."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise KeyFileError(f"{what} is not PEM X.509: {exc}") from exc
    if not certs:
        raise KeyFileError(f"{what} holds no certificate")
    return certs


def sign_csr(csr_pem: bytes, ca_cert_pem: bytes, ca_key_pem: bytes, *,
             days: int = DEFAULT_DAYS, now: dt.datetime | None = None) -> bytes:
    """Sign a device CSR as a TLS client certificate valid for ``days`` (1..3650)."""
    csr = load_csr(csr_pem)
    ca_cert = load_certs(ca_cert_pem, "CA certificate")[0]
    try:
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError("CA key is not an unencrypted PEM private key") from exc
    if not 1 <= days <= 3650:
        raise KeyFileError(f"certificate lifetime {days} days is outside 1..3650")
    now = now or dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(csr.subject)
               .issuer_name(ca_cert.subject)
               .public_key(csr.public_key())
               .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=True, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_cert.public_key()), critical=False))
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(common_name: str = "Linetap provisioning CA", days: int = 3650):
    """A self-signed EC CA (cert PEM, key PEM), for tests and small installations."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_private(key)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_matches_key(cert: x509.Certificate, key) -> bool:
    """True when the certificate carries ``key``'s public half."""
    return _spki(cert.public_key()) == _spki(key.public_key())


def common_name(cert: x509.Certificate) -> str | None:
    """The certificate subject's CN, or None if it has none."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def check_ca_bundle(pem: bytes) -> list[x509.Certificate]:
    """Parse a broker CA bundle; every certificate must be a CA (BasicConstraints ca)."""
    certs = load_certs(pem, "broker CA")
    for c in certs:
        try:
            bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise KeyFileError(f"broker CA {c.subject.rfc4514_string()} is not a CA "
                               "certificate")
    return certs
