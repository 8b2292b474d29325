"""Standing up an upstream and enrolling boxes: ``linetap upstream init | enrol | pin |
revoke | check | serve``.

    linetap upstream init DIR [--broker-host H]... [--broker-port P] [--bind ADDR]
                              [--workers N] [--broker-user mosquitto]
                              [--ingest-user linetap-ingest]
    linetap upstream --config DIR/upstream.toml enrol --site S --device D
                              [--identity-pub HEX|FILE] [--csr FILE]
                              [--practice-public FILE] [--retention-days N]
    linetap upstream --config DIR/upstream.toml pin --device D --identity-pub HEX|FILE
    linetap upstream --config DIR/upstream.toml revoke --device D
    linetap upstream --config DIR/upstream.toml check
    linetap upstream --config DIR/upstream.toml serve [--workers N]

Layout of ``DIR`` (see docs/operations.md): ``upstream.toml``; ``pki/`` (CA, broker,
ingest, CRL, command key, audit key, ``enrolment.json``); ``mosquitto/`` (``mosquitto.conf`` and
its ``acl``); ``systemd/`` (units, target, sysusers file); ``data/`` (database and
objects); ``devices/<device>/`` (what each box needs, with its site file).

**Identity pinning.** The box's Ed25519 identity key (it signs every manifest) is made
on the box at its first start and never leaves it. The upstream pins its public half
at enrolment (``enrol --identity-pub``, the hex that ``linetap-provision hello`` or
``linetap identity`` prints) or later with ``pin``; both are audited upstream
(``device_enrolled``, ``identity_pinned``, with the fingerprint). Until a key is pinned
the device is *awaiting identity*: it is not in ``upstream.toml``, the ingest drops its
messages (the box keeps its backlog: nothing is acked, nothing lost) and ``check``
says so. There is deliberately no trust-on-first-use: the first manifest is exactly
what an attacker with a stolen certificate would send.

**Revocation.** ``revoke`` puts every certificate serial the device ever had in the CRL
(mosquitto's ``crlfile``: the TLS handshake fails) and removes the device from
``upstream.toml`` (the ingest drops anything still queued). Re-enrolment issues a new
certificate and revokes the previous one. The broker and workers read these files at
start, and new connections are checked against the CRL after a reload (SIGHUP): restart
the broker to cut a connection a revoked box still has. The ingest workers re-read
``upstream.toml`` when it changes (within a second).
"""

from __future__ import annotations

import argparse
import datetime as dt
import grp
import json
import logging
import os
import pwd
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.errors import ConfigError, KeyFileError, LinetapError
from recorder.evidence import keys
from recorder.fsutil import atomic_write
from sync.upstream import config as upstream_config
from sync.upstream import pki
from sync.upstream.templates import (
    ACL,
    BROKER_UNIT,
    HARDENING,
    INGEST_UNIT,
    MOSQ_CONF,
    PORTAL_UNIT,
    SYSUSERS,
    TARGET,
    UPDATES_UNIT,
)

log = logging.getLogger(__name__)

PORTAL_BIND = "127.0.0.1:8080"     # the portal's unit listens here; a TLS proxy fronts it

VERBS = ("init", "enrol", "pin", "revoke", "check", "serve")
MARKER = "# --- sites and devices: written by `linetap upstream enrol/pin/revoke` ---"
DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
INGEST_CN = "ingest"          # the ACL's `user ingest`


class SetupError(LinetapError, ValueError):
    """A set-up step that cannot be done as asked (the message says what to change)."""


# -- paths -------------------------------------------------------------------------------

class Layout:
    """Every file of one upstream folder, by role."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        r = self.root
        self.config = r / "upstream.toml"
        self.pki = r / "pki"
        self.ca, self.ca_key = self.pki / "ca.pem", self.pki / "ca.key"
        self.broker, self.broker_key = self.pki / "broker.pem", self.pki / "broker.key"
        self.ingest, self.ingest_key = self.pki / "ingest.pem", self.pki / "ingest.key"
        self.crl = self.pki / "crl.pem"
        self.command_key, self.command_pub = self.pki / "command.key", self.pki / "command.pub"
        self.audit_key, self.audit_pub = self.pki / "audit.key", self.pki / "audit.pub"
        self.registry = self.pki / "enrolment.json"
        self.mosq = r / "mosquitto"
        self.mosq_conf, self.acl = self.mosq / "mosquitto.conf", self.mosq / "acl"
        self.systemd = r / "systemd"
        self.data = r / "data"
        self.db = self.data / "meta.db"
        self.objects = self.data / "objects"
        self.devices = r / "devices"

    @classmethod
    def of_config(cls, config: str | Path) -> Layout:
        lay = cls(Path(config).resolve().parent)
        if not lay.registry.exists():
            raise SetupError(f"{config} was not made by `linetap upstream init` (no "
                             f"{lay.registry}); enrol, pin and revoke work on such a folder")
        return lay


def _gid(group: str) -> int | None:
    """The gid of ``group`` if it exists and we may give files to it (root), else None."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return None
    return gid if os.geteuid() == 0 else None


