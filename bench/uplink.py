"""One box with a backlog behind a shaped uplink: how close to the link rate does it drain?

The box's real uploader runs in a network namespace this bench creates, joined to the
root namespace by two TUN devices and the userspace relay of
:mod:`tests.support.netimpair` (this kernel has no ``sch_netem``): 20 ms each way (40 ms
RTT), and ``tbf`` on the namespace's device shapes the box's upstream direction to the
link rate (1 Mbit/s, then 256 kbit/s). Across the link: mosquitto (mutual TLS, the
per-device ACL) and one ingest worker (SQLite, filesystem store) in the root namespace,
so every segment counted was stored durably and acked.

The backlog is real sealed FLAC segments written by the box's Writer (10 s, 8 kHz,
tone and noise), more than the measured window can drain, so the uploader's window is
full throughout, as with a day's backlog (which drains the same way, for longer).

``ratio`` = segment payload bytes acked per second (``goodput_bps``, in bits) ÷ the link
rate (``link_bps``): what MQTT, TLS, TCP/IP headers, acks and manifests leave of the
link. Also: how many lines the link carries in real time, with FLAC and with Opus (the
bits per line-second of the same audio in each codec, sealed). Needs root.

    sudo .venv/bin/python -m bench.uplink [--seconds 45]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NS, DEV_IP, ROOT_IP = "lt-upl", "10.81.0.2", "10.81.0.1"
LINKS = (1_000_000, 256_000)            # bits/s
DELAY_MS = 20.0                         # each way: 40 ms RTT
SEG_S = 10.0
NOISE = 1500.0                          # noise std on the test tone (int16 units)


def _server_cert(pki, ip: str):
    """A broker certificate for ``ip`` (the fixture's names only localhost/127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "linetap-test-ca")]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(pki.ca_key, hashes.SHA256()))
    c, k = pki.dir / "uplink-server.pem", pki.dir / "uplink-server.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


def _line_bits_per_s(codec: str) -> float:
    """Bits per line-second of the bench's audio (tone + noise), encoded and sealed."""
    import numpy as np

    from recorder.evidence import codec as codecs
    rng = np.random.default_rng(1)
    n = int(SEG_S * 8000)
    t = np.arange(n) / 8000
    pcm = np.clip(3000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, NOISE, n),
                  -32767, 32767).astype(np.int16)
    # Sealing adds the header, the HPKE encapsulated key and tag: ~ 400 bytes a segment.
    return (len(codecs.encode(pcm, 8000, codec)) + 400) * 8 / SEG_S


# -- the box, inside the namespace ---------------------------------------------------------------
def box_side(args) -> int:
    import threading

    from recorder.evidence import keys
    from recorder.storage.retention.service import Retention
    from sync.uploader import Uploader, UploaderThread
    from tests.support.syncbox import box_cfg, make_box
    a = json.loads(args.box_side)
    box = make_box(Path(a["dir"]), keys.load_practice_public(Path(a["pub"])),
                   device=a["device"])
    st = box.store
    sizes = {(c.id, s.seq): s.size for c in st.calls() for s in st.segments_of(c.id)}
    cfg = box_cfg(box.data_dir, device=box.device, enabled=True, host=a["host"],
                  port=a["port"], ca=a["ca"], cert=a["cert"], key=a["key"], window=64)
    ret = Retention(st, box.data_dir, cfg, free_bytes=lambda: 10**12)
    up = Uploader(st, cfg, device=box.device, data_dir=box.data_dir, retention=ret,
                  ack_timeout_s=60.0, reconnect_s=(0.2, 2.0))
    stop = threading.Event()
    up.start()
    th = UploaderThread(up, stop)
    th.start()
    t_online = None
    samples = []                 # (t, bytes acked)
    end = time.monotonic() + a["seconds"] + 30
    while time.monotonic() < end:
        now = time.monotonic()
        if t_online is None and up.sync_status()["link"] == "online":
            t_online = now
        if t_online is not None:
            acked = sum(sizes.get((c.id, s.seq), 0) for c in st.calls()
                        for s in st.segments_of(c.id) if s.acked)
            samples.append((now - t_online, acked))
            if now - t_online >= a["seconds"] or acked == sum(sizes.values()):
                break
        time.sleep(0.25)
    stop.set()
    th.join(10)
    up.close()
    print(json.dumps({"samples": samples, "backlog_bytes": sum(sizes.values()),
                      "segments": len(sizes)}))
    return 0


