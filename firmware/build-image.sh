#!/bin/bash
# Build the Linetap box image from Debian packages alone (no pi-gen, no Raspberry Pi OS):
# a bookworm root from Debian's archive (debootstrap), Linetap installed by the same
# firmware/install.sh the pi-gen recipe runs, from the hash-locked wheel set that
# firmware/build-wheels.sh builds once, and the A/B disk layout of docs/image.md.
#
# Usage: build-image.sh --arch arm64|amd64 [--out DIR] [--mirror URL] [--root-mib N]
#                       [--data-mib N]
#   arm64: the box (raspi-firmware, linux-image-arm64); amd64: the same root with
#   linux-image-amd64, booted under KVM by `make system-test QUICK=1`.
#   Stages, each cached under DIR (default build/image): base.tar (debootstrap; reused
#   while the package list is unchanged), root/ (installed), disk.img, vmlinuz,
#   initrd.img. Needs root (debootstrap, chroot), debootstrap, sfdisk, mke2fs,
#   mkfs.vfat, mtools; arm64 on another host needs qemu-user-static with binfmt.
set -euo pipefail

ARCH=""
OUT=""
MIRROR="http://deb.debian.org/debian"
SUITE=bookworm
ROOT_MIB=1536
DATA_MIB=256
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$(cd "$HERE/.." && pwd)"

log() { printf 'build-image.sh: %s\n' "$*"; }
die() { printf 'build-image.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH="${2:?--arch needs arm64 or amd64}"; shift 2 ;;
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --mirror) MIRROR="${2:?--mirror needs a URL}"; shift 2 ;;
        --root-mib) ROOT_MIB="${2:?--root-mib needs a number}"; shift 2 ;;
        --data-mib) DATA_MIB="${2:?--data-mib needs a number}"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$ARCH" in
    arm64) KERNEL_PKGS="linux-image-arm64 raspi-firmware" ;;
    amd64) KERNEL_PKGS="linux-image-amd64" ;;
    *) die "--arch must be arm64 or amd64, not '${ARCH}'" ;;
esac
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
for tool in debootstrap sfdisk mke2fs mkfs.vfat mcopy; do
    command -v "$tool" > /dev/null || die "$tool not found (apt-get install debootstrap fdisk e2fsprogs dosfstools mtools)"
