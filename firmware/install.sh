#!/bin/bash
# Install Linetap into a root filesystem: /opt/linetap with its own venv, the linetap
# user, the systemd units (enabled), the boot config fragments and overlay, and the
# read-only-root layout (fstab, tmpfs, volatile journal).
#
# The pi-gen stage runs this inside the image chroot as `install.sh --root / --src DIR`;
# the tests run it against a scratch root. Idempotent: running it twice changes nothing.
#
# Usage: install.sh --root DIR --src DIR [--boot-dir DIR] [--python PY] [--no-venv]
#                   [--link-src] [--pip-wheel-dir DIR] [--pip-args "ARGS"]
#   --pip-wheel-dir DIR  install from that wheel set only (no index). If DIR holds
#               requirements.txt (written by firmware/build-wheels.sh: every wheel with
#               its sha256), pip installs exactly that, --require-hashes, and Linetap's
#               own wheel from it; nothing is compiled on the box.
#   --link-src  put /opt/linetap/src on the venv's path and write the console scripts
#               instead of building a wheel (offline, no setuptools/wheel needed);
#               dependencies then come only from --pip-wheel-dir, if given.
set -euo pipefail

ROOT=""
SRC=""
BOOT=""
PYTHON="python3"
MAKE_VENV=1
LINK_SRC=0
WHEEL_DIR=""
PIP_ARGS=""
MARK_BEGIN="# >>> linetap (managed by firmware/install.sh)"
MARK_END="# <<< linetap"

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

log() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
        --src) SRC="${2:?--src needs a folder}"; shift 2 ;;
        --boot-dir) BOOT="${2:?--boot-dir needs a folder}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --no-venv) MAKE_VENV=0; shift ;;
        --link-src) LINK_SRC=1; shift ;;
        --pip-wheel-dir) WHEEL_DIR="${2:?--pip-wheel-dir needs a folder}"; shift 2 ;;
        --pip-args) PIP_ARGS="${2-}"; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[ -n "$ROOT" ] || die "--root is required"
[ -n "$SRC" ] || die "--src is required"
[ -d "$ROOT" ] || die "root $ROOT is not a folder"
[ -f "$SRC/pyproject.toml" ] || die "$SRC does not look like the linetap source (no pyproject.toml)"
ROOT="$(cd "$ROOT" && pwd)"
SRC="$(cd "$SRC" && pwd)"
R="${ROOT%/}"
BOOT="${BOOT:-$R/boot/firmware}"
OPT="$R/opt/linetap"

# Replace the managed block in FILE (between the markers) with stdin; create FILE if
# needed. Keeps everything outside the block, so re-running is idempotent.
put_block() {
    local file="$1" tmp
    mkdir -p "$(dirname "$file")"
    touch "$file"
    tmp="$(mktemp)"
    awk -v b="$MARK_BEGIN" -v e="$MARK_END" '
        $0 == b { skip = 1; next }
        $0 == e { skip = 0; next }
        !skip { print }' "$file" > "$tmp"
    { cat "$tmp"; echo "$MARK_BEGIN"; cat; echo "$MARK_END"; } > "$file"
    rm -f "$tmp"
}

# --- 1. source and venv -------------------------------------------------------------
log "installing source into /opt/linetap/src"
mkdir -p "$OPT"
rm -rf "$OPT/src.new"
mkdir -p "$OPT/src.new"
# Not ./build: image builds (firmware/build-image.sh) keep roots and caches there.
tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.hypothesis \
    -cf - . | tar -C "$OPT/src.new" -xf -
rm -rf "$OPT/src"
mv "$OPT/src.new" "$OPT/src"

if [ "$MAKE_VENV" = 1 ]; then
    log "creating the venv /opt/linetap/venv with $PYTHON"
    "$PYTHON" -m venv --clear "$OPT/venv"
    pip_opts=(--disable-pip-version-check --no-input)
    if [ -n "$WHEEL_DIR" ]; then
        pip_opts+=(--no-index --find-links "$WHEEL_DIR")
    fi
    # PIP_ARGS is a deliberate word list (e.g. "--no-deps --no-build-isolation").
    # shellcheck disable=SC2206
    extra=($PIP_ARGS)
    if [ "$LINK_SRC" = 0 ] && [ -n "$WHEEL_DIR" ] && [ -f "$WHEEL_DIR/requirements.txt" ]; then
        log "installing the hash-locked wheel set $(basename "$WHEEL_DIR")"
        "$OPT/venv/bin/python" -m pip install "${pip_opts[@]}" "${extra[@]}" \
            --only-binary=:all: --require-hashes -r "$WHEEL_DIR/requirements.txt"
    elif [ "$LINK_SRC" = 0 ]; then
        "$OPT/venv/bin/python" -m pip install "${pip_opts[@]}" "${extra[@]}" "$OPT/src[pi]"
    else
        if [ -n "$WHEEL_DIR" ]; then
            deps="$("$OPT/venv/bin/python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
                "$OPT/src/pyproject.toml")"
            mapfile -t dep_list <<< "$deps"
            "$OPT/venv/bin/python" -m pip install "${pip_opts[@]}" "${extra[@]}" "${dep_list[@]}"
        fi
        site="$("$OPT/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
        # The path as seen on the box, not through --root.
        echo "/opt/linetap/src" > "$site/linetap.pth"
        "$OPT/venv/bin/python" - "$OPT/src/pyproject.toml" "$OPT/venv/bin" <<'PY'
