"""Helpers for sync tests: a box store filled through the real Writer."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from recorder.calls.jobs import CallInfo, CloseCall, OpenCall, WriteSegment
from recorder.config import Config
from recorder.evidence import keys, trust
from recorder.storage.store import Store
from recorder.storage.writer import Writer
from recorder.timebase import Timebase

RATE = 8000


def practice_keys(d: Path):
    priv, pub = keys.practice_keygen(d / "practice.key")
    return keys.load_practice_private(priv), keys.load_practice_public(pub), pub, priv


def make_box(data_dir: Path, public_key, device="dev-a", retention_days=90.0) -> SimpleNamespace:
    store = Store(data_dir)
    ident = keys.ensure_identity(data_dir, first_start=True)
    trust.pin(store, ident.public_key())      # as the daemon does at first start
    return SimpleNamespace(store=store, identity=ident, device=device, data_dir=data_dir,
                           public_key=public_key, retention_days=retention_days)


def box_writer(box, start: float) -> Writer:
    """The box's real Writer, with line time starting at ``start`` (epoch s)."""
    return Writer(box.store, device=box.device, rate=RATE, codec_name="flac",
                  aead="chacha20poly1305", public_key=box.public_key, identity=box.identity,
                  timebase=Timebase(RATE, start), retention_s=box.retention_days * 86400)


