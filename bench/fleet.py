"""The upstream at fleet scale: thousands of simulated boxes against 1 broker and N workers.

Each simulated box is a lightweight MQTT v5 publisher (asyncio, a few hundred lines of
protocol below: CONNECT, SUBSCRIBE, PUBLISH QoS 1, PUBACK) with its own client id and
its own TLS identity (a client certificate whose CN is the device id, checked by the
broker's per-device ACL, as a real box). It replays pre-sealed segments at a box's
real-time rate: 4 busy lines, one 10 s segment per line every 10 s (0.4 segments/s per
box), split into chunks of at most 128 KiB as the uploader does, and waits for the
upstream's ack of each. Segment files are built from one real segment the box's Writer
sealed (``tests.support.syncbox``): its header with this box's device, call and seq,
and its sealed payload (the ingest checks the file's structure, header, size and
sha256, never the payload, which only the practice key opens; manifests are not
replayed, 1 per 30 segments in real calls).

Upstream: ``--workers`` ``linetap ingest`` processes on PostgreSQL (the test fixture's
server), the filesystem object store (``--store fs``) or S3 (``--store s3``, moto's
server). Fleet sizes are stepped up (``--fleets``); for each: sustained segments/s
acked, ack latency p50/p99 (first chunk published -> upstream ack received), and
CPU-ms per segment of the broker, the workers and the database (from /proc).

``ratio`` = the best sustained ingest rate / the rate of a bare loop of the same work in
the same run (object put, then row insert, then publishing the ack at QoS 1 and waiting
for its PUBACK, 64 segments per transaction, writes in parallel like a worker): how
much of the bare work's rate the real pipeline (MQTT receive, reassembly, checks) keeps.

    .venv/bin/python -m bench.fleet [--fleets 100,200,400,800] [--workers 2] [--store fs]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recorder.evidence import segfile
from sync import protocol

SEG_S = 10.0
LINES = 4
PREFIX = "linetap"


# -- a minimal MQTT v5 client (QoS 1 publish, one subscription) ---------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


class Box:
    """One simulated box on one TLS connection."""

    def __init__(self, device: str, site: str, cert, key, ca, template: dict, stats):
        self.device, self.site = device, site
        self.cert, self.key, self.ca = cert, key, ca
        self.t = template
        self.stats = stats
        self.pid = 0
        self.pubacks: dict[int, asyncio.Future] = {}
        self.sent: dict[tuple, float] = {}        # (call, seq) -> time of first chunk
        self.call = f"F{random.getrandbits(32):08x}"
        self.seq = 0
        self.writer = None
        self.window: asyncio.Semaphore | None = None   # saturation mode

    async def connect(self, port: int) -> None:
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.check_hostname = False
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        props = b"\x00"
        body = _str("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 0) + props + _str(self.device)
        self.writer.write(_packet(0x10, body))
        hdr = await reader.readexactly(2)
        rest = await reader.readexactly(hdr[1])
        if hdr[0] != 0x20 or rest[1] != 0:
            raise RuntimeError(f"{self.device}: CONNACK refused ({rest[1]})")
        self.reader = reader
        self.task = asyncio.create_task(self._read())
        ack = f"{protocol.base(PREFIX, self.site, self.device)}/ack"
        pid = self._next()
        fut = self.pubacks[pid] = asyncio.get_running_loop().create_future()
        self.writer.write(_packet(0x82, struct.pack("!H", pid) + b"\x00" + _str(ack) + b"\x01"))
        await fut

    def _next(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    async def _read(self) -> None:
        r = self.reader
        while True:
            first = (await r.readexactly(1))[0]
            n, mult = 0, 1
            while True:
                b = (await r.readexactly(1))[0]
                n += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
            body = await r.readexactly(n)
            kind = first >> 4
            if kind in (4, 9):                       # PUBACK, SUBACK
                fut = self.pubacks.pop(struct.unpack_from("!H", body)[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind == 3:                          # PUBLISH (our ack topic)
                tl = struct.unpack_from("!H", body)[0]
                off = 2 + tl
                qos = (first >> 1) & 3
                if qos:
                    pid = body[off:off + 2]
                    off += 2
                    self.writer.write(b"\x40\x02" + pid)
                plen, i, mult = 0, 0, 1
                while True:                          # properties length
                    b = body[off + i]
                    plen += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        break
                self._acked(body[off + i + plen:])

    def _acked(self, payload: bytes) -> None:
        now = time.monotonic()
        for call, seq, _sha in protocol.parse_ack(payload)["segs"]:
            t0 = self.sent.pop((call, seq), None)
            if t0 is not None:
                self.stats.ack(now, now - t0)
                if self.window is not None:
                    self.window.release()

    def segment(self) -> tuple[str, bytes]:
        """The next pre-sealed segment file of this box (and its topic)."""
        h = dict(self.t["header"], device=self.device, call=self.call, seq=self.seq)
        hdr = segfile.canonical(h)
        blob = self.t["pre"](len(hdr)) + hdr + self.t["sealed"]
        topic = protocol.seg_topic(PREFIX, self.site, self.device, self.call, self.seq)
        self.seq += 1
        if self.seq == 30:                           # a new call every 30 segments
            self.call, self.seq = f"F{random.getrandbits(32):08x}", 0
        return topic, blob

    async def publish_segment(self) -> None:
        topic, blob = self.segment()
        t = protocol.parse_topic(topic)
        self.sent[(t.call, t.seq)] = time.monotonic()
        self.stats.offered += 1
        futs = []
        for chunk in protocol.split(blob):
            pid = self._next()
            fut = self.pubacks[pid] = asyncio.get_running_loop().create_future()
            self.writer.write(_packet(0x32, _str(topic) + struct.pack("!H", pid) + b"\x00"
                                      + chunk))
            futs.append(fut)
        await self.writer.drain()
        await asyncio.gather(*futs)

    async def run_saturated(self, until: float, window: int) -> None:
        """Back to back: up to ``window`` segments awaiting the upstream's ack."""
        self.window = asyncio.Semaphore(window)
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            await self.window.acquire()
            asyncio.create_task(self.publish_segment())

    async def run(self, until: float) -> None:
        """4 lines, one segment per line per 10 s, phases spread at random."""
        loop = asyncio.get_running_loop()
        nxt = [loop.time() + random.uniform(0, SEG_S) for _ in range(LINES)]
        while True:
            i = min(range(LINES), key=nxt.__getitem__)
            if nxt[i] >= until:
                return
            await asyncio.sleep(max(0.0, nxt[i] - loop.time()))
            nxt[i] += SEG_S
            asyncio.create_task(self.publish_segment())


