"""The updater from signed command to reboot and back, with the real pieces: the bundle
over HTTPS with the device certificate (a client-cert server on loopback), ``rauc
install`` through ``rauc service`` on a private D-Bus bus into file-backed slots, the
never-mid-call reboot (a call during the countdown cancels it), the simulated Pi
firmware's tryboot, the health gate, and every stage reported on the way.
The clock of the countdown is a counter the test moves: nothing here sleeps to wait."""

from __future__ import annotations

import hashlib
import json

import pytest

from recorder.errors import CommandRejected
from recorder.evidence import audit
from recorder.runtime import healthgate
from sync import signed_commands as commands
from sync.update import download
from sync.update.service import Updater
from sync.uploader import Uploader
from tests.support.broker import PKI
from tests.support.bundleserver import BundleServer
from tests.support.raucrig import RaucRig, release_of
from tests.support.syncbox import box_cfg, make_box, practice_keys, write_command_key

IDLE = [{"line": 0, "state": "idle", "hook": "on", "ringing": False, "call": None},
        {"line": 1, "state": "idle", "hook": "on", "ringing": False, "call": None}]
CALL = [IDLE[0], {"line": 1, "state": "offhook", "hook": "off", "ringing": False,
                  "call": "c1"}]


class Box:
    """What the updater sees of the box: line states, a clock, reports, this boot."""

    def __init__(self):
        self.lines, self.t, self.boot = IDLE, 1000.0, "boot-1"
        self.reports: list[dict] = []
        self.online = True

    def report(self, obj: dict) -> bool:
        if self.online:
            self.reports.append(obj)
        return self.online

    def updater(self, folder, rig, ctx, reboot) -> Updater:
        return Updater(folder, status=lambda: {"lines": self.lines}, report=self.report,
                       tls=lambda: ctx, rauc=rig.rauc, reboot=reboot, countdown_s=60.0,
                       monotonic=lambda: self.t, local_minute=lambda: 600,
                       this_boot=lambda: self.boot)


@pytest.fixture
def world(made, tmp_path):
    pki = PKI(tmp_path)
    dev = pki.client("dev-a")
    ctx = download.tls_context(str(pki.ca), dev.cert, dev.key)
    rig = RaucRig(tmp_path / "rig", made["keys"] / "ca.cert.pem", made["root1"],
                  formats="plain verity").start()
    try:
        with BundleServer(pki, {"/bundles/2.0.raucb": made["plain"]}) as srv:
            yield rig, srv, ctx, tmp_path / "data" / "update"
    finally:
        rig.close()


def offer_body(made, srv, **change):
    blob = made["plain"].read_bytes()
    return {"kind": "update", "nonce": "a1" * 16, "url": srv.url("/bundles/2.0.raucb"),
            "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
            "version": "2.0", **change}


def test_from_command_to_good(made, world):
    rig, srv, ctx, folder = world
    box = Box()
    rebooted = []
    up = box.updater(folder, rig, ctx, reboot=lambda: rebooted.append(rig.reboot()))
    srv.cut_after = 20_000                      # the first download drops part-way
    assert up.offer(offer_body(made, srv)) == "update 2.0 accepted"
    up.tick()
    assert up.state.stage == "downloading" and 0 < up.state.bytes <= 20_000
    kept = up.state.bytes
    box.t += 10.0                               # the retry is due
    up.tick()                                   # resumed: downloaded
    assert up.state.stage == "downloaded"
    assert [r[1:] for r in srv.requests] == [(None, "dev-a"), (f"bytes={kept}-", "dev-a")]
    box.lines = CALL                            # a call is on when the install is done
    up.tick()
    assert up.state.stage == "installed" and up.state.to_slot == "B"
    assert release_of(rig.slots["root-b"]) == "linetap 2.0"
    assert not download.paths(folder, up.state.bundle)[1].exists()   # space given back
    up.tick()
    assert up.state.stage == "waiting_idle"     # never mid-call
    box.lines = IDLE
    up.tick()                                   # countdown starts
    box.t += 30.0
    box.lines = CALL                            # a call starts during the countdown
    up.tick()
    box.t += 60.0
    box.lines = IDLE
    up.tick()                                   # counting again, from zero
    box.t += 59.0
    up.tick()
    assert rebooted == [] and up.state.stage == "waiting_idle"
    box.t += 1.0
    up.tick()
    assert rebooted == ["B"] and up.state.stage == "rebooting"

    # The new slot boots: its recorder's updater, then the health gate.
    box.boot = "boot-2"
    up2 = box.updater(folder, rig, ctx, reboot=pytest.fail)
    up2.tick()
    assert up2.state.stage == "rebooting" and up2.health()["slot"] == "B"
    ok = healthgate.Health({"watchdog_fed": True, "alarms": {}, "lines": IDLE,
                            "sync": {"online": True}}, 2, None, True)
    assert healthgate.run(folder.parent, lines=2, sync_enabled=True, deadline_s=600,
                          rauc=rig.rauc, reboot=pytest.fail, probe=lambda: ok) == "good"
    up2.tick()
    assert up2.health() == {"slot": "B", "update": {"state": "good", "version": "2.0",
                                                      "reason": ""}}
    assert rig.firmware.autoboot()["all"] == 3
    got = [r["stage"] for r in box.reports]
    assert [s for i, s in enumerate(got) if i == 0 or s != got[i - 1]] == [
        "accepted", "downloading", "downloaded", "installing", "installed",
        "waiting_idle", "rebooting", "good"]
    assert all(r["nonce"] == "a1" * 16 and r["bundle"] == up.state.bundle
               and r["version"] == "2.0" for r in box.reports)
    assert box.reports[got.index("downloaded")]["bytes"] == up.state.size


