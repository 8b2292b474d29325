"""The userspace netem (:mod:`tests.support.netimpair`): the per-packet decision as a
table, and, as root, a namespace whose packets really are delayed, reordered, dropped,
duplicated and cut off, while TCP still delivers every byte."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.netimpair import Impairment, TunLink, fate
from tests.support.netlink import choose_link


@pytest.mark.parametrize("imp, draws, holds", [
    (Impairment(), (0.5, 0.5, 0.5, 0.5), [0.0]),
    (Impairment(delay_ms=100), (0.5, 0.5, 0.5, 0.5), [0.1]),
    (Impairment(delay_ms=100, jitter_ms=50), (0.5, 0.5, 0.5, 0.0), [0.05]),
    (Impairment(delay_ms=100, jitter_ms=50), (0.5, 0.5, 0.5, 1.0), [0.15]),
    (Impairment(delay_ms=10, jitter_ms=50), (0.5, 0.5, 0.5, 0.0), [0.0]),   # never < 0
    (Impairment(loss=0.1), (0.05, 0.5, 0.5, 0.5), []),
    (Impairment(loss=0.1), (0.1, 0.5, 0.5, 0.5), [0.0]),
    (Impairment(delay_ms=100, duplicate=0.2), (0.5, 0.1, 0.5, 0.5), [0.1, 0.1]),
    (Impairment(delay_ms=100, reorder=0.3), (0.5, 0.5, 0.2, 0.5), [0.0]),    # jumps ahead
    (Impairment(loss=1.0, duplicate=1.0), (0.99, 0.0, 0.0, 0.0), []),
])
def test_fate_of_a_packet(imp, draws, holds):
    assert fate(imp, draws) == pytest.approx(holds)


@pytest.mark.parametrize("kw", [{"loss": 1.5}, {"duplicate": -0.1}, {"delay_ms": -1}])
def test_an_impossible_impairment_is_refused(kw):
    with pytest.raises(ValueError):
        Impairment(**kw)


@pytest.fixture
def link():
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("needs root and /dev/net/tun")
    k = os.getpid() % 200
    ln = TunLink(f"lt-ti{k}", f"10.79.{k}.2", f"10.79.{k}.1", seed=7)
    ln.setup()
    yield ln
    ln.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ln.ns not in names
    assert subprocess.run(["ip", "link", "show", ln.tun_root],
                          capture_output=True).returncode != 0


def _in_ns(link, code: str, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", link.ns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow   # a namespace and a relay
def test_datagrams_are_delayed_reordered_dropped_and_duplicated(link):
    link.set(Impairment(delay_ms=30, jitter_ms=25, loss=0.1, duplicate=0.05, reorder=0.1))
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((link.root_ip, 0))
    rx.settimeout(2.0)
    port, n, got = rx.getsockname()[1], 300, []

    def receive():              # at once: a socket buffer left unread drops datagrams
        try:
            while True:
                got.append(int.from_bytes(rx.recv(16), "big"))
        except TimeoutError:
            pass
    t = threading.Thread(target=receive, daemon=True)
    t.start()
    r = _in_ns(link, f"import socket, time\ns = socket.socket(socket.AF_INET, "
               f"socket.SOCK_DGRAM)\nfor i in range({n}):\n"
               f"    s.sendto(i.to_bytes(4, 'big'), ('{link.root_ip}', {port}))\n"
               f"    time.sleep(0.002)")
    assert r.returncode == 0, r.stderr
    t.join(30)
    rx.close()
    late = sum(1 for a, b in zip(got, got[1:], strict=False) if b < a)
    unique = set(got)
    assert late > 0                                     # reordered
    assert len(got) - len(unique) == link.counts["duplicated"] > 0
    assert n - len(unique) == link.counts["dropped"] > 0
    assert unique <= set(range(n))


@pytest.mark.slow   # a namespace and a relay
def test_tcp_delivers_every_byte_through_a_bad_link_and_a_cut_stops_it(link):
    link.set(Impairment(delay_ms=20, jitter_ms=15, loss=0.03, duplicate=0.02, reorder=0.1))
    srv = socket.create_server((link.root_ip, 0))
    port = srv.getsockname()[1]
    received = {}

    def serve():
        c, _ = srv.accept()
        h, total = hashlib.sha256(), 0
        with c:
            while data := c.recv(65536):
                h.update(data)
                total += len(data)
        received.update(sha=h.hexdigest(), n=total)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    r = _in_ns(link, f"import hashlib, os, socket\nd = os.urandom(1 << 20)\n"
               f"s = socket.create_connection(('{link.root_ip}', {port}), timeout=30)\n"
               f"s.sendall(d)\ns.close()\nprint(hashlib.sha256(d).hexdigest())", timeout=120)
    assert r.returncode == 0, r.stderr
    t.join(60)
    assert received == {"sha": r.stdout.strip(), "n": 1 << 20}
    assert link.counts["dropped"] > 0 and link.counts["reordered"] > 0
    link.partition(True)
    r = _in_ns(link, f"import socket\ntry:\n    socket.create_connection(('{link.root_ip}', "
               f"{port}), timeout=1.5)\nexcept OSError as e:\n    print('cut', type(e).__name__)")
    assert r.stdout.startswith("cut"), (r.stdout, r.stderr)
    assert link.counts["partition_dropped"] > 0
    srv.close()


@pytest.mark.parametrize("asked, netem, tbf, tun, kind", [
    ("auto", True, True, True, "netem"),
    ("auto", False, True, True, "tun"),         # this dev VM: no sch_netem, a TUN relay
    ("auto", False, True, False, "tbf"),
    ("auto", False, False, False, None),        # partitions only
    ("tbf", True, True, True, "tbf"),
    ("tun", False, False, True, "tun"),
    ("netem", False, True, True, ValueError),
    ("tun", True, True, False, ValueError),
    ("wifi", True, True, True, ValueError),
])
def test_the_campaign_picks_the_link_it_can_have(asked, netem, tbf, tun, kind):
    support = {"netem": netem, "tbf": tbf}
    if kind is ValueError:
        with pytest.raises(ValueError):
            choose_link(asked, support, tun)
    else:
        assert choose_link(asked, support, tun) == kind
