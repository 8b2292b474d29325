"""Firmware: the overlay compiles cleanly, scripts pass shellcheck, install.sh lays out
a root correctly (twice, idempotently), and the data partition is added to an image."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recorder.config import PinsConfig

REPO = Path(__file__).resolve().parents[2]
FW = REPO / "firmware"
DTS = FW / "overlay" / "linetap-line-overlay.dts"
SCRIPTS = [FW / "install.sh", FW / "add-data-partition.sh",
           FW / "pi-gen" / "stage-linetap" / "prerun.sh",
           FW / "pi-gen" / "stage-linetap" / "00-install-linetap" / "01-run.sh",
           FW / "pi-gen" / "stage-linetap" / "00-install-linetap" / "02-run-chroot.sh"]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed")
    return path


def test_overlay_compiles_without_warnings(tmp_path):
    need("dtc")
    out = tmp_path / "linetap-line.dtbo"
    r = subprocess.run(["dtc", "-@", "-I", "dts", "-O", "dtb", "-o", str(out), str(DTS)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"dtc warnings:\n{r.stderr}"
    assert out.read_bytes()[:4] == b"\xd0\x0d\xfe\xed"
    # Decompile and check the pins against the config defaults.
    back = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(out)], capture_output=True,
                          text=True, timeout=60).stdout
    assert "__fixups__" in back and "__symbols__" in back
    pins = PinsConfig()
    inputs = [*pins.hook, *pins.ring, pins.pause_button]
    outputs = [*pins.rec_led, pins.status_led]
    text = DTS.read_text()
    assert f"brcm,pins = <{' '.join(map(str, inputs))}>;" in text
    assert f"brcm,pins = <{' '.join(map(str, outputs))}>;" in text
    for p in outputs:
        assert f"gpios = <&gpio {p} 0>;" in text
    assert 'linux,default-trigger = "heartbeat";' in text


def test_boot_config_pins_match_config_defaults():
    pins = PinsConfig()
    text = (FW / "boot" / "config.txt").read_text()
    inputs = [*pins.hook, *pins.ring, pins.pause_button]
    outputs = [*pins.rec_led, pins.status_led]
    assert f"gpio={','.join(map(str, inputs))}=ip,pu" in text
    assert f"gpio={','.join(map(str, outputs))}=op,dl" in text
    for line in ("dtoverlay=dwc2,dr_mode=peripheral", "dtoverlay=linetap-line",
                 "dtoverlay=hifiberry-dacplusadc"):
        assert line in text.splitlines()
    assert "modules-load=dwc2,g_serial" in (FW / "boot" / "cmdline.txt").read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    need("shellcheck")
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_shellcheck_pi_gen_config():
    need("shellcheck")
    r = subprocess.run(["shellcheck", "-s", "bash", str(FW / "pi-gen" / "config")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def make_root(tmp_path) -> Path:
    """A scratch root shaped like Raspberry Pi OS Lite where install.sh touches it."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "etc" / "fstab").write_text(
        "proc            /proc           proc    defaults          0       0\n"
        "PARTUUID=4e639091-01  /boot/firmware  vfat    defaults          0       2\n"
        "PARTUUID=4e639091-02  /               ext4    defaults,noatime  0       1\n")
    (root / "boot" / "firmware" / "cmdline.txt").write_text(
        "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
        "fsck.repair=yes rootwait rw\n")
    (root / "boot" / "firmware" / "config.txt").write_text(
        "[all]\narm_64bit=1\ndtoverlay=vc4-kms-v3d\n")
    return root


def run_install(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(FW / "install.sh"), "--root", str(root), "--src",
                           str(REPO), "--python", sys.executable, "--link-src"],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    need("dtc")
    tmp = tmp_path_factory.mktemp("install")
    root = make_root(tmp)
    r = run_install(root)
    assert r.returncode == 0, r.stdout + r.stderr
    return root


@pytest.mark.slow   # install.sh builds a venv (about 30 s)
def test_install_source_and_venv(installed):
    opt = installed / "opt" / "linetap"
    assert (opt / "src" / "recorder" / "cli" / "main.py").is_file()
    assert (opt / "src" / "firmware" / "install.sh").is_file()
    assert not (opt / "src" / ".git").exists()
    entry = (opt / "venv" / "bin" / "linetap").read_text()
    assert entry.startswith("#!/opt/linetap/venv/bin/python\n")
    assert "from recorder.cli import main" in entry
    assert "from provisioning.client import cli_main" in \
        (opt / "venv" / "bin" / "linetap-provision").read_text()
    pth = list((opt / "venv").rglob("linetap.pth"))
    assert len(pth) == 1 and pth[0].read_text().strip() == "/opt/linetap/src"
    # The venv's interpreter runs and imports our package from the installed source.
    r = subprocess.run([str(opt / "venv" / "bin" / "python"), "-c",
                        "import provisioning.protocol as p; print(p.VERSION)"],
                       capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(opt / "src"), "PATH": os.environ["PATH"]})
    assert r.stdout.strip() == "1", r.stderr