# -- init --------------------------------------------------------------------------------

def _linetap_exe() -> str:
    exe = Path(sys.executable).parent / "linetap"
    return str(exe if exe.exists() else (shutil.which("linetap") or exe))


def _toml_str(s: str) -> str:
    return json.dumps(str(s))


def init(root: Path, *, broker_hosts=("localhost",), port: int = 8883, bind: str = "",
         workers: int = 2, broker_user: str = "mosquitto",
         ingest_user: str = "linetap-ingest", prefix: str = "linetap",
         out=None) -> Layout:
    """Create a complete upstream in ``root`` (which must not hold one already)."""
    out = out or sys.stdout
    lay = Layout(root)
    if lay.config.exists() or lay.ca_key.exists():
        raise SetupError(f"{lay.root} already holds an upstream (upstream.toml or "
                         "pki/ca.key): init never overwrites a CA; choose a new folder")
    if not 1 <= port <= 65535:
        raise SetupError(f"--broker-port {port}: must be 1..65535")
    if not 1 <= workers <= 64:
        raise SetupError(f"--workers {workers}: must be 1..64")
    hosts = [h for h in broker_hosts if h]
    if not hosts:
        raise SetupError("--broker-host: give the name (or address) boxes use to reach "
                         "the broker")
    for d, mode in ((lay.root, 0o755), (lay.pki, 0o755), (lay.mosq, 0o755),
                    (lay.systemd, 0o755), (lay.data, 0o750), (lay.objects, 0o750),
                    (lay.devices, 0o700)):
        d.mkdir(parents=True, exist_ok=True)
        # 0755 on the folders mosquitto reads through (it runs as its own user);
        # private keys are protected by their own modes.
        os.chmod(d, mode)
    bgid, igid = _gid(broker_user), _gid(ingest_user)
    ca_key, ca = pki.make_ca()
    pki.write(lay.ca_key, pki.pem_key(ca_key), 0o600)
    pki.write(lay.ca, pki.pem_cert(ca), 0o644)
    names = list(dict.fromkeys(hosts + (["127.0.0.1", "::1"] if "localhost" in hosts
                                        else [])))
    k, c = pki.issue(ca_key, ca, hosts[0], server_names=names)
    pki.write(lay.broker_key, pki.pem_key(k), 0o640, bgid)
    pki.write(lay.broker, pki.pem_cert(c), 0o644)
    k, c = pki.issue(ca_key, ca, INGEST_CN)
    pki.write(lay.ingest_key, pki.pem_key(k), 0o640, igid)
    pki.write(lay.ingest, pki.pem_cert(c), 0o644)
    pki.write(lay.crl, pki.pem_crl(pki.make_crl(ca_key, ca, [])), 0o644)
    priv, pub = pki.signing_key()
    pki.write(lay.command_key, priv, 0o640, igid)
    pki.write(lay.command_pub, pub, 0o644)
    # A second Ed25519 key signs the upstream audit trail: a command key that leaks
    # must not also be able to rewrite the record of what was commanded.
    priv, pub = pki.signing_key()
    pki.write(lay.audit_key, priv, 0o640, igid)
    pki.write(lay.audit_pub, pub, 0o644)
    _save_registry(lay, {"devices": {}, "revoked_serials": [], "prefix": prefix,
                         "created": _iso()})

    atomic_write(lay.acl, ACL.format(ingest=INGEST_CN, prefix=prefix).encode(), mode=0o644)
    atomic_write(lay.mosq_conf, MOSQ_CONF.format(
        user=broker_user, acl=lay.acl, port=port, bind=f" {bind}" if bind else "",
        ca=lay.ca, cert=lay.broker, key=lay.broker_key, crl=lay.crl).encode(), mode=0o644)

    head = f"""\
# Written by `linetap upstream init` on {_iso()}. See docs/operations.md, docs/sync.md.
[database]
url = {_toml_str("sqlite:///" + str(lay.db))}

[objects]
path = {_toml_str(lay.objects)}

[broker]
host = {_toml_str(hosts[0])}
port = {port}
ca = {_toml_str(lay.ca)}
cert = {_toml_str(lay.ingest)}
key = {_toml_str(lay.ingest_key)}
topic_prefix = {_toml_str(prefix)}
share_group = "ingest"

[commands]
key = {_toml_str(lay.command_key)}
lifetime_days = 7
resend_s = 60

[audit]
key = {_toml_str(lay.audit_key)}

{MARKER}
"""
    atomic_write(lay.config, head.encode(), mode=0o640)
    if igid is not None:
        os.chown(lay.config, -1, igid)
        os.chown(lay.data, -1, igid)
        os.chown(lay.objects, -1, igid)
    _write_units(lay, workers=workers, broker_user=broker_user, ingest_user=ingest_user,
                 port=port)
    print(f"upstream created in {lay.root}", file=out)
    print(f"  CA          {lay.ca} (key {lay.ca_key.name}, 0600: only enrol/revoke use it)",
          file=out)
    print(f"  broker      {lay.broker} for {', '.join(names)}; port {port}", file=out)
    print(f"  ingest      {lay.ingest} (CN {INGEST_CN})", file=out)
    print(f"  command key {lay.command_key} (boxes get {lay.command_pub.name})", file=out)
    print(f"  audit key   {lay.audit_key} (signs the audit trail; keep a copy of "
          f"{lay.audit_pub.name} off this machine for `audit --verify --audit-pub`)",
          file=out)
    print(f"  config      {lay.config}", file=out)
    print(f"  mosquitto   {lay.mosq_conf} + {lay.acl.name}", file=out)
    print(f"  systemd     {lay.systemd}/ (linetap-upstream.target)", file=out)
    for user, gid, what in ((broker_user, bgid, "broker.key"),
                            (ingest_user, igid, "ingest.key, command.key, audit.key, "
                                                "data/")):
        if gid is None:
            print(f"  note: {what} not given to group {user} (group missing or not root); "
                  f"see docs/operations.md before starting under systemd", file=out)
    print(f"next: linetap upstream --config {lay.config} serve   (or the systemd target), "
          "then ... check", file=out)
    return lay


