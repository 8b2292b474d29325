#!/bin/bash
# Build a signed RAUC bundle (verity format) for the Linetap box (docs/updates.md).
#
# Usage: make-bundle.sh --out FILE --keys DIR [--rootfs IMG] [--boot IMG]
#                       [--version V] [--format verity|plain]
#   --keys DIR    the signing material: DIR/ca.cert.pem (the keyring), DIR/signing.cert.pem
#                 and DIR/signing.key.pem. Missing files are made here as a DEVELOPMENT CA
#                 and signing certificate (openssl; never use them for a real fleet).
#   --rootfs IMG  the root file system image (ext4); default: a small demo root made here
#   --boot IMG    the boot partition image (vfat) for the boot slot, if any
#   --version V   the bundle's version (default: the Python package's)
#   --format F    verity (default, what boxes accept) or plain (tests only: boxes refuse it)
# Needs rauc, mksquashfs (squashfs-tools), openssl and mke2fs; `make bundle` installs them.
set -euo pipefail

OUT=""
KEYS=""
ROOTFS=""
BOOT=""
VERSION=""
FORMAT=verity
COMPATIBLE=linetap-pi   # firmware/rauc/system.conf

log() { printf 'make-bundle.sh: %s\n' "$*"; }
die() { printf 'make-bundle.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keys) KEYS="${2:?--keys needs a folder}"; shift 2 ;;
        --rootfs) ROOTFS="${2:?--rootfs needs an image}"; shift 2 ;;
        --boot) BOOT="${2:?--boot needs an image}"; shift 2 ;;
        --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
        --format) FORMAT="${2:?--format needs verity or plain}"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ -n "$OUT" ] || die "--out is required"
[ -n "$KEYS" ] || die "--keys is required"
case "$FORMAT" in verity|plain) ;; *) die "--format must be verity or plain (got '$FORMAT')" ;; esac
for tool in rauc mksquashfs openssl mke2fs; do
    command -v "$tool" > /dev/null || die "$tool is not installed (make bundle installs it)"
done
[ -z "$ROOTFS" ] || [ -f "$ROOTFS" ] || die "no such root file system image: $ROOTFS"
[ -z "$BOOT" ] || [ -f "$BOOT" ] || die "no such boot image: $BOOT"
if [ -z "$VERSION" ]; then
    VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$(dirname "$0")/../../pyproject.toml" | head -n 1)"
fi
[[ "$VERSION" =~ ^[A-Za-z0-9][A-Za-z0-9.+~_-]{0,63}$ ]] || die "bad version '$VERSION'"

# --- the development CA and signing certificate, made once ------------------------------
mkdir -p "$KEYS"
if [ ! -f "$KEYS/ca.cert.pem" ]; then
    log "making a DEVELOPMENT CA in $KEYS (not for a real fleet: see docs/updates.md)"
    ( umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$KEYS/ca.key.pem" 2> /dev/null )
    openssl req -x509 -new -key "$KEYS/ca.key.pem" -days 3650 -sha256 \
        -subj "/O=Linetap development/CN=Linetap development release CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$KEYS/ca.cert.pem"
    rm -f "$KEYS/signing.cert.pem"
fi
if [ ! -f "$KEYS/signing.cert.pem" ]; then
    log "making a development signing certificate in $KEYS"
    [ -f "$KEYS/ca.key.pem" ] || die "$KEYS has a CA certificate but no CA key to sign with"
    ( umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$KEYS/signing.key.pem" 2> /dev/null )
    openssl req -new -key "$KEYS/signing.key.pem" \
        -subj "/O=Linetap development/CN=Linetap development bundle signer" \
        -out "$KEYS/signing.csr"
    ext="$(mktemp)"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n' > "$ext"
    openssl x509 -req -in "$KEYS/signing.csr" -CA "$KEYS/ca.cert.pem" -CAkey "$KEYS/ca.key.pem" \
        -CAcreateserial -days 730 -sha256 -extfile "$ext" -out "$KEYS/signing.cert.pem" 2> /dev/null
    rm -f "$ext" "$KEYS/signing.csr"
fi

# --- the bundle's content ----------------------------------------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/content"
if [ -n "$ROOTFS" ]; then
    cp --sparse=always "$ROOTFS" "$work/content/rootfs.ext4"
else
    log "no --rootfs: a small demo root file system"
    mkdir -p "$work/demo/etc"
    printf 'linetap %s (demo root for make bundle)\n' "$VERSION" > "$work/demo/etc/linetap-release"
    # Incompressible filler: RAUC refuses a payload that squashes to a single block.
    head -c 65536 /dev/urandom > "$work/demo/etc/linetap-demo-filler"
    mke2fs -q -F -t ext4 -L linetap-root -d "$work/demo" "$work/content/rootfs.ext4" 8M > /dev/null
fi
{
    printf '[update]\ncompatible=%s\nversion=%s\n\n[bundle]\nformat=%s\n\n' \
        "$COMPATIBLE" "$VERSION" "$FORMAT"
    printf '[image.rootfs]\nfilename=rootfs.ext4\n'
} > "$work/content/manifest.raucm"
if [ -n "$BOOT" ]; then
    cp "$BOOT" "$work/content/boot.vfat"
    printf '\n[image.boot]\nfilename=boot.vfat\n' >> "$work/content/manifest.raucm"
fi

mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
rauc --conf="$(dirname "$0")/system.conf" bundle --cert="$KEYS/signing.cert.pem" --key="$KEYS/signing.key.pem" \
    --keyring="$KEYS/ca.cert.pem" "$work/content" "$OUT" > "$work/rauc.log" 2>&1 \
    || { cat "$work/rauc.log" >&2; die "rauc bundle failed"; }
log "wrote $OUT ($FORMAT, version $VERSION, $(stat -c %s "$OUT") bytes); keyring $KEYS/ca.cert.pem"
