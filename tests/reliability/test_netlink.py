"""The network rig (:mod:`tests.support.netlink`) on a namespace, veth pair and subnet of
its own (so it never touches a campaign running at the same time): a degraded link
really drops packets and the drops are counted from the qdisc; TCP still delivers every
byte; nothing of the network is left behind. Root only (network namespaces)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading

import pytest

from tests.support.netlink import Net, Shaper, make_net, net_exists, qdisc_support, teardown


def _need_net() -> dict:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces and a veth pair)")
    support = qdisc_support()
    if not (support["netem"] or support["tbf"]):
        pytest.skip("this kernel has neither sch_netem nor sch_tbf")
    return support


def _net(tag: str) -> Net:
    k = os.getpid() % 200
    return Net(ns=f"lt-t{tag}{k}", veth_root=f"lt-t{tag}{k}a",
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


@pytest.mark.slow   # 4 MB through a lossy veth
def test_degraded_link_drops_packets_tcp_delivers_everything_and_cleanup(tmp_path):
    support = _need_net()
    net = _net("l")
    kind = "netem" if support["netem"] else "tbf"
    try:
        make_net(net)
        shaper = Shaper(kind, 12.0, net)
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
        teardown(net)
    assert not net_exists(net)