class Stats:
    def __init__(self):
        self.lat: list[float] = []
        self.times: list[float] = []
        self.offered = 0

    def ack(self, now: float, dt: float) -> None:
        self.times.append(now)
        self.lat.append(dt)


def _pct(xs, p) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


# -- CPU accounting from /proc -------------------------------------------------------------------
TCK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TCK
    except (OSError, IndexError):
        return 0.0


def _children(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _postmaster(pg) -> int:
    return int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])


class Cpu:
    def __init__(self, broker_pid, worker_pids, pg_pid):
        self.groups = {"broker": lambda: [broker_pid], "workers": lambda: worker_pids,
                       "db": lambda: [pg_pid, *_children(pg_pid)],
                       "publishers": lambda: [os.getpid()]}

    def snap(self) -> dict:
        return {g: sum(_cpu(p) for p in f()) for g, f in self.groups.items()}


# -- the template segment -----------------------------------------------------------------------
def _template(tmp: Path) -> dict:
    from tests.support.syncbox import make_box, practice_keys, write_calls
    _priv, pub, *_ = practice_keys(tmp)
    box = make_box(tmp / "tpl", pub)
    (cid,) = write_calls(box, n_calls=1, segs=1, noisy=True, noise_std=1500.0)
    s = box.store.segments_of(cid)[0]
    blob = box.store.abs(s.path).read_bytes()
    p = segfile.parse(blob, signed=False)
    pre = segfile._PRE
    return {"header": p.header, "sealed": p.sealed, "size": len(blob),
            "pre": lambda n: pre.pack(segfile.MAGIC, segfile.VERSION, 1, n)}