def tone(n: int, hz: float) -> np.ndarray:
    t = np.arange(n) / RATE
    return (3000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def write_calls(box, n_calls=2, segs=3, start=None, lines=2, seg_s=10.0, noisy=False,
                seed=1, noise_std=6000.0, parties=None) -> list[str]:
    """Write ``n_calls`` closed calls of ``segs`` segments each; returns call ids.

    ``parties``: one ``(direction, caller_number, dialled_digits)`` per call (default:
    inbound from 01632960123)."""
    start = time.time() - 3600 if start is None else start
    rng = np.random.default_rng(seed)
    w = box_writer(box, start)
    ids = []
    n = int(seg_s * RATE)
    for c in range(n_calls):
        first = c * (segs + 2) * n
        direction, number, dialled = (parties[c] if parties else
                                      ("inbound", "01632960123", ""))
        info = CallInfo(id=f"C{c:03d}-L{c % lines}-{secrets.token_hex(3)}", line=c % lines,
                        direction=direction, offhook_sample=first, first_sample=first,
                        caller_number=number, dialled_digits=dialled)
        w.handle(OpenCall(info))
        for s in range(segs):
            t = np.arange(n) / RATE
            pcm = (3000 * np.sin(2 * np.pi * (300 + 50 * c + 10 * s) * t))
            if noisy:
                pcm = pcm + rng.normal(0, noise_std, n)
            w.handle(WriteSegment(info.id, s, first + s * n,
                                  np.clip(pcm, -32767, 32767).astype(np.int16)))
        info.end_sample = first + segs * n
        info.end_reason = "hangup"
        w.handle(CloseCall(info))
        ids.append(info.id)
    return ids


def box_cfg(data_dir, **sync) -> Config:
    cfg = Config()
    over = {"device__data_dir": str(data_dir), "device__id": sync.pop("device", "dev-a"),
            "device__site": sync.pop("site", "site1")}
    for k, v in sync.items():
        over[f"sync__{k}"] = v
    return cfg.replace(**over)


# -- upstream and uploader plumbing ---------------------------------------------------------------
# The object store upstream_raw() configures: None = a folder under the test's tmp path;
# else a function tmp -> the [objects] section (set by the ``objects_backend`` fixture
# in tests/sync/upstream/conftest.py, which runs the same tests on fs and on S3).
OBJECTS_SECTION = None


def stored_objects(ucfg, prefix: str) -> list[str]:
    """Every object stored under ``prefix``, once per stored copy: on a versioned S3
    bucket each version counts (a re-upload that added one would be a second copy), on
    the filesystem each file (temp files included)."""
    from sync.upstream.objectstore import open_objects
    o = open_objects(ucfg)
    if getattr(o, "versioned", False):
        out = []
        pages = o.client.get_paginator("list_object_versions").paginate(
            Bucket=o.bucket, Prefix=o.prefix + prefix.rstrip("/") + "/")
        for page in pages:
            out += [v["Key"] for v in page.get("Versions", [])]
        return sorted(out)
    return [k for k, _m in o.walk(prefix)]


def upstream_raw(tmp: Path, broker, pki, boxes, *, db_url=None, retention_days=90.0,
                 command_key=None, audit_key=None) -> dict:
    """Upstream config data registering each box's identity key under site ``site1``;
    ``audit_key``: the path of an upstream audit key (it signs ``uaudit``)."""
    from recorder.evidence.keys import raw_public
    devices = {b.device: raw_public(b.identity.public_key()).hex() for b in boxes}
    raw = {"database": {"url": db_url or f"sqlite:///{tmp / 'upstream.db'}"},
           "objects": (OBJECTS_SECTION(tmp) if OBJECTS_SECTION else
                       {"path": str(tmp / "objects")}),
           "broker": {"host": "127.0.0.1", "port": broker.port, "ca": str(pki.ca),
                      "cert": pki.ingest.cert, "key": pki.ingest.key},
           "commands": {"resend_s": 1},
           "retention": {"interval_s": 1},
           "sites": {"site1": {"retention_days": retention_days, "devices": devices}}}
    if command_key:
        raw["commands"]["key"] = str(command_key)
    if audit_key:
        raw["audit"] = {"key": str(audit_key)}
    return raw


def upstream_cfg(*args, **kw):
    from sync.upstream.config import from_dict
    return from_dict(upstream_raw(*args, **kw))


def to_toml(raw: dict) -> str:
    """Just enough TOML for upstream configs (tables of scalars, nested tables)."""
    def val(v):
        return str(v).lower() if isinstance(v, bool) else \
            (f'"{v}"' if isinstance(v, str) else repr(v))
    out = []

    def table(name, d):
        out.append(f"[{name}]")
        subs = []
        for k, v in d.items():
            if isinstance(v, dict):
                subs.append((f'{name}."{k}"' if "-" in k else f"{name}.{k}", v))
            else:
                out.append(f'"{k}" = {val(v)}')
        out.append("")
        for n, v in subs:
            table(n, v)
    for k, v in raw.items():
        table(k, v)
    return "\n".join(out)


def write_command_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from recorder.evidence.keys import pem_public
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub = path.with_suffix(".pub")
    pub.write_bytes(pem_public(key.public_key()))
    return key, pub


class Running:
    """An uploader on its own service thread, as the daemon runs it."""

    def __init__(self, box, broker, pki, *, window=16, ack_timeout_s=3.0, command_pub=None,
                 free_bytes=None, alarms=None, updater=None, site="site1", **sync):
        import threading

        from recorder.storage.retention.service import Retention
        from sync.uploader import Uploader, UploaderThread
        dev = pki.devices[box.device]
        extra = {"command_key": str(command_pub)} if command_pub else {}
        extra.update(sync)                      # further [sync] settings
        self.cfg = box_cfg(box.data_dir, device=box.device, site=site, enabled=True,
                           host="127.0.0.1", port=broker.port, ca=str(pki.ca),
                           cert=dev.cert, key=dev.key,
                           window=window, **extra)
        self.retention = Retention(box.store, box.data_dir, self.cfg, alarms=alarms,
                                   free_bytes=free_bytes or (lambda: 10**12))
        self.up = Uploader(box.store, self.cfg, device=box.device, data_dir=box.data_dir,
                           retention=self.retention, alarms=alarms,
                           ack_timeout_s=ack_timeout_s, reconnect_s=(0.05, 0.5),
                           updater=updater)
        self.stop = threading.Event()
        self.up.start()
        self.thread = UploaderThread(self.up, self.stop)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.up.close()


def wait_for(pred, timeout=60.0, what="condition"):
    """Poll ``pred`` until true; fail after ``timeout`` s (a guard, never an assertion on
    timing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def unacked(store) -> int:
    S, C = store.m.Segment, store.m.Call
    return (S.select().where(S.acked == False).count()  # noqa: E712
            + C.select().where(C.manifest.is_null(False) & (C.manifest_acked == False)  # noqa: E712
                               & (C.state != "deleted")).count())


class InProcWorker:
    """An ingest worker in this process (the DB proxy is process-global)."""

    def __init__(self, ucfg, client_id="ingest-t1"):
        import threading

        from recorder.threads import ServiceThread
        from sync.upstream.ingest import Worker
        from sync.upstream.store import open_db
        open_db(ucfg.db_url, ucfg.audit_key)
        self.w = Worker(ucfg, client_id=client_id, reconnect_s=(0.05, 0.5))
        self.w.start()
        self.stop = threading.Event()
        self.t = ServiceThread("ingest-tick", 0.2, self.w.tick, self.stop)
        self.t.start()

    def close(self):
        self.stop.set()
        self.t.join(10)
        self.w.close()
