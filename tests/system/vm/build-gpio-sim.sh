#!/bin/bash
# Build gpio-sim.ko for the test image's kernel. Debian's bookworm kernels leave
# CONFIG_GPIO_SIM unset, so the system test compiles the driver from Debian's own
# linux-source package (the same 6.1 tree as the image's kernel) against that kernel's
# headers, in the wheel builder root (which has the compilers; the image never does).
# The module goes only into the test VM's copy of the disk, never into the image.
#
# Usage: build-gpio-sim.sh BUILDER_ROOT KVER OUT.ko   (root; BUILDER_ROOT from
#        firmware/build-wheels.sh, KVER e.g. 6.1.0-50-amd64)
set -euo pipefail
B="${1:?usage: build-gpio-sim.sh BUILDER_ROOT KVER OUT.ko}"
KVER="${2:?kernel version}"
OUT="${3:?output .ko}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
. "$HERE/../../../firmware/chroot-lib.sh"

src_pkg="linux-source-${KVER%%.*}.$(echo "$KVER" | cut -d. -f2)"
in_chroot "$B" apt-get install -y -q --no-install-recommends "linux-headers-$KVER" "$src_pkg" \
    xz-utils
rm -rf "$B/tmp/gpio-sim"
mkdir -p "$B/tmp/gpio-sim"
tarball="$(find "$B/usr/src" -maxdepth 1 -name 'linux-source-*.tar.xz' | head -n 1)"
[ -n "$tarball" ] || { echo "build-gpio-sim.sh: no linux-source tarball" >&2; exit 1; }
top="$(basename "$tarball" .tar.xz)"   # linux-source-6.1.tar.xz holds linux-source-6.1/
# gpio-sim needs the interrupt simulator (CONFIG_IRQ_SIM), also unset in Debian's
# kernel: it is linked into the same module.
tar -C "$B/tmp/gpio-sim" --strip-components=3 -xJf "$tarball" \
    "$top/drivers/gpio/gpio-sim.c" "$top/drivers/gpio/gpiolib.h" "$top/kernel/irq/irq_sim.c"
mv "$B/tmp/gpio-sim/gpio-sim.c" "$B/tmp/gpio-sim/gpio-sim-drv.c"
# irq_to_desc() is not exported to modules; generic_handle_irq() runs the same
# handle_simple_irq that irq_sim installed on each interrupt.
sed -i 's/handle_simple_irq(irq_to_desc(irqnum))/generic_handle_irq(irqnum)/' \
    "$B/tmp/gpio-sim/irq_sim.c"
grep -q 'generic_handle_irq(irqnum)' "$B/tmp/gpio-sim/irq_sim.c" \
    || { echo "build-gpio-sim.sh: irq_sim.c changed upstream; adapt the patch" >&2; exit 1; }
printf 'obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-drv.o irq_sim.o\n' > "$B/tmp/gpio-sim/Kbuild"
in_chroot "$B" make -s -C "/lib/modules/$KVER/build" M=/tmp/gpio-sim modules
cp "$B/tmp/gpio-sim/gpio-sim.ko" "$OUT"
echo "build-gpio-sim.sh: $OUT"