done
# A foreign root (arm64 on a PC) runs its maintainer scripts under qemu-user: make sure
# the kernel knows to hand aarch64 binaries to qemu-aarch64-static (binfmt-support
# registers it at install, but not in a container that has no binfmt_misc mounted).
if [ "$ARCH" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
    command -v qemu-aarch64-static > /dev/null \
        || die "qemu-aarch64-static not found (apt-get install qemu-user-static binfmt-support)"
    [ -e /proc/sys/fs/binfmt_misc/status ] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
fi
OUT="${OUT:-$SRC/build/image}/$ARCH"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# Runtime packages only: no compiler, no -dev package, no swap manager, no fake-hwclock.
# python3-venv brings ensurepip (the venv's pip); dtc compiles the overlay at install.
PKGS="systemd,systemd-sysv,systemd-timesyncd,udev,dbus,libpam-systemd,polkitd,kmod,initramfs-tools,\
e2fsprogs,dosfstools,python3,python3-venv,libasound2,libsndfile1,alsa-utils,gpiod,\
device-tree-compiler,ca-certificates,procps,rauc,mtools,${KERNEL_PKGS// /,}"
COMPONENTS=main
[ "$ARCH" = arm64 ] && COMPONENTS=main,non-free-firmware   # raspi-firmware lives there

# shellcheck source=firmware/chroot-lib.sh
. "$HERE/chroot-lib.sh"

# --- 1. base root from Debian's archive (cached) -----------------------------------
key="$(printf '%s\n' "$SUITE" "$MIRROR" "$PKGS" "$COMPONENTS" | sha256sum | cut -c1-16)"
BASE="$OUT/base-$key.tar"
if [ ! -f "$BASE" ]; then
    log "debootstrap $SUITE $ARCH from $MIRROR (cached as $(basename "$BASE"))"
    tmp="$OUT/base.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # The kernel's postinst builds the initramfs; with no /boot/firmware mounted
    # raspi-firmware's hook just copies into the folder.
    mkdir -p "$tmp/boot/firmware"
    # debootstrap resolves no alternatives (polkitd needs "default-logind | logind"), so
    # it lays down minbase only and apt, in the chroot, installs the rest.
    debootstrap --arch="$ARCH" --variant=minbase --components="$COMPONENTS" \
        "$SUITE" "$tmp" "$MIRROR"
    IFS=, read -r -a pkg_list <<< "$PKGS"
    in_chroot "$tmp" apt-get install -y -q --no-install-recommends "${pkg_list[@]}"
    in_chroot "$tmp" apt-get clean
    rm -rf "$tmp/var/lib/apt/lists"/*_Packages "$tmp/var/cache/apt"/*.bin
    tar -C "$tmp" --numeric-owner -cf "$BASE.part" .
    mv "$BASE.part" "$BASE"
    rm -rf "$tmp"
else
    log "reusing $(basename "$BASE")"
fi

# --- 2. the wheel set, built once per lock and architecture (compilers stay outside) ------
# Keyed on the lock and the source: the set holds Linetap's own wheel, so a changed
# source must not reuse a set built from an older one.
src_digest="$(cd "$SRC" && find . \( -name .git -o -name .venv -o -path ./build \
    -o -name __pycache__ -o -name '*.egg-info' -o -name node_modules -o -name '.*_cache' \
    -o -name .hypothesis \) -prune -o -type f -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16)"
WHEELS="$OUT/wheels-$(printf '%s\n' "$(sha256sum < "$SRC/firmware/wheels.lock")" "$src_digest" \
    | sha256sum | cut -c1-12)"
if [ ! -f "$WHEELS/requirements.txt" ]; then
    "$HERE/build-wheels.sh" --arch "$ARCH" --base "$BASE" --out "$WHEELS" --src "$SRC"
else
    log "reusing the wheel set $(basename "$WHEELS")"
fi

# --- 3. the root: base + Linetap by firmware/install.sh, as in the pi-gen stage -----------
R="$OUT/root"
log "installing Linetap into $R"
rm -rf "$R"
mkdir -p "$R"
tar -C "$R" -xf "$BASE"
rm -rf "$R/tmp/linetap-src" "$R/tmp/linetap-wheels"
mkdir -p "$R/tmp/linetap-src"
tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=build --exclude=__pycache__ \
    --exclude='*.egg-info' -cf - . | tar -C "$R/tmp/linetap-src" -xf -
cp -a "$WHEELS" "$R/tmp/linetap-wheels"
in_chroot "$R" bash /tmp/linetap-src/firmware/install.sh --root / --src /tmp/linetap-src \
    --pip-wheel-dir /tmp/linetap-wheels
rm -rf "$R/tmp/linetap-src" "$R/tmp/linetap-wheels"
for cc in gcc cc c++ g++ clang; do
    [ -z "$(chroot "$R" sh -c "command -v $cc" || true)" ] || die "a compiler ($cc) is in the image"
done
# No swap anywhere, no cache of the build host, the box's own hostname.
rm -f "$R/var/swap" "$R/swapfile"
rm -rf "$R/var/cache/apt/archives"/*.deb "$R/var/lib/apt/lists"/*
echo linetap > "$R/etc/hostname"
: > "$R/etc/machine-id"                       # regenerated (volatile) at every boot
# The console user: root with no password only on the amd64 test VM's serial console;
# the box has no login at all (provisioning is over USB).
if [ "$ARCH" = amd64 ]; then
    chroot "$R" passwd -d root > /dev/null
fi

# --- 4. boot files and the A/B disk ----------------------------------------------------
kver="$(find "$R/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
cp "$R/boot/vmlinuz-$kver" "$OUT/vmlinuz"
cp "$R/boot/initrd.img-$kver" "$OUT/initrd.img"
BOOTDIR="$OUT/bootfs"
rm -rf "$BOOTDIR"
mkdir -p "$BOOTDIR"
if [ "$ARCH" = arm64 ]; then
    # raspi-firmware's kernel hook filled /boot/firmware (start*.elf, DTBs, kernel,
    # initrd, config.txt, cmdline.txt); install.sh appended our fragments to it.
    cp -a "$R/boot/firmware/." "$BOOTDIR/"
else
    # The VM has no Pi firmware: the test hands QEMU vmlinuz/initrd.img and the boot
    # slot's cmdline.txt, as the Pi's firmware would.
    cp -a "$R/boot/firmware/." "$BOOTDIR/"
    printf 'console=ttyS0 panic=10 ro\n' > "$BOOTDIR/cmdline.txt"
fi
find "$R/boot/firmware" -mindepth 1 -delete
"$HERE/make-ab-image.sh" --out "$OUT/disk.img" --root-dir "$R" --boot-dir "$BOOTDIR" \
    --root-mib "$ROOT_MIB" --data-mib "$DATA_MIB"
log "image: $OUT/disk.img (kernel $kver)"
