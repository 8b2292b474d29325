"""Helpers for sync tests: a box store filled through the real Writer."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from recorder import keys
from recorder.config import Config
from recorder.store import Store
from recorder.timebase import Timebase
from recorder.writer import CallInfo, CloseCall, OpenCall, Writer, WriteSegment

RATE = 8000


def practice_keys(d: Path):
    priv, pub = keys.practice_keygen(d / "practice.key")
    return keys.load_practice_private(priv), keys.load_practice_public(pub), pub, priv


def make_box(data_dir: Path, public_key, device="dev-a", retention_days=90.0) -> SimpleNamespace:
    store = Store(data_dir)
    ident = keys.ensure_identity(data_dir, first_start=True)
    return SimpleNamespace(store=store, identity=ident, device=device, data_dir=data_dir,
                           public_key=public_key, retention_days=retention_days)


def write_calls(box, n_calls=2, segs=3, start=None, lines=2, seg_s=10.0, noisy=False,
                seed=1) -> list[str]:
    """Write ``n_calls`` closed calls of ``segs`` segments each; returns call ids."""
    start = time.time() - 3600 if start is None else start
    rng = np.random.default_rng(seed)
    tb = Timebase(RATE, start)
    w = Writer(box.store, device=box.device, rate=RATE, codec_name="flac",
               aead="chacha20poly1305", public_key=box.public_key, identity=box.identity,
               timebase=tb, retention_s=box.retention_days * 86400)
    ids = []
    n = int(seg_s * RATE)
    for c in range(n_calls):
        first = c * (segs + 2) * n
        info = CallInfo(id=f"C{c:03d}-L{c % lines}-{secrets.token_hex(3)}", line=c % lines,
                        direction="inbound", offhook_sample=first, first_sample=first,
                        caller_number="01632960123")
        w.handle(OpenCall(info))
        for s in range(segs):
            t = np.arange(n) / RATE
            pcm = (3000 * np.sin(2 * np.pi * (300 + 50 * c + 10 * s) * t))
            if noisy:
                pcm = pcm + rng.normal(0, 6000, n)
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
