"""The network rig: a namespace joined to the root namespace by a veth pair (or by two
TUN devices and the userspace netem of :mod:`tests.support.netimpair`), and the
:class:`Shaper` that degrades it with netem, tbf or the relay, counting every drop.

Used by the network campaign (``python -m bench.campaigns.network``, see its docstring
for the profiles and why each exists) and by ``tests/reliability/test_netlink.py``.
Everything here needs root (``ip netns``, ``tc``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.netimpair import Impairment, TunLink


@dataclass(frozen=True)
class Net:
    """Names and addresses of one namespace + veth layout (tests use their own)."""

    ns: str = "lt-dev"
    veth_root: str = "lt-v0"
    veth_dev: str = "lt-v1"
    root_ip: str = "10.77.0.1"
    dev_ip: str = "10.77.0.2"


NET = Net()


def sh(*cmd: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def qdisc_support() -> dict[str, bool]:
    """Which root qdiscs (netem, tbf) this kernel accepts on a veth (the probe uses a
    throwaway veth pair: this VM's kernel has no ``dummy`` link type either)."""
    a, b = f"lt-pr{os.getpid() % 10000}a", f"lt-pr{os.getpid() % 10000}b"
    out = {"netem": False, "tbf": False}
    if sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, check=False).returncode:
        return out
    try:
        for kind, args in (("netem", ["delay", "1ms"]),
                           ("tbf", ["rate", "1mbit", "burst", "16kb", "latency", "50ms"])):
            out[kind] = sh("tc", "qdisc", "replace", "dev", a, "root", kind, *args,
                           check=False).returncode == 0
            sh("tc", "qdisc", "del", "dev", a, "root", check=False)
        return out
    finally:
        sh("ip", "link", "del", a, check=False)


def netem_available() -> bool:
    return qdisc_support()["netem"]


LINKS = ("auto", "netem", "tun", "tbf")


def choose_link(asked: str, support: dict[str, bool], tun: bool) -> str | None:
    """The degradation to use: ``asked`` (one of LINKS) given what the kernel has.
    ``auto`` prefers netem, then the TUN relay, then tbf; None = partitions only.
    Raises ValueError when the one asked for is missing."""
    have = {"netem": support.get("netem", False), "tun": tun, "tbf": support.get("tbf", False)}
    if asked == "auto":
        return next((k for k in ("netem", "tun", "tbf") if have[k]), None)
    if asked not in have:
        raise ValueError(f"unknown link kind {asked!r} (one of {', '.join(LINKS)})")
    if not have[asked]:
        raise ValueError(f"this kernel has no {asked}" + (
            " (/dev/net/tun)" if asked == "tun" else f" (sch_{asked})"))
    return asked


_TUNS: dict[str, TunLink] = {}      # namespace -> its TUN relay (``make_net(tun=True)``)


def tun_available() -> bool:
    return Path("/dev/net/tun").exists()


