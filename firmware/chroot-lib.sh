# Sourced by build-image.sh and build-wheels.sh (bash).
# shellcheck shell=bash

# Run a command in ROOT with /proc, /sys and /dev bound (the kernel's postinst builds the
# initramfs) and no service started by a maintainer script (policy-rc.d).
in_chroot() {
    local root="$1" rc=0
    shift
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --make-rslave "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 chroot "$root" "$@" || rc=$?
    # Lazily: a daemon a maintainer script started despite policy-rc.d (gpg-agent, say)
    # may still hold /proc.
    umount -l "$root/dev/pts" "$root/dev" "$root/proc"
    umount -R -l "$root/sys"
    rm -f "$root/usr/sbin/policy-rc.d"
    return "$rc"
}

