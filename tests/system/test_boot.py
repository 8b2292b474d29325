"""The box as it really runs: the image booted under QEMU, real systemd starting the real
units, GPIO from the kernel's gpio-sim (driven here through its sysfs pulls) used by
gpiozero through lgpio inside the recorder's sandbox, audio from snd-aloop (a sine
played into one side, the recorder capturing from the other).

Run by ``make system-test QUICK=1`` (amd64 image under KVM) or ``make system-test``
(arm64 under TCG); skipped unless LINETAP_SYSTEM_TEST=1 and the image has been built
(firmware/build-image.sh). Needs root (debugfs/mke2fs on the copy, file owners) and, for
the quick variant, /dev/kvm. The tests share one VM and run in file order.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from vmharness import VM, Disk, NtpServer, kvm_boots_linux  # noqa: E402

ARCH = os.environ.get("LINETAP_SYSTEM_ARCH", "amd64")
IMAGE = Path(os.environ.get("LINETAP_IMAGE_DIR", REPO / "build" / "image" / ARCH))
# Seconds to the recorder running: TCG on a loaded 2-core machine took over 600 s once.
BOOT_TIMEOUT = 1200 if ARCH == "amd64" else 3600
HOOK0, BUTTON = 17, 16           # PinsConfig defaults

pytestmark = [
    pytest.mark.skipif(os.environ.get("LINETAP_SYSTEM_TEST") != "1",
                       reason="system test: run `make system-test QUICK=1`"),
    pytest.mark.skipif(not (IMAGE / "disk.img").exists(), reason=f"no image in {IMAGE}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

CONFIG = """\
[device]
id = "vm-box-1"

[audio]
lines = 1
capture_device = "plughw:CARD=Loopback,DEV=1"
playback_device = "null"
# 100 ms periods: under TCG the guest runs several times slower than a Pi, and 20 ms
# periods overrun (after which snd-aloop's capture returned EIO, see docs/image.md).
period_frames = 800
playback_lead_frames = 4800

[recording]
public_key = "/etc/linetap/practice.pub"

[retention]
# The VM's data partition stays at the image's 256 MiB (the disk file has no room for
# systemd-repart to grow it into, as a card has): the defaults (200 MB free, 64 MB
# reserve) would evict every unsynced segment at once.
min_free_mb = 20.0
reserve_mb = 16.0
"""

FIGURES: dict[str, float] = {}


def report(name: str, value: float, unit: str) -> None:
    FIGURES[name] = value
    print(f"\nFIGURE {name}: {value:.2f} {unit}")


@pytest.fixture(scope="module")
def work() -> Path:
    """Everything of this run, kept afterwards in build/system-test/ (not in pytest's
    tmp folders: other pytest sessions on the machine prune those during a long run)."""
    w = REPO / "build" / "system-test" / time.strftime("%Y%m%d-%H%M%S")
    w.mkdir(parents=True)
    print(f"\nsystem test work folder: {w}")
    return w


@pytest.fixture(scope="module")
def practice(work):
    from recorder.evidence import keys
    (work / "practice").mkdir()
    return keys.practice_keygen(work / "practice" / "practice.key")


@pytest.fixture(scope="module")
def gpio_sim_ko() -> Path:
    ko = IMAGE / "gpio-sim.ko"
    if not ko.exists():
        kver = Path(os.readlink(IMAGE / "root" / "vmlinuz")).name.removeprefix("vmlinuz-") \
            if (IMAGE / "root" / "vmlinuz").is_symlink() else \
            sorted(p.name for p in (IMAGE / "root/lib/modules").iterdir())[-1]
        subprocess.run(["bash", str(REPO / "tests/system/vm/build-gpio-sim.sh"),
                        str(IMAGE / f"builder-{ARCH}"), kver, str(ko)], check=True)
    return ko


@pytest.fixture(scope="module")
def disk(work, practice, gpio_sim_ko) -> Disk:
    d = Disk(IMAGE, work)
    d.prepare(CONFIG, Path(practice[1]).read_bytes(), gpio_sim_ko)
    return d


@pytest.fixture(scope="module")
def accel() -> bool:
    """KVM when it really boots Linux here, else TCG (said in the output)."""
    kvm = ARCH == "amd64" and os.environ.get("LINETAP_QEMU_ACCEL", "auto") != "tcg" and \
        kvm_boots_linux(IMAGE / "vmlinuz")
    print(f"\nQEMU accelerator: {'kvm' if kvm else 'tcg'} ({ARCH})")
    return kvm


@pytest.fixture(scope="module")
def vm(disk, accel):
    v = VM(disk, ARCH, kvm=accel)
    t0 = v.start()
    try:
        v.wait_shell(BOOT_TIMEOUT)
        v.wait_for("systemctl is-active linetap-recorder.service", BOOT_TIMEOUT)
        v.booted_s = time.monotonic() - t0
        yield v
    finally:
        try:   # the guest's journal, kept with the console log for reading afterwards
            (disk.work / "journal-boot1.txt").write_text(
                v.sh("journalctl -b --no-pager -o short-monotonic", timeout=120, check=False))
        except Exception:  # noqa: BLE001 - the VM may already be gone (power cut test)
            pass
        v.kill()


def pull(vm: VM, line: int, value: str) -> None:
    """Drive a gpio-sim line as the HAT's opto would: pull-down = low = active."""
    vm.sh("d=/sys/kernel/config/gpio-sim/linetap; "
          f"echo {value} > /sys/devices/platform/$(cat $d/dev_name)/$(cat $d/bank0/chip_name)"
          f"/sim_gpio{line}/pull")


