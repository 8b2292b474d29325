#!/bin/bash
# Lay out the Linetap A/B disk image: a GPT disk with
#   p1 linetap-autoboot  FAT16  32 MiB   autoboot.txt only (tryboot_a_b=1: boot A, try B)
#   p2 linetap-boot-a    FAT32  BOOT     firmware, kernel, config.txt, cmdline.txt (slot A)
#   p3 linetap-boot-b    FAT32  BOOT     the same for slot B
#   p4 linetap-root-a    ext4   ROOT     read-only root, slot A
#   p5 linetap-root-b    ext4   ROOT     read-only root, slot B
#   p6 linetap-data      ext4   DATA     LABEL=LTDATA, /var/lib/linetap; last, so
#                                        systemd-repart grows it to fill the card
# Both slots are fixed here, once: each boot slot's cmdline.txt says
# root=PARTLABEL=linetap-root-X rauc.slot=X (how RAUC knows the booted slot), each
# root's fstab mounts its own boot slot, read-only, by PARTLABEL. Labels never change
# (unlike pi-gen's MBR disk id, which its firstboot rewrites in the active slot only),
# so nothing needs fixing at first boot; pi-gen's
# firstboot/init_resize is taken off the command line, and only the data partition grows.
#
# Usage: make-ab-image.sh --out IMG (--root-dir DIR --boot-dir DIR | --from-pigen IMG)
#                         [--root-mib N] [--boot-mib N] [--data-mib N]
#   --root-dir/--boot-dir  a root tree and the boot partition's files (firmware/build-image.sh)
#   --from-pigen IMG       a pi-gen image (p1 boot FAT, p2 root ext4) converted to A/B
# Needs sfdisk, mke2fs, e2fsck, resize2fs, debugfs, mkfs.vfat and mtools; no loop
# devices and no mounting. Run as root with --root-dir so file owners are kept.
set -euo pipefail

OUT=""
ROOT_DIR=""
BOOT_DIR=""
PIGEN=""
ROOT_MIB=1536
BOOT_MIB=256
DATA_MIB=256
AUTOBOOT_MIB=32
# GPT partition types: FAT (Microsoft basic data), Linux file system, and our own for the
# data partition (so systemd-repart matches it alone, not the roots, and no generator
# guesses a mount point for it).
T_FAT=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7
T_LINUX=0FC63DAF-8483-4772-8E79-3D69D8477DE4
T_DATA=50BF010B-20DC-4344-94DD-C72B9686A05E
LINETAP_UID=700   # systemd/linetap.sysusers

log() { printf 'make-ab-image.sh: %s\n' "$*"; }
die() { printf 'make-ab-image.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --root-dir) ROOT_DIR="${2:?--root-dir needs a folder}"; shift 2 ;;
        --boot-dir) BOOT_DIR="${2:?--boot-dir needs a folder}"; shift 2 ;;
        --from-pigen) PIGEN="${2:?--from-pigen needs an image}"; shift 2 ;;
        --root-mib) ROOT_MIB="${2:?}"; shift 2 ;;
        --boot-mib) BOOT_MIB="${2:?}"; shift 2 ;;
        --data-mib) DATA_MIB="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ -n "$OUT" ] || die "--out is required"
for n in "$ROOT_MIB" "$BOOT_MIB" "$DATA_MIB"; do
    if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 32 ]; then
        die "sizes are whole MiB, at least 32 (got '$n')"
    fi
done
if [ -n "$PIGEN" ]; then
    [ -z "$ROOT_DIR$BOOT_DIR" ] || die "--from-pigen excludes --root-dir/--boot-dir"
    [ -f "$PIGEN" ] || die "no such image: $PIGEN"
else
    [ -d "$ROOT_DIR" ] || die "--root-dir must be a folder (or use --from-pigen)"
    [ -d "$BOOT_DIR" ] || die "--boot-dir must be a folder"
fi
for tool in sfdisk mke2fs e2fsck resize2fs debugfs mkfs.vfat mcopy mtype; do
    command -v "$tool" > /dev/null || die "$tool not found (e2fsprogs, fdisk, dosfstools, mtools)"
done