def test_a_gate_failure_is_reported_from_the_old_slot(made, world):
    rig, srv, ctx, folder = world
    box = Box()
    up = box.updater(folder, rig, ctx, reboot=lambda: rig.reboot())
    up.offer(offer_body(made, srv))
    for _ in range(4):
        up.tick()
        box.t += 61.0
    assert up.state.stage == "rebooting" and rig.rauc.slots().booted == "B"
    box.boot, box.online = "boot-2", False      # the new slot: no link at all
    sick = healthgate.Health({"watchdog_fed": True, "alarms": {}, "lines": IDLE,
                              "sync": {"online": False}}, 2, None, True)
    clock = iter([0.0, 601.0])
    assert healthgate.run(folder.parent, lines=2, sync_enabled=True, deadline_s=600,
                          rauc=rig.rauc, reboot=rig.reboot, probe=lambda: sick,
                          monotonic=lambda: next(clock), sleep=lambda s: None) == "failed"
    assert rig.rauc.slots().booted == "A"
    box.boot, box.online = "boot-3", True       # the old slot, connected again
    up3 = box.updater(folder, rig, ctx, reboot=pytest.fail)
    up3.tick()
    assert box.reports[-1]["stage"] == "failed"
    assert "sync not connected" in box.reports[-1]["reason"]
    assert up3.health()["update"]["state"] == "failed" and up3.health()["slot"] == "A"


def test_a_wrong_hash_fails_and_another_offer_waits(made, world):
    rig, srv, ctx, folder = world
    box = Box()
    up = box.updater(folder, rig, ctx, reboot=pytest.fail)
    body = offer_body(made, srv)
    up.offer(body)
    assert "already under way" in up.offer(body)
    with pytest.raises(CommandRejected, match="still under way"):
        up.offer({**body, "sha256": "cd" * 32, "nonce": "b2" * 16})
    up.state = up.state.with_(bundle="ef" * 32)          # the command lied about the hash
    up.tick()
    assert up.state.stage == "failed" and "SHA-256 does not match" in up.state.reason
    assert box.reports[-1]["stage"] == "failed"
    assert release_of(rig.slots["root-b"]) == ""          # nothing installed
    assert up.offer({**body, "nonce": "c3" * 16}) == "update 2.0 accepted"


def test_the_uploader_routes_update_commands(tmp_path, made, world):
    """The signed command through the uploader's command path: verified, nonce kept,
    applied by the updater, refused when updates are off."""
    rig, srv, ctx, folder = world
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    key, key_pub = write_command_key(tmp_path / "cmd.key")
    cfg = box_cfg(box.data_dir, command_key=str(key_pub))
    b = Box()
    updater = b.updater(folder, rig, ctx, reboot=pytest.fail)
    env = commands.sign(key, "update", "dev-a", **{
        k: v for k, v in offer_body(made, srv).items() if k not in ("kind", "nonce")})
    Uploader(box.store, cfg, device="dev-a", data_dir=box.data_dir,
             updater=updater)._command(env)
    assert updater.state.stage == "accepted"
    assert updater.state.nonce == json.loads(json.loads(env)["body"])["nonce"]
    lone = Uploader(box.store, cfg, device="dev-a", data_dir=box.data_dir)
    env2 = commands.sign(key, "update", "dev-a", **{
        k: v for k, v in offer_body(made, srv).items() if k not in ("kind", "nonce")})
    lone._command(env2)
    entries = [e for e in audit.read(box.data_dir) if e.get("action") == "command_rejected"]
    assert entries and "updates are not enabled" in entries[-1]["detail"]["reason"]


def test_the_slot_is_asked_again_until_rauc_answers(made, tmp_path):
    """At boot the recorder may start before RAUC's service: the updater asks again."""
    rig = RaucRig(tmp_path / "rig", made["keys"] / "ca.cert.pem", made["root1"])
    box = Box()
    up = box.updater(tmp_path / "data" / "update", rig, None, reboot=pytest.fail)
    try:
        up.tick()                              # no D-Bus, no service yet
        assert up.health() == {"slot": None, "update": None}
        rig.start()
        box.t += 10.0
        up.tick()                              # not asked again this soon
        assert up.health()["slot"] is None
        box.t += 30.0
        up.tick()
        assert up.health()["slot"] == "A"
    finally:
        rig.close()