# -- the bare loop --------------------------------------------------------------------------------
def bare_loop(ucfg, blob: bytes, n: int, broker_port: int, pki) -> float:
    """Segments/s of: object put (durable), row insert (64 per commit), ack published at
    QoS 1 and its PUBACK awaited; writes in parallel threads as a worker's."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from sync.upstream.objectstore import open_objects
    from sync.upstream.store import db, open_db
    open_db(ucfg.db_url)
    objects = open_objects(ucfg)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare-loop", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca), certfile=pki.ingest.cert, keyfile=pki.ingest.key)
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", broker_port)
    c.loop_start()
    pool = ThreadPoolExecutor(8)
    sha = hashlib.sha256(blob).hexdigest()
    t0 = time.perf_counter()
    for b in range(n // 64):
        dirs: set = set()
        keys = [f"seg/bare/B{b}/{i:05d}.{sha}" for i in range(64)]
        for f in [pool.submit(objects.put, k, blob, dirs=dirs) for k in keys]:
            f.result()
        objects.sync_dirs(dirs)
        with db.atomic():
            for i, k in enumerate(keys):
                db.execute_sql('INSERT INTO usegment (device, "call", seq, sha256, size, '
                               '"key", created) VALUES (%s, %s, %s, %s, %s, %s, %s)',
                               ("bare", f"B{b}", i, sha, len(blob), k, time.time()))
        infos = [c.publish(f"{PREFIX}/bare/bare/ack", protocol.ack_payload(
            segs=[(f"B{b}", i, sha)]), qos=1) for i in range(64)]
        for info in infos:
            info.wait_for_publish(10)
    rate = (n // 64 * 64) / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    pool.shutdown()
    return rate


# -- the run ---------------------------------------------------------------------------------------
async def _step(boxes, seconds: float, stats: Stats, window: int = 0) -> None:
    until = asyncio.get_running_loop().time() + seconds
    if window:
        await asyncio.gather(*(b.run_saturated(until, window) for b in boxes))
    else:
        await asyncio.gather(*(b.run(until) for b in boxes))
    await asyncio.sleep(3.0)                  # let the last acks in


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fleets", default="50,100,200,400",
                    help="fleet sizes (boxes of 4 busy lines) to step through")
    ap.add_argument("--seconds", type=float, default=20.0, help="per fleet size")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--store", choices=("fs", "s3"), default="fs")
    ap.add_argument("--bare", type=int, default=640, help="segments in the bare loop")
    ap.add_argument("--window", type=int, default=4,
                    help="segments each box keeps awaiting ack in the saturation step")
    ap.add_argument("--saturate-boxes", type=int, default=100,
                    help="boxes in the saturation step (the last; its rate is the "
                         "sustained segments/s and the ratio's numerator)")
    args = ap.parse_args(argv)
    fleets = [int(x) for x in args.fleets.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from recorder.evidence.keys import raw_public
    from sync.upstream.config import from_dict
    from tests.support.broker import PKI, Broker, Postgres
    from tests.support.syncbox import to_toml

    tmp = Path(tempfile.mkdtemp(prefix="linetap-fleet-"))
    t = _template(tmp)
    n_max = max(fleets)
    print(f"template segment {t['size']} bytes; {n_max} TLS identities...", flush=True)
    pki = PKI(tmp)
    devices = [f"fb{i:05d}" for i in range(n_max)]
    idents = {d: pki.client(d) for d in devices}
    pki.ingest = pki.client("ingest")
    (tmp / "broker").mkdir()
    broker = Broker(tmp / "broker", pki)
    broker.start()
    pg = Postgres()
    pg.start()
    procs, s3 = [], None
    out: dict = {"bench": "fleet", "store": args.store, "workers": args.workers,
                 "segment_bytes": t["size"], "cores": os.cpu_count(), "steps": []}
    try:
        idkey = raw_public(ed25519.Ed25519PrivateKey.generate().public_key()).hex()
        objects = {"path": str(tmp / "objects")}
        if args.store == "s3":
            from tests.support.s3 import MotoServer
            s3 = MotoServer(tmp)
            s3.start()
            objects = s3.objects_section(s3.new_bucket(object_lock=True))
        raw = {"database": {"url": pg.new_db("fleet")}, "objects": objects,
               "broker": {"host": "127.0.0.1", "port": broker.port, "ca": str(pki.ca),
                          "cert": pki.ingest.cert, "key": pki.ingest.key},
               "retention": {"interval_s": 3600},
               "sites": {f"p{d}": {"retention_days": 90, "devices": {d: idkey}}
                         for d in devices}}
        raw["sites"]["pbare"] = {"retention_days": 90, "devices": {"bare": idkey}}
        conf = tmp / "upstream.toml"
        conf.write_text(to_toml(raw))
        ucfg = from_dict(raw)
        from sync.upstream.store import open_db
        open_db(ucfg.db_url)
        procs = [subprocess.Popen([sys.executable, "-m", "sync.upstream.ingest", "--config",
                                   str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / f"worker{i}.log", "wb"))
                 for i in range(args.workers)]
        time.sleep(3)
        blob = t["pre"](len(segfile.canonical(t["header"]))) + \
            segfile.canonical(t["header"]) + t["sealed"]
        cpu = Cpu(broker.proc.pid, [p.pid for p in procs], _postmaster(pg))
        b0 = cpu.snap()
        bare = bare_loop(ucfg, blob, args.bare, broker.port, pki)
        b1 = cpu.snap()
        # The bare loop runs in this process: its CPU is the "publishers" group's.
        bare_ms = sum(b1[g] - b0[g] for g in ("broker", "db", "publishers")) \
            * 1000 / (args.bare // 64 * 64)
        out["bare_cpu_ms_per_segment"] = round(bare_ms, 2)
        print(f"bare loop: {bare:.0f} segments/s, {bare_ms:.2f} CPU-ms/segment", flush=True)

        async def run():
            boxes: list[Box] = []
            steps = [(n, 0) for n in fleets] + [(args.saturate_boxes, args.window)]
            for n, window in steps:
                stats = Stats()
                while len(boxes) < n:
                    d = devices[len(boxes)]
                    b = Box(d, f"p{d}", idents[d].cert, idents[d].key, str(pki.ca), t, None)
                    await b.connect(broker.port)
                    boxes.append(b)
                for b in boxes[:n]:
                    b.stats, b.sent = stats, {}
                c0, w0 = cpu.snap(), time.monotonic()
                await _step(boxes[:n], args.seconds, stats, window)
                c1, wall = cpu.snap(), time.monotonic() - w0
                # Acks that came within the step's own seconds (not its 3 s tail).
                acked = sum(1 for x in stats.times if x <= w0 + args.seconds)
                step = {"boxes": n, "saturated_window": window,
                        "offered_per_s": round(n * LINES / SEG_S, 1) if not window else None,
                        "offered": stats.offered, "acked": acked,
                        "segments_per_s": round(acked / args.seconds, 1),
                        "ack_p50_s": round(_pct(stats.lat, 0.5), 3),
                        "ack_p99_s": round(_pct(stats.lat, 0.99), 3),
                        "unacked": stats.offered - acked,
                        "cpu_ms_per_segment": {g: round((c1[g] - c0[g]) * 1000 / max(1, acked), 2)
                                               for g in c0},
                        "cpu_share": {g: round((c1[g] - c0[g]) / wall, 2) for g in c0}}
                step["unacked"] = stats.offered - len(stats.lat)
                step["real_time"] = (not window and len(stats.lat) >= 0.98 * stats.offered
                                     and step["ack_p99_s"] <= 2.0)
                out["steps"].append(step)
                print(json.dumps(step), flush=True)
                for b in boxes:
                    b.window = None
            for b in boxes:
                b.writer.close()

        asyncio.run(run())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
        pg.stop()
        if s3:
            s3.stop()
    held = [s for s in out["steps"] if s["real_time"]]
    best = out["steps"][-1]                   # the saturation step
    # CPU per segment of the upstream side (broker + workers + database), from the
    # saturation step: what 800 segments/s would take in cores, on an idle machine.
    up_ms = sum(v for k, v in best["cpu_ms_per_segment"].items() if k != "publishers")
    out.update({"upstream_cpu_ms_per_segment": round(up_ms, 2),
                "cores_needed_for_800": round(800 * up_ms / 1000, 1),
                # The same comparison in CPU, which contention on a shared machine does
                # not move: bare loop CPU-ms per segment / upstream CPU-ms per segment.
                "cpu_ratio": round(out["bare_cpu_ms_per_segment"] / up_ms, 3)})
    out.update({"segments_per_s": best["segments_per_s"], "ack_p50_s": best["ack_p50_s"],
                "ack_p99_s": best["ack_p99_s"], "bare_segments_per_s": round(bare, 1),
                "ratio": round(best["segments_per_s"] / bare, 3),
                "largest_real_time_fleet": max((s["boxes"] for s in held), default=0),
                "load_avg": round(os.getloadavg()[0], 1)})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