work="$(mktemp -d "${OUT}.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export MTOOLS_SKIP_CHECK=1

# --- the two file systems every slot starts from -----------------------------------------
if [ -n "$PIGEN" ]; then
    log "taking boot and root from $(basename "$PIGEN")"
    dump="$(sfdisk --dump "$PIGEN")"
    part() {  # print "start size" (sectors) of partition N of the pi-gen image
        printf '%s\n' "$dump" | awk -v n="$1" -F'[=,]' '
            $1 ~ ("[^0-9]" n " *: *start") { gsub(/ /, ""); print $2 + 0, $4 + 0 }'
    }
    read -r s1 z1 < <(part 1)
    read -r s2 z2 < <(part 2)
    if [ -z "${z1:-}" ] || [ -z "${z2:-}" ]; then
        die "$PIGEN has no boot (p1) and root (p2) partitions"
    fi
    [ $(( z1 / 2048 )) -le "$BOOT_MIB" ] || die "boot partition of $PIGEN is larger than --boot-mib"
    dd if="$PIGEN" of="$work/boot.fat" bs=512 skip="$s1" count="$z1" status=none
    truncate -s "${BOOT_MIB}M" "$work/boot.fat"   # the FAT keeps its own size; the rest is slack
    dd if="$PIGEN" of="$work/root.ext4" bs=512 skip="$s2" count="$z2" status=none
    e2fsck -fy "$work/root.ext4" > /dev/null || [ $? -le 1 ] || die "root file system of $PIGEN is damaged"
    resize2fs -f "$work/root.ext4" "${ROOT_MIB}M" > /dev/null 2>&1 \
        || die "root of $PIGEN does not fit in --root-mib $ROOT_MIB"
    truncate -s "${ROOT_MIB}M" "$work/root.ext4"
else
    log "root file system from $ROOT_DIR (${ROOT_MIB} MiB)"
    # /boot/firmware is a mount point in the root; its files go to the boot slots.
    mke2fs -q -F -t ext4 -L linetap-root -E root_owner=0:0 -d "$ROOT_DIR" \
        "$work/root.ext4" "${ROOT_MIB}M" || die "root does not fit in --root-mib $ROOT_MIB"
    mkfs.vfat -F 32 -n BOOT -C "$work/boot.fat" $(( BOOT_MIB * 1024 )) > /dev/null
    if [ -n "$(ls -A "$BOOT_DIR")" ]; then
        mcopy -s -Q -i "$work/boot.fat" "$BOOT_DIR"/* ::/
    fi
fi

# --- per-slot fix-ups, both slots, at build time ------------------------------------------
slot_cmdline() {  # the boot slot's kernel command line, pointed at its own root
    local slot="$1" line
    line="$(mtype -i "$work/boot.fat" ::/cmdline.txt 2>/dev/null | head -n 1 | tr -d '\r')" || line=""
    # Drop pi-gen's root=, its first-boot resizer/partuuid fixer, and rw; add ours.
    line="$(printf '%s\n' "$line" | sed -E 's/(^| )(root|init)=[^ ]*//g; s/(^| )rw( |$)/\1\2/g; s/(^| )ro( |$)/\1\2/g; s/  +/ /g; s/^ //; s/ $//')"
    printf '%s\n' "${line:+$line }root=PARTLABEL=linetap-root-$slot ro rauc.slot=${slot^^}"
}

slot_fstab() {  # the root slot's fstab: its own root and boot slot by label, read-only
    local slot="$1"
    debugfs -R "cat /etc/fstab" "$work/root.ext4" 2>/dev/null \
        | awk '$2 != "/" && $2 != "/boot/firmware" && $2 != "/boot"' > "$work/fstab.rest" || true
    {
        printf 'PARTLABEL=linetap-root-%s  /               ext4  defaults,noatime,ro  0  1\n' "$slot"
        printf 'PARTLABEL=linetap-boot-%s  /boot/firmware  vfat  defaults,ro,nofail   0  2\n' "$slot"
        cat "$work/fstab.rest"
    } > "$work/fstab.$slot"
}

