#!/bin/bash
# Put the Linetap stage into a pi-gen checkout, ready for ./build-docker.sh.
#
# Usage: LINETAP_ENGINEER_PASS=... prepare.sh PI_GEN_DIR WHEEL_DIR
#   PI_GEN_DIR  a clone of https://github.com/RPi-Distro/pi-gen on branch bookworm-arm64
#               (its arm64 branch has moved on to trixie; the image is bookworm)
#   WHEEL_DIR   the arm64 wheel set of firmware/build-wheels.sh (with requirements.txt)
# build-docker.sh mounts only the pi-gen tree into its container and passes only its
# config file, so everything the stage needs is copied into the tree here: the stage
# itself, the Linetap source and the wheel set (stage-linetap/00-install-linetap/files/),
# and the config with the engineer's password written in.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$(cd "$HERE/../.." && pwd)"
BRANCH=bookworm-arm64

die() { printf 'prepare.sh: error: %s\n' "$*" >&2; exit 1; }

PIGEN="${1:?usage: prepare.sh PI_GEN_DIR WHEEL_DIR}"
WHEELS="${2:?usage: prepare.sh PI_GEN_DIR WHEEL_DIR}"
PASS="${LINETAP_ENGINEER_PASS:-}"
[ -n "$PASS" ] || die "set LINETAP_ENGINEER_PASS (the console user 'engineer'; no SSH is enabled)"
[ -f "$PIGEN/build-docker.sh" ] || die "$PIGEN is not a pi-gen checkout (no build-docker.sh)"
branch="$(git -C "$PIGEN" rev-parse --abbrev-ref HEAD 2>/dev/null || true)"
[ "$branch" = "$BRANCH" ] || die "$PIGEN is on '$branch': run git -C $PIGEN checkout $BRANCH"
[ -f "$WHEELS/requirements.txt" ] || die "$WHEELS has no requirements.txt (firmware/build-wheels.sh --arch arm64)"
if ls "$WHEELS"/*x86_64*.whl > /dev/null 2>&1; then
    die "$WHEELS holds x86_64 wheels: build the arm64 set"
fi

stage="$PIGEN/stage-linetap"
rm -rf "$stage"
cp -a "$HERE/stage-linetap" "$stage"
files="$stage/00-install-linetap/files"
mkdir -p "$files/linetap-src" "$files/wheels"
tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=build --exclude=__pycache__ \
    --exclude='*.egg-info' -cf - . | tar -C "$files/linetap-src" -xf -
cp "$WHEELS"/*.whl "$WHEELS/requirements.txt" "$files/wheels/"

{
    cat "$HERE/config"
    printf 'FIRST_USER_PASS=%q\n' "$PASS"
} > "$PIGEN/config"
chmod 0600 "$PIGEN/config"
# Only our stage exports an image.
touch "$PIGEN/stage2/SKIP_IMAGES"
echo "prepare.sh: $PIGEN is ready: cd $PIGEN && ./build-docker.sh"
