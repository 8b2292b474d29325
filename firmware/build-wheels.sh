#!/bin/bash
# Build the box's wheel set once, in a builder root that has the compilers, so the image
# never does: every file fetched is checked against firmware/wheels.lock
# (pip --require-hashes), the two sdists (pyalsaaudio, peewee) and Linetap itself become
# wheels, and DIR/requirements.txt lists every wheel of the set with its own sha256 for
# firmware/install.sh --pip-wheel-dir DIR.
#
# Usage: build-wheels.sh --arch arm64|amd64 --base TAR --out DIR [--src DIR]
#   TAR: the debootstrap root of firmware/build-image.sh (same Debian, same Python, same
#   architecture as the image; arm64 runs under qemu-user on another host). The builder
#   root is kept in DIR/../builder-ARCH, so a rerun only rebuilds the set. Needs root.
set -euo pipefail

ARCH=""
BASE=""
OUT=""
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$(cd "$HERE/.." && pwd)"

log() { printf 'build-wheels.sh: %s\n' "$*"; }
die() { printf 'build-wheels.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH="${2:?}"; shift 2 ;;
        --base) BASE="${2:?}"; shift 2 ;;
        --out) OUT="${2:?}"; shift 2 ;;
        --src) SRC="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$ARCH" in arm64|amd64) ;; *) die "--arch must be arm64 or amd64" ;; esac
[ -f "$BASE" ] || die "--base must be the base root tarball (firmware/build-image.sh makes it)"
[ -n "$OUT" ] || die "--out is required"
[ "$(id -u)" = 0 ] || die "needs root (chroot)"
LOCK="$SRC/firmware/wheels.lock"
[ -f "$LOCK" ] || die "no $LOCK (firmware/lock-wheels.py writes it)"

# shellcheck source=firmware/chroot-lib.sh
. "$HERE/chroot-lib.sh"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
B="$(dirname "$OUT")/builder-$ARCH"
if [ ! -f "$B/.ready" ]; then
    log "builder root (compilers, headers) in $B"
    rm -rf "$B"
    mkdir -p "$B"
    tar -C "$B" -xf "$BASE"
    in_chroot "$B" apt-get update -q
    in_chroot "$B" apt-get install -y -q --no-install-recommends build-essential python3-dev \
        libasound2-dev
    touch "$B/.ready"
fi

rm -rf "$B/w" "$OUT.tmp"
mkdir -p "$B/w/out" "$B/w/dl"
cp "$LOCK" "$B/w/wheels.lock"
tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ -cf - . | { mkdir -p "$B/w/src"; tar -C "$B/w/src" -xf -; }

# Downloads happen here, on the host (its pip knows the way to PyPI); every file is
# checked against the lock. The builder then works offline from those files only.
sublock() {  # the lock's entries for the names given (a regex), hashes and all
    awk -v re="^($1)==" '$0 ~ re { p = 1 } p { print } p && !/\\$/ { p = 0 }' "$LOCK"
}
sublock 'setuptools|wheel' > "$B/w/tools.lock"
sublock 'pyalsaaudio|peewee' > "$B/w/sdist.lock"
awk '/^[A-Za-z0-9_.-]+==/ && !/^(pyalsaaudio|peewee|wheel)==/ { p = 1 }
     /^(pyalsaaudio|peewee|wheel)==/ { p = 0 }
     p { print } p && !/\\$/ { p = 0 }' "$LOCK" > "$B/w/binary.lock"
case "$ARCH" in arm64) m=aarch64 ;; amd64) m=x86_64 ;; esac
plat=()
for tag in manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014; do
    plat+=(--platform "${tag}_$m")
done
# The host's pip (LINETAP_HOST_PIP overrides, e.g. ".venv/bin/python -m pip").
read -r -a host_pip <<< "${LINETAP_HOST_PIP:-python3 -m pip}"
pipdl=("${host_pip[@]}" download -q --no-deps --require-hashes --no-input --disable-pip-version-check
       -d "$B/w/dl")
log "downloading the locked files for $ARCH"
"${pipdl[@]}" --only-binary=:all: --python-version 3.11 --implementation cp "${plat[@]}" \
    -r "$B/w/binary.lock"
"${pipdl[@]}" --only-binary=:all: -r "$B/w/tools.lock"
"${pipdl[@]}" --no-binary=pyalsaaudio,peewee -r "$B/w/sdist.lock"

# The build tools, then every locked package: wheels as published, sdists built here
# against the builder's headers, and Linetap's own wheel.
in_chroot "$B" sh -euc '
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=/w/dl PIP_DISABLE_PIP_VERSION_CHECK=1
    # peewee: pure Python (its optional SQLite UDF extension needs Cython; we use none).
    export NO_SQLITE=1
    python3 -m venv /w/venv
    /w/venv/bin/pip install -q --require-hashes -r /w/tools.lock
    /w/venv/bin/pip wheel -q --require-hashes --no-build-isolation -r /w/wheels.lock -w /w/out
    /w/venv/bin/pip wheel -q --no-deps --no-build-isolation /w/src -w /w/out
'
mkdir -p "$OUT.tmp"
cp "$B/w/out"/*.whl "$OUT.tmp/"
rm -f "$OUT.tmp"/wheel-*.whl       # a build tool, not part of the box
# requirements.txt: name==version --hash for each wheel of this set (pip checks the
# local file against it, so a swapped wheel is refused at install).
( cd "$OUT.tmp" && for w in *.whl; do
    name="${w%%-*}"
    rest="${w#*-}"
    printf '%s==%s --hash=sha256:%s\n' "$name" "${rest%%-*}" "$(sha256sum "$w" | cut -d' ' -f1)"
done ) > "$OUT.tmp/requirements.txt"
rm -rf "$OUT" "$B/w"
mv "$OUT.tmp" "$OUT"
log "wheel set for $ARCH: $(find "$OUT" -name '*.whl' | wc -l) wheels in $OUT"