import os, sys, tomllib
scripts = tomllib.load(open(sys.argv[1], "rb"))["project"]["scripts"]
for name, target in scripts.items():
    mod, func = target.split(":")
    path = os.path.join(sys.argv[2], name)
    with open(path, "w") as f:
        f.write(f"#!/opt/linetap/venv/bin/python\nimport sys\nfrom {mod} import {func}\n"
                f"sys.exit({func}())\n")
    os.chmod(path, 0o755)
PY
    fi
    [ -x "$OPT/venv/bin/linetap" ] || die "venv has no linetap entry point"
    # Bytecode now, on the build host: the units run with PYTHONDONTWRITEBYTECODE (the
    # root file system is read-only), and compiling sources at every start costs the
    # daemon both start-up time and resident memory (about 1.3 MB, docs/benchmarks.md).
    "$OPT/venv/bin/python" -m compileall -q -j 0 "$OPT/src" >/dev/null \
        || die "compileall failed"
else
    log "skipping the venv (--no-venv)"
fi

# --- 2. user ----------------------------------------------------------------------
log "adding the linetap user (sysusers.d)"
install -D -m 0644 "$SRC/systemd/linetap.sysusers" "$R/usr/lib/sysusers.d/linetap.conf"
if command -v systemd-sysusers > /dev/null 2>&1; then
    mkdir -p "$R/etc"
    systemd-sysusers --root="$R" "$R/usr/lib/sysusers.d/linetap.conf"
else
    log "systemd-sysusers not found: the user is created on first boot"
fi