def main_pid(vm: VM) -> int:
    return int(vm.sh("systemctl show -p MainPID --value linetap-recorder").strip())


def as_linetap(cmd: str) -> str:
    return ("runuser -u linetap -- /opt/linetap/venv/bin/linetap " + cmd)


def test_boots_recording_with_no_network(vm):
    nets = vm.sh("ls /sys/class/net").split()
    assert nets == ["lo"]
    assert vm.sh("systemctl is-active linetap-recorder").strip() == "active"
    us = int(vm.sh("systemctl show -p ActiveEnterTimestampMonotonic --value "
                   "linetap-recorder").strip())
    report("boot_to_recording_guest_s", us / 1e6, "s (kernel start to READY=1)")
    report("boot_to_recording_host_s", vm.booted_s, "s (QEMU launch to unit active)")
    # Nothing waits for the network or the agent.
    deps = vm.sh("systemctl show -p After --value linetap-recorder")
    assert "network-online" not in deps and "linetap-provision-agent" not in deps


def test_drivers_are_the_kernels(vm):
    log = vm.sh("journalctl -b -u linetap-test-hw --no-pager -o cat")
    print(log)
    assert "driver snd-aloop loaded" in log and "driver gpio-sim live" in log
    assert "snd_aloop" in vm.sh("lsmod") and "gpio_sim" in vm.sh("lsmod")
    pid = main_pid(vm)
    fds = vm.sh(f"ls -l /proc/{pid}/fd")
    assert "/dev/gpiochip0" in fds and "/dev/snd/pcmC0D1c" in fds, fds
    # lgpio's notification FIFO is in the unit's runtime directory, not on /.
    assert ".lgd-nfy" in vm.sh("ls -a /run/linetap")
    assert vm.sh("udevadm info -q property -n /dev/gpiochip0 | grep -c . ; "
                 "stat -c %G /dev/gpiochip0").split()[-1] == "gpio"


def test_no_swap_no_core(vm):
    assert vm.sh("cat /proc/swaps").strip().splitlines()[1:] == []
    limits = vm.sh(f"cat /proc/{main_pid(vm)}/limits")
    assert re.search(r"Max core file size\s+0\s+0", limits), limits
    assert "/dev/null" in vm.sh("readlink /etc/systemd/system/swap.target")


def test_data_partition_grown_by_repart(vm, disk):
    log = vm.sh("journalctl -b -u systemd-repart --no-pager -o cat")
    # repart counts partitions from 0: "partition 5" is p6, linetap-data, the only one.
    assert "Growing existing partition 5." in log and "Growing existing partition 4" not in log
    assert re.search(r"linetap-data .* /dev/\w+6 +256\.0M →", log), log
    assert "linetap-data" in vm.sh("lsblk -o PARTLABEL,MOUNTPOINT -n | grep /var/lib/linetap")


PRESENCE_CHECK = """
from provisioning import presence
p = presence.Presence(False, 60, hold_s=2.0, window_s=120.0)
presence.check_button(p, PIN, recorder_socket="/var/lib/linetap/run/control.sock",
                      on_open=lambda who: print("reader", who, flush=True))
print("result", p.state(), p.reason, flush=True)
""".replace("PIN", str(BUTTON))


