#!/bin/bash -e
# pi-gen stage prologue: start from the previous stage's root filesystem.
# copy_previous is defined by pi-gen's build.sh.
if [ ! -d "${ROOTFS_DIR:?}" ]; then
    copy_previous
fi
