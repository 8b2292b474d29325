#!/bin/bash
# Append the Linetap data partition to a built image (pi-gen makes only boot + root).
#
# Usage: add-data-partition.sh IMAGE [SIZE_MIB]
#
# Adds partition 3 (ext4, label LTDATA, default 512 MiB) after the last one and makes
# the folders the services expect. At first boot x-systemd.growfs (see /etc/fstab)
# grows the file system once the partition has been grown to fill the card (done by
# the engineer's flashing step, see docs/image.md). Needs sfdisk and mke2fs; no root,
# no loop devices: mke2fs writes straight into the image at the partition's offset.
set -euo pipefail

IMG="${1:?usage: add-data-partition.sh IMAGE [SIZE_MIB]}"
SIZE_MIB="${2:-512}"
LABEL=LTDATA
[ -f "$IMG" ] || { echo "add-data-partition.sh: no such image: $IMG" >&2; exit 1; }

if sfdisk --dump "$IMG" | grep -q "^$IMG"3; then
    echo "add-data-partition.sh: $IMG already has a third partition" >&2
    exit 1
fi

# End of the last partition, in 512-byte sectors, rounded up to 4 MiB.
last_end="$(sfdisk --dump "$IMG" | awk -F'[=,]' '/start=/ { s = $2 + 0; z = $4 + 0; if (s + z > e) e = s + z } END { print e }')"
align=8192
start=$(( (last_end + align - 1) / align * align ))
sectors=$(( SIZE_MIB * 2048 ))
truncate -s $(( (start + sectors) * 512 )) "$IMG"
echo "start=$start, size=$sectors, type=83" | sfdisk --append --no-reread --quiet "$IMG"

# Folders owned by the linetap user: the uid/gid are fixed up at first boot by
# systemd-tmpfiles (usr/lib/tmpfiles.d/linetap.conf); here they are made root-owned.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/config" "$tmp/keys" "$tmp/run"
chmod 0750 "$tmp/config" "$tmp/run"
chmod 0700 "$tmp/keys"
mke2fs -q -F -t ext4 -L "$LABEL" -d "$tmp" -E offset=$(( start * 512 )) "$IMG" "${SIZE_MIB}M"
echo "add-data-partition.sh: partition 3 ($LABEL, ${SIZE_MIB} MiB) added to $IMG"