def test_agent_reads_the_button_through_the_running_recorder(vm):
    """The recorder started without waiting for the agent, and holds the button's line
    (gpio-sim, through lgpio); the agent's presence check, run as the agent's user,
    sees a press of that line through the recorder's control socket."""
    assert "linetap-recorder.service" in vm.sh(
        "systemctl show -p After --value linetap-provision-agent")
    assert "linetap-presence" not in vm.sh("systemctl list-unit-files --no-legend 'linetap*'")
    vm.sh("cd /tmp && (runuser -u linetap -- /opt/linetap/venv/bin/python -c '"
          + PRESENCE_CHECK.replace("'", "'\\''") + "' > /run/presence-test.out 2>&1 &)")
    vm.wait_for("grep -q 'reader recorder' /run/presence-test.out", 120)
    t0 = time.monotonic()
    pull(vm, BUTTON, "pull-down")          # pressed (the button shorts to ground)
    time.sleep(3.0)
    pull(vm, BUTTON, "pull-up")
    out = vm.wait_for("grep result /run/presence-test.out", 60)
    report("presence_press_seen_through_recorder_s", time.monotonic() - t0, "s")
    assert "result active granted" in out, vm.sh("cat /run/presence-test.out")
    assert vm.sh("systemctl is-active linetap-recorder").strip() == "active"


def test_status_json_in_ram_and_idle_data_disk(vm):
    assert vm.sh("test -s /run/linetap/status.json && echo yes").strip() == "yes"
    assert vm.sh("ls /var/lib/linetap/run").strip() in ("", "control.sock")
    dev = vm.sh("readlink -f /dev/disk/by-partlabel/linetap-data").strip().split("/")[-1]

    def writes() -> int:
        return int(vm.sh(f"cat /sys/class/block/{dev}/stat").split()[4])

    vm.sh("touch /run/linetap-idle-start")
    w0 = writes()
    time.sleep(20)
    w1 = writes()
    report("idle_data_disk_writes_20s", w1 - w0, "write requests (ext4 journal included)")
    changed = vm.sh("find /var/lib/linetap -xdev -newer /run/linetap-idle-start "
                    "\\( -type f -o -type s \\) -printf '%P\\n'").split()
    print(f"files written on the data partition while idle: {changed}")
    # Only timesyncd's clock file (saved each minute) may change; the status file,
    # rewritten every second, is in /run.
    assert not [f for f in changed if f not in ("timesync/clock",)], changed
    st = vm.sh("stat -c %Y /run/linetap/status.json; date +%s").split()
    assert int(st[1]) - int(st[0]) <= 5      # and it is being rewritten there


def test_call_recorded_sealed_and_verified(vm):
    vm.sh("(speaker-test -D plughw:CARD=Loopback,DEV=0 -c 1 -r 8000 -t sine -f 700 "
          ">/dev/null 2>&1 &)")
    pull(vm, HOOK0, "pull-down")          # off-hook: an outbound call starts
    time.sleep(8)
    pull(vm, HOOK0, "pull-up")            # on-hook
    out = vm.wait_for(as_linetap("calls --data-dir /var/lib/linetap --json")
                      + " | grep -q call_id && " + as_linetap(
                          "calls --data-dir /var/lib/linetap --json"), 60)
    calls = json.loads(out)
    assert len(calls) >= 1, out
    print(json.dumps(calls, indent=1)[:2000])
    ver = vm.wait_for(as_linetap("verify --data-dir /var/lib/linetap"), 60)
    print(ver)


def test_watchdog_restarts_a_hung_recorder(vm):
    pid = main_pid(vm)
    n0 = int(vm.sh("systemctl show -p NRestarts --value linetap-recorder").strip())
    vm.sh(f"kill -STOP {pid}")
    t0 = time.monotonic()
    vm.wait_for(f"test $(systemctl show -p NRestarts --value linetap-recorder) -gt {n0} && "
                "systemctl is-active linetap-recorder", 120, interval=1)
    report("hung_recorder_restarted_after_s", time.monotonic() - t0, "s (WatchdogSec=30)")
    assert main_pid(vm) != pid
    log = vm.sh("journalctl -b --no-pager -o cat "
                "| grep -i -E 'linetap-recorder.*(watchdog|abort|signal)' "
                "|| journalctl -b --no-pager -o short-monotonic | tail -n 60", check=False)
    print(log)
    assert re.search(r"linetap-recorder\.service: Watchdog timeout", log, re.I), log
    # LimitCORE=0: the watchdog's SIGABRT left no core anywhere writable.
    assert vm.sh("find /run /var/lib/linetap /tmp -name 'core*' -type f 2>/dev/null").strip() == ""


