"""Signed bundles and A/B slots with the real RAUC: ``rauc bundle`` then ``rauc info``
against the keyring; a wrong CA and a tampered bundle refused; plain bundles refused by
the box's system.conf; ``rauc install`` through ``rauc service`` on a private D-Bus bus
into file-backed slots, with the tryboot backend over a simulated Pi firmware: slot B
written and slot A untouched, the health gate marking B good, and a failed gate (or a
hang) choosing the old slot.

The install tests use plain bundles: a verity bundle is mounted through dm-verity, and
this machine's kernel has no device mapper (no /dev/mapper/control). The rig allows
plain for them and says so; test_the_box_refuses_plain_bundles proves the production
config does not. docs/updates.md lists what only a Pi can prove.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from recorder.errors import UpdateError
from recorder.runtime import healthgate
from sync.update import stages
from tests.support.raucrig import FW, RaucRig, cmdline_of, release_of, why_rauc_cannot_run

pytestmark = pytest.mark.skipif(why_rauc_cannot_run() is not None,
                                reason=f"rauc cannot run here: {why_rauc_cannot_run()}")


def info(made, bundle, *, formats=None, keyring=None):
    """``rauc info`` with the production system.conf (its keyring moved here)."""
    conf = made["d"] / f"info-{formats or 'prod'}.conf"
    c = (FW / "system.conf").read_text().replace(
        "/etc/rauc/keyring.pem", str(keyring or made["keys"] / "ca.cert.pem"))
    if formats is not None:
        c = c.replace("bundle-formats=-plain", f"bundle-formats={formats}")
    conf.write_text(c)
    return subprocess.run(["rauc", f"--conf={conf}", "info", str(bundle)],
                          capture_output=True, text=True, timeout=60)


def test_bundle_then_info_against_the_keyring(made):
    r = info(made, made["verity"])
    assert r.returncode == 0, r.stderr
    assert "Compatible: \t'linetap-pi'" in r.stdout and "Version:    \t'2.0'" in r.stdout
    assert "Bundle Format: \tverity" in r.stdout
    assert "Verified inline signature" in r.stderr


def test_a_wrong_ca_is_rejected(made):
    r = info(made, made["rogue"])
    assert r.returncode != 0
    assert "unable to get local issuer certificate" in r.stderr
    # ... and the rogue bundle does verify against its own CA: the keyring decided.
    assert info(made, made["rogue"],
                keyring=made["d"] / "rogue-keys" / "ca.cert.pem").returncode == 0


def test_a_tampered_plain_bundle_is_rejected(made, tmp_path):
    assert info(made, made["plain"], formats="plain verity").returncode == 0
    bad = tmp_path / "tampered.raucb"
    data = bytearray(made["plain"].read_bytes())
    data[len(data) // 3] ^= 0x01           # one bit inside the squashfs payload
    bad.write_bytes(bytes(data))
    r = info(made, bad, formats="plain verity")
    assert r.returncode != 0 and "signature verification failed" in r.stderr


def test_the_box_refuses_plain_bundles(made, tmp_path):
    r = info(made, made["plain"])
    assert r.returncode != 0 and "Bundle format 'plain' not allowed" in r.stderr
    rig = RaucRig(tmp_path / "rig", made["keys"] / "ca.cert.pem", made["root1"]).start()
    try:
        before = rig.slots["root-b"].read_bytes()
        with pytest.raises(UpdateError, match="plain"):
            rig.rauc.install(made["plain"])
        assert rig.slots["root-b"].read_bytes() == before
    finally:
        rig.close()


@pytest.fixture
def installed(made, tmp_path):
    """A box on slot A with bundle 2.0 installed into slot B (not yet booted)."""
    rig = RaucRig(tmp_path / "rig", made["keys"] / "ca.cert.pem", made["root1"],
                  formats="plain verity").start()
    try:
        a_before = hashlib.sha256(rig.slots["root-a"].read_bytes()).hexdigest()
        rig.boot_a_before = hashlib.sha256(rig.slots["boot-a"].read_bytes()).hexdigest()
        assert rig.rauc.slots().booted == "A"
        rig.rauc.install(made["plain"])
        rig.a_before = a_before
        yield rig
    finally:
        rig.close()


def test_install_writes_slot_b_and_leaves_a_untouched(installed):
    rig = installed
    assert release_of(rig.slots["root-b"]) == "linetap 2.0"
    assert release_of(rig.slots["root-a"]) == "linetap 1.0"
    assert hashlib.sha256(rig.slots["root-a"].read_bytes()).hexdigest() == rig.a_before
    assert hashlib.sha256(rig.slots["boot-a"].read_bytes()).hexdigest() == rig.boot_a_before
    # Images made from slot A's partitions now name slot B's (the post-install handler).
    assert cmdline_of(rig.slots["boot-b"]) == \
        "console=serial0,115200 ro rootwait root=PARTLABEL=linetap-root-b rauc.slot=B"
    fstab = release_of(rig.slots["root-b"], "/etc/fstab").splitlines()
    assert fstab[0].split()[:2] == ["PARTLABEL=linetap-root-b", "/"]
    assert fstab[1].split()[:2] == ["PARTLABEL=linetap-boot-b", "/boot/firmware"]
    assert fstab[2].startswith("tmpfs  /tmp")                 # other mounts kept
    assert release_of(rig.slots["root-b"], "/etc/linetap-slot") == "b"
    # Armed for one trial boot: B boots next, but the firmware's default is still A.
    assert rig.firmware.tryboot_flag()
    assert rig.firmware.autoboot() == {"all": 2, "tryboot": 3}
    assert rig.backend("get-primary") == "B"
    assert rig.backend("get-state", "B") == "bad" and rig.backend("get-state", "A") == "good"


def healthy(lines=2):
    return healthgate.Health({"watchdog_fed": True, "alarms": {},
                              "lines": [{"line": n} for n in range(lines)],
                              "sync": {"online": True}}, lines, None, True)


def pending(rig, folder):
    """The updater's saved state, as it is when it reboots into slot B."""
    stages.save(folder, stages.UpdateState(
        nonce="n" * 32, bundle="ab" * 32, version="2.0", url="https://u/b", size=1,
        stage="rebooting", from_slot="A", to_slot="B", boot_id="boot-1"))