def make_net(net: Net = NET, *, tun: bool = False) -> None:
    """Join namespace ``net.ns`` to the root namespace: a veth pair, or with ``tun`` two
    TUN devices (named like the veth ends) and the relay of :mod:`tests.support.netimpair`."""
    teardown(net)
    if tun:
        relay = TunLink(net.ns, net.dev_ip, net.root_ip, seed=len(_TUNS) + 1,
                        tun_dev=net.veth_dev, tun_root=net.veth_root)
        relay.setup()
        _TUNS[net.ns] = relay
        return
    try:
        sh("ip", "netns", "add", net.ns)
        sh("ip", "-n", net.ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", net.veth_root, "type", "veth", "peer", "name", net.veth_dev)
        sh("ip", "link", "set", net.veth_dev, "netns", net.ns)
        sh("ip", "addr", "add", f"{net.root_ip}/30", "dev", net.veth_root)
        sh("ip", "link", "set", net.veth_root, "up")
        sh("ip", "-n", net.ns, "addr", "add", f"{net.dev_ip}/30", "dev", net.veth_dev)
        sh("ip", "-n", net.ns, "link", "set", net.veth_dev, "up")
        # One wire-size packet per skb, as on a real link: a veth otherwise hands the
        # qdisc 64 KB GSO trains, which a small tbf queue drops nearly whole.
        sh("ip", "link", "set", "dev", net.veth_root, "gso_max_segs", "1", check=False)
        sh("ip", "-n", net.ns, "link", "set", "dev", net.veth_dev, "gso_max_segs", "1",
           check=False)
    except BaseException:
        teardown(net)
        raise


def teardown(net: Net = NET) -> None:
    relay = _TUNS.pop(net.ns, None)
    if relay is not None:
        relay.close()
    sh("ip", "link", "del", net.veth_root, check=False)
    sh("ip", "netns", "del", net.ns, check=False)


def net_exists(net: Net = NET) -> bool:
    """Is anything of ``net`` left (the namespace or the root end of the veth)?"""
    ns = sh("ip", "netns", "list", check=False).stdout.split()
    return net.ns in ns or sh("ip", "link", "show", net.veth_root,
                              check=False).returncode == 0


def tcp_info(net: Net = NET) -> str:
    """The box's TCP connections to the broker as ``ss -tin`` sees them (rtt, rto,
    cwnd, retransmissions, send queue), one line each: printed with a slow drain."""
    r = sh("ip", "netns", "exec", net.ns, "ss", "-tin", "dst", net.root_ip, check=False)
    lines = [ln.strip() for ln in r.stdout.splitlines()[1:] if ln.strip()]
    return " | ".join(lines) or r.stderr.strip() or "no connection"


def link(up: bool, net: Net = NET) -> None:
    relay = _TUNS.get(net.ns)
    if relay is not None:
        relay.partition(not up)          # silent: no link-down reaches either end
    else:
        sh("ip", "link", "set", net.veth_root, "up" if up else "down")


# -- link degradation ---------------------------------------------------------------------------
# tbf: (real-time uplink in kbit/s, bucket, queue). The queue is ``latency`` (the longest
# a packet may wait) or ``limit`` in bytes: 10 full packets ("lossy") or 3 ("lossy-tight")
# drop under bursts (a few % and 10-20 % of the packets of a bulk TCP upload).
# The box needs about 125 kbit/s in real time for four busy lines (~44 KB per 10 s
# segment per line), so the thinnest uplink here is ~3x that and every backlog can drain.
TBF_PROFILES: dict[str, tuple[int, str, str] | None] = {
    "clean": None,
    "dsl": (1000, "16kb", "latency 100ms"),
    "thin": (400, "16kb", "latency 400ms"),
    "bloated": (400, "16kb", "latency 1500ms"),
    "lossy": (1000, "16kb", "limit 15000"),
    "lossy-tight": (1000, "10kb", "limit 4500"),
}
NETEM_PROFILES: dict[str, str | None] = {
    "clean": None,
    "wan": "delay 80ms 20ms",
    "lossy": "delay 40ms loss 2%",
    "reorder": "delay 50ms reorder 25% 50%",
    "bad": "delay 80ms 20ms reorder 5% loss 2%",
    "very-lossy": "delay 20ms loss 8%",
}
# tun: the netem profiles in the relay, plus a thin uplink (tbf on the TUN devices).
TUN_PROFILES: dict[str, tuple[Impairment, tuple[int, str, str] | None] | None] = {
    "clean": None,
    "wan": (Impairment(delay_ms=80, jitter_ms=20), None),
    "lossy": (Impairment(delay_ms=40, loss=0.02), None),
    "reorder": (Impairment(delay_ms=50, reorder=0.25), None),
    "bad": (Impairment(delay_ms=80, jitter_ms=20, reorder=0.05, loss=0.02, duplicate=0.01),
            None),
    "very-lossy": (Impairment(delay_ms=20, loss=0.08), None),
    "thin": (Impairment(delay_ms=40, jitter_ms=10), (400, "16kb", "latency 400ms")),
}
RELAY_COUNTS = ("dropped", "duplicated", "reordered")


class Shaper:
    """Applies one degradation profile to both ends of the veth and keeps the qdisc
    counters (packets sent and dropped) per profile."""

    def __init__(self, kind: str | None, speed: float, net: Net = NET):
        self.kind, self.speed, self.net = kind, speed, net
        self.profiles = (NETEM_PROFILES if kind == "netem" else
                         TUN_PROFILES if kind == "tun" else
                         TBF_PROFILES if kind == "tbf" else {"clean": None})
        self.current = "clean"
        self.last: dict[str, dict] = {}
        self.stats = {p: {"setting": self.setting(p), "times": 0, "drops": 0, "packets": 0,
                          "bytes": 0, "seconds": 0.0, **dict.fromkeys(RELAY_COUNTS, 0)}
                      for p in self.profiles}
        self.relay_last: dict[str, int] = {}
        self.since = time.monotonic()

    def scaled(self, imp: Impairment) -> Impairment:
        """A relay setting on the simulation's clock: delay and jitter divided by the
        speed, as the tbf rates are multiplied by it. The box sends ``speed`` times the
        data per wall second, and TCP carries about window / RTT, so a real 80 ms path
        is an 80 / speed ms one here; with real-time delays a 24x day needs 24 times
        what the link can carry and no backlog drains (the first full TUN run, at
        ``c0178e9``, showed it on ``bad``). Loss, duplication and reordering shares are
        per packet and stay as they are."""
        return Impairment(delay_ms=imp.delay_ms / self.speed,
                          jitter_ms=imp.jitter_ms / self.speed, loss=imp.loss,
                          duplicate=imp.duplicate, reorder=imp.reorder)

    @property
    def relay(self) -> TunLink | None:
        """The TUN relay of this namespace (made by ``make_net(tun=True)``)."""
        return _TUNS.get(self.net.ns) if self.kind == "tun" else None

    def setting(self, name: str) -> str:
        p = self.profiles[name]
        if p is None:
            return "no qdisc"
        if self.kind == "netem":
            return f"netem {p}"
        if self.kind == "tun":
            imp, rate = p
            imp = self.scaled(imp)
            parts = [f"relay delay {imp.delay_ms:.3g}ms"]
            parts += [f"jitter {imp.jitter_ms:.3g}ms"] if imp.jitter_ms else []
            parts += [f"{k} {getattr(imp, k):.0%}" for k in ("loss", "duplicate", "reorder")
                      if getattr(imp, k)]
            if rate is not None:
                kbit, burst, queue = rate
                parts.append(f"+ tbf rate {round(kbit * self.speed)}kbit burst {burst} "
                             f"{queue}")
            return " ".join(parts)
        kbit, burst, queue = p
        return f"tbf rate {round(kbit * self.speed)}kbit burst {burst} {queue}"

    def _ends(self):
        return ((None, self.net.veth_root), (self.net.ns, self.net.veth_dev))

    def _tc(self, ns, *args, check=True):
        return sh("tc", *(["-n", ns] if ns else []), *args, check=check)

    def counters(self, ns, dev) -> dict | None:
        r = self._tc(ns, "-s", "-j", "qdisc", "show", "dev", dev, check=False)
        try:
            qs = json.loads(r.stdout or "[]")
        except ValueError:
            return None
        for q in qs:
            if q.get("root") and q.get("kind") in ("tbf", "netem"):
                return {"drops": q.get("drops", 0), "packets": q.get("packets", 0),
                        "bytes": q.get("bytes", 0)}
        return None

    def poll(self) -> None:
        """Add what the qdiscs (and the relay) counted since the last poll to the current
        profile."""
        st = self.stats[self.current]
        if self.relay is not None:
            now = dict(self.relay.counts)
            for k in RELAY_COUNTS:
                st[k] += now[k] - self.relay_last.get(k, 0)
            st["drops"] += now["dropped"] - self.relay_last.get("dropped", 0)
            st["bytes"] += now["bytes"] - self.relay_last.get("bytes", 0)
            st["packets"] += now["packets"] - now["partition_dropped"] - (
                self.relay_last.get("packets", 0) - self.relay_last.get("partition_dropped", 0))
            self.relay_last = now
        for ns, dev in self._ends():
            cur = self.counters(ns, dev)
            if cur is None:
                continue
            last = self.last.get(dev, {"drops": 0, "packets": 0, "bytes": 0})
            # through a relay, packets and bytes are the relay's count (tbf sees the same)
            for k in ("drops",) if self.relay is not None else ("drops", "packets", "bytes"):
                # a counter that went back was reset: count it from zero
                st[k] += cur[k] - last[k] if cur[k] >= last[k] else cur[k]
            self.last[dev] = cur

    def apply(self, name: str) -> None:
        self.poll()
        now = time.monotonic()
        self.stats[self.current]["seconds"] += now - self.since
        self.since = now
        for ns, dev in self._ends():
            self._tc(ns, "qdisc", "del", "dev", dev, "root", check=False)
        self.last = {}
        p = self.profiles[name]
        if self.kind == "tun":
            imp, rate = p if p is not None else (Impairment(), None)
            self.relay.set(self.scaled(imp))
            if rate is not None:
                kbit, burst, queue = rate
                for ns, dev in self._ends():
                    self._tc(ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                             f"{round(kbit * self.speed)}kbit", "burst", burst,
                             *queue.split())
        elif p is not None:
            args = self.setting(name).split()
            for ns, dev in self._ends():
                self._tc(ns, "qdisc", "add", "dev", dev, "root", *args)
        self.current = name
        self.stats[name]["times"] += 1

    def close(self) -> None:
        """Final poll, then a clean link again (call before the veth is deleted)."""
        self.poll()
        self.stats[self.current]["seconds"] += time.monotonic() - self.since
        self.since = time.monotonic()
        for ns, dev in self._ends():
            self._tc(ns, "qdisc", "del", "dev", dev, "root", check=False)
        self.last = {}
        if self.relay is not None:
            self.relay.set(Impairment())

    @property
    def drops(self) -> int:
        return sum(s["drops"] for s in self.stats.values())

    @property
    def packets(self) -> int:
        return sum(s["packets"] for s in self.stats.values())
