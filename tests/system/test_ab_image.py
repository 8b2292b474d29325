"""The A/B disk layout (firmware/make-ab-image.sh) read back from real image files with
sfdisk, mtools and debugfs, and the data partition grown by the real systemd-repart with
the image's own repart.d definition."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FW = REPO / "firmware"
SCRIPT = FW / "make-ab-image.sh"
NAMES = ["linetap-autoboot", "linetap-boot-a", "linetap-boot-b", "linetap-root-a",
         "linetap-root-b", "linetap-data"]
DATA_TYPE = "50BF010B-20DC-4344-94DD-C72B9686A05E"

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("sfdisk", "mke2fs", "debugfs", "mkfs.vfat",
                                          "mcopy", "resize2fs")),
    reason="needs fdisk, e2fsprogs, dosfstools and mtools")


def partitions(img: Path) -> list[dict]:
    dump = subprocess.run(["sfdisk", "--dump", str(img)], capture_output=True, text=True,
                          check=True).stdout
    out = []
    for m in re.finditer(r"start=\s*(\d+), size=\s*(\d+), type=([0-9A-Fa-f-]+|\w+)"
                         r"(?:, uuid=[0-9A-F-]+)?(?:, name=\"([^\"]*)\")?", dump):
        out.append({"start": int(m.group(1)), "size": int(m.group(2)),
                    "type": m.group(3).upper(), "name": m.group(4)})
    return out


def extract(img: Path, part: dict, dest: Path) -> Path:
    with open(img, "rb") as f:
        f.seek(part["start"] * 512)
        dest.write_bytes(f.read(part["size"] * 512))
    return dest


def fat_cat(fat: Path, name: str) -> str:
    r = subprocess.run(["mtype", "-i", str(fat), f"::/{name}"], capture_output=True,
                       text=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def ext_cat(ext: Path, name: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {name}", str(ext)], capture_output=True,
                          text=True).stdout


def make_tree(tmp: Path) -> tuple[Path, Path]:
    root, boot = tmp / "root", tmp / "boot"
    (root / "etc").mkdir(parents=True)
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/true-ish").write_text("#!/bin/sh\n")
    (root / "etc/fstab").write_text(
        "PARTUUID=4e639091-02  /  ext4  defaults,noatime  0  1\n"
        "PARTUUID=4e639091-01  /boot/firmware  vfat  defaults  0  2\n"
        "LABEL=LTDATA  /var/lib/linetap  ext4  defaults,nofail  0  2\n")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                     "systemd-timesync:x:997:997::/:/usr/sbin/nologin\n")
    boot.mkdir()
    (boot / "cmdline.txt").write_text(
        "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
        "fsck.repair=yes rootwait rw init=/usr/lib/raspberrypi-sys-mods/firstboot "
        "modules-load=dwc2,g_serial\n")
    (boot / "config.txt").write_text("[all]\narm_64bit=1\n")
    (boot / "overlays").mkdir()
    (boot / "overlays" / "x.dtbo").write_bytes(b"\xd0\x0d\xfe\xed")
    return root, boot


def build(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--out", str(tmp / "disk.img"), *extra],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ab")
    root, boot = make_tree(tmp)
    r = build(tmp, "--root-dir", str(root), "--boot-dir", str(boot), "--root-mib", "64",
              "--boot-mib", "64", "--data-mib", "32")
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp / "disk.img"


def check_slots(img: Path, tmp: Path) -> None:
    parts = partitions(img)
    assert [p["name"] for p in parts] == NAMES
    auto = fat_cat(extract(img, parts[0], tmp / "p1"), "autoboot.txt")
    assert auto.splitlines() == ["[all]", "tryboot_a_b=1", "boot_partition=2", "[tryboot]",
                                 "boot_partition=3"]
    for i, slot in ((1, "a"), (2, "b")):
        fat = extract(img, parts[i], tmp / f"boot-{slot}")
        args = fat_cat(fat, "cmdline.txt").split()
        assert f"root=PARTLABEL=linetap-root-{slot}" in args and "ro" in args
        assert "rw" not in args and not [a for a in args if a.startswith("init=")]
        assert [a for a in args if a.startswith("root=")] == [f"root=PARTLABEL=linetap-root-{slot}"]
        assert "modules-load=dwc2,g_serial" in args
        ext = extract(img, parts[2 + i], tmp / f"root-{slot}")
        fstab = ext_cat(ext, "/etc/fstab")
        mounts = {ln.split()[1]: ln.split() for ln in fstab.splitlines() if ln.strip()}
        assert mounts["/"][0] == f"PARTLABEL=linetap-root-{slot}" and "ro" in mounts["/"][3]
        assert mounts["/boot/firmware"][0] == f"PARTLABEL=linetap-boot-{slot}"
        assert "ro" in mounts["/boot/firmware"][3].split(",")
        assert mounts["/var/lib/linetap"][0] == "LABEL=LTDATA"
        assert "PARTUUID" not in fstab
        assert ext_cat(ext, "/etc/linetap-slot").strip() == slot


def test_layout_and_both_slots_fixed_at_build(disk, tmp_path):
    parts = partitions(disk)
    assert parts[-1]["type"] == DATA_TYPE
    assert all(p["start"] % 2048 == 0 for p in parts)       # 1 MiB aligned
    check_slots(disk, tmp_path)
    r = subprocess.run(["mtype", "-i", str(extract(disk, parts[1], tmp_path / "b")),
                        "::/overlays/x.dtbo"], capture_output=True,
                       env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    assert r.stdout == b"\xd0\x0d\xfe\xed"


def test_data_partition_owned_by_the_fixed_uid(disk, tmp_path):
    if os.getuid() != 0:
        pytest.skip("file owners are only kept when run as root")
    data = extract(disk, partitions(disk)[5], tmp_path / "data")
    label = subprocess.run(["e2label", str(data)], capture_output=True, text=True).stdout
    assert label.strip() == "LTDATA"
    for d, uid in (("/", 700), ("/config", 700), ("/keys", 700), ("/run", 700),
                   ("/timesync", 997)):
        st = subprocess.run(["debugfs", "-R", f"stat {d}", str(data)], capture_output=True,
                            text=True).stdout
        assert re.search(rf"User:\s+{uid}\s", st), (d, st)


def test_repart_grows_only_the_data_partition(disk, tmp_path):
    if shutil.which("systemd-repart") is None:
        pytest.skip("systemd-repart not installed")
    img = tmp_path / "card.img"
    shutil.copy(disk, img)
    before = partitions(img)
    os.truncate(img, 1024 * 1024 * 1024)        # flashed onto a bigger card
    defs = FW / "rootfs/usr/lib/repart.d"
    r = subprocess.run(["systemd-repart", "--dry-run=no", f"--definitions={defs}", str(img)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    after = partitions(img)
    assert after[:5] == before[:5]
    assert after[5]["start"] == before[5]["start"]
    assert after[5]["size"] * 512 > 900 * 1024 * 1024 - before[5]["start"] * 512
    # A second boot changes nothing.
    r = subprocess.run(["systemd-repart", "--dry-run=no", f"--definitions={defs}", str(img)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and partitions(img) == after


def test_from_pigen_image(tmp_path):
    """A pi-gen image (MBR: boot FAT p1, root ext4 p2) becomes the same A/B layout."""
    root, boot = make_tree(tmp_path)
    pg = tmp_path / "pigen.img"
    with open(pg, "wb") as f:
        f.truncate(200 * 1024 * 1024)
    subprocess.run(["sfdisk", "-q", str(pg)], input="start=8192, size=98304, type=c\n"
                   "start=106496, size=131072, type=83\n", text=True, check=True)
    fat, ext = tmp_path / "fat", tmp_path / "ext"
    subprocess.run(["mkfs.vfat", "-F", "32", "-C", str(fat), str(98304 // 2)], check=True,
                   capture_output=True)
    subprocess.run(["mcopy", "-s", "-i", str(fat), *map(str, boot.iterdir()), "::/"],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), str(ext), "64M"],
                   check=True)
    with open(pg, "r+b") as f:
        f.seek(8192 * 512)
        f.write(fat.read_bytes())
        f.seek(106496 * 512)
        f.write(ext.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    r = build(out, "--from-pigen", str(pg), "--root-mib", "96", "--boot-mib", "64",
              "--data-mib", "32")
    assert r.returncode == 0, r.stdout + r.stderr
    check_slots(out / "disk.img", tmp_path)


@pytest.mark.parametrize("args,msg", [
    ([], "--out is required"),
    (["--out", "x.img", "--root-mib", "8"], "at least 32"),
    (["--out", "x.img"], "--root-dir must be a folder"),
    (["--out", "x.img", "--from-pigen", "/nonexistent.img"], "no such image"),
])
def test_bad_arguments_are_named(tmp_path, args, msg):
    r = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode != 0 and msg in r.stderr, r.stderr
