"""The upstream at fleet scale: thousands of simulated boxes against 1 broker and N workers.

Boxes (:mod:`bench.fleetbox`) are lightweight MQTT v5 publishers, thousands of them
multiplexed on one asyncio loop per publisher process (``--procs``), each with its own
client id and client certificate from the cached bench PKI (:mod:`bench.fleetpki`,
issued by the code ``linetap upstream init``/``enrol`` use). They replay pre-sealed
segments and signed manifests at a busy practice's real-time rate: 4 lines, one 10 s
segment per line every 10 s (``BOX_SEGMENTS_PER_S`` = 0.4 segments/s per box), each
call's manifest after its last segment (calls of ``--call-segments``, 30 = 5 minutes).

Upstream: 1 mosquitto (mutual TLS, per-device ACL), ``--workers`` ``linetap ingest``
processes on PostgreSQL (Debian's, started on loopback), with the filesystem object
store and then S3 (moto's server; ``--stores``). For each store, fleet sizes are stepped
up (``--fleets``, real time; each step drains before the next) and a last step
saturates (``--saturate-boxes`` boxes, each keeping ``--window`` segments awaiting the
upstream's ack). Per step: segments/s acked within the step, ack latency p50/p99
(first chunk published -> upstream ack received, segments; manifests apart), and
CPU-ms per segment of the broker, the workers, the database, the publishers and (S3)
moto, from /proc.

The goal (800 segments/s, p99 <= 2 s) is judged in CPU, which contention on a shared
machine moves far less than rates: ``cores_for_800`` = the upstream's CPU-ms per segment (broker +
workers + database, at saturation) x 800 / 1000, against ``cores``. ``ratio`` compares
the upstream with a bare loop of the same work run in the same process tree (object
put, row insert, ack published at QoS 1 and its PUBACK awaited; 64 per transaction,
writes in parallel like a worker): the rate each would reach on the same cores, i.e.
bare CPU-ms per segment / upstream CPU-ms per segment (the short bare loop's own CPU
figure varies by a third between runs; ``cores_for_800`` is the steadier figure). The
wall-clock comparison is ``wall_ratio`` (it measures the neighbours' fsyncs on a shared
disk; docs/benchmarks.md).

    .venv/bin/python -m bench.fleet [--fleets 250,500,1000,2000] [--stores fs,s3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import fleetbox
from bench.fleetbox import BOX_SEGMENTS_PER_S, PREFIX
from bench.fleetpki import FleetPKI, default_cache, identity
from recorder.evidence import segfile
from sync import protocol

GOAL_SEGMENTS_PER_S = 800      # 2,000 practices x 4 busy lines (issue 19)
GOAL_P99_S = 2.0


def _pct(xs, p) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p * len(xs)))], 3)


# -- CPU accounting from /proc -------------------------------------------------------------------
TCK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """CPU-seconds (user + system) of ``pid``; 0 if it is gone."""
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
    """CPU-seconds per group of processes. A database backend that exits between two
    snapshots takes its CPU with it (the workers' connections live for the run)."""

    def __init__(self, groups: dict):
        self.groups = groups

    def snap(self) -> dict:
        return {g: sum(_cpu(p) for p in f()) for g, f in self.groups.items()}


UPSTREAM = ("broker", "workers", "db")     # the upstream's own processes


# -- the templates ------------------------------------------------------------------------------
def _template(tmp: Path) -> dict:
    """One real segment and its call's manifest, sealed by the box's Writer."""
    from tests.support.syncbox import make_box, practice_keys, write_calls
    _priv, pub, *_ = practice_keys(tmp)
    box = make_box(tmp / "tpl", pub)
    (cid,) = write_calls(box, n_calls=1, segs=1, noisy=True, noise_std=1500.0)
    blob = box.store.abs(box.store.segments_of(cid)[0].path).read_bytes()
    man = box.store.abs(box.store.call(cid).manifest).read_bytes()
    p, m = segfile.parse(blob, signed=False), segfile.parse(man)
    return {"header": p.header, "sealed": p.sealed, "size": len(blob),
            "man_header": m.header, "man_sealed": m.sealed, "man_size": len(man)}


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
    tag = os.urandom(4).hex()      # a bare loop per store: its keys must not meet
    t0 = time.perf_counter()
    for b in range(n // 64):
        dirs: set = set()
        keys = [f"seg/bare/B{tag}{b}/{i:05d}.{sha}" for i in range(64)]
        for f in [pool.submit(objects.put, k, blob, dirs=dirs) for k in keys]:
            f.result()
        objects.sync_dirs(dirs)
        with db.atomic():
            for i, k in enumerate(keys):
                db.execute_sql('INSERT INTO usegment (device, "call", seq, sha256, size, '
                               '"key", created) VALUES (%s, %s, %s, %s, %s, %s, %s)',
                               ("bare", f"B{tag}{b}", i, sha, len(blob), k, time.time()))
        infos = [c.publish(f"{PREFIX}/bare/bare/ack", protocol.ack_payload(
            segs=[(f"B{b}", i, sha)]), qos=1) for i in range(64)]
        for info in infos:
            info.wait_for_publish(10)
    rate = (n // 64 * 64) / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    pool.shutdown()
    return rate


# -- publisher processes --------------------------------------------------------------------------
class Publishers:
    """``procs`` publisher processes sharing the boxes round-robin (box i in process
    i mod procs), driven step by step over pipes."""

    def __init__(self, procs: int, port: int, pki: FleetPKI, devices: list[str],
                 template: dict, call_segments: int):
        ctx = multiprocessing.get_context("spawn")
        self.n = procs
        self.conns, self.procs = [], []
        for j in range(procs):
            specs = []
            for d in devices[j::procs]:
                ident = pki.device(d, f"p{d}")
                specs.append((d, f"p{d}", ident.cert, ident.key))
            a, b = ctx.Pipe()
            p = ctx.Process(target=fleetbox.serve, name=f"fleet-publisher-{j}",
                            args=(b, port, str(pki.ca), specs, template, call_segments))
            p.start()
            self.conns.append(a)
            self.procs.append(p)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _all(self, cmds: list[tuple]) -> list:
        for c, cmd in zip(self.conns, cmds, strict=True):
            c.send(cmd)
        out = []
        for c in self.conns:
            r = c.recv()
            if r[0] != "ok":
                raise RuntimeError(f"publisher failed: {r[1:]}")
            out.append(r[1:])
        return out

    def connect(self, n: int) -> float:
        t0 = time.monotonic()
        self._all([("connect", len(range(j, n, self.n))) for j in range(self.n)])
        return time.monotonic() - t0

    def step(self, n: int, start: float, seconds: float, window: int, drain_s: float):
        return [r[0] for r in self._all([("step", len(range(j, n, self.n)), start, seconds,
                                          window, drain_s) for j in range(self.n)])]

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("quit",))
            except OSError:
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def _merge(parts: list[dict]) -> dict:
    out: dict = {}
    for d in parts:
        for k, v in d.items():
            if isinstance(v, list):
                out.setdefault(k, []).extend(v)
            elif isinstance(v, int):
                out[k] = out.get(k, 0) + v
            elif v and not out.get(k):
                out[k] = v
    return out


def run_step(pubs: Publishers, cpu: Cpu, n: int, seconds: float, window: int,
             drain_s: float) -> dict:
    """One step: ``n`` boxes for ``seconds`` (real time, or saturated with ``window``),
    then drained. CPU is counted from the step's start until it has drained."""
    start = time.monotonic() + 1.0
    c0: dict = {}

    def snap_at_start():
        time.sleep(max(0.0, start - time.monotonic()))
        c0.update(cpu.snap())
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(snap_at_start)
    r = _merge(pubs.step(n, start, seconds, window, drain_s))
    fut.result()
    pool.shutdown()
    c1, wall = cpu.snap(), time.monotonic() - start
    acked = len(r["seg_lat"])
    in_window = sum(1 for x in r["seg_times"] if x <= start + seconds)
    step = {"boxes": n, "saturated_window": window,
            "offered_per_s": round(n * BOX_SEGMENTS_PER_S, 1) if not window else None,
            "offered": r["offered"], "acked": acked,
            "segments_per_s": round(in_window / seconds, 1),
            "ack_p50_s": _pct(r["seg_lat"], 0.5), "ack_p99_s": _pct(r["seg_lat"], 0.99),
            "manifests_offered": r["man_offered"], "manifests_acked": len(r["man_lat"]),
            "manifest_ack_p99_s": _pct(r["man_lat"], 0.99),
            "rejected": r["rejected"], "conflicts": r["conflicts"],
            "unacked": r["outstanding"], "drain_s": round(max(0.0, wall - seconds), 1),
            "cpu_ms_per_segment": {g: round((c1[g] - c0[g]) * 1000 / max(1, acked), 2)
                                   for g in c0 if g != "bench"},
            "cpu_share": {g: round((c1[g] - c0[g]) / wall, 2) for g in c0 if g != "bench"}}
    if r.get("first_rejection"):
        step["first_rejection"] = r["first_rejection"]
    step["real_time"] = bool(not window and acked and r["outstanding"] == 0
                             and not r["rejected"] and step["ack_p99_s"] <= GOAL_P99_S)
    return step


# -- one store ----------------------------------------------------------------------------------
def _workers_connected(broker) -> int:
    return broker.log().count("u'ingest')")


def run_store(store: str, args, *, tmp: Path, pki: FleetPKI, broker, pg, pubs: Publishers,
              devices: list[str], template: dict, fleets: list[int]) -> dict:
    """Every step against a fresh database and object store on ``store``."""
    from sync.upstream.config import from_dict
    from sync.upstream.store import open_db
    from tests.support.syncbox import to_toml
    s3 = procs = None
    out: dict = {"store": store, "steps": []}
    try:
        objects = {"path": str(tmp / f"objects-{store}")}
        if store == "s3":
            from tests.support.s3 import MotoServer
            s3 = MotoServer(tmp)
            s3.start()
            objects = s3.objects_section(s3.new_bucket(object_lock=True))
        raw = {"database": {"url": pg.new_db(f"fleet_{store}")}, "objects": objects,
               "broker": {"host": "127.0.0.1", "port": broker.port, "ca": str(pki.ca),
                          "cert": pki.ingest.cert, "key": pki.ingest.key},
               "retention": {"interval_s": 3600},
               "sites": {f"p{d}": {"retention_days": 90, "devices": {
                   d: identity(d).public_key().public_bytes_raw().hex()}} for d in devices}}
        raw["sites"]["pbare"] = {"retention_days": 90,
                                 "devices": {"bare": identity("bare").public_key()
                                             .public_bytes_raw().hex()}}
        conf = tmp / f"upstream-{store}.toml"
        conf.write_text(to_toml(raw))
        ucfg = from_dict(raw)
        open_db(ucfg.db_url)
        before = _workers_connected(broker)
        procs = [subprocess.Popen([sys.executable, "-m", "sync.upstream.ingest", "--config",
                                   str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / f"worker-{store}{i}.log", "wb"))
                 for i in range(args.workers)]
        deadline = time.monotonic() + 60
        while _workers_connected(broker) < before + args.workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"ingest workers did not connect; see {tmp}/worker-*.log")
            time.sleep(0.1)
        groups = {"broker": lambda: [broker.proc.pid],
                  "workers": lambda: [p.pid for p in procs],
                  "db": lambda: [_postmaster(pg), *_children(_postmaster(pg))],
                  "publishers": pubs.pids, "bench": lambda: [os.getpid()]}
        if s3 is not None:
            groups["s3"] = lambda: [s3.proc.pid]
        cpu = Cpu(groups)
        # Warm-up, not counted: a worker's first tick (fleet alerts for every enrolled
        # device, deadlines per site) holds its handler, with 2,000 sites for tens of
        # seconds; the shared subscription hands both workers messages, so this drains
        # only once both handlers take work.
        warm = run_step(pubs, cpu, min(args.saturate_boxes, len(devices)), 3.0, 0,
                        args.drain * 3)
        out["warmup"] = {k: warm[k] for k in ("boxes", "offered", "acked", "ack_p99_s",
                                              "drain_s")}
        print(f"[{store}] warm-up: {json.dumps(out['warmup'])}", flush=True)
        hdr = segfile.canonical(template["header"])
        blob = segfile._PRE.pack(segfile.MAGIC, segfile.VERSION, 1, len(hdr)) + hdr \
            + template["sealed"]
        b0 = cpu.snap()
        bare = bare_loop(ucfg, blob, args.bare, broker.port, pki)
        b1 = cpu.snap()
        done = args.bare // 64 * 64
        # The bare loop runs in this process ("bench"), on the same broker and database.
        bare_ms = sum(b1[g] - b0[g] for g in ("broker", "db", "bench")) * 1000 / done
        out["bare_segments_per_s"] = round(bare, 1)
        out["bare_cpu_ms_per_segment"] = round(bare_ms, 2)
        print(f"[{store}] bare loop: {bare:.0f} segments/s, {bare_ms:.2f} CPU-ms/segment",
              flush=True)
        left = 0
        for n in fleets:
            if left:
                # The last step did not drain: its backlog would spoil this one.
                out.setdefault("skipped_fleets", []).append(n)
                continue
            step = run_step(pubs, cpu, n, args.seconds, 0, args.drain)
            left = step["unacked"]
            out["steps"].append(step)
            print(json.dumps({"store": store, **step}), flush=True)
        step = run_step(pubs, cpu, args.saturate_boxes, args.seconds, args.window, args.drain)
        out["steps"].append(step)
        print(json.dumps({"store": store, **step}), flush=True)
    finally:
        for p in procs or []:
            p.terminate()
        for p in procs or []:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if s3 is not None:
            s3.stop()
    return summarise(out, os.cpu_count() or 1)


def summarise(out: dict, cores: int) -> dict:
    """The store's headline figures from its steps (the last step is saturation)."""
    sat = out["steps"][-1]
    held = [s for s in out["steps"] if s["real_time"]]
    ms = sat["cpu_ms_per_segment"]
    up_ms = sum(ms[g] for g in UPSTREAM)
    pub_ms = ms["publishers"]
    out.update({
        "segments_per_s": sat["segments_per_s"], "ack_p50_s": sat["ack_p50_s"],
        "ack_p99_s": sat["ack_p99_s"],
        "largest_real_time_fleet": max((s["boxes"] for s in held), default=0),
        "real_time_segments_per_s": max((s["segments_per_s"] for s in held), default=0.0),
        "cpu_ms_per_segment": ms,
        "upstream_cpu_ms_per_segment": round(up_ms, 2),
        "publisher_cpu_ms_per_segment": pub_ms,
        # The goal in cores: what 800 segments/s take of CPU, upstream and publishers.
        "cores_for_800": round(GOAL_SEGMENTS_PER_S * up_ms / 1000, 2),
        "publisher_cores_for_800": round(GOAL_SEGMENTS_PER_S * pub_ms / 1000, 2),
        # What this machine's cores would carry if nothing else ran on them: the
        # upstream and the publishers together, at 0.4 segments/s a box.
        "cpu_bound_segments_per_s": round(cores * 1000 / (up_ms + pub_ms), 1),
        "cpu_bound_fleet": int(cores * 1000 / (up_ms + pub_ms) / BOX_SEGMENTS_PER_S),
        "cpu_ratio": round(out["bare_cpu_ms_per_segment"] / up_ms, 3) if up_ms else None,
        "wall_ratio": round(sat["segments_per_s"] / out["bare_segments_per_s"], 3)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fleets", default="250,500,1000,2000",
                    help="fleet sizes (boxes of 4 busy lines) to step through in real time")
    ap.add_argument("--s3-fleets", default="50,100,200",
                    help="the same on S3 (moto's server is slower than a disk)")
    ap.add_argument("--stores", default="fs,s3", help="object stores, in this order")
    ap.add_argument("--seconds", type=float, default=20.0, help="per step")
    ap.add_argument("--drain", type=float, default=300.0,
                    help="longest wait after a step for its last acks (s)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--procs", type=int, default=2, help="publisher processes")
    ap.add_argument("--call-segments", type=int, default=30,
                    help="segments per call (a manifest after each call)")
    ap.add_argument("--bare", type=int, default=640, help="segments in the bare loop")
    ap.add_argument("--window", type=int, default=4,
                    help="segments each box keeps awaiting ack in the saturation step")
    ap.add_argument("--saturate-boxes", type=int, default=100,
                    help="boxes in the saturation step (the last of each store; its rate "
                         "is the sustained segments/s)")
    ap.add_argument("--s3-saturate-boxes", type=int, default=25)
    ap.add_argument("--keep", action="store_true",
                    help="keep the run's folder (logs, object stores) instead of removing it")
    ap.add_argument("--cache", type=Path, default=None,
                    help=f"the bench PKI's cache (default {default_cache()})")
    args = ap.parse_args(argv)
    stores = args.stores.split(",")
    fleets = {"fs": [int(x) for x in args.fleets.split(",")],
              "s3": [int(x) for x in args.s3_fleets.split(",")]}
    n_max = max([args.saturate_boxes, args.s3_saturate_boxes,
                 *[n for s in stores for n in fleets[s]]])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from tests.support.broker import Broker, Postgres

    tmp = Path(tempfile.mkdtemp(prefix="linetap-fleet-"))
    template = _template(tmp)
    t0 = time.monotonic()
    pki = FleetPKI(args.cache or default_cache())
    devices = [f"fb{i:05d}" for i in range(n_max)]
    for d in devices:
        pki.device(d, f"p{d}")
    print(f"template segment {template['size']} bytes, manifest {template['man_size']} "
          f"bytes; {n_max} device certificates in {pki.dir} ({pki.issued} issued now, "
          f"{time.monotonic() - t0:.1f} s)", flush=True)
    (tmp / "broker").mkdir()
    broker = Broker(tmp / "broker", pki)
    broker.start()
    pg = Postgres()
    pg.start()
    pubs = None
    result: dict = {"bench": "fleet", "workers": args.workers, "procs": args.procs,
                    "segment_bytes": template["size"], "manifest_bytes": template["man_size"],
                    "box_segments_per_s": BOX_SEGMENTS_PER_S, "cores": os.cpu_count()}
    try:
        pubs = Publishers(args.procs, broker.port, pki, devices, template, args.call_segments)
        took = pubs.connect(n_max)
        print(f"{n_max} boxes connected over TLS in {took:.1f} s", flush=True)
        result["connect_s"] = round(took, 1)
        for store in stores:
            sat = args.saturate_boxes if store == "fs" else args.s3_saturate_boxes
            a = argparse.Namespace(**{**vars(args), "saturate_boxes": sat})
            result[store] = run_store(store, a, tmp=tmp, pki=pki, broker=broker, pg=pg,
                                      pubs=pubs, devices=devices, template=template,
                                      fleets=fleets[store])
    finally:
        if pubs is not None:
            pubs.close()
        broker.stop()
        pg.stop()
        if not args.keep:
            # The object stores hold every segment of the run: gigabytes at 2,000 boxes.
            shutil.rmtree(tmp, ignore_errors=True)
    head = result[stores[0]]
    # The brief's fields (design brief, section 5) from the first store (the goal's, fs).
    result.update({k: head[k] for k in (
        "segments_per_s", "ack_p50_s", "ack_p99_s", "largest_real_time_fleet",
        "real_time_segments_per_s", "cpu_bound_segments_per_s", "cpu_bound_fleet",
        "upstream_cpu_ms_per_segment",
        "publisher_cpu_ms_per_segment", "cores_for_800", "publisher_cores_for_800",
        "cpu_ratio", "wall_ratio")})
    result["goal_reachable_here"] = (head["cores_for_800"] + head["publisher_cores_for_800"]
                                     <= result["cores"])
    result["ratio"] = head["cpu_ratio"]
    result["load_avg"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