def test_the_health_gate_marks_the_new_slot_good(installed, tmp_path):
    rig, data = installed, tmp_path / "data"
    pending(rig, data / "update")
    assert rig.reboot() == "B"
    assert rig.rauc.slots().trial
    verdict = healthgate.run(data, lines=2, sync_enabled=True, deadline_s=600, rauc=rig.rauc,
                             reboot=pytest.fail, probe=healthy)
    assert verdict == "good"
    assert rig.firmware.autoboot() == {"all": 3, "tryboot": 2}     # committed
    assert rig.backend("get-state", "B") == "good" and not rig.rauc.slots().trial
    assert rig.reboot() == "B"            # an ordinary reboot stays on the new slot
    st = stages.load(data / "update")
    assert stages.settle(st, "B", "boot-3", stages.load_gate(data / "update")) == ("good", "")


def test_a_failed_gate_chooses_the_old_slot(installed, tmp_path):
    rig, data = installed, tmp_path / "data"
    pending(rig, data / "update")
    assert rig.reboot() == "B"
    sick = healthgate.Health({"watchdog_fed": True, "alarms": {}, "lines": [{"line": 0}],
                              "sync": {"online": True}}, 2, None, True)
    clock = iter([0.0, 10.0, 700.0])
    rebooted = []
    verdict = healthgate.run(data, lines=2, sync_enabled=True, deadline_s=600, rauc=rig.rauc,
                             reboot=lambda: rebooted.append(rig.reboot()),
                             probe=lambda: sick, monotonic=lambda: next(clock),
                             sleep=lambda s: None)
    assert verdict == "failed" and rebooted == ["A"]
    assert rig.rauc.slots().booted == "A"
    assert rig.firmware.autoboot() == {"all": 2, "tryboot": 3}
    assert rig.backend("get-state", "B") == "bad" and not rig.firmware.tryboot_flag()
    gate = stages.load_gate(data / "update")
    assert gate["stage"] == "failed" and "capture not live on line(s) 1" in gate["reason"]
    st = stages.load(data / "update")
    assert stages.settle(st, "A", "boot-3", gate)[0] == "failed"


def test_a_slot_that_hangs_falls_back_to_the_old_one(installed, tmp_path):
    rig = installed
    assert rig.reboot() == "B"
    # The new slot hangs before its gate runs: the hardware watchdog resets the board.
    assert rig.reboot() == "A"
    assert rig.backend("get-state", "B") == "bad"
    st = stages.UpdateState(nonce="n" * 32, bundle="ab" * 32, version="2.0", url="https://u",
                            size=1, stage="rebooting", from_slot="A", to_slot="B",
                            boot_id="boot-1")
    stage, reason = stages.settle(st, rig.rauc.slots().booted, "boot-3", None)
    assert stage == "failed" and "came back up in slot A" in reason


def test_the_update_cli_shows_the_slots_and_a_gate_on_the_default_slot_stays(
        installed, tmp_path, monkeypatch, capsys):
    """``linetap update status`` and ``linetap update gate`` against the rig's RAUC: on
    the committed slot a failing gate logs and reboots nothing."""
    import json

    from recorder.cli.main import main
    rig = installed
    for k in ("PATH", "DBUS_SYSTEM_BUS_ADDRESS", "LINETAP_AUTOBOOT_DEV", "LINETAP_FDT",
              "LINETAP_TEST_REBOOT_FLAGS"):
        monkeypatch.setenv(k, rig.env[k])
    common = ["update", "--data-dir", str(tmp_path / "data"), "--rauc-conf", str(rig.conf)]
    assert main([*common, "status"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["slots"]["booted"] == "A" and out["slots"]["primary"] == "B"
    assert out["update"] is None
    assert main([*common, "gate", "--deadline", "0"]) == 0      # no recorder: unhealthy
    assert "health gate: unhealthy" in capsys.readouterr().out
    assert rig.firmware.autoboot() == {"all": 2, "tryboot": 3}
    assert rig.firmware.tryboot_flag()                             # B still armed
