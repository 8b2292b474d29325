"""``python -m provisioning.benchcable BOX LAPTOP``: a USB cable made of two ptys.

For the bench recipe in ``docs/provisioning.md``: makes two pseudo-terminal pairs, joins
their master ends with a relay (so each end is a real tty device that pyserial opens by
path, as ``/dev/ttyGS0`` on the box and ``/dev/ttyACM0`` on the laptop are), and puts
symlinks ``BOX`` and ``LAPTOP`` to the two ends. Runs until SIGINT or SIGTERM, then
removes the symlinks. No dependency beyond the standard library.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import tty
from pathlib import Path


def relay(fds: tuple[int, int], stop) -> None:
    """Copy bytes between the two master fds until ``stop()`` is true."""
    a, b = fds
    while not stop():
        try:
            ready, _, _ = select.select([a, b], [], [], 0.2)
        except InterruptedError:
            continue
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                continue        # the other side closed its end; it may open it again
            os.write(b if fd == a else a, data)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m provisioning.benchcable BOX_LINK LAPTOP_LINK", file=sys.stderr)
        return 2
    links = [Path(a) for a in argv]
    for p in links:
        if p.exists() or p.is_symlink():
            print(f"benchcable: {p} already exists", file=sys.stderr)
            return 2
    pairs = [os.openpty() for _ in links]
    for (_m, s), link in zip(pairs, links, strict=True):
        tty.setraw(s)
        link.symlink_to(os.ttyname(s))
    done = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.append(True))
    print(f"benchcable: {links[0]} <-> {links[1]}", flush=True)
    try:
        relay((pairs[0][0], pairs[1][0]), lambda: bool(done))
    finally:
        for p in links:
            p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
