"""A userspace netem: latency, jitter, loss, duplication, reordering and partitions
between a network namespace and the root namespace, for kernels without ``sch_netem``.

The kernel this project is developed on has no ``sch_netem`` (nor ``gact``, iptables or
nftables), so ``tc`` alone can shape bandwidth (``tbf``) but cannot delay, reorder or
duplicate packets. TUN devices can: the namespace and the root namespace each get a TUN
interface, routes send the traffic between the two addresses through them, and a relay
thread moves every IP packet from one TUN to the other, after a per-packet decision
(:func:`fate`, pure and table-tested) on whether to drop it, duplicate it, and how long
to hold it. Jitter varies the delay but keeps each direction in order, as a real path's
queues do (netem's jitter reorders nearly every packet of a fast stream, which no
uplink does); reordering comes from ``reorder``: that share of packets is sent at once,
ahead of those held, as netem's ``reorder`` does.

Nothing is rewritten (no NAT): the packets keep their addresses and checksums, so TCP
in the namespace and TCP in the root namespace talk end to end through the relay.

    link = TunLink("lt-imp", "10.78.0.2", "10.78.0.1")
    link.setup()                       # root only
    link.set(Impairment(delay_ms=80, jitter_ms=40, loss=0.02, reorder=0.1))
    link.partition(True)               # every packet dropped, both ways (a cut cable)
    link.close()
"""

from __future__ import annotations

import fcntl
import heapq
import os
import random
import select
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
MTU = 1500


@dataclass(frozen=True)
class Impairment:
    """What happens to each packet, in each direction. Times in ms, shares in 0..1.

    ``delay_ms`` + uniform(-``jitter_ms``, +``jitter_ms``) (never below 0) is how long a
    packet is held, but never released before the packet ahead of it in the same
    direction; ``reorder`` is the share sent at once, overtaking those held; ``loss``
    and ``duplicate`` the shares dropped and sent twice.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0

    def __post_init__(self):
        for name in ("loss", "duplicate", "reorder"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} {v} is not a share in 0..1")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must not be negative")


CLEAN = Impairment()


def fate(imp: Impairment, draws: tuple[float, float, float, float]) -> list[float]:
    """Hold times (s) for the copies of one packet: [] = dropped, two = duplicated.

    ``draws``: four uniform 0..1 numbers (loss, duplicate, reorder, jitter), so the
    decision is a pure function of them.
    """
    u_loss, u_dup, u_reorder, u_jitter = draws
    if u_loss < imp.loss:
        return []
    if u_reorder < imp.reorder:
        hold = 0.0
    else:
        hold = max(0.0, imp.delay_ms + (2.0 * u_jitter - 1.0) * imp.jitter_ms) / 1000.0
    return [hold, hold] if u_dup < imp.duplicate else [hold]


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


class TunLink:
    """Namespace ``ns`` (address ``dev_ip``) joined to the root namespace (``root_ip``)
    through two TUN devices and a relay thread that applies an :class:`Impairment`."""

    def __init__(self, ns: str, dev_ip: str, root_ip: str, *, seed: int = 1,
                 tun_dev: str | None = None, tun_root: str | None = None):
        self.ns, self.dev_ip, self.root_ip = ns, dev_ip, root_ip
        self.tun_dev = tun_dev or f"{ns[:10]}-d"
        self.tun_root = tun_root or f"{ns[:10]}-r"
        self.imp = CLEAN
        self.cut = False
        self.rng = random.Random(seed)
        self.counts = {"packets": 0, "bytes": 0, "dropped": 0, "duplicated": 0, "reordered": 0,
                       "partition_dropped": 0, "write_failed": 0}
        self._fds: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- set-up ------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the namespace, both TUNs, addresses and routes; start the relay."""
        _sh("ip", "netns", "add", self.ns)
        try:
            _sh("ip", "-n", self.ns, "link", "set", "lo", "up")
            fd_dev, fd_root = _open_tun(self.tun_dev), _open_tun(self.tun_root)
            self._fds = (fd_dev, fd_root)
            _sh("ip", "link", "set", self.tun_dev, "netns", self.ns)
            for ns, dev, me, peer in ((self.ns, self.tun_dev, self.dev_ip, self.root_ip),
                                      (None, self.tun_root, self.root_ip, self.dev_ip)):
                pre = ("ip", "-n", ns) if ns else ("ip",)
                # IPv4 only: no router solicitations or MLD reports through the relay,
                # so its counters are the traffic under test and nothing else.
                _sh(*(("ip", "netns", "exec", ns) if ns else ()), "sh", "-c",
                    f"echo 1 > /proc/sys/net/ipv6/conf/{dev}/disable_ipv6")
                _sh(*pre, "addr", "add", f"{me}/32", "dev", dev)
                _sh(*pre, "link", "set", dev, "mtu", str(MTU), "up")
                _sh(*pre, "route", "add", f"{peer}/32", "dev", dev)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._relay, name="netimpair", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._fds:
            for fd in self._fds:
                os.close(fd)               # the TUN devices go with their last fd
            self._fds = None
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    # -- control -----------------------------------------------------------------------
    def set(self, imp: Impairment) -> None:
        with self._lock:
            self.imp = imp

    def partition(self, on: bool) -> None:
        """Drop every packet both ways (a cut cable: no link-down signal to either end)."""
        with self._lock:
            self.cut = on

    # -- the relay ---------------------------------------------------------------------
    def _relay(self) -> None:
        fd_dev, fd_root = self._fds
        other = {fd_dev: fd_root, fd_root: fd_dev}
        queue: list[tuple[float, int, int, bytes]] = []     # (release, n, out fd, packet)
        self._last = {fd_dev: 0.0, fd_root: 0.0}    # latest in-order release per direction
        n = 0
        poll = select.poll()
        for fd in (fd_dev, fd_root):
            poll.register(fd, select.POLLIN)
        while not self._stop.is_set():
            now = time.monotonic()
            wait = 200 if not queue else max(0, int((queue[0][0] - now) * 1000))
            for fd, _ev in poll.poll(min(wait, 200)):
                while True:
                    try:
                        pkt = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        return                          # the device went away
                    n += 1
                    self._admit(pkt, other[fd], n, queue, time.monotonic())
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, _, out, pkt = heapq.heappop(queue)
                try:
                    os.write(out, pkt)
                except OSError:
                    self.counts["write_failed"] += 1    # a full TUN queue drops, as a NIC

    def _admit(self, pkt: bytes, out: int, n: int, queue: list, now: float) -> None:
        with self._lock:
            imp, cut = self.imp, self.cut
        self.counts["packets"] += 1
        self.counts["bytes"] += len(pkt)
        if cut:
            self.counts["partition_dropped"] += 1
            return
        r = self.rng.random
        holds = fate(imp, (r(), r(), r(), r()))
        if not holds:
            self.counts["dropped"] += 1
            return
        if len(holds) > 1:
            self.counts["duplicated"] += 1
        ahead = holds[0] == 0.0 and imp.delay_ms > 0      # the reorder share
        if ahead:
            self.counts["reordered"] += 1
            release = now
        else:                                   # jitter, but in order: a FIFO path
            release = self._last[out] = max(now + holds[0], self._last[out])
        for i in range(len(holds)):
            heapq.heappush(queue, (release, 2 * n + i, out, pkt))
