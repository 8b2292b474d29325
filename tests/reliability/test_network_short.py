"""Short run of the network campaign (``python -m bench.campaigns.network --quick``) on a
namespace and subnet of its own (``--net``, so it never touches a campaign running at
the same time): a few partitions during a short 4-line day over a degraded link lose
and duplicate nothing upstream, every backlog drains, and nothing of the network is
left behind. Root only (network namespaces)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.reliability.campaign import need_mosquitto, need_root, run_campaign
from tests.support.netlink import choose_link, qdisc_support, tun_available


@pytest.mark.slow
def test_partitions_on_a_degraded_link_lose_nothing_and_drain():
    need_root("network namespaces and a veth pair")
    need_mosquitto()
    support = qdisc_support()
    if not (support["netem"] or support["tbf"]):
        pytest.skip("this kernel has neither sch_netem nor sch_tbf")
    k = os.getpid() % 200
    rc, summary, out = run_campaign("network", "--seed", "5", "--partitions", "3",
                                    "--speed", "12", "--duration", "1800", "--window", "64",
                                    "--link", "auto", "--net", str(k))
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"lt-n{k}" not in names.split()                  # torn down
    assert summary["campaign"] == "network"
    assert summary["violations"] == 0, out[-3000:]
    assert rc == 0
    assert summary["partitions"] == 3 and summary["drain_checks"] == 3
    assert summary["partitions_past_keepalive"] >= 1     # one cut outlasts the keepalive
    assert summary["lost"] == 0 and summary["duplicated"] == 0
    # netem where the kernel has it, else the TUN relay (reordering too), else tbf
    assert summary["degradation"] == choose_link("auto", support, tun_available())
    assert len(summary["profiles"]) == 4     # one profile before the cuts, one after each
