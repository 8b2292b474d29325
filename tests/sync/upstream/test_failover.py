"""PostgreSQL failover as docs/sync.md describes it ("Running the upstream on several
machines"): a primary with a synchronous streaming replica; the primary's machine is
lost mid-stream (stopped at once, its data gone); the replica is promoted and the
worker pointed at it (what repointing pgbouncer or a DNS name does). Every segment the
box had acked is on the promoted replica, the rest arrive by the box's resends, and
nothing is stored twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from sync.upstream import config as upstream_config
from sync.upstream.store import Problem, UCall, USegment, open_db
from tests.support.broker import PG_BIN, Postgres, Replica
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


def _worker(raw, tmp_path, name):
    conf = tmp_path / f"{name}.toml"
    conf.write_text(to_toml(raw))
    return subprocess.Popen([sys.executable, "-m", "sync.upstream.ingest", "--config",
                             str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / f"{name}.log", "wb"))


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_primary_lost_replica_promoted(tmp_path, broker, pki):
    if not (PG_BIN / "pg_basebackup").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    primary = Postgres()
    primary.start()
    replica = Replica(primary)
    primary_up, proc, run = True, None, None
    try:
        url = primary.new_db("failover")
        replica.start()
        replica.make_synchronous()
        _priv, pub, *_ = practice_keys(tmp_path)
        box = make_box(tmp_path / "box", pub)
        write_calls(box, n_calls=8, segs=5)
        total = 40
        raw = upstream_raw(tmp_path / "up", broker, pki, [box], db_url=url)
        open_db(url)
        proc = _worker(raw, tmp_path, "worker-primary")
        run = Running(box, broker, pki, window=4, ack_timeout_s=2.0)
        S = box.store.m.Segment
        wait_for(lambda: S.select().where(S.acked == True).count() >= total // 4,  # noqa: E712
                 what="a quarter acked")
        primary.stop()                 # the machine is gone: stopped at once, data removed
        primary_up = False
        acked = {(s.call_id, s.seq) for s in S.select().where(S.acked == True)}  # noqa: E712
        assert 0 < len(acked) < total
        replica.promote()
        _stop(proc)
        raw["database"]["url"] = replica.url(url.rsplit("/", 1)[1])
        proc = _worker(raw, tmp_path, "worker-replica")
        wait_for(lambda: unacked(box.store) == 0, timeout=120,
                 what="the box drained into the promoted replica")
        _stop(proc)
        assert proc.returncode == 0, (tmp_path / "worker-replica.log").read_text()[-2000:]
        open_db(raw["database"]["url"])
        stored = {(r.call, r.seq) for r in USegment.select()}
        assert acked <= stored, f"acked but lost in the failover: {acked - stored}"
        assert len(stored) == USegment.select().count() == total
        ucfg = upstream_config.from_dict(raw)
        assert len(stored_objects(ucfg, "seg")) == total
        assert UCall.select().count() == 8 and Problem.select().count() == 0
    finally:
        if run is not None:
            run.close()
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        replica.stop()
        if primary_up:
            primary.stop()
