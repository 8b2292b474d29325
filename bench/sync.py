"""Sync benchmark: backlog drain rate vs a bare paho QoS 1 publisher, and ingest rate.

    .venv/bin/python -m bench.sync [--segments 300] [--window 16] [--keep]

Starts mosquitto (mutual TLS, the test ACL) on a free loopback port in a temp folder,
fills a box store with real sealed 10 s FLAC segments (via the real Writer), then:

1. bare: one paho client publishes every chunk of every segment at QoS 1 to the same
   topics and waits for all PUBACKs (the ceiling for this broker and link);
2. drain: the real uploader drains the same backlog through one ingest worker
   (a separate process) until every segment is acked at application level
   (durable object write + database commit upstream);
3. the same drain acked by a consumer that stores nothing (the uploader's own ceiling);
4. ingest: one ingest worker's handling rate without MQTT (segments/s).

Prints a table, CPU seconds per process (broker, ingest, box) and per thread role over
the drain, the ratio the drain's CPU would allow on this machine's cores
(``cpu_ceiling_ratio``: cores x bare wall time / drain CPU seconds), and, last, one
JSON line whose ``bare_drain_ratio`` is bare wall time / drain wall time. (Until issue 19
this was the bench's ``ratio`` with a goal of 0.8, out of reach by construction: the
drain does the ingest's fsyncs and row writes, the bare publisher does none. The
figures with goals are now ``bench/fleet.py``'s ``ratio``, the ingest against a bare
loop of the same work, and ``bench/uplink.py``'s, goodput against the link rate.)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sync import protocol
from tests.support.broker import DEVICES, PKI, Broker
from tests.support.syncbox import (
    Running,
    make_box,
    practice_keys,
    to_toml,
    unacked,
    upstream_cfg,
    upstream_raw,
    write_calls,
)

ROOT = Path(__file__).resolve().parent.parent


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name."""
    out = {}
    for t in threading.enumerate():
        try:
            out[t.name] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, TypeError):
            pass
    return out


# The ingest worker, started so that SIGUSR1 appends its threads' CPU seconds (by thread
# name, with the same thread_cpu as this process) to the file named first: the bench
# signals it before and after the drain.
INGEST_BOOT = r"""
import json, signal, sys, threading, time
from sync.upstream.ingest import cli_main
""" + inspect.getsource(thread_cpu) + r"""

def snap(*_):
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps(thread_cpu()) + "\n")

signal.signal(signal.SIGUSR1, snap)
sys.exit(cli_main(sys.argv[2:]))
"""


def by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per role between two :func:`thread_cpu` snapshots (a thread absent
    from ``before`` counts from zero). Roles: the uploader or ingest handler thread,
    paho's network thread(s) (TLS, MQTT parsing), the ingest's blob write/fsync pool,
    and the rest (main thread: ticks, polling)."""
    roles: dict[str, float] = {}
    for name, t in after.items():
        role = ("paho" if name.startswith("paho-mqtt") else
                "io pool" if name.startswith("ingest-io") else
                "handler" if name == "ingest-handler" else
                "uploader" if name == "uploader" else "other")
        roles[role] = roles.get(role, 0.0) + t - before.get(name, 0.0)
    return roles


def ingest_snapshot(proc, path: Path) -> dict:
    """Ask the ingest worker for its threads' CPU seconds (see INGEST_BOOT)."""
    n = len(path.read_text().splitlines()) if path.exists() else 0
    proc.send_signal(signal.SIGUSR1)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > n:
            return json.loads(lines[-1])
        time.sleep(0.01)
    return {}


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds per component over one phase: the broker (mosquitto), the ingest
    worker process (if any) and this process (the box's uploader or the bare publisher,
    plus the bench's own polling)."""

    def __init__(self, broker, ingest=None):
        self.pids = {"broker": broker.proc.pid, "ingest": ingest.pid if ingest else None}

    def __enter__(self):
        self.t0 = {k: proc_cpu(p) for k, p in self.pids.items() if p}
        self.t0["box"] = time.process_time()
        return self

    def __exit__(self, *exc):
        self.used = {k: proc_cpu(p) - self.t0[k] for k, p in self.pids.items() if p}
        self.used["box"] = time.process_time() - self.t0["box"]


def payloads(box):
    out = []
    for c in box.store.calls():
        for s in box.store.segments_of(c.id):
            t = protocol.seg_topic("linetap", "site1", box.device, c.id, s.seq)
            out += [(t, p) for p in protocol.split(box.store.abs(s.path).read_bytes())]
    return out


def bare(broker, pki, items, window_msgs: int) -> float:
    """Seconds for a bare QoS 1 publisher to get every PUBACK."""
    import ssl
    dev = pki.devices["dev-a"]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-a", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca), certfile=dev.cert, keyfile=dev.key,
              tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.max_inflight_messages_set(window_msgs)
    c.max_queued_messages_set(0)
    done = threading.Event()
    left = {"n": len(items)}

    def on_publish(client, userdata, mid, rc, props):
        left["n"] -= 1
        if left["n"] == 0:
            done.set()
    c.on_publish = on_publish
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    t0 = time.perf_counter()
    for t, p in items:
        c.publish(t, p, qos=1)
    done.wait(600)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return dt


def null_acker(broker, pki):
    """A consumer that acks every segment as soon as its last chunk arrives, without
    storing anything: measures the uploader's own ceiling."""
    import ssl
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="null-acker", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca), certfile=pki.ingest.cert, keyfile=pki.ingest.key,
              tls_version=ssl.PROTOCOL_TLS_CLIENT)
    ready = threading.Event()

    def on_connect(client, userdata, flags, rc, props):
        client.subscribe([("linetap/+/+/seg/#", 1), ("linetap/+/+/man/#", 1)])
        ready.set()

    def on_message(client, userdata, msg):
        t = protocol.parse_topic(msg.topic)
        ch = protocol.parse_chunk(msg.payload)
        if ch.index != ch.count - 1:
            return
        ack = protocol.ack_payload(segs=[(t.call, t.seq, ch.sha256)]) if t.kind == "seg" \
            else protocol.ack_payload(mans=[(t.call, ch.sha256)])
        client.publish(f"{protocol.base(t.prefix, t.site, t.device)}/ack", ack, qos=1)
    c.on_connect, c.on_message = on_connect, on_message
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    ready.wait(10)
    return c


