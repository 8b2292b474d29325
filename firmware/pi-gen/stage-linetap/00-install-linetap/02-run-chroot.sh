#!/bin/bash -e
# Run by pi-gen inside the image. Raspberry Pi OS Lite brings a swap file and
# fake-hwclock: swap would page the audio ring and keys to the card in plaintext, and
# fake-hwclock cannot save on a read-only root (timesyncd's clock file on the data
# partition keeps the time instead). Purge both, and prove no compiler is left.
apt-get purge -y dphys-swapfile fake-hwclock
# Compilers and build tools of the Lite image (not their runtime libraries: gcc-12-base
# and libgcc-s1 are needed by everything).
compilers="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' 2>/dev/null \
    | awk '$2 == "installed" && $1 ~ /^(build-essential|make|gcc|gcc-[0-9]+|g\+\+|g\+\+-[0-9]+|cpp|cpp-[0-9]+|clang(-[0-9]+)?)$/ { print $1 }')"
if [ -n "$compilers" ]; then
    # shellcheck disable=SC2086
    apt-get purge -y $compilers
fi
apt-get autoremove -y --purge
rm -f /var/swap
for cc in gcc cc c++ g++ clang; do
    if command -v "$cc" > /dev/null; then
        echo "02-run-chroot.sh: a compiler ($cc) is in the image" >&2
        exit 1
    fi
done
