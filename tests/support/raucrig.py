"""RAUC on this machine, as close to the box as a PC allows: the real ``rauc service``
on a private D-Bus bus (a ``dbus-daemon`` with its own config, started here), the real
tryboot backend (``firmware/rauc/tryboot-backend``) and the production
``firmware/rauc/system.conf`` with only its paths moved into a scratch folder:

* the slots are files (root A/B ext4, boot A/B vfat);
* autoboot.txt is on a FAT image, read and written with mtools as on the box;
* the device tree is a real DTB (``dtc``) read with the real ``fdtget``;
* ``vcmailbox`` is a stub on PATH that keeps the firmware's reboot flags in a file.

:class:`PiFirmware` plays the boot ROM at a reboot: it reads autoboot.txt and the
tryboot flag exactly as the Pi firmware does, clears the flag (one shot), and writes
the DTB's ``/chosen/bootloader/partition``; the service is then restarted on the slot
it chose (RAUC 1.8 learns the booted slot from the kernel command line, which a PC
cannot fake, so it is given with ``--override-boot-slot``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sync.update.rauc import Rauc
from tests.support.syncbox import wait_for

REPO = Path(__file__).resolve().parents[2]
FW = REPO / "firmware" / "rauc"
PARTITIONS = {2: "A", 3: "B"}

VCMAILBOX = """#!/bin/sh
# Stub of the Pi's vcmailbox: GET/SET_REBOOT_FLAGS only, kept in $LINETAP_TEST_REBOOT_FLAGS.
F="$LINETAP_TEST_REBOOT_FLAGS"
case "$1" in
  0x00030064) v=$(cat "$F" 2>/dev/null || echo 0) ;;
  0x00038064) v="$4"; echo "$v" > "$F" ;;
  *) echo "vcmailbox stub: unknown tag $1" >&2; exit 1 ;;