# --- 3. units, polkit, tmpfiles, journald ---------------------------------------------
log "installing and enabling the systemd units"
install -d "$R/etc/systemd/system"
for unit in "$SRC"/systemd/*.service; do
    install -m 0644 "$unit" "$R/etc/systemd/system/"
done
# Enable by hand: `systemctl --root` needs the distribution's units, which a scratch
# root does not have; the links are exactly what `systemctl enable` would make.
enable_unit() {
    local unit="$1" target="$2"
    install -d "$R/etc/systemd/system/$target.wants"
    ln -sfn "/etc/systemd/system/$unit" "$R/etc/systemd/system/$target.wants/$unit"
}
enable_unit linetap-recorder.service multi-user.target
enable_unit linetap-provision-agent.service dev-ttyGS0.device
enable_unit linetap-mark-good.service multi-user.target

# RAUC (docs/updates.md): its config, the tryboot backend, its service and D-Bus policy,
# and the keyring: LINETAP_RAUC_KEYRING (the release CA's certificate), else the
# development CA that `make bundle` made.
install -D -m 0644 "$SRC/firmware/rauc/system.conf" "$R/etc/rauc/system.conf"
install -D -m 0755 "$SRC/firmware/rauc/tryboot-backend" "$R/usr/lib/linetap/rauc-tryboot-backend"
install -D -m 0755 "$SRC/firmware/rauc/post-install" "$R/usr/lib/linetap/rauc-post-install"
install -m 0644 "$SRC/firmware/rauc/rauc.service" "$R/etc/systemd/system/rauc.service"
enable_unit rauc.service multi-user.target
install -D -m 0644 "$SRC/firmware/rauc/de.pengutronix.rauc.conf" \
    "$R/etc/dbus-1/system.d/de.pengutronix.rauc.conf"
keyring="${LINETAP_RAUC_KEYRING:-$SRC/build/bundle/keys/ca.cert.pem}"
if [ -f "$keyring" ]; then
    install -D -m 0644 "$keyring" "$R/etc/rauc/keyring.pem"
else
    log "WARNING: no RAUC keyring ($keyring): this image will refuse every update bundle"
fi
# Masked, whether or not the image has them: swap would page the audio ring and keys to
# the card in plaintext; fake-hwclock cannot save on a read-only root (the clock is kept
# by timesyncd's clock file on the data partition instead); time-wait-sync would hold
# time-sync.target, and so the recorder, until NTP answers.
for unit in dphys-swapfile.service fake-hwclock.service fake-hwclock-save.service \
        systemd-time-wait-sync.service swap.target; do
    ln -sfn /dev/null "$R/etc/systemd/system/$unit"
done

(cd "$SRC/firmware/rootfs" && find . -type f) | while read -r f; do
    install -D -m 0644 "$SRC/firmware/rootfs/$f" "$R/${f#./}"
done

# The config lives on the data partition so the root can stay read-only.
install -d "$R/var/lib/linetap"
if [ ! -L "$R/etc/linetap" ]; then
    rm -rf "$R/etc/linetap"
    ln -s /var/lib/linetap/config "$R/etc/linetap"
fi

# --- 4. read-only root: fstab -------------------------------------------------------
log "laying out the read-only root in /etc/fstab"
touch "$R/etc/fstab"
# Mount / and /boot/firmware read-only (the kernel command line says ro for / too).
for mnt in '\/' '\/boot\/firmware'; do
    sed -i -E "/^[^#[:space:]]+[[:space:]]+${mnt}[[:space:]]/ { /(^|[[:space:],])ro([[:space:],]|\$)/! s/^([^[:space:]]+[[:space:]]+${mnt}[[:space:]]+[^[:space:]]+[[:space:]]+)([^[:space:]]+)/\1\2,ro/ }" "$R/etc/fstab"
done
# The data partition is nofail: a damaged data file system must not drop the box into
# emergency mode (the recorder, which RequiresMountsFor it, fails visibly instead, and
# the provisioning agent can still be reached to reformat it). timesyncd's clock file
# lives on it, bound over /var/lib/systemd/timesync: after a power cut the clock starts
# from the last NTP sync or USB clock set, not from the image's build date.
put_block "$R/etc/fstab" <<'EOF'
LABEL=LTDATA  /var/lib/linetap  ext4   defaults,noatime,nodev,nosuid,noexec,commit=5,nofail,x-systemd.device-timeout=30s,x-systemd.growfs  0  2
/var/lib/linetap/timesync  /var/lib/systemd/timesync  none  bind,nofail,x-systemd.requires-mounts-for=/var/lib/linetap  0  0
tmpfs         /tmp              tmpfs  nosuid,nodev,mode=1777,size=64m  0  0
tmpfs         /var/tmp          tmpfs  nosuid,nodev,mode=1777,size=16m  0  0
tmpfs         /var/log          tmpfs  nosuid,nodev,noexec,mode=0755,size=32m  0  0
EOF
# The bind's mount point: timesyncd makes it at run time (StateDirectory=), which the
# read-only root refuses, and without it timesyncd fails on the mount dependency (booted:
# "mount point does not exist", so the clock never synchronised).
install -d "$R/var/lib/systemd/timesync"

# --- 5. boot partition: config.txt, cmdline.txt, overlay -----------------------------
log "installing boot fragments into ${BOOT#"$R"}"
install -d "$BOOT/overlays"
sed '/^# --- linetap/d; /^# --- end linetap/d' "$SRC/firmware/boot/config.txt" \
    | put_block "$BOOT/config.txt"
# The image's own KMS line keeps HDMI audio unless told noaudio.
sed -i -E '/^dtoverlay=vc4-kms-v3d/ { /noaudio/! s/$/,noaudio/ }' "$BOOT/config.txt"
if command -v dtc > /dev/null 2>&1; then
    dtc -@ -q -I dts -O dtb -o "$BOOT/overlays/linetap-line.dtbo" \
        "$SRC/firmware/overlay/linetap-line-overlay.dts"
else
    die "dtc not found (apt-get install device-tree-compiler)"
fi
# cmdline.txt is one line: add each of our arguments that is not there yet.
touch "$BOOT/cmdline.txt"
line="$(head -n 1 "$BOOT/cmdline.txt")"
read -r -a our_args < "$SRC/firmware/boot/cmdline.txt"
for arg in "${our_args[@]}"; do
    key="${arg%%=*}"
    if [ "$key" = "rw" ] || [ "$key" = "ro" ]; then
        line="$(printf '%s\n' "$line" | sed -E 's/(^| )rw( |$)/\1\2/g; s/  +/ /g')"
    fi
    case " $line " in
        *" $arg "*) ;;
        *" $key="*) line="$(printf '%s\n' "$line" | sed -E "s/(^| )$key=[^ ]*/\1$arg/")" ;;
        *) line="${line:+$line }$arg" ;;
    esac
done
printf '%s\n' "$line" > "$BOOT/cmdline.txt"

log "done: $R"