def wait_consuming(broker, pki, db_path: Path, timeout: float = 120.0) -> None:
    """Block until the ingest worker stores what the box publishes: a probe ``health``
    message from dev-a, repeated until its row is in the upstream database. (A fixed
    sleep was not enough on a loaded machine: a backlog published before the worker's
    shared subscription exists is dropped by the broker and costs one ack timeout.)"""
    import sqlite3
    import ssl
    dev = pki.devices["dev-a"]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca), certfile=dev.cert, keyfile=dev.key,
              tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            c.publish("linetap/site1/dev-a/health", b'{"probe": true}', qos=1)
            time.sleep(0.1)
            try:
                with sqlite3.connect(db_path, timeout=5) as con:
                    if con.execute("SELECT count(*) FROM health").fetchone()[0]:
                        return
            except sqlite3.OperationalError:
                pass                      # not created yet
        raise AssertionError("the ingest worker never consumed")
    finally:
        c.disconnect()
        c.loop_stop()


def timed_drain(box, broker, pki, window, n_segs, threads: dict | None = None) -> float:
    """Seconds from CONNACK to the last app-level ack (the bare publisher's clock also
    starts after its connection is up). ``threads``, if given, gets this process's CPU
    seconds per role (:func:`by_role`) over the drain."""
    before = thread_cpu()
    run = Running(box, broker, pki, window=window, ack_timeout_s=30.0)
    # The uploader thread says when its count of acked segments reaches n_segs (the bare
    # publisher's clock also stops on an event); polling every 2 ms, as this did
    # before, took the GIL from the uploader 500 times a second.
    done, apply_ack = threading.Event(), run.up._apply_ack

    def counted(ack):
        apply_ack(ack)
        if run.up.acked >= n_segs:
            done.set()
    run.up._apply_ack = counted
    run.up.connected.wait(30)
    t0 = time.perf_counter()
    try:
        end = t0 + 600
        while time.perf_counter() < end:
            done.wait(0.5)
            t = time.perf_counter() - t0
            if run.up.acked >= n_segs and unacked(box.store) == 0:   # the database judges
                return t
        raise AssertionError("timed out waiting for the drain")
    finally:
        if threads is not None:
            threads.update(by_role(before, thread_cpu()))
        run.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=300)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--noise", type=float, default=1500.0,
                    help="noise std added to the test tone; sets segment size")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="linetap-bench-"))
    pki = PKI(tmp)
    pki.devices = {cn: pki.client(cn) for cn in DEVICES}
    pki.ingest = pki.client("ingest")
    (tmp / "broker").mkdir()
    broker = Broker(tmp / "broker", pki)
    broker.start()
    try:
        _priv, pub, *_ = practice_keys(tmp)
        box = make_box(tmp / "box", pub)
        calls = max(1, args.segments // 10)
        write_calls(box, n_calls=calls, segs=args.segments // calls, noisy=True,
                    noise_std=args.noise)
        S = box.store.m.Segment
        n = S.select().count()
        mb = sum(s.size for s in S.select()) / 1e6
        items = payloads(box)
        with Cpu(broker) as cpu_bare:
            t_bare = bare(broker, pki, items, max(20, 4 * args.window))
        # drain through a separate ingest process
        raw = upstream_raw(tmp / "up", broker, pki, [box])
        conf = tmp / "upstream.toml"
        conf.write_text(to_toml(raw))
        snaps = tmp / "ingest-threads.jsonl"
        proc = subprocess.Popen([sys.executable, "-c", INGEST_BOOT, str(snaps),
                                 "--config", str(conf)],
                                cwd=ROOT, env=dict(os.environ),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_consuming(broker, pki, tmp / "up" / "upstream.db")
        box_threads: dict = {}
        try:
            ing0 = ingest_snapshot(proc, snaps)
            with Cpu(broker, proc) as cpu_drain:
                t_drain = timed_drain(box, broker, pki, args.window, n, box_threads)
            ing_threads = by_role(ing0, ingest_snapshot(proc, snaps))
        finally:
            proc.terminate()
            proc.wait(10)
        # the same backlog again, acked by a consumer that stores nothing
        S.update(acked=False, acked_time=None).execute()
        C = box.store.m.Call
        C.update(manifest_acked=False).execute()
        nul = null_acker(broker, pki)
        try:
            with Cpu(broker) as cpu_null:
                t_null = timed_drain(box, broker, pki, args.window, n)
        finally:
            nul.disconnect()
            nul.loop_stop()
        # one ingest worker without MQTT
        from sync.upstream.ingest import Ingest
        from sync.upstream.store import open_db
        ucfg = upstream_cfg(tmp / "up2", broker, pki, [box])
        open_db(ucfg.db_url)
        ing = Ingest(ucfg)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(items), 64):      # the worker's batch size
            ing.handle_batch(items[i:i + 64])
        t_ing = time.perf_counter() - t0
        c_ing = time.process_time() - c0
    finally:
        broker.stop()
        if not args.keep:
            # ≈ 370 MB a run (the box's store, two upstreams, the broker's folder)
            shutil.rmtree(tmp, ignore_errors=True)
    # The best ratio the drain's CPU allows: its CPU seconds spread perfectly over every
    # core with no wait at all, against the bare publisher's wall time.
    cores = os.cpu_count() or 1
    ceiling = cores * t_bare / sum(cpu_drain.used.values())
    res = {"bench": "sync", "segments": n, "mb": round(mb, 2), "window": args.window,
           "bare_mb_s": round(mb / t_bare, 2), "bare_segments_s": round(n / t_bare, 1),
           "drain_mb_s": round(mb / t_drain, 2), "segments_s": round(n / t_drain, 1),
           "ingest_segments_s": round(n / t_ing, 1),
           "uploader_only_segments_s": round(n / t_null, 1),
           "uploader_only_ratio": round(t_bare / t_null, 3),
           "cpu_ceiling_ratio": round(ceiling, 3), "cores": cores,
           "bare_drain_ratio": round(t_bare / t_drain, 3)}
    print(f"{'path':<34}{'s':>8}{'MB/s':>9}{'seg/s':>9}")
    print(f"{'bare paho QoS 1 (PUBACK)':<34}{t_bare:>8.2f}{mb / t_bare:>9.2f}{n / t_bare:>9.1f}")
    print(f"{'uploader drain (app-level ack)':<34}{t_drain:>8.2f}{mb / t_drain:>9.2f}"
          f"{n / t_drain:>9.1f}")
    print(f"{'uploader drain, null acker':<34}{t_null:>8.2f}{mb / t_null:>9.2f}"
          f"{n / t_null:>9.1f}")
    print(f"{'one ingest worker (no MQTT)':<34}{t_ing:>8.2f}{mb / t_ing:>9.2f}"
          f"{n / t_ing:>9.1f}")
    print(f"{n} segments, {mb:.2f} MB, window {args.window}")
    print("CPU seconds per component (2 cores = 2 CPU-s per wall second):")
    for name, t, c in (("bare", t_bare, cpu_bare), ("drain", t_drain, cpu_drain),
                       ("null acker", t_null, cpu_null)):
        parts = "  ".join(f"{k} {v:.2f}" for k, v in c.used.items())
        print(f"  {name:<11} wall {t:.2f}  {parts}  total {sum(c.used.values()):.2f}")
    print(f"  {'ingest':<11} wall {t_ing:.2f}  ingest {c_ing:.2f}")
    print(f"  CPU ceiling of the ratio ({cores} cores x bare wall / drain CPU): {ceiling:.2f}")
    print("CPU seconds per thread role over the drain:")
    for name, roles in (("ingest", ing_threads), ("box", box_threads)):
        print(f"  {name:<11} " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(roles.items())))
    res["cpu_s"] = {"bare": {k: round(v, 2) for k, v in cpu_bare.used.items()},
                    "drain": {k: round(v, 2) for k, v in cpu_drain.used.items()},
                    "ingest_no_mqtt": round(c_ing, 2),
                    "drain_threads": {"ingest": {k: round(v, 3) for k, v in ing_threads.items()},
                                      "box": {k: round(v, 3) for k, v in box_threads.items()}}}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
