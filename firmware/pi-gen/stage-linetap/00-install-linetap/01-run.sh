#!/bin/bash -e
# Copy the Linetap source and its wheel set (put into files/ by firmware/pi-gen/prepare.sh)
# into the image and run firmware/install.sh in the chroot: the venv is made by the
# image's own Python and filled from the hash-locked wheels only, so nothing compiles.
# ROOTFS_DIR and on_chroot come from pi-gen's build.sh.
: "${ROOTFS_DIR:?run this from pi-gen}"
files="$(dirname "$0")/files"
[ -f "$files/wheels/requirements.txt" ] || { echo "run firmware/pi-gen/prepare.sh first" >&2; exit 1; }

rm -rf "${ROOTFS_DIR}/tmp/linetap-src" "${ROOTFS_DIR}/tmp/linetap-wheels"
cp -a "$files/linetap-src" "${ROOTFS_DIR}/tmp/linetap-src"
cp -a "$files/wheels" "${ROOTFS_DIR}/tmp/linetap-wheels"

on_chroot << 'CHROOT'
bash /tmp/linetap-src/firmware/install.sh --root / --src /tmp/linetap-src \
    --pip-wheel-dir /tmp/linetap-wheels
rm -rf /tmp/linetap-src /tmp/linetap-wheels
CHROOT
