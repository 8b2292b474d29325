"""The upstream half of ``make demo``: the simulated box's calls go through a real
mosquitto with mutual TLS into one ingest worker, and a demo manager account is made
for ``make portal``.

Everything lives under ``OUT/upstream/``: a demo CA, broker, ingest and box
certificates, ``mosquitto.conf`` with the per-device ACL, the upstream store, its
command key and ``upstream.toml``. The broker and the worker are stopped before this
returns; ``make portal`` only needs the store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning import tlscert
from recorder.errors import LinetapError
from sync.upstream.templates import ACL

SITE = "oakfield"


class DemoError(LinetapError, RuntimeError):
    """The demo's broker or upload did not work."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(path: Path, data: bytes, mode: int = 0o644) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def _client(d: Path, cn: str, ca_pem: bytes, ca_key: bytes) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    kp = _write(d / f"{cn}.key", key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), 0o600)
    cert = tlscert.sign_csr(tlscert.make_csr(key, cn), ca_pem, ca_key, days=30)
    return _write(d / f"{cn}.pem", cert), kp


def _server(d: Path, ca_pem: bytes, ca_key_pem: bytes) -> tuple[str, str]:
    """A broker certificate for localhost and 127.0.0.1 (sign_csr makes client ones)."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    kp = _write(d / "broker.key", key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()), 0o600)
    return _write(d / "broker.pem", cert.public_bytes(serialization.Encoding.PEM)), kp


def _start_broker(d: Path, port: int, ca: str, cert: str, key: str) -> subprocess.Popen:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise DemoError("mosquitto is not installed (make setup installs it)")
    (d / "acl").write_text(ACL.format(ingest="ingest", prefix="linetap"))
    user = "user root\n" if os.geteuid() == 0 else ""
    (d / "mosquitto.conf").write_text(
        f"{user}persistence false\nlog_dest file {d}/mosquitto.log\nallow_anonymous false\n"
        f"per_listener_settings false\nacl_file {d}/acl\nlistener {port} 127.0.0.1\n"
        f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\n"
        "use_identity_as_username true\n")
    proc = subprocess.Popen([exe, "-c", str(d / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.1):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise DemoError(f"mosquitto did not start; see {d}/mosquitto.log")


def _toml(raw: dict) -> str:
    out = []
    for sec, body in raw.items():
        if sec == "sites":
            continue
        out.append(f"[{sec}]")
        out += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
                for k, v in body.items()]
        out.append("")
    for name, s in raw["sites"].items():
        out.append(f'[sites."{name}"]')
        out.append(f"retention_days = {s['retention_days']}")
        out.append("devices = { " + ", ".join(f'"{k}" = "{v}"' for k, v in
                                               s["devices"].items()) + " }")
    return "\n".join(out) + "\n"


def run(out: Path, data_dir: Path, timeout_s: float = 60.0) -> dict:
    """Upload the box at ``data_dir`` to a fresh upstream in ``out/upstream``.

    Returns {"config", "calls", "manager", "password"}. Raises DemoError if the box's
    backlog does not drain within ``timeout_s``."""
    from recorder import config as rconfig
    from recorder.evidence.keys import ensure_identity, pem_public, raw_public
    from recorder.storage.retention.service import Retention
    from recorder.storage.store import Store
    from sync.uploader import Uploader, UploaderThread
    from sync.upstream import config as upstream_config
    from sync.upstream.ingest import run_worker
    from sync.upstream.portal import accounts
    from sync.upstream.store import UCall, open_db

    up = out / "upstream"
    pki = up / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir)
    first = store.m.Call.select().first()
    if first is None:
        raise DemoError("the simulated box recorded no call")
    device = first.device
    ca_pem, ca_key = tlscert.make_ca("Linetap demo CA", days=30)
    ca = _write(pki / "ca.pem", ca_pem)
    _write(pki / "ca.key", ca_key, 0o600)
    bcert, bkey = _server(pki, ca_pem, ca_key)
    icert, ikey = _client(pki, "ingest", ca_pem, ca_key)
    dcert, dkey = _client(pki, device, ca_pem, ca_key)
    cmd = ed25519.Ed25519PrivateKey.generate()
    _write(up / "command.key", cmd.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
    _write(up / "command.pub", pem_public(cmd.public_key()))
    ident = ensure_identity(data_dir, first_start=False)
    port = _free_port()
    raw = {"database": {"url": f"sqlite:///{(up / 'upstream.db').resolve()}"},
           "objects": {"path": str((up / "objects").resolve())},
           "broker": {"host": "127.0.0.1", "port": port, "ca": str(Path(ca).resolve()),
                      "cert": str(Path(icert).resolve()), "key": str(Path(ikey).resolve()),
                      "client_id": "demo-ingest"},
           "commands": {"key": str((up / "command.key").resolve()), "resend_s": 5},
           "retention": {"interval_s": 5},
           "sites": {SITE: {"retention_days": 90,
                            "devices": {device: raw_public(ident.public_key()).hex()}}}}
    conf = up / "upstream.toml"
    conf.write_text(_toml(raw))
    ucfg = upstream_config.load(str(conf))
    broker = _start_broker(pki, port, ca, bcert, bkey)
    stop_w, stop_u = threading.Event(), threading.Event()
    wt = threading.Thread(target=run_worker, args=(ucfg, stop_w), kwargs={"interval_s": 0.2},
                          name="demo-ingest", daemon=True)
    ut = None
    try:
        wt.start()
        bcfg = rconfig.Config().replace(
            device__data_dir=str(data_dir), device__id=device, device__site=SITE,
            sync__enabled=True, sync__host="127.0.0.1", sync__port=port, sync__ca=ca,
            sync__cert=dcert, sync__key=dkey,
            sync__command_key=str((up / "command.pub").resolve()))
        retention = Retention(store, data_dir, bcfg, free_bytes=lambda: 10**12)
        upl = Uploader(store, bcfg, device=device, data_dir=data_dir, retention=retention,
                       ack_timeout_s=5.0, reconnect_s=(0.1, 1.0))
        upl.start()
        ut = UploaderThread(upl, stop_u)
        ut.start()
        end = time.monotonic() + timeout_s
        while _unacked(store) and time.monotonic() < end:
            time.sleep(0.1)
        if _unacked(store):
            raise DemoError(f"{_unacked(store)} file(s) not acked by the upstream within "
                            f"{timeout_s:.0f} s; see {pki}/mosquitto.log")
    finally:
        stop_u.set()
        if ut is not None:
            ut.join(10)
        stop_w.set()
        wt.join(10)
        broker.kill()
        broker.wait()
    open_db(ucfg.db_url, ucfg.audit_key)
    accounts.init_tables()
    password = secrets.token_urlsafe(12)
    pf = up / "manager-password.txt"
    _write(pf, (password + "\n").encode(), 0o600)
    try:
        accounts.add_user("manager", SITE, "manager", password)
    except accounts.AccountError:
        accounts.reset("manager", password)
    calls = UCall.select().where(UCall.state == "live").count()
    return {"config": str(conf), "calls": calls, "manager": "manager",
            "password": password, "password_file": str(pf)}


def _unacked(store) -> int:
    S, C = store.m.Segment, store.m.Call
    return (S.select().where(S.acked == False).count()  # noqa: E712
            + C.select().where(C.manifest.is_null(False) & (C.manifest_acked == False)  # noqa: E712
                               & (C.state != "deleted")).count())
