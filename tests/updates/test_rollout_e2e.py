"""One update from the operator's `update offer` to the box's `good`, through every real
piece between: the upstream store and its signed command, an ingest worker on a real
mosquitto with mutual TLS, the box's uploader verifying the command, `linetap upstream
update serve` (its own process) handing the bundle to the box's device certificate,
`rauc install` into file-backed slots through `rauc service` on a private D-Bus bus,
the health gate, and each stage back over MQTT into the rollout, which then completes.
The updater's clock is a counter the test moves (nothing sleeps to wait on it)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from recorder.runtime import healthgate
from sync.update import download
from sync.update.service import Updater
from sync.upstream import config as upstream_config
from sync.upstream import updates
from sync.upstream.store import Command, Rollout, RolloutTarget, UAudit
from tests.support.raucrig import RaucRig, release_of
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    to_toml,
    upstream_raw,
    wait_for,
    write_command_key,
)

LINETAP = str(Path(sys.executable).parent / "linetap")
IDLE = [{"line": 0, "state": "idle", "hook": "on", "ringing": False, "call": None},
        {"line": 1, "state": "idle", "hook": "on", "ringing": False, "call": None}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(device: str) -> str | None:
    t = RolloutTarget.get_or_none(RolloutTarget.device == device)
    return None if t is None else t.stage


def test_offer_to_good_through_broker_bundle_server_and_rauc(made, broker, pki, tmp_path):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub, device="dev-a")
    _key, key_pub = write_command_key(tmp_path / "command.key")
    port = _free_port()
    raw = upstream_raw(tmp_path / "up", broker, pki, [box], command_key=tmp_path / "command.key")
    raw["updates"] = {"dir": str(tmp_path / "bundles"), "url": f"https://localhost:{port}",
                      "port": port, "tls_cert": pki.server.cert, "tls_key": pki.server.key,
                      "canary_share": 1.0}
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    ucfg = upstream_config.load(str(conf))
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([LINETAP, "upstream", "--config", str(conf), "update", "serve",
                               "--bind", "127.0.0.1"], stdout=log, stderr=log)
    rig = RaucRig(tmp_path / "rig", made["keys"] / "ca.cert.pem", made["root1"],
                  formats="plain verity").start()
    worker = run = None
    try:
        wait_for(lambda: _connects(port) or server.poll() is not None, what="update serve")
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        worker = InProcWorker(ucfg)
        dev = pki.devices["dev-a"]
        ctx = download.tls_context(str(pki.ca), dev.cert, dev.key)
        clock = {"t": 1000.0, "boot": "boot-1"}
        rebooted: list[str] = []
        folder = box.data_dir / "update"

        def updater(reboot):
            return Updater(folder, status=lambda: {"lines": IDLE},
                           report=lambda obj: run.up.report_update(obj), tls=lambda: ctx,
                           rauc=rig.rauc, reboot=reboot, countdown_s=60.0,
                           monotonic=lambda: clock["t"], local_minute=lambda: 600,
                           this_boot=lambda: clock["boot"])
        up = updater(lambda: rebooted.append(rig.reboot()))
        run = Running(box, broker, pki, command_pub=key_pub, updater=up)

        # The operator offers the bundle; the worker delivers the signed command.
        r = updates.offer(ucfg, made["plain"], "2.0")
        wait_for(lambda: Command.get_or_none((Command.kind == "update")
                                             & (Command.status == "applied")) is not None,
                 what="the box applies the signed command")
        # The box's updater thread, ticked by hand: download, install, idle, reboot.
        for _ in range(12):
            up.tick()
            clock["t"] += 61.0
            if rebooted:
                break
        assert rebooted == ["B"] and release_of(rig.slots["root-b"]) == "linetap 2.0"
        wait_for(lambda: _stage("dev-a") == "rebooting", what="stages reach the rollout")
        seen = [a.detail for a in UAudit.select().where(UAudit.action == "command_queued")]
        assert [d["kind"] for d in seen].count("update") == 1      # offered once, not resent
        assert RolloutTarget.get().bytes == r.size

        # The new slot boots; the gate passes; its updater reports good.
        clock["boot"] = "boot-2"
        run.up.updater = up2 = updater(reboot=lambda: None)
        ok = healthgate.Health({"watchdog_fed": True, "alarms": {}, "lines": IDLE,
                                "sync": {"online": True}}, 2, None, True)
        assert healthgate.run(folder.parent, lines=2, sync_enabled=True, deadline_s=600,
                              rauc=rig.rauc, reboot=lambda: None, probe=lambda: ok) == "good"
        up2.tick()
        wait_for(lambda: _stage("dev-a") == "good", what="good reaches the rollout")
        # The worker's own tick finishes the rollout.
        wait_for(lambda: Rollout.get_by_id(r.id).state == "done", what="rollout done")
        actions = [a.action for a in UAudit.select().order_by(UAudit.seq)]
        assert {"update_offered", "command_queued", "update_good", "update_done"} <= set(actions)
    finally:
        if run is not None:
            run.close()
        if worker is not None:
            worker.close()
        rig.close()
        server.terminate()
        server.wait(10)
        log.close()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        time.sleep(0.1)
        return False