def test_power_cut_loses_at_most_2s(vm, disk, practice, work):
    pull(vm, HOOK0, "pull-down")
    t_on = time.monotonic()
    time.sleep(10)
    vm.sh("true")
    t_cut = time.monotonic()
    vm.kill()                                  # no shutdown, no flush in the guest
    talked = t_cut - t_on
    # Power back: the box boots, recovers the cut call, and is shut down cleanly.
    v2 = VM(disk, ARCH, kvm=vm.kvm)
    v2.start()
    try:
        v2.wait_shell(BOOT_TIMEOUT)
        v2.wait_for("systemctl is-active linetap-recorder.service", BOOT_TIMEOUT)
        time.sleep(3)
    finally:
        v2.poweroff()
    data = disk.extract_data(work / "data")
    out = work / "export"
    r = subprocess.run([sys.executable, "-m", "recorder.cli", "export", "--data-dir", str(data),
                        "--key", str(practice[0]), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    metas = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert metas, r.stdout
    durations = sorted(float(m.get("duration_s") or 0.0) for m in metas)
    cut = durations[-1]
    report("power_cut_call_kept_s", cut, f"s of {talked:.2f} s off-hook")
    report("power_cut_loss_s", talked - cut, "s")
    assert talked - cut <= 2.0


def test_call_times_re_anchored_after_ntp_sync(disk, accel, work):
    """A box that boots with a wrong clock (no RTC, no saved time) records a call, then
    reaches an NTP server (Debian's chronyd on the host, in a network namespace of the
    test's own: no other network); timesyncd syncs and the recorder re-anchors the
    call's times to the right ones."""
    disk.forget_saved_clock()
    real = time.time()
    rtc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(real - 2 * 86400))
    ntp = NtpServer(work).create()
    v3 = VM(disk, ARCH, kvm=accel, netns=ntp.netns, rtc_base=rtc)
    try:
        v3.start()
        v3.wait_shell(BOOT_TIMEOUT)
        v3.wait_for("systemctl is-active linetap-recorder.service", BOOT_TIMEOUT)
        skew = float(v3.sh("date +%s.%N")) - time.time()
        report("clock_skew_at_boot_s", skew, "s (guest minus host)")
        assert skew < -3600, skew
        assert v3.sh("test -e /run/systemd/timesync/synchronized && echo synced || "
                     "echo unsynced").strip() == "unsynced"
        cmd = as_linetap("calls --data-dir /var/lib/linetap --json")
        known = {c["call_id"] for c in json.loads(v3.sh(cmd))}      # the earlier boots'
        v3.sh("(speaker-test -D plughw:CARD=Loopback,DEV=0 -c 1 -r 8000 -t sine -f 700 "
              ">/dev/null 2>&1 &)")
        pull(v3, HOOK0, "pull-down")
        time.sleep(6)
        pull(v3, HOOK0, "pull-up")
        before = []
        deadline = time.monotonic() + 60
        while not before and time.monotonic() < deadline:
            before = [c for c in json.loads(v3.sh(cmd)) if c["call_id"] not in known]
            time.sleep(1)
        assert before, "no call recorded before the sync"
        # Stamped with the wrong clock (the box believes it is days ago).
        assert all(parse_iso(c["start"]) < real - 3600 for c in before), before
        ntp.serve()
        t_sync = time.monotonic()
        v3.sh("systemctl restart systemd-timesyncd")
        v3.wait_for("test -e /run/systemd/timesync/synchronized", 180, interval=1)
        log = v3.wait_for("journalctl -b -u linetap-recorder -o cat "
                          "| grep 're-anchored by'", 60, interval=1)
        report("ntp_sync_to_reanchor_s", time.monotonic() - t_sync, "s")
        step = float(re.search(r"re-anchored by ([+-][0-9.]+) s", log).group(1))
        report("reanchor_step_s", step, "s")
        assert abs(step + skew) < 120, (step, skew)
        assert abs(float(v3.sh("date +%s.%N")) - time.time()) < 30
        after = json.loads(v3.sh(cmd))
        print(json.dumps({"before": before, "after": after}, indent=1)[:3000])
        ids = {c["call_id"] for c in before}
        starts = [parse_iso(c["start"]) for c in after if c["call_id"] in ids]
        # The same calls, now at the right time (re-stamped by the writer).
        assert len(starts) == len(ids) and all(abs(t - real) < 3600 for t in starts), after
    finally:
        try:
            (disk.work / "journal-clock.txt").write_text(
                v3.sh("journalctl -b --no-pager -o short-monotonic", timeout=120,
                      check=False))
        except Exception:  # noqa: BLE001 - the VM may be gone
            pass
        v3.poweroff()
        ntp.close()


def parse_iso(s: str) -> float:
    from recorder.timebase import parse_iso as p
    return p(s)