@pytest.mark.slow   # install.sh builds a venv (about 30 s)
def test_install_user(installed):
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers not installed")
    passwd = (installed / "etc" / "passwd").read_text()
    assert re.search(r"^linetap:x:\d+:\d+:.*:/var/lib/linetap:/usr/sbin/nologin$", passwd,
                     re.M)
    group = (installed / "etc" / "group").read_text()
    for g in ("gpio", "audio", "dialout"):
        assert re.search(rf"^{g}:x:\d+:.*\blinetap\b", group, re.M), g
    assert (installed / "usr/lib/sysusers.d/linetap.conf").is_file()


@pytest.mark.slow   # install.sh builds a venv (about 30 s)
def test_install_units_enabled(installed):
    sd = installed / "etc" / "systemd" / "system"
    for unit in ("linetap-recorder.service", "linetap-provision-agent.service"):
        assert (sd / unit).read_text() == (REPO / "systemd" / unit).read_text()
    assert (sd / "multi-user.target.wants" / "linetap-recorder.service").is_symlink()
    # Swap, fake-hwclock and the NTP wait are masked whatever the base image holds.
    for unit in ("dphys-swapfile.service", "fake-hwclock.service", "swap.target",
                 "systemd-time-wait-sync.service"):
        assert os.readlink(sd / unit) == "/dev/null", unit
    assert (installed / "etc/systemd/system.conf.d/linetap-watchdog.conf").is_file()
    assert (installed / "usr/lib/udev/rules.d/60-linetap-gpio.rules").is_file()
    assert (installed / "usr/lib/repart.d/50-linetap-data.conf").is_file()
    link = sd / "multi-user.target.wants" / "linetap-recorder.service"
    assert os.readlink(link) == "/etc/systemd/system/linetap-recorder.service"
    link = sd / "dev-ttyGS0.device.wants" / "linetap-provision-agent.service"
    assert os.readlink(link) == "/etc/systemd/system/linetap-provision-agent.service"
    assert (installed / "etc/polkit-1/rules.d/50-linetap.rules").is_file()
    assert (installed / "usr/lib/tmpfiles.d/linetap.conf").is_file()
    # RAUC (docs/updates.md): the health gate runs at every boot; config, backend, service.
    link = sd / "multi-user.target.wants" / "linetap-mark-good.service"
    assert os.readlink(link) == "/etc/systemd/system/linetap-mark-good.service"
    assert (installed / "etc/rauc/system.conf").read_text() == \
        (REPO / "firmware/rauc/system.conf").read_text()
    assert os.access(installed / "usr/lib/linetap/rauc-tryboot-backend", os.X_OK)
    assert (sd / "rauc.service").is_file()
    assert (sd / "multi-user.target.wants" / "rauc.service").is_symlink()
    assert (installed / "etc/dbus-1/system.d/de.pengutronix.rauc.conf").is_file()
    assert "Storage=volatile" in \
        (installed / "etc/systemd/journald.conf.d/linetap.conf").read_text()
    assert os.readlink(installed / "etc" / "linetap") == "/var/lib/linetap/config"