esac
printf '0x0000001c 0x80000000 %s 0x00000004 0x80000004 0x%08x 0x00000000\\n' "$1" "$v"
"""

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def why_rauc_cannot_run() -> str | None:
    """None when this machine can run the rig, else the reason (for a skip)."""
    for tool in ("rauc", "dbus-daemon", "mksquashfs", "fdtget", "dtc", "mtype",
                 "mkfs.vfat", "mke2fs", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make apt installs it)"
    if os.geteuid() != 0:
        return "rauc install mounts the bundle on a loop device: needs root"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control) to mount a bundle"
    return None


def make_bundle(out: Path, keys: Path, *, version: str, fmt: str = "verity",
                rootfs: Path | None = None, boot: Path | None = None) -> Path:
    args = [str(FW / "make-bundle.sh"), "--out", str(out), "--keys", str(keys),
            "--version", version, "--format", fmt]
    if rootfs is not None:
        args += ["--rootfs", str(rootfs)]
    if boot is not None:
        args += ["--boot", str(boot)]
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    return out


# What firmware/make-ab-image.sh writes into slot A: the images of a bundle made from
# slot A's partitions carry these, whichever slot they are installed into.
FSTAB_A = ("PARTLABEL=linetap-root-a  /               ext4  defaults,noatime,ro  0  1\n"
           "PARTLABEL=linetap-boot-a  /boot/firmware  vfat  defaults,ro,nofail   0  2\n"
           "tmpfs  /tmp  tmpfs  defaults,nosuid,nodev  0  0\n")
CMDLINE_A = "console=serial0,115200 root=PARTLABEL=linetap-root-a ro rootwait\n"


def root_image(path: Path, text: str) -> Path:
    """A small ext4 root file system of slot A whose /etc/linetap-release says ``text``."""
    tree = path.with_suffix(".d")
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "linetap-release").write_text(text + "\n")
    (tree / "etc" / "fstab").write_text(FSTAB_A)
    (tree / "etc" / "linetap-slot").write_text("a\n")
    (tree / "etc" / "filler").write_bytes(os.urandom(65536))    # > one squashfs block
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(path), "8M"],
                   check=True, capture_output=True)
    return path


def boot_image(path: Path) -> Path:
    """A boot partition image (vfat) of slot A: its cmdline.txt names root A."""
    subprocess.run(["mkfs.vfat", "-C", str(path), "4096"], check=True, capture_output=True)
    cmdline = path.with_suffix(".cmdline")
    cmdline.write_text(CMDLINE_A)
    subprocess.run(["mcopy", "-i", str(path), str(cmdline), "::/cmdline.txt"], check=True)
    return path


def release_of(slot_image: Path, name: str = "/etc/linetap-release") -> str:
    """A file inside an ext4 slot image ('' if it has none)."""
    r = subprocess.run(["debugfs", "-R", f"cat {name}", str(slot_image)],
                       capture_output=True, text=True)
    return r.stdout.strip()


def cmdline_of(boot_image: Path) -> str:
    """cmdline.txt of a boot slot image ('' if it has none)."""
    r = subprocess.run(["mtype", "-i", str(boot_image), "::/cmdline.txt"],
                       capture_output=True, text=True)
    return r.stdout.strip()


class RaucRig:
    """File-backed slots under ``d``, booted from slot A holding ``root_a``.
    ``formats`` overrides system.conf's bundle-formats (None keeps production's)."""

    def __init__(self, d: Path, keyring: Path, root_a: Path, *, formats: str | None = None):
        self.d = d
        bin_dir = d / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "vcmailbox").write_text(VCMAILBOX)
        (bin_dir / "vcmailbox").chmod(0o755)
        self.slots = {"root-a": d / "root-a.img", "root-b": d / "root-b.img",
                      "boot-a": d / "boot-a.img", "boot-b": d / "boot-b.img"}
        shutil.copy(root_a, self.slots["root-a"])
        with self.slots["root-b"].open("wb") as f:
            f.truncate(8 * 2**20)
        for b in ("boot-a", "boot-b"):
            subprocess.run(["mkfs.vfat", "-C", str(self.slots[b]), "4096"], check=True,
                           capture_output=True)
        self.autoboot = d / "autoboot.fat"
        subprocess.run(["mkfs.vfat", "-C", str(self.autoboot), "1024"], check=True,
                       capture_output=True)
        ab = d / "autoboot.txt"
        ab.write_text("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n")
        subprocess.run(["mcopy", "-i", str(self.autoboot), str(ab), "::/autoboot.txt"],
                       check=True)
        self.fdt = d / "fdt.dtb"
        self.flags = d / "reboot-flags"
        self.conf = d / "system.conf"
        self.conf.write_text(self._conf(keyring, formats))
        self.sock = d / "bus.sock"
        (d / "bus.conf").write_text(BUS_CONF.format(sock=self.sock))
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                    "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.sock}",
                    "LINETAP_AUTOBOOT_DEV": str(self.autoboot), "LINETAP_FDT": str(self.fdt),
                    "LINETAP_TEST_REBOOT_FLAGS": str(self.flags)}
        self.rauc = Rauc(str(self.conf), env=self.env)
        self.firmware = PiFirmware(self)
        self.bus = self.service = None

    def _conf(self, keyring: Path, formats: str | None) -> str:
        text = (FW / "system.conf").read_text()
        d = self.d
        swaps = {"/dev/disk/by-partlabel/linetap-root-a": self.slots["root-a"],
                 "/dev/disk/by-partlabel/linetap-root-b": self.slots["root-b"],
                 "/dev/disk/by-partlabel/linetap-boot-a": self.slots["boot-a"],
                 "/dev/disk/by-partlabel/linetap-boot-b": self.slots["boot-b"],
                 "/usr/lib/linetap/rauc-tryboot-backend": FW / "tryboot-backend",
                 "/usr/lib/linetap/rauc-post-install": FW / "post-install",
                 "/var/lib/linetap/rauc/status.raucs": d / "status.raucs",
                 "/run/rauc": d / "mnt",
                 "/etc/rauc/keyring.pem": keyring}
        for old, new in swaps.items():
            assert old in text, f"system.conf no longer names {old}"
            text = text.replace(old, str(new))
        (d / "mnt").mkdir(exist_ok=True)
        if formats is not None:
            text = text.replace("bundle-formats=-plain", f"bundle-formats={formats}")
        return text

    # -- processes ---------------------------------------------------------------------
    def start(self, booted: str = "A") -> RaucRig:
        if self.bus is None:
            self.bus = subprocess.Popen(["dbus-daemon", f"--config-file={self.d / 'bus.conf'}",
                                         "--nofork"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            wait_for(lambda: self.sock.exists(), 30.0, "the private D-Bus socket")
        self.firmware.write_fdt({"A": 2, "B": 3}[booted])
        log = (self.d / "service.log").open("a")
        self.service = subprocess.Popen(
            ["rauc", f"--conf={self.conf}", "service", f"--override-boot-slot={booted}"],
            env=self.env, stdout=log, stderr=log)
        wait_for(self._answers, 30.0, "rauc service on the private bus")
        return self

    def _answers(self) -> bool:
        r = subprocess.run(["rauc", f"--conf={self.conf}", "status"], env=self.env,
                           capture_output=True)
        return r.returncode == 0

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.terminate()
            self.service.wait(30)
            self.service = None

    def close(self) -> None:
        self.stop_service()
        if self.bus is not None:
            self.bus.terminate()
            self.bus.wait(30)
            self.bus = None

    def reboot(self) -> str:
        """Stop RAUC, let the firmware choose a slot, start RAUC on it; its bootname."""
        self.stop_service()
        booted = self.firmware.boot()
        self.start(booted)
        return booted

    def backend(self, *args: str) -> str:
        r = subprocess.run([str(FW / "tryboot-backend"), *args], env=self.env,
                           capture_output=True, text=True, check=True)
        return r.stdout.strip()


class PiFirmware:
    """The boot decision of the Pi's firmware with ``tryboot_a_b=1``."""

    def __init__(self, rig: RaucRig):
        self.rig = rig

    def autoboot(self) -> dict[str, int]:
        text = subprocess.run(["mtype", "-i", str(self.rig.autoboot), "::/autoboot.txt"],
                              capture_output=True, text=True, check=True).stdout
        out, sec = {}, None
        for line in text.replace("\r", "").splitlines():
            if line.startswith("["):
                sec = line.strip("[]")
            elif line.startswith("boot_partition="):
                out[sec] = int(line.split("=", 1)[1])
        return out

    def tryboot_flag(self) -> bool:
        try:
            return int(self.rig.flags.read_text().strip() or 0) & 1 == 1
        except FileNotFoundError:
            return False

    def boot(self) -> str:
        sections = self.autoboot()
        part = sections["tryboot"] if self.tryboot_flag() else sections["all"]
        self.rig.flags.write_text("0\n")          # the flag lasts one boot
        self.write_fdt(part)
        return PARTITIONS[part]

    def write_fdt(self, partition: int) -> None:
        dts = ("/dts-v1/;\n/ { chosen { bootloader { partition = <"
               + str(partition) + ">; }; }; };\n")
        subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(self.rig.fdt)],
                       input=dts.encode(), check=True)