def _write_units(lay: Layout, *, workers: int, broker_user: str, ingest_user: str,
                 port: int) -> None:
    home = "read-only" if str(lay.root).startswith(("/home/", "/root/", "/run/user/")) \
        else "yes"
    hard = HARDENING.format(home=home)
    caps = "CAP_NET_BIND_SERVICE" if port < 1024 else ""
    units = {
        "linetap-upstream-broker.service": BROKER_UNIT.format(
            user=broker_user, root=lay.root, mosquitto=MOSQUITTO, conf=lay.mosq_conf,
            caps=caps, hardening=hard),
        "linetap-ingest@.service": INGEST_UNIT.format(
            workers=workers, linetap=_linetap_exe(), config=lay.config, user=ingest_user,
            root=lay.root, data=lay.data, hardening=hard),
        "linetap-portal.service": PORTAL_UNIT.format(
            linetap=_linetap_exe(), config=lay.config, bind=PORTAL_BIND, user=ingest_user,
            root=lay.root, data=lay.data, hardening=hard),
        "linetap-updates.service": UPDATES_UNIT.format(
            linetap=_linetap_exe(), config=lay.config, user=ingest_user, root=lay.root,
            data=lay.data, hardening=hard),
        "linetap-upstream.target": TARGET.format(
            workers=workers,
            instances=" ".join(f"linetap-ingest@{i}.service" for i in range(1, workers + 1))),
        "linetap-upstream.sysusers": SYSUSERS.format(
            path=lay.systemd / "linetap-upstream.sysusers", user=ingest_user, data=lay.data),
    }
    for n, text in units.items():
        atomic_write(lay.systemd / n, text.encode(), mode=0o644)


def _iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- registry and the generated part of upstream.toml -------------------------------------

