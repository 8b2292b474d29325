#!/bin/bash -e
# Copy the Linetap source into the image and run firmware/install.sh in the chroot,
# so the venv is built by the image's own Python for the Pi's architecture.
# ROOTFS_DIR and on_chroot come from pi-gen's build.sh; LINETAP_SRC from the config.
: "${ROOTFS_DIR:?run this from pi-gen}"
src="${LINETAP_SRC:?set LINETAP_SRC to the linetap checkout}"

rm -rf "${ROOTFS_DIR}/tmp/linetap-src"
mkdir -p "${ROOTFS_DIR}/tmp/linetap-src"
tar -C "$src" --exclude=.git --exclude=.venv --exclude=__pycache__ -cf - . \
    | tar -C "${ROOTFS_DIR}/tmp/linetap-src" -xf -

on_chroot << 'CHROOT'
bash /tmp/linetap-src/firmware/install.sh --root / --src /tmp/linetap-src
rm -rf /tmp/linetap-src
CHROOT
