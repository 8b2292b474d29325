"""Short version of the network campaign (bench/campaigns/network.py), on a namespace,
veth pair and subnet of its own (so it never touches a campaign running at the same
time): a degraded link really drops packets and the drops are counted from the qdisc;
TCP still delivers every byte; a few partitions during a short 4-line day lose and
duplicate nothing upstream and every backlog drains; nothing of the network is left
behind. Root only (network namespaces)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests_reliability_skip import need_mosquitto  # noqa: E402

from bench.campaigns import network  # noqa: E402


def _need_net() -> dict:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces and a veth pair)")
    support = network.qdisc_support()
    if not (support["netem"] or support["tbf"]):
        pytest.skip("this kernel has neither sch_netem nor sch_tbf")
    return support


def _net(tag: str) -> network.Net:
    k = os.getpid() % 200
    return network.Net(ns=f"lt-t{tag}{k}", veth_root=f"lt-t{tag}{k}a",
                       veth_dev=f"lt-t{tag}{k}b", root_ip=f"10.78.{k}.{1 if tag == 'l' else 5}",
                       dev_ip=f"10.78.{k}.{2 if tag == 'l' else 6}")


SENDER = r"""
import hashlib, socket, sys
data = bytes(range(256)) * (int(sys.argv[3]) // 256)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(data)
s.close()
print(hashlib.sha256(data).hexdigest())
"""


def test_degraded_link_drops_packets_tcp_delivers_everything_and_cleanup(tmp_path):
    support = _need_net()
    net = _net("l")
    kind = "netem" if support["netem"] else "tbf"
    try:
        network.make_net(net)
        shaper = network.Shaper(kind, 12.0, net)
        lossy = "lossy-tight" if kind == "tbf" else "very-lossy"
        shaper.apply(lossy)
        srv = socket.socket()
        srv.bind((net.root_ip, 0))
        srv.listen(1)
        srv.settimeout(120)
        got = hashlib.sha256()
        n = [0]

        def serve():
            c, _ = srv.accept()
            c.settimeout(120)
            with c:
                while b := c.recv(1 << 16):
                    got.update(b)
                    n[0] += len(b)

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        size = 4 << 20
        out = subprocess.run(["ip", "netns", "exec", net.ns, sys.executable, "-c", SENDER,
                              net.root_ip, str(srv.getsockname()[1]), str(size)],
                             capture_output=True, text=True, timeout=300, check=True)
        th.join(120)
        srv.close()
        shaper.close()
        st = shaper.stats[lossy]
        assert n[0] == size
        assert got.hexdigest() == out.stdout.strip()
        assert st["times"] == 1 and st["packets"] > 0
        assert st["drops"] > 0, st          # the loss is real, and counted
        assert shaper.drops == st["drops"]
        # the qdiscs are gone again from both ends
        for ns, dev in ((None, net.veth_root), (net.ns, net.veth_dev)):
            assert shaper.counters(ns, dev) is None
    finally:
        network.teardown(net)
    assert not network.net_exists(net)


def test_partitions_on_a_degraded_link_lose_nothing_and_drain():
    support = _need_net()
    need_mosquitto()
    net = _net("c")
    c = network.Campaign(Namespace(quick=True, seed=5, keep=False, partitions=3, speed=12.0,
                                   duration=1800.0, window=64, link="auto"), net=net)
    try:
        rc = c.run()
    finally:
        network.teardown(net)
    assert not network.net_exists(net)
    assert not c.violations, c.violations
    assert rc == 0
    assert len(c.parts) == 3 and len(c.drains) == 3
    assert any(x > network.KEEPALIVE_S for x in c.parts)     # one cut outlasts the keepalive
    # netem where the kernel has it, else the TUN relay (reordering too), else tbf
    assert c.shaper.kind == network.choose_link("auto", support, network.tun_available())
    used = [p for p, s in c.shaper.stats.items() if s["times"]]
    assert len(used) == 4                    # one profile before the cuts, one after each
