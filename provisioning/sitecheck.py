"""``apply --check``: look inside every file a site file names, before the cable.

:mod:`provisioning.sitefile` checks the site file's shape and the box config; this
module opens each key and certificate and checks it is the kind its slot needs, so a
private key where a public key belongs never leaves the laptop, and swapped files are
named as swapped. Every problem is reported at once, as
:class:`~recorder.errors.ConfigError`.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from provisioning import sitefile, tlscert
from recorder.errors import ConfigError

# What each slot must hold, for the messages.
WANT = {"practice_public": "the practice PUBLIC key (X25519, `linetap keygen` writes it as "
                           "NAME.pub)",
        "command_key": "the upstream command PUBLIC key (Ed25519)",
        "broker_ca": "the CA certificate that signed the broker's certificate"}


def classify(data: bytes) -> str:
    """What a PEM file holds: ``private``, ``x25519-public``, ``ed25519-public``,
    ``other-public``, ``ca-cert``, ``cert``, ``csr`` or ``unknown``."""
    if b"PRIVATE KEY" in data:
        return "private"
    if b"CERTIFICATE REQUEST" in data:
        return "csr"
    if b"BEGIN CERTIFICATE" in data:
        try:
            c = x509.load_pem_x509_certificates(data)[0]
        except ValueError:
            return "unknown"
        try:
            ca = c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        return "ca-cert" if ca else "cert"
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        return "unknown"
    if isinstance(key, x25519.X25519PublicKey):
        return "x25519-public"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519-public"
    return "other-public"


SLOT_KIND = {"practice_public": "x25519-public", "command_key": "ed25519-public",
             "broker_ca": "ca-cert"}
KIND_SLOT = {v: k for k, v in SLOT_KIND.items()}


def _key_problem(slot: str, path: Path, kind: str) -> str | None:
    if kind == SLOT_KIND[slot]:
        return None
    where = f"keys.{slot} = {path.name}"
    if kind == "private":
        return (f"{where} is a PRIVATE key; this slot needs {WANT[slot]}. Private keys never "
                "go to the box: give the public half")
    if kind in KIND_SLOT:
        return (f"{where} holds {WANT[KIND_SLOT[kind]]}, which belongs in keys."
                f"{KIND_SLOT[kind]}: are the two files swapped?")
    if kind == "cert":
        return f"{where} is a device certificate, not {WANT[slot]}"
    return f"{where} is not {WANT[slot]} ({kind})"


def check(site: sitefile.SiteFile, *, ca_cert: Path | str | None = None,
          ca_key: Path | str | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes) for ``site`` and the CA files (CLI values override the site's)."""
    problems: list[str] = []
    notes: list[str] = []
    cfg = site.config
    if not cfg.device.id:
        problems.append("device.id is not set in the box config: the read-only root has no "
                        "stable machine-id, so set it (e.g. id = \"lt-church-lane-1\")")
    if cfg.sync.enabled and not cfg.sync.host:
        problems.append("sync.enabled = true but sync.host is empty: name the broker")
    if cfg.sync.enabled and "broker_ca" not in site.keys:
        notes.append("sync is enabled but [keys] has no broker_ca: the box keeps the CA it "
                     "has")
    for slot, path in sorted(site.keys.items()):
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(f"keys.{slot}: {path}: {exc.strerror or exc}")
            continue
        p = _key_problem(slot, path, classify(data))
        if p:
            problems.append(p)
    ca_cert = Path(ca_cert) if ca_cert else site.ca_cert
    ca_key = Path(ca_key) if ca_key else site.ca_key
    if bool(ca_cert) != bool(ca_key):
        problems.append("--ca-cert and --ca-key (tls.ca_cert, tls.ca_key) go together: give "
                        f"both or neither (got only {'--ca-cert' if ca_cert else '--ca-key'})")
    elif ca_cert and ca_key:
        problems += _check_ca(Path(ca_cert), Path(ca_key), cfg.device.id)
    if problems:
        raise ConfigError(problems, str(site.source))
    return problems, notes


def _check_ca(cert_path: Path, key_path: Path, device_id: str) -> list[str]:
    out = []
    try:
        cdata, kdata = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        return [f"CA file: {exc.filename}: {exc.strerror}"]
    ck, kk = classify(cdata), classify(kdata)
    if ck == "private" and kk in ("ca-cert", "cert"):
        return [f"CA certificate {cert_path.name} is a private key and CA key {key_path.name} "
                "is a certificate: the two are swapped"]
    if ck != "ca-cert":
        if ck == "cert":
            cn = tlscert.common_name(x509.load_pem_x509_certificates(cdata)[0])
            what = f"a device certificate (CN {cn!r}" + \
                (", this box's own)" if cn == device_id else ")")
            out.append(f"CA certificate {cert_path.name} is {what}, not a CA certificate")
        else:
            out.append(f"CA certificate {cert_path.name} is not a CA certificate ({ck})")
    if kk != "private":
        out.append(f"CA key {key_path.name} is not a private key ({kk})")
    if out:
        return out
    cert = x509.load_pem_x509_certificates(cdata)[0]
    try:
        key = serialization.load_pem_private_key(kdata, password=None)
    except (ValueError, TypeError):
        return [f"CA key {key_path.name} is not an unencrypted PEM private key"]
    try:
        if not tlscert.cert_matches_key(cert, key):
            out.append(f"CA key {key_path.name} does not belong to CA certificate "
                       f"{cert_path.name}")
    except (AttributeError, ValueError):
        out.append(f"CA key {key_path.name} cannot sign (unsupported key type)")
    return out


def check_or_raise(site: sitefile.SiteFile, *, ca_cert=None, ca_key=None) -> list[str]:
    """Raise :class:`ConfigError` with every problem; return the notes."""
    return check(site, ca_cert=ca_cert, ca_key=ca_key)[1]


def check_cert_for_device(pem: bytes, device_id: str) -> None:
    """A device certificate about to be installed: its CN must be the device id."""
    certs = tlscert.load_certs(pem, "device certificate")
    cn = tlscert.common_name(certs[0])
    if cn != device_id:
        raise ConfigError([f"certificate CN {cn!r} is not the box's device id {device_id!r} "
                           "(signed from another box's CSR?)"], "install-cert")
