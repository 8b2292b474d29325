"""Network campaign: the box and the broker on two network namespaces joined by a veth
pair; the link is cut again and again (partitions of random length) while a 4-line
day is recorded. Checks: 0 segments lost, 0 stored twice upstream, and after each
partition heals, the backlog drains.

    make campaign-network            # 100 partitions during a simulated 4-line day
    make campaign-network QUICK=1    # 5 partitions, under 3 minutes

Latency, loss and reordering need ``tc qdisc ... netem``; when the kernel has no
``sch_netem`` (as on this workplace's machines), the campaign says so in its table and
JSON (``netem: false``) and runs the partitions alone: it never reports a netem run it
did not make. Needs root (namespaces, veth); exits 2 with a clear message otherwise.

Layout: namespace ``lt-dev`` holds the box (``linetap simulate`` under ``ip netns exec``)
at 10.77.0.2; the root namespace holds mosquitto (listening on 127.0.0.1 for the ingest
worker and on 10.77.0.1 for the box, with a server certificate for that address) and
the ingest worker. Both namespaces and the veth are removed in ``finally``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import random
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.campaigns import common  # noqa: E402

NS = "lt-dev"
VETH_ROOT, VETH_DEV = "lt-v0", "lt-v1"
ROOT_IP, DEV_IP = "10.77.0.1", "10.77.0.2"


def sh(*cmd: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def netem_available() -> bool:
    """Can this kernel emulate latency and loss? Probe on a throwaway dummy link."""
    if sh("ip", "link", "add", "lt-probe", "type", "dummy", check=False).returncode:
        return False
    try:
        return sh("tc", "qdisc", "add", "dev", "lt-probe", "root", "netem", "delay", "1ms",
                  check=False).returncode == 0
    finally:
        sh("ip", "link", "del", "lt-probe", check=False)


def make_net() -> None:
    teardown()
    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("ip", "link", "add", VETH_ROOT, "type", "veth", "peer", "name", VETH_DEV)
    sh("ip", "link", "set", VETH_DEV, "netns", NS)
    sh("ip", "addr", "add", f"{ROOT_IP}/30", "dev", VETH_ROOT)
    sh("ip", "link", "set", VETH_ROOT, "up")
    sh("ip", "-n", NS, "addr", "add", f"{DEV_IP}/30", "dev", VETH_DEV)
    sh("ip", "-n", NS, "link", "set", VETH_DEV, "up")


def teardown() -> None:
    sh("ip", "link", "del", VETH_ROOT, check=False)
    sh("ip", "netns", "del", NS, check=False)


def link(up: bool) -> None:
    sh("ip", "link", "set", VETH_ROOT, "up" if up else "down")


def impair(on: bool) -> None:
    """Latency, jitter, reordering and loss on the box's side of the link (netem)."""
    if on:
        sh("tc", "qdisc", "replace", "dev", VETH_ROOT, "root", "netem", "delay", "80ms",
           "20ms", "reorder", "5%", "loss", "2%")
    else:
        sh("tc", "qdisc", "del", "dev", VETH_ROOT, "root", check=False)


def server_cert_for(pki, ip: str) -> tuple[str, str]:
    """A broker certificate for ``ip``, from the same test CA the box trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    cert = (x509.CertificateBuilder().subject_name(name(ip))
            .issuer_name(name("linetap-test-ca")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .sign(pki.ca_key, hashes.SHA256()))
    c, k = pki.dir / f"server-{ip}.pem", pki.dir / f"server-{ip}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    os.chmod(k, 0o600)
    return str(c), str(k)


def add_listener(rig, ip: str) -> None:
    """A second mosquitto listener on the veth address, same port, same TLS rules."""
    cert, key = server_cert_for(rig.pki, ip)
    conf = rig.broker.dir / "mosquitto.conf"
    conf.write_text(conf.read_text() + f"""