@pytest.mark.slow   # install.sh builds a venv (about 30 s)
def test_install_read_only_root(installed):
    fstab = (installed / "etc" / "fstab").read_text()
    root_line = next(ln for ln in fstab.splitlines() if re.match(r"\S+\s+/\s", ln))
    assert root_line.split()[3] == "defaults,noatime,ro"
    mounts = {ln.split()[1]: ln.split() for ln in fstab.splitlines()
              if ln.strip() and not ln.startswith("#")}
    assert mounts["/boot/firmware"][3] == "defaults,ro"
    assert mounts["/var/lib/linetap"][0] == "LABEL=LTDATA"
    assert mounts["/var/lib/linetap"][2] == "ext4"
    data_opts = mounts["/var/lib/linetap"][3].split(",")
    assert "nofail" in data_opts and "x-systemd.growfs" in data_opts
    for tmpfs in ("/tmp", "/var/tmp", "/var/log"):
        assert mounts[tmpfs][2] == "tmpfs"
    # timesyncd's clock file is on the data partition, not in RAM.
    ts = mounts["/var/lib/systemd/timesync"]
    assert ts[0] == "/var/lib/linetap/timesync" and "bind" in ts[3].split(",")
    # The mount points exist in the image: the read-only root cannot make one at boot
    # (the booted image's timesyncd failed on exactly this).
    for point in ("/var/lib/linetap", "/var/lib/systemd/timesync"):
        assert (installed / point.lstrip("/")).is_dir(), point
    cmdline = (installed / "boot/firmware/cmdline.txt").read_text()
    assert cmdline.count("\n") == 1
    args = cmdline.split()
    assert "ro" in args and "rw" not in args and "modules-load=dwc2,g_serial" in args
    config = (installed / "boot/firmware/config.txt").read_text()
    assert config.startswith("[all]\narm_64bit=1\n")
    # The image's KMS overlay loses its HDMI audio card, once.
    assert "dtoverlay=vc4-kms-v3d,noaudio\n" in config
    kms = [ln for ln in config.splitlines() if ln.startswith("dtoverlay=vc4-kms-v3d")]
    assert kms == ["dtoverlay=vc4-kms-v3d,noaudio"]
    assert "dtoverlay=linetap-line" in config
    dtbo = installed / "boot/firmware/overlays/linetap-line.dtbo"
    assert dtbo.read_bytes()[:4] == b"\xd0\x0d\xfe\xed"


@pytest.mark.slow   # install.sh builds a venv (about 30 s)
def test_install_is_idempotent(installed):
    before = {p: p.read_bytes() for p in (installed / "etc" / "fstab",
                                          installed / "boot/firmware/cmdline.txt",
                                          installed / "boot/firmware/config.txt",
                                          installed / "etc" / "passwd")}
    r = run_install(installed)
    assert r.returncode == 0, r.stderr
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} changed on a second run"


def test_install_refuses_bad_arguments(tmp_path):
    r = subprocess.run(["bash", str(FW / "install.sh"), "--root", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--src is required" in r.stderr
    r = subprocess.run(["bash", str(FW / "install.sh"), "--root", str(tmp_path), "--src",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "pyproject.toml" in r.stderr


@pytest.mark.slow   # install.sh builds a venv (about 30 s)
def test_installed_units_verify(installed, tmp_path):
    """The units as installed verify against the distribution's units in that root."""
    need("systemd-analyze")
    sysunits = next((d for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                     if (d / "sysinit.target").exists()), None)
    if sysunits is None:
        pytest.skip("no systemd unit directory")
    root = tmp_path / "vroot"
    shutil.copytree(installed / "etc", root / "etc", symlinks=True)
    shutil.copytree(sysunits, root / "usr/lib/systemd/system", symlinks=True)
    stub = root / "opt/linetap/venv/bin/linetap"
    stub.parent.mkdir(parents=True)
    shutil.copy(installed / "opt/linetap/venv/bin/linetap", stub)
    shutil.copytree(installed / "opt/linetap/src/firmware", root / "opt/linetap/src/firmware")
    for unit in ("linetap-recorder.service", "linetap-provision-agent.service"):
        r = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                            f"/etc/systemd/system/{unit}"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert "linetap" not in r.stderr, r.stderr


def test_add_data_partition(tmp_path):
    need("sfdisk")
    need("mke2fs")
    img = tmp_path / "linetap.img"
    with open(img, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["sfdisk", "-q", str(img)], input="start=8192, size=32768, type=c\n"
                   "start=40960, size=65536, type=83\n", text=True, check=True, timeout=60)
    r = subprocess.run(["bash", str(FW / "add-data-partition.sh"), str(img), "16"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    dump = subprocess.run(["sfdisk", "--dump", str(img)], capture_output=True, text=True,
                          check=True).stdout
    m = re.search(r"img3 : start=\s*(\d+), size=\s*(\d+), type=83", dump)
    assert m, dump
    start, size = int(m.group(1)), int(m.group(2))
    assert start % 8192 == 0 and start >= 40960 + 65536 and size == 16 * 2048
    part = tmp_path / "p3.img"
    with open(img, "rb") as f:
        f.seek(start * 512)
        part.write_bytes(f.read(size * 512))
    if shutil.which("e2label"):
        label = subprocess.run(["e2label", str(part)], capture_output=True, text=True).stdout
        assert label.strip() == "LTDATA"
    if shutil.which("debugfs"):
        ls = subprocess.run(["debugfs", "-R", "ls /", str(part)], capture_output=True,
                            text=True).stdout
        for d in ("config", "keys", "run"):
            assert d in ls
    # A second run refuses rather than stacking partitions.
    r = subprocess.run(["bash", str(FW / "add-data-partition.sh"), str(img)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "already" in r.stderr