for slot in a b; do
    cp --sparse=always "$work/boot.fat" "$work/boot-$slot.fat"
    slot_cmdline "$slot" > "$work/cmdline.$slot"
    mcopy -o -i "$work/boot-$slot.fat" "$work/cmdline.$slot" ::/cmdline.txt
    cp --sparse=always "$work/root.ext4" "$work/root-$slot.ext4"
    slot_fstab "$slot"
    printf '%s\n' "$slot" > "$work/slot.$slot"
    debugfs -w -f - "$work/root-$slot.ext4" > /dev/null 2>&1 <<EOF
rm /etc/fstab
write $work/fstab.$slot /etc/fstab
rm /etc/linetap-slot
write $work/slot.$slot /etc/linetap-slot
mkdir /boot/firmware
EOF
    debugfs -R "cat /etc/fstab" "$work/root-$slot.ext4" 2>/dev/null \
        | grep -q "linetap-root-$slot" || die "could not write the fstab of root slot $slot"
done
rm -f "$work/boot.fat" "$work/root.ext4"

# autoboot.txt: the firmware reads it from p1 and boots p2; `reboot "0 tryboot"` boots p3
# once, and an update makes that permanent only after the new slot has come up.
mkfs.vfat -F 16 -n AUTOBOOT -C "$work/autoboot.fat" $(( AUTOBOOT_MIB * 1024 )) > /dev/null
printf '[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n' > "$work/autoboot.txt"
mcopy -i "$work/autoboot.fat" "$work/autoboot.txt" ::/autoboot.txt

# Data: the folders the services expect, owned by the fixed linetap uid.
mkdir -p "$work/data/config" "$work/data/keys" "$work/data/run" "$work/data/timesync"
chmod 0750 "$work/data" "$work/data/config" "$work/data/run"
chmod 0700 "$work/data/keys"
chmod 0755 "$work/data/timesync"
if [ "$(id -u)" = 0 ]; then
    chown "$LINETAP_UID:$LINETAP_UID" "$work/data" "$work/data/config" "$work/data/keys" "$work/data/run"
    ts_uid="$(awk -F: '$1 == "systemd-timesync" { print $3 ":" $4 }' "${ROOT_DIR:-/nonexistent}/etc/passwd" 2>/dev/null || true)"
    [ -z "$ts_uid" ] || chown "$ts_uid" "$work/data/timesync"
fi
# Inode tables and journal written now, not by ext4lazyinit in the box's first hours:
# no background writes to the card while the box is idle.
mke2fs -q -F -t ext4 -L LTDATA \
    -E root_owner="$(stat -c %u:%g "$work/data")",lazy_itable_init=0,lazy_journal_init=0 \
    -d "$work/data" "$work/data.ext4" "${DATA_MIB}M"

# --- the disk ---------------------------------------------------------------------------
total=$(( 1 + AUTOBOOT_MIB + 2 * BOOT_MIB + 2 * ROOT_MIB + DATA_MIB + 1 ))
rm -f "$OUT"
truncate -s "${total}M" "$OUT"
sfdisk --quiet --no-reread "$OUT" <<EOF
label: gpt
first-lba: 2048
size=${AUTOBOOT_MIB}MiB, type=$T_FAT, name=linetap-autoboot
size=${BOOT_MIB}MiB, type=$T_FAT, name=linetap-boot-a
size=${BOOT_MIB}MiB, type=$T_FAT, name=linetap-boot-b
size=${ROOT_MIB}MiB, type=$T_LINUX, name=linetap-root-a
size=${ROOT_MIB}MiB, type=$T_LINUX, name=linetap-root-b
size=${DATA_MIB}MiB, type=$T_DATA, name=linetap-data
EOF
n=1
for f in autoboot.fat boot-a.fat boot-b.fat root-a.ext4 root-b.ext4 data.ext4; do
    start="$(sfdisk --dump "$OUT" | awk -v n="$n" -F'[=,]' '$1 ~ ("[^0-9]" n " *: *start") { print $2 + 0 }')"
    dd if="$work/$f" of="$OUT" bs=1M seek=$(( start / 2048 )) conv=notrunc,sparse status=none
    n=$(( n + 1 ))
done
log "wrote $OUT (${total} MiB): autoboot, boot A/B, root A/B (${ROOT_MIB} MiB each), data"