listener {rig.broker.port} {ip}
cafile {rig.pki.ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true
""")


class Campaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.root = common.workdir("linetap-network-")
        self.box = common.new_box(self.root / "box")
        self.box.prefix = ["ip", "netns", "exec", NS]
        self.rig = common.SyncRig(self.root / "rig", self.box, host=ROOT_IP)
        self.violations: list[str] = []
        self.drains: list[float] = []
        self.parts: list[float] = []

    def backlog(self) -> dict:
        st = common.read_status(self.box.data) or {}
        return st.get("sync") or {}

    def unacked_before(self, t: float) -> int:
        """Segments written before wall time ``t`` that upstream has not acked yet."""
        from recorder.store import Store
        s = Store(self.box.data)
        try:
            S = s.m.Segment
            return S.select().where((S.acked == False) & (S.created <= t)).count()  # noqa: E712
        finally:
            s.close()

    def wait_drained(self, timeout: float) -> float | None:
        """Seconds until every segment written before now is acked upstream, or None."""
        t_heal, t0 = time.time(), time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.unacked_before(t_heal) == 0:
                return time.monotonic() - t0
            if self.box.proc.poll() is not None:
                return None
            time.sleep(0.5)
        return None

    def run(self) -> int:
        a = self.args
        n = a.partitions if a.partitions is not None else (5 if a.quick else 100)
        netem = netem_available()
        duration = 1500.0 if a.quick else 86400.0
        speed = a.speed or (12.0 if a.quick else 24.0)
        raw, _calls = common.day_scenario(self.rng, "2026-11-02T08:00:00Z", duration)
        scen = self.root / "day.json"
        scen.write_text(json.dumps(raw))
        t0 = time.monotonic()
        make_net()
        try:
            add_listener(self.rig, ROOT_IP)
            self.rig.start()
            self.box.config = common.write_toml(
                self.root / "box.toml", self.rig.box_raw(retention__keep_synced_days=3650.0))
            self.box.spawn(scen, speed)
            wall = duration / speed
            self.day_ends = time.monotonic() + wall
            gap = max(2.0, wall / (n + 1) - (15.0 if a.quick else 30.0))
            if self.wait_drained(90) is None:
                self.violations.append("the box never reached the broker through the veth: "
                                       + self.box.log_tail(800))
                return self.report(n, netem, t0, {})
            for i in range(n):
                time.sleep(self.rng.uniform(0.5, 1.5) * gap)
                if self.box.proc.poll() is not None:
                    if self.box.proc.returncode != 0:
                        self.violations.append(f"box failed before partition {i}: "
                                               + self.box.log_tail(800))
                    break
                # Short cuts that TCP rides out, and long ones past the 30 s keepalive
                # that force a reconnect and a resend from the SQLite outbox.
                long_cut = i == 1 if a.quick else self.rng.random() < 0.4
                length = self.rng.uniform(35.0, 45.0 if a.quick else 70.0) if long_cut \
                    else self.rng.uniform(0.5, 10.0)
                link(False)
                time.sleep(length)
                link(True)
                self.parts.append(length)
                if netem and i % 2 == 1:
                    impair(True)           # a degraded link after every other partition
                d = self.wait_drained(120)
                impair(False)
                if d is None and self.box.proc.poll() is not None:
                    break              # the day ended: the final drain checks the rest
                if d is None:
                    self.violations.append(f"backlog did not drain after partition {i} "
                                           f"({length:.1f} s): {self.backlog()}")
                else:
                    self.drains.append(d)
                if (i + 1) % 10 == 0:
                    print(f"  {i + 1} partitions, {len(self.violations)} violation(s)",
                          flush=True)
            cmp = self.drain()
        finally:
            try:
                self.box.kill()
            finally:
                self.rig.stop()
                teardown()
        return self.report(n, netem, t0, cmp)

    def drain(self) -> dict:
        """Let the day end, then a quiet boot drains the backlog; compare upstream."""
        try:
            self.box.proc.wait(max(0.0, self.day_ends - time.monotonic()) + 120.0)
        except subprocess.TimeoutExpired:
            self.violations.append("the day's simulation did not finish on time")
            self.box.kill()
        quiet = self.root / "quiet.json"
        start = (dt.datetime(2026, 11, 3, tzinfo=dt.UTC) + timedelta(hours=1)).isoformat()
        quiet.write_text(json.dumps({"rate": 8000, "start": start.replace("+00:00", "Z"),
                                     "duration": 3600.0, "lines": 4, "events": []}))
        self.box.spawn(quiet, 1.0)
        drained, _secs = common.wait_drained(self.box)
        self.box.kill()
        if not drained:
            self.violations.append(f"final backlog did not drain: "
                                   f"{common.unacked(self.box.data)} unacked")
        return common.check_upstream(self.rig, self.box.data, self.violations)

    def report(self, n: int, netem: bool, t0: float, cmp: dict) -> int:
        med = common.median(self.drains) if self.drains else None
        common.table("network campaign", [
            ("partitions", f"{len(self.parts)} of {n}", ""),
            ("partition length (s), min/median/max",
             f"{min(self.parts, default=0):.1f} / {common.median(self.parts) or 0:.1f} / "
             f"{max(self.parts, default=0):.1f}" if self.parts else "-", ""),
            ("drain after heal (s), median/max",
             f"{med:.1f} / {max(self.drains):.1f}" if self.drains else "-",
             "ok" if len(self.drains) == len(self.parts) else "VIOLATION"),
            ("latency/loss/reorder (netem)", "run" if netem else
             "not available in this kernel: partitions only", ""),
            ("box segments / upstream", f"{cmp.get('box_segments', '-')} / "
             f"{cmp.get('upstream_segments', '-')}", ""),
            ("lost upstream", len(cmp.get("lost", [])) if cmp else "-",
             "ok" if cmp and not cmp.get("lost") else "VIOLATION"),
            ("stored twice upstream", cmp.get("duplicated", "-"),
             "ok" if cmp and not cmp.get("duplicated") else "VIOLATION"),
            ("elapsed (s)", round(time.monotonic() - t0), ""),
        ])
        return common.finish({"campaign": "network", "partitions": len(self.parts),
                              "netem": netem, "lost": len(cmp.get("lost", [])),
                              "duplicated": cmp.get("duplicated"),
                              "drain_median_s": round(med, 1) if med else None,
                              "seed": self.args.seed}, self.violations)


def main() -> int:
    def extra(ap):
        ap.add_argument("--partitions", type=int, default=None)
        ap.add_argument("--speed", type=float, default=None,
                        help="simulation speed (default 24x; 10x with --quick)")
    args = common.parse_args(__doc__, extra)
    if os.geteuid() != 0:
        print("campaign-network needs root (network namespaces and a veth pair)")
        return 2
    return Campaign(args).run()


if __name__ == "__main__":
    sys.exit(main())