def _load_registry(lay: Layout) -> dict:
    try:
        return json.loads(lay.registry.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SetupError(f"{lay.registry}: {exc}") from exc


def _save_registry(lay: Layout, reg: dict) -> None:
    atomic_write(lay.registry, json.dumps(reg, indent=2, sort_keys=True).encode(),
                 mode=0o600)


def _rewrite_sites(lay: Layout, reg: dict, retention: dict[str, float]) -> None:
    """Rewrite everything after MARKER from the registry: one ``[sites.S]`` per site,
    listing its *active* devices with their pinned identity keys."""
    text = lay.config.read_text(encoding="utf-8")
    if MARKER not in text:
        raise SetupError(f"{lay.config}: the line '{MARKER}' is gone; put it back at the "
                         "end of the file (enrol writes the sites after it)")
    try:
        current = tomllib.loads(text).get("sites", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(lay.config)) from exc
    sites: dict[str, dict] = {}
    for dev, d in sorted(reg["devices"].items()):
        s = sites.setdefault(d["site"], {})
        if d["state"] == "active":
            s[dev] = d["identity"]
    out = [text.split(MARKER)[0] + MARKER]
    for site in sorted(sites):
        days = retention.get(site, current.get(site, {}).get("retention_days", 90))
        devs = ", ".join(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in sites[site].items())
        out.append(f"\n[sites.{_toml_str(site)}]\nretention_days = {days}\n"
                   f"devices = {{ {devs} }}\n" if devs else
                   f"\n[sites.{_toml_str(site)}]\nretention_days = {days}\ndevices = {{}}\n")
    new = "\n".join(out) + "\n"
    atomic_write(lay.config, new.encode(), mode=lay.config.stat().st_mode & 0o777)

    upstream_config.load(str(lay.config))     # what we wrote must load


def _identity_hex(ref: str) -> str:
    """A box identity public key given as 64 hex digits or a PEM/raw file."""
    ref = ref.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", ref):
        raw = bytes.fromhex(ref)
    else:
        p = Path(ref)
        if not p.exists():
            raise SetupError(f"--identity-pub {ref!r}: neither 64 hex digits nor a file")
        raw = p.read_bytes()
        # 64 hex digits alone, or the saved output of `linetap identity`.
        m = re.fullmatch(rb"\s*([0-9a-fA-F]{64})\s*", raw) or \
            re.search(rb"^public key:\s*([0-9a-fA-F]{64})\s*$", raw, re.M)
        if m:
            raw = bytes.fromhex(m.group(1).decode())
    key = keys.load_ed25519_public(raw)
    return keys.raw_public(key).hex()


def _audit(lay: Layout, action: str, **detail) -> None:

    from sync.upstream.store import audit, open_db
    ucfg = upstream_config.load(str(lay.config))
    open_db(ucfg.db_url, ucfg.audit_key)
    audit(action, **detail)


def _ca(lay: Layout):
    return pki.load_key(lay.ca_key), pki.load_cert(lay.ca)


def _write_crl(lay: Layout, reg: dict) -> None:
    ca_key, ca = _ca(lay)
    pki.write(lay.crl, pki.pem_crl(pki.make_crl(ca_key, ca, reg["revoked_serials"])), 0o644)


def enrol(config: str, site: str, device: str, *, identity: str | None = None,
          csr: str | None = None, practice_public: str | None = None,
          retention_days: float | None = None, out=None) -> Path:
    """Issue ``device``'s client certificate (CN = device id) and write
    ``devices/<device>/`` with its site file. Returns that folder."""
    out = out or sys.stdout
    lay = Layout.of_config(config)
    if not DEVICE_RE.match(device):
        raise SetupError(f"--device {device!r}: letters, digits, '.', '_', '-' only "
                         "(it is the certificate CN and an MQTT topic level)")
    if not DEVICE_RE.match(site):
        raise SetupError(f"--site {site!r}: letters, digits, '.', '_', '-' only")
    if retention_days is not None and not 0.01 <= retention_days <= 3650:
        raise SetupError(f"--retention-days {retention_days}: must be 0.01..3650")

    ucfg = upstream_config.load(str(lay.config))
    reg = _load_registry(lay)
    old = reg["devices"].get(device)
    if old and old["site"] != site and old["state"] != "revoked":
        raise SetupError(f"device {device} is enrolled at site {old['site']}; revoke it "
                         f"first to move it to {site}")
    ident = _identity_hex(identity) if identity else (old or {}).get("identity")
    if old and old["state"] == "revoked" and not identity:
        ident = None      # a revoked box comes back only with its key given again
    ca_key, ca = _ca(lay)
    folder = lay.devices / device
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    cert_path = folder / "device-cert.pem"
    key_path = folder / "device-tls.key"
    if csr:
        try:
            csr_pem = Path(csr).read_bytes()
        except OSError as exc:
            raise SetupError(f"--csr {csr}: {exc.strerror or exc}") from exc
        cert = pki.sign_csr(ca_key, ca, csr_pem, device)
        key_path.unlink(missing_ok=True)        # the box has its own key
    else:
        k, cert = pki.issue(ca_key, ca, device, org=site)
        pki.write(key_path, pki.pem_key(k), 0o600)
    pki.write(cert_path, pki.pem_cert(cert), 0o644)
    if old:                                     # re-enrolment: the old certificate dies
        reg["revoked_serials"].append(int(old["serial"]))
    reg["devices"][device] = {
        "site": site, "serial": str(cert.serial_number), "identity": ident,
        "state": "active" if ident else "awaiting_identity", "enrolled": _iso(),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%d")}
    _save_registry(lay, reg)
    _write_crl(lay, reg)
    _rewrite_sites(lay, reg, {site: retention_days} if retention_days is not None else {})
    shutil.copyfile(lay.ca, folder / "broker-ca.pem")
    shutil.copyfile(lay.command_pub, folder / "upstream-command.pub")
    if practice_public:
        try:
            keys.load_practice_public(practice_public)
        except KeyFileError as exc:
            raise SetupError(f"--practice-public: {exc}") from exc
        shutil.copyfile(practice_public, folder / "practice.pub")
    has_practice = (folder / "practice.pub").exists()
    _write_box_files(folder, ucfg, site, device, has_practice, own_key=not csr)
    fp = keys.fingerprint(bytes.fromhex(ident)) if ident else None
    _audit(lay, "device_enrolled", device=device, site=site, serial=str(cert.serial_number),
           identity=fp, reenrolled=bool(old))
    print(f"enrolled {device} at site {site}: certificate {cert_path} (CN {device}, "
          f"valid to {reg['devices'][device]['not_after']})", file=out)
    if old:
        print(f"  previous certificate {old['serial']} revoked (restart the broker)", file=out)
    print(f"  site file {folder / 'site.toml'} (linetap-provision apply)", file=out)
    if not csr:
        print(f"  TLS key {key_path} made here (0600); a real box should make its own: "
              f"re-run with --csr", file=out)
    if fp:
        print(f"  identity pinned: {fp}", file=out)
    else:
        print(f"  identity NOT pinned: the upstream ignores {device} until you run `linetap "
              f"upstream --config {lay.config} pin --device {device} --identity-pub HEX` "
              "(the hex from `linetap-provision hello` or `linetap identity` on the box)",
              file=out)
    return folder


def _write_box_files(folder: Path, ucfg, site: str, device: str, practice: bool,
                     own_key: bool) -> None:
    host, port = ucfg.host, ucfg.port
    box = f"""\
# Written by `linetap upstream enrol` for {device}. Key paths are the box's defaults,
# where `linetap-provision apply site.toml` installs them.
[device]
id = {_toml_str(device)}
site = {_toml_str(site)}

[sync]
enabled = true
host = {_toml_str(host)}
port = {port}
topic_prefix = {_toml_str(ucfg.topic_prefix)}
"""
    atomic_write(folder / "box.toml", box.encode(), mode=0o644)
    keys_t = ('practice_public = "practice.pub"\n' if practice else "") + \
        'command_key = "upstream-command.pub"\nbroker_ca = "broker-ca.pem"\n'
    site_t = f"""\
# Written by `linetap upstream enrol`. `linetap-provision apply site.toml` installs the
# config and keys, then writes the box's CSR to csr_out; sign it with
# `linetap upstream enrol --site {site} --device {device} --csr {device}.csr` and install
# the certificate with `linetap-provision install-cert device-cert.pem`.
config = "box.toml"

[site]
name = {_toml_str(site)}

[keys]
{keys_t}
[tls]
csr_out = "{{device_id}}.csr"
"""
    atomic_write(folder / "site.toml", site_t.encode(), mode=0o644)
    if own_key:
        sim = box.replace("Key paths are the box's defaults,\n# where `linetap-provision "
                          "apply site.toml` installs them.",
                          "This copy points at the files in this folder (a simulated\n"
                          "# box, or a box whose TLS key was made upstream).")
        sim += (f"ca = {_toml_str(folder / 'broker-ca.pem')}\n"
                f"cert = {_toml_str(folder / 'device-cert.pem')}\n"
                f"key = {_toml_str(folder / 'device-tls.key')}\n"
                f"command_key = {_toml_str(folder / 'upstream-command.pub')}\n")
        if practice:
            sim += f"\n[recording]\npublic_key = {_toml_str(folder / 'practice.pub')}\n"
        atomic_write(folder / "box-local.toml", sim.encode(), mode=0o644)


def pin(config: str, device: str, identity: str, out=None) -> None:
    """Pin ``device``'s identity public key (audited with its fingerprint)."""
    out = out or sys.stdout
    lay = Layout.of_config(config)
    reg = _load_registry(lay)
    d = reg["devices"].get(device)
    if d is None:
        raise SetupError(f"device {device} is not enrolled (run enrol first)")
    if d["state"] == "revoked":
        raise SetupError(f"device {device} is revoked; enrol it again to bring it back")
    new = _identity_hex(identity)
    if d.get("identity") and d["identity"] != new:
        print(f"  replacing pinned identity {keys.fingerprint(bytes.fromhex(d['identity']))}"
              " (manifests signed by the old key no longer verify here)", file=out)
    d["identity"], d["state"] = new, "active"
    _save_registry(lay, reg)
    _rewrite_sites(lay, reg, {})
    fp = keys.fingerprint(bytes.fromhex(new))
    _audit(lay, "identity_pinned", device=device, site=d["site"], identity=fp)
    print(f"pinned {device}: identity {fp}; the ingest workers pick it up within a second",
          file=out)


def revoke(config: str, device: str, out=None) -> None:
    out = out or sys.stdout
    lay = Layout.of_config(config)
    reg = _load_registry(lay)
    d = reg["devices"].get(device)
    if d is None:
        raise SetupError(f"device {device} is not enrolled")
    if d["state"] == "revoked":
        print(f"{device} was already revoked", file=out)
        return
    reg["revoked_serials"].append(int(d["serial"]))
    d["state"] = "revoked"
    d["revoked"] = _iso()
    _save_registry(lay, reg)
    _write_crl(lay, reg)
    _rewrite_sites(lay, reg, {})
    _audit(lay, "device_revoked", device=device, site=d["site"], serial=d["serial"])
    print(f"revoked {device}: certificate {d['serial']} is in {lay.crl.name} and the device "
          f"is out of upstream.toml (the ingest workers drop it within a second); restart "
          f"the broker so it reads the CRL and cuts a connection the box still has: "
          f"systemctl restart linetap-upstream-broker (or SIGHUP to serve)", file=out)


# -- check -------------------------------------------------------------------------------

def _readable_by(path: Path, user: str) -> str | None:
    """None if ``user`` can read ``path`` by its owner/group/mode bits, else why not."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return f"user {user} does not exist"
    st = path.stat()
    groups = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {pw.pw_gid}
    if pw.pw_uid == 0 or (st.st_uid == pw.pw_uid and st.st_mode & 0o400) or \
            (st.st_gid in groups and st.st_mode & 0o040) or st.st_mode & 0o004:
        return None
    return (f"mode {st.st_mode & 0o777:04o}, owner {st.st_uid}:{st.st_gid}: not readable "
            f"by {user} (chgrp {grp.getgrgid(pw.pw_gid).gr_name} {path})")


def check(config: str, *, timeout_s: float = 10.0, wait_s: float = 0.0, out=None) -> int:
    """Verify the set-up end to end; print one line per check; 0 if all pass, else 1.
    ``wait_s``: keep trying the broker this long (s) first (it may be starting)."""
    out = out or sys.stdout

    results: list[tuple[bool, str, str]] = []

    def res(ok, what, detail=""):
        results.append((ok, what, detail))
        print(f"{'OK  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", file=out)

    try:
        ucfg = upstream_config.load(config)
        res(True, "config", config)
    except ConfigError as exc:
        res(False, "config", str(exc))
        return 1
    lay = Layout(Path(config).resolve().parent)
    made = lay.registry.exists()
    # Files and modes.
    for p in [Path(ucfg.ca), Path(ucfg.cert), Path(ucfg.key), Path(ucfg.command_key)] + \
            ([Path(ucfg.audit_key)] if ucfg.audit_key else []) + \
            ([lay.ca_key, lay.broker, lay.broker_key, lay.crl, lay.mosq_conf, lay.acl]
             if made else []):
        if not p.exists():
            res(False, f"file {p}", "missing")
            continue
        mode = p.stat().st_mode & 0o777
        private = p.suffix == ".key"
        res(not (private and mode & 0o007), f"file {p.name}",
            f"mode {mode:04o}" + (" (private key readable by everyone: chmod o-rwx)"
                                  if private and mode & 0o007 else ""))
    # Certificates.
    try:
        ca = pki.load_cert(Path(ucfg.ca))
        pairs = [("ingest", Path(ucfg.cert), Path(ucfg.key))]
        if made:
            pairs.append(("broker", lay.broker, lay.broker_key))
        for role, c, k in pairs:
            cert = pki.load_cert(c)
            why = pki.verify_chain(cert, ca)
            if why is None and not pki.key_matches(cert, pki.load_key(k)):
                why = f"{k.name} is not the key of {c.name}"
            res(why is None, f"{role} certificate", why or
                f"CN {pki.cn_of(cert)}, valid to {cert.not_valid_after_utc:%Y-%m-%d}")
        if made:
            bc = pki.load_cert(lay.broker)
            sans = bc.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(n.value) for n in sans]
            res(ucfg.host in names, "broker certificate names",
                f"{', '.join(names)}" + ("" if ucfg.host in names else
                                         f": broker.host {ucfg.host} is not among them"))
            crl = x509.load_pem_x509_crl(lay.crl.read_bytes())
            res(crl.is_signature_valid(ca.public_key()), "CRL",
                f"{len(list(crl))} revoked, next update {crl.next_update_utc:%Y-%m-%d}")
            user = re.search(r"^user (\S+)", lay.mosq_conf.read_text(), re.M)
            if user and os.geteuid() == 0:
                why = _readable_by(lay.broker_key, user.group(1))
                res(why is None, f"broker key readable by {user.group(1)}", why or "")
        ck = pki.load_key(Path(ucfg.command_key))
        if isinstance(ck, ed25519.Ed25519PrivateKey):
            res(True, "command key", "Ed25519, fingerprint "
                f"{keys.fingerprint(keys.raw_public(ck.public_key()))}")
        else:
            res(False, "command key", f"{ucfg.command_key} is not an Ed25519 key")
        if ucfg.audit_key:
            from sync.upstream.store import load_audit_key
            ak = load_audit_key(ucfg.audit_key)
            res(True, "audit key", "Ed25519, fingerprint "
                f"{keys.fingerprint(keys.raw_public(ak.public_key()))}")
        else:
            res(False, "audit key", "no [audit] key: the upstream audit trail is not "
                "signed (add one: docs/sync.md)")
    except (KeyFileError, ValueError, TypeError) as exc:
        res(False, "keys", str(exc))
    # Devices.
    if made:
        reg = _load_registry(lay)
        for dev, d in sorted(reg["devices"].items()):
            ok = d["state"] in ("active", "revoked")
            res(ok, f"device {dev}", d["state"] + ("" if ok else
                " (the ingest ignores it until `pin --device ... --identity-pub ...`)"))
    # Database and objects.
    try:
        from sync.upstream.store import open_db
        open_db(ucfg.db_url).execute_sql("SELECT 1")
        res(True, "database", ucfg.db_url)
    except Exception as exc:                    # any driver error is a failed check
        res(False, "database", f"{ucfg.db_url}: {exc}")
    try:
        Path(ucfg.objects).mkdir(parents=True, exist_ok=True)
        probe = Path(ucfg.objects) / f".check-{uuid.uuid4().hex}"
        probe.write_bytes(b"x")
        probe.unlink()
        res(True, "object store", ucfg.objects)
    except OSError as exc:
        res(False, "object store", f"{ucfg.objects}: {exc.strerror or exc}")
    # Broker: connect with the ingest certificate, publish and receive on an allowed topic.
    give_up = time.monotonic() + wait_s
    while True:
        ok, detail = broker_round_trip(ucfg, timeout_s)
        if ok or time.monotonic() >= give_up:
            break
        time.sleep(0.5)
    res(ok, f"broker {ucfg.host}:{ucfg.port}", detail)
    bad = sum(1 for ok, _, _ in results if not ok)
    print(f"{len(results) - bad} passed, {bad} failed", file=out)
    return 1 if bad else 0


def broker_round_trip(ucfg, timeout_s: float = 10.0) -> tuple[bool, str]:
    """Connect as ingest, subscribe to a fresh topic under the prefix, publish to it at
    QoS 1 and wait for the message: (ok, what happened)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"{ucfg.topic_prefix}/_check/{uuid.uuid4().hex}"
    token = uuid.uuid4().bytes
    got, conn = threading.Event(), {"rc": None}
    workers: set[str] = set()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"check-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    try:
        c.tls_set(ca_certs=ucfg.ca, certfile=ucfg.cert, keyfile=ucfg.key,
                  tls_version=ssl.PROTOCOL_TLS_CLIENT)
    except (ssl.SSLError, OSError) as exc:
        return False, f"cannot load the ingest certificate and key: {exc}"

    def on_connect(client, userdata, flags, rc, props):
        conn["rc"] = rc
        if not rc.is_failure:
            # Retained worker presence first: it arrives before our own message does.
            client.subscribe([(f"{ucfg.topic_prefix}/_ingest/+/status", 1), (topic, 1)])

    def on_subscribe(client, userdata, mid, rcs, props):
        client.publish(topic, token, qos=1)

    def on_message(client, userdata, msg):
        if msg.topic == topic and msg.payload == token:
            got.set()
        elif msg.topic.endswith("/status") and msg.payload == b"online":
            workers.add(msg.topic.split("/")[-2])

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    try:
        c.connect(ucfg.host, ucfg.port, keepalive=10)
    except ssl.SSLError as exc:
        return False, f"TLS failed: {exc.reason or exc}"
    except OSError as exc:
        return False, f"cannot connect: {exc.strerror or exc} (is the broker running?)"
    c.loop_start()
    try:
        if not got.wait(timeout_s):
            rc = conn["rc"]
            if rc is None:
                return False, f"no CONNACK within {timeout_s:g} s"
            if rc.is_failure:
                return False, f"broker refused the ingest certificate: {rc}"
            return False, (f"connected, but a QoS 1 message to {topic} did not come back "
                           f"within {timeout_s:g} s (ACL: does 'user {INGEST_CN}' have "
                           f"readwrite {ucfg.topic_prefix}/#?)")
        if not workers:
            return False, ("TLS with the ingest certificate and a round trip work, but no "
                           "ingest worker is connected (linetap ingest / serve / "
                           "linetap-ingest@N.service)")
        return True, ("TLS with the ingest certificate, publish and subscribe round trip; "
                      f"{len(workers)} ingest worker(s) connected")
    finally:
        c.loop_stop()
        c.disconnect()


# -- serve -------------------------------------------------------------------------------

def serve(config: str, workers: int = 2, out=None) -> int:
    """Run the broker and ``workers`` ingest workers in the foreground until SIGTERM or
    SIGINT (SIGHUP restarts them all, e.g. after ``revoke``). For trying an upstream,
    tests, and machines without systemd; production uses the systemd target."""
    out = out or sys.stdout
    lay = Layout.of_config(config)
    if not 1 <= workers <= 64:
        raise SetupError(f"--workers {workers}: must be 1..64")
    stop, restart = threading.Event(), threading.Event()
    procs: list = []

    def on_hup(*_):
        restart.set()
        # The old broker goes at once, so a `check` right after `kill -HUP` cannot pass
        # against it (and its retained worker presence goes with it).
        for name, p in procs:
            if name == "mosquitto":
                p.terminate()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, on_hup)
    rc = 0
    while not stop.is_set():
        restart.clear()
        procs[:] = _start_all(lay, config, workers, out)
        while not (stop.is_set() or restart.is_set()):
            dead = [(n, p) for n, p in procs if p.poll() is not None]
            if dead and not restart.is_set():
                for n, p in dead:
                    print(f"linetap upstream serve: {n} exited with status {p.returncode}",
                          file=out)
                stop.set()
                rc = 1
            time.sleep(0.2)
        for _, p in reversed(procs):
            p.terminate()
        for _, p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return rc


def _start_all(lay: Layout, config: str, workers: int, out) -> list:

    ucfg = upstream_config.load(config)
    broker = subprocess.Popen([MOSQUITTO, "-c", str(lay.mosq_conf)])
    import socket
    for _ in range(200):
        try:
            with socket.create_connection((ucfg.host, ucfg.port), 0.2):
                break
        except OSError:
            if broker.poll() is not None:
                raise SetupError(f"mosquitto exited with status {broker.returncode} "
                                 "(its messages are above)") from None
            time.sleep(0.05)
    procs = [("mosquitto", broker)]
    for i in range(1, workers + 1):
        procs.append((f"ingest worker {i}", subprocess.Popen(
            [_linetap_exe(), "ingest", "--config", str(config)])))
    print(f"linetap upstream serve: mosquitto on port {ucfg.port} and {workers} ingest "
          f"worker(s) running (pid {os.getpid()})", file=out)
    return procs


# -- command line ------------------------------------------------------------------------

def handles(argv: list[str]) -> bool:
    """True if the first word after the options is one of :data:`VERBS`."""
    return upstream_config.first_verb(argv) in VERBS


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="linetap upstream",
                                 description="set up an upstream and enrol boxes")
    ap.add_argument("--config", help="upstream.toml (made by init)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="create CA, certificates, broker config, units, config")
    p.add_argument("dir")
    p.add_argument("--broker-host", action="append", default=[],
                   help="name boxes use for the broker (repeatable; default localhost)")
    p.add_argument("--broker-port", type=int, default=8883)
    p.add_argument("--bind", default="", help="listen address (default: all)")
    p.add_argument("--workers", type=int, default=2, help="ingest workers (default 2)")
    p.add_argument("--broker-user", default="mosquitto")
    p.add_argument("--ingest-user", default="linetap-ingest")
    p.add_argument("--topic-prefix", default="linetap")
    p = sub.add_parser("enrol", help="issue a device certificate and its site file")
    p.add_argument("--site", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--identity-pub", help="box identity public key: 64 hex digits or file")
    p.add_argument("--csr", help="the box's CSR (its TLS key stays on the box)")
    p.add_argument("--practice-public", help="practice public key (linetap keygen) to "
                   "put in the site file")
    p.add_argument("--retention-days", type=float)
    p = sub.add_parser("pin", help="pin a box's identity public key")
    p.add_argument("--device", required=True)
    p.add_argument("--identity-pub", required=True)
    p = sub.add_parser("revoke", help="revoke a device (CRL and upstream.toml)")
    p.add_argument("--device", required=True)
    p = sub.add_parser("check", help="verify the set-up end to end")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds for the broker round trip (default 10)")
    p.add_argument("--wait", type=float, default=0.0,
                   help="keep trying the broker this many seconds (it may be starting)")
    p = sub.add_parser("serve", help="run broker and ingest workers in the foreground")
    p.add_argument("--workers", type=int, default=2)
    return ap


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "init":
        init(Path(args.dir), broker_hosts=args.broker_host or ["localhost"],
             port=args.broker_port, bind=args.bind, workers=args.workers,
             broker_user=args.broker_user, ingest_user=args.ingest_user,
             prefix=args.topic_prefix)
        return 0
    if not args.config:
        print(f"linetap upstream {args.cmd}: needs --config DIR/upstream.toml",
              file=sys.stderr)
        return 2
    if args.cmd == "enrol":
        enrol(args.config, args.site, args.device, identity=args.identity_pub, csr=args.csr,
              practice_public=args.practice_public, retention_days=args.retention_days)
    elif args.cmd == "pin":
        pin(args.config, args.device, args.identity_pub)
    elif args.cmd == "revoke":
        revoke(args.config, args.device)
    elif args.cmd == "check":
        return check(args.config, timeout_s=args.timeout, wait_s=args.wait)
    elif args.cmd == "serve":
        return serve(args.config, args.workers)
    return 0
