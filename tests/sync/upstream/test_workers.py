"""Many workers: three ``linetap ingest`` processes on one MQTT v5 shared subscription
(clean sessions), metadata in PostgreSQL, three boxes draining their backlogs; one
worker is SIGKILLed mid-stream. Nothing lost, nothing stored twice: the rows and the
object store's copies (every S3 version counts) are each exactly the boxes' segments,
on the filesystem store and on S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sync.upstream import config as upstream_config
from sync.upstream.objectstore import TEMP_MAX_AGE_S, open_objects
from sync.upstream.store import Problem, UCall, USegment, is_complete, open_db
from tests.support.syncbox import (
    Running,
    make_box,
    practice_keys,
    stored_objects,
    to_toml,
    unacked,
    upstream_raw,
    wait_for,
    write_calls,
)


def _connected(broker, n) -> bool:
    return broker.log().count("New client connected") >= n


def _start_workers(conf, n: int, logs) -> list[subprocess.Popen]:
    """``n`` ``linetap ingest`` processes on ``conf``, each logging to ``logs/workerI.log``."""
    return [subprocess.Popen([sys.executable, "-m", "sync.upstream.ingest", "--config",
                              str(conf)], stdout=subprocess.DEVNULL,
                             stderr=open(logs / f"worker{i}.log", "wb"))
            for i in range(n)]


def _stop_workers(procs) -> None:
    """SIGTERM the living ones, and SIGKILL any that does not stop within 15 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.mark.slow
@pytest.mark.usefixtures("objects_backend")
def test_three_workers_one_killed_mid_stream(tmp_path, broker, pki, postgres):
    _priv, pub, *_ = practice_keys(tmp_path)
    boxes = [make_box(tmp_path / d, pub, device=d) for d in ("dev-a", "dev-b", "dev-c")]
    for i, b in enumerate(boxes):
        # dev-a's segments are noisy (> 128 KiB: two chunks, which may reach two workers)
        write_calls(b, n_calls=6, segs=5, noisy=i == 0, seed=i)
    segments, calls = 3 * 6 * 5, 3 * 6
    raw = upstream_raw(tmp_path / "up", broker, pki, boxes,
                       db_url=postgres.new_db("workers"))
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    ucfg = upstream_config.from_dict(raw)
    open_db(ucfg.db_url)
    procs = _start_workers(conf, 3, tmp_path)
    runs, victim = [], procs[1]
    try:
        wait_for(lambda: _connected(broker, 3), what="three workers connected")
        runs = [Running(b, broker, pki, window=8, ack_timeout_s=2.0) for b in boxes]
        # Mid-stream: some stored, most not.
        wait_for(lambda: USegment.select().count() >= segments // 4, what="a quarter stored")
        assert USegment.select().count() < segments
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        wait_for(lambda: all(unacked(b.store) == 0 for b in boxes), timeout=180,
                 what="every box drained after the kill")
    finally:
        for r in runs:
            r.close()
        _stop_workers(procs)
    for p in (procs[0], procs[2]):
        assert p.returncode == 0, (tmp_path / f"worker{procs.index(p)}.log").read_text()[-2000:]
    # The killed worker may have left a temp file of a write it never finished (only
    # it: the others stopped cleanly); the hourly clean-up removes it, nothing else.
    objects = open_objects(ucfg)
    temps = [k for k, _m in objects.walk("tmp")]
    assert all(k.split("/")[1].startswith(f"{victim.pid}.") for k in temps), temps
    assert objects.clean_temp(TEMP_MAX_AGE_S, now=time.time() + TEMP_MAX_AGE_S) == len(temps)
    assert USegment.select().count() == segments
    assert len(stored_objects(ucfg, "seg")) == segments, "a segment was stored twice"
    assert len(stored_objects(ucfg, "man")) == calls
    assert UCall.select().count() == calls and all(is_complete(r) for r in UCall.select())
    assert Problem.select().count() == 0


@pytest.mark.slow
def test_failed_batches_do_not_starve_a_worker(tmp_path, broker, pki):
    """The object store fails for the first 150 writes (more messages than the broker's
    100 in-flight slots per client): those batches are not acked, the box resends, and
    once the store is back the same worker drains everything. Before the fix the
    failed messages were never PUBACKed and the broker stopped sending to the worker."""
    from tests.support.syncbox import InProcWorker, upstream_cfg
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=40, segs=4, seg_s=1.0)
    ucfg = upstream_cfg(tmp_path / "up", broker, pki, [box])
    worker = InProcWorker(ucfg)
    real, fails = worker.w.ingest.objects.put, {"n": 0}

    def flaky(*a, **k):
        if fails["n"] < 150:
            fails["n"] += 1
            raise OSError("object store unavailable")
        return real(*a, **k)

    worker.w.ingest.objects.put = flaky
    run = Running(box, broker, pki, window=64, ack_timeout_s=2.0)
    try:
        wait_for(lambda: unacked(box.store) == 0, timeout=120, what="drain after failures")
    finally:
        run.close()
        worker.close()
    assert fails["n"] == 150
    assert USegment.select().count() == 160 and len(stored_objects(ucfg, "seg")) == 160


class _Presence:
    """The workers' retained presence (``<prefix>/_ingest/<client id>/status``), watched
    with the ingest's certificate: "online" once a worker has subscribed, cleared by its
    will when the broker has dropped it."""

    def __init__(self, broker, pki):
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        self.online: dict[str, bool] = {}
        self.lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="presence-watch",
                        protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(pki.ca), certfile=pki.ingest.cert, keyfile=pki.ingest.key)
        c.on_connect = lambda cl, *_: cl.subscribe("linetap/_ingest/+/status", qos=1)
        c.on_message = self._message
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        self.c = c

    def _message(self, client, userdata, msg):
        with self.lock:
            self.online[msg.topic.split("/")[2]] = msg.payload == b"online"

    def count(self) -> int:
        with self.lock:
            return sum(self.online.values())

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.slow
def test_a_killed_worker_is_handed_nothing(tmp_path, broker, pki, postgres):
    """Clean sessions: once a worker is SIGKILLed, the broker gives its share to the
    living one. The box never resends (ack timeout of an hour), so a message handed to
    a dead member's session (what a persistent session does) would never be acked."""
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=6, segs=5)
    raw = upstream_raw(tmp_path / "up", broker, pki, [box], db_url=postgres.new_db("clean"))
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    open_db(upstream_config.from_dict(raw).db_url)
    presence = _Presence(broker, pki)
    procs = _start_workers(conf, 2, tmp_path)
    run = None
    try:
        wait_for(lambda: presence.count() == 2, what="both workers subscribed")
        os.kill(procs[0].pid, signal.SIGKILL)
        assert procs[0].wait(10) == -signal.SIGKILL
        wait_for(lambda: presence.count() == 1, what="the broker dropped the killed worker")
        run = Running(box, broker, pki, window=8, ack_timeout_s=3600.0)
        wait_for(lambda: unacked(box.store) == 0, timeout=120,
                 what="every segment acked by the living worker, none resent")
    finally:
        if run is not None:
            run.close()
        presence.close()
        _stop_workers(procs)
    assert USegment.select().count() == 30 and UCall.select().count() == 6