# -- the rig -----------------------------------------------------------------------------------
def run_link(link_bps: int, seconds: float, tmp: Path) -> dict:
    from sync.upstream.config import from_dict
    from sync.upstream.store import USegment
    from tests.support.broker import PKI, Broker
    from tests.support.netimpair import Impairment, TunLink
    from tests.support.syncbox import (
        InProcWorker,
        make_box,
        practice_keys,
        upstream_raw,
        write_calls,
    )
    d = tmp / f"link{link_bps}"
    d.mkdir()
    _priv, pub, pubpath, _privpath = practice_keys(d)
    box = make_box(d / "box", pub, device="dev-a")
    # Enough backlog to keep the window full for the whole measurement.
    segs = int(link_bps / 8 * seconds / 70_000 * 1.3) + 4
    write_calls(box, n_calls=max(1, segs // 6), segs=6, noisy=True, noise_std=NOISE)
    pki = PKI(d)
    pki.devices = {"dev-a": pki.client("dev-a")}
    pki.ingest = pki.client("ingest")
    pki.server.cert, pki.server.key = _server_cert(pki, ROOT_IP)
    (d / "broker").mkdir()
    broker = Broker(d / "broker", pki)
    conf = (d / "broker" / "mosquitto.conf").read_text()
    (d / "broker" / "mosquitto.conf").write_text(conf.replace(
        f"listener {broker.port} 127.0.0.1", f"listener {broker.port} 0.0.0.0"))
    link = TunLink(NS, DEV_IP, ROOT_IP)
    link.setup()
    worker = None
    try:
        link.set(Impairment(delay_ms=DELAY_MS))
        subprocess.run(["ip", "netns", "exec", NS, "tc", "qdisc", "replace", "dev",
                        link.tun_dev, "root", "tbf", "rate", str(link_bps), "burst",
                        str(max(1600, link_bps // 8 // 50)), "latency", "200ms"], check=True)
        broker.start()
        ucfg = from_dict(upstream_raw(d / "up", broker, pki, [box]))
        worker = InProcWorker(ucfg)
        arg = {"dir": str(box.data_dir), "pub": str(pubpath), "device": "dev-a",
               "host": ROOT_IP, "port": broker.port, "ca": str(pki.ca),
               "cert": pki.devices["dev-a"].cert, "key": pki.devices["dev-a"].key,
               "seconds": seconds}
        r = subprocess.run(["ip", "netns", "exec", NS, sys.executable, "-m", "bench.uplink",
                            "--box-side", json.dumps(arg)], capture_output=True, text=True,
                           timeout=seconds + 120)
        if r.returncode:
            raise RuntimeError("box side failed: " + r.stderr[-3000:])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        stored = USegment.select().count()
    finally:
        if worker is not None:
            worker.close()
        broker.stop()
        link.close()
    s = res["samples"]
    # Steady state: from the first ack to the last sample (the first window's fill and
    # the TLS handshake are start-up, not throughput).
    first = next((i for i, (_t, b) in enumerate(s) if b > 0), None)
    if first is None or s[-1][1] == s[first][1]:
        raise RuntimeError("nothing was acked over the link")
    t0, b0 = s[first]
    t1, b1 = s[-1]
    goodput = (b1 - b0) * 8 / (t1 - t0)
    return {"link_bps": link_bps, "rtt_ms": 2 * DELAY_MS, "goodput_bps": round(goodput),
            "ratio": round(goodput / link_bps, 3), "seconds": round(t1 - t0, 1),
            "acked_bytes": b1, "backlog_bytes": res["backlog_bytes"],
            "segments_stored": stored, "relay_packets": link.counts["packets"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=45.0, help="measured per link")
    ap.add_argument("--box-side", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.box_side:
        return box_side(args)
    if os.geteuid() != 0:
        print("bench.uplink needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="linetap-uplink-"))
    flac, opus = _line_bits_per_s("flac"), _line_bits_per_s("opus")
    out = {"bench": "uplink", "flac_line_bps": round(flac), "opus_line_bps": round(opus),
           "links": []}
    for bps in LINKS:
        r = run_link(bps, args.seconds, tmp)
        r["lines_flac"] = int(r["goodput_bps"] // flac)
        r["lines_opus"] = int(r["goodput_bps"] // opus)
        out["links"].append(r)
        print(json.dumps(r), flush=True)
    main_link = out["links"][0]
    out.update({"goodput_bps": main_link["goodput_bps"], "link_bps": main_link["link_bps"],
                "ratio": main_link["ratio"],
                "ratio_256k": out["links"][1]["ratio"]})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
