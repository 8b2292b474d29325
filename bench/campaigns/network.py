"""Network campaign: the box and the broker on two network namespaces joined by a veth
pair; the link is cut again and again (partitions of random length) while a 4-line
day is recorded, and between partitions it is degraded (latency, loss). Checks: 0
segments lost, 0 stored twice upstream, and after each partition heals, the backlog
drains (checked over whatever degraded link follows the partition).

    make campaign-network            # 100 partitions during a simulated 4-line day
    make campaign-network QUICK=1    # 5 partitions, under 3 minutes

Link degradation, chosen at random after every partition (and once before the first);
``--link`` picks the kind (default ``auto``: netem, else tun, else tbf):

* ``netem`` when the kernel has ``sch_netem``: delay, jitter, loss and reordering, as
  issue #8 asks.
* ``tun``: the same without ``sch_netem``. The namespaces are joined by two TUN devices
  and a relay thread (``tests/support/netimpair.py``, a userspace netem) that delays,
  jitters, drops, duplicates and reorders each packet; the "thin" profile adds a tbf
  rate limit on the TUN devices. Delays are real-time values divided by the speed, as
  tbf rates are multiplied by it (``Shaper.scaled``). A partition drops every packet
  in the relay: a cut cable that neither end is told about (no link-down).
* ``tbf`` (token bucket), on the veth: a low rate and a bounded queue on both ends of the
  veth, which gives queueing latency and, with a queue of two or three packets ("lossy"
  profiles), real drops under bursts. Rates are real-time uplinks multiplied by the
  simulation speed (the box sends ``speed`` times the data per wall second), so a
  400 kbit/s uplink at 24x is a 9.6 Mbit/s bucket. tbf cannot reorder packets: without
  netem the campaign does **no reordering** and says so in its table and JSON
  (``netem: false``, ``degradation: "tbf"``, ``reordering: false``).

Packets dropped by the degradation are read from the qdisc counters (``tc -s qdisc``) on
both ends before every change, so the loss reported is measured, not assumed; drops
while the link is down (a partition) are not counted there. The campaign never reports a
netem run it did not make. Needs root (namespaces, veth); exits 2 with a clear message
otherwise.

Layout: namespace ``lt-dev`` holds the box (``linetap simulate`` under ``ip netns exec``)
at 10.77.0.2; the root namespace holds mosquitto (listening on 127.0.0.1 for the ingest
worker and on 10.77.0.1 for the box, with a server certificate for that address) and
the ingest worker. Both namespaces and the veth are removed in ``finally``.

Pacing: the gap before each partition is computed from the line time left in the day
(``captured_s`` in the box's status), so the partitions spread over the whole day; a
partition starts only if the day leaves room for it and for its drain check.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import random
import sys
import time
from datetime import timedelta

from bench.campaigns import common
from tests.support.netlink import (
    LINKS,
    NET,
    RELAY_COUNTS,
    Net,
    Shaper,
    choose_link,
    link,
    make_net,
    qdisc_support,
    tcp_info,
    teardown,
    tun_available,
)

KEEPALIVE_S = 30.0     # sync/uploader.py connects with keepalive=30; the broker gives up at 1.5x
SLOW_DRAIN_S = 30.0    # a drain longer than this prints the box's sync status and TCP state


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
    def __init__(self, args, net: Net = NET):
        self.args = args
        self.net = net
        self.rng = random.Random(args.seed)
        self.root = common.workdir("linetap-network-")
        self.box = common.new_box(self.root / "box")
        self.box.prefix = ["ip", "netns", "exec", net.ns]
        self.rig = common.SyncRig(self.root / "rig", self.box, host=net.root_ip)
        self.violations: list[str] = []
        self.drains: list[float] = []
        self.parts: list[float] = []
        self.drain_after: dict[bool, list[float]] = {False: [], True: []}   # by long cut
        self.unchecked = 0          # partitions whose drain check the day's end cut short
        self.shaper: Shaper | None = None
        self.support = {"netem": False, "tbf": False}
        self.duration = 0.0
        self.speed = 0.0
        self.first_seen: tuple[float, float] | None = None

    def backlog(self) -> dict:
        st = common.read_status(self.box.data) or {}
        return st.get("sync") or {}

    def captured(self) -> float | None:
        st = common.read_status(self.box.data) or {}
        c = st.get("captured_s")
        return float(c) if c is not None else None

    def day_left(self) -> float:
        """Wall seconds until the day's simulation ends, from the box's line time and the
        speed it really runs at (a loaded machine runs the simulation slower)."""
        c, now = self.captured(), time.monotonic()
        if c is None:
            return max(0.0, self.day_ends - now)
        if self.first_seen is None:
            self.first_seen = (now, c)
        t1, c1 = self.first_seen
        rate = self.speed
        if now - t1 > 10.0 and c > c1:
            rate = min(self.speed, max(0.2 * self.speed, (c - c1) / (now - t1)))
        return max(0.0, (self.duration - c) / rate)

    def unacked_before(self, t: float) -> int:
        """Segments written before wall time ``t`` that upstream has not acked yet."""
        from recorder.storage.store import Store
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

    def schedule(self, n: int) -> list[str]:
        """Profile before the first partition and after each one: every profile once
        first (so a quick run covers them all), then at random."""
        names = list(self.shaper.profiles)
        first = [p for p in names if p != "clean"]
        self.rng.shuffle(first)
        first.append("clean")
        return (first + [self.rng.choice(names) for _ in range(n + 1)])[:n + 1]

    def cut_length(self, i: int) -> float:
        # Short cuts that TCP rides out, and long ones past the 30 s keepalive that force
        # a reconnect and a resend from the SQLite outbox.
        if self.args.quick:      # one long cut; short ones that fit a 2-minute day
            long_cut = i == 1
            return self.rng.uniform(35.0, 40.0) if long_cut else self.rng.uniform(0.5, 5.0)
        long_cut = self.rng.random() < 0.4
        return self.rng.uniform(35.0, 70.0) if long_cut else self.rng.uniform(0.5, 10.0)

    def expected_cut(self, i: int) -> float:
        """Mean length of partition ``i`` under :meth:`cut_length` (for the pacing)."""
        if self.args.quick:
            return 37.5 if i == 1 else 2.75
        return 0.4 * 52.5 + 0.6 * 5.25

    def run(self) -> int:
        a = self.args
        n = a.partitions if a.partitions is not None else (5 if a.quick else 100)
        self.support = qdisc_support()
        kind = choose_link(a.link, self.support, tun_available())
        self.duration = a.duration or (1500.0 if a.quick else 86400.0)
        self.speed = a.speed or (12.0 if a.quick else 24.0)
        self.shaper = Shaper(kind, self.speed, self.net)
        raw, _calls = common.day_scenario(self.rng, "2026-11-02T08:00:00Z", self.duration)
        scen = self.root / "day.json"
        scen.write_text(json.dumps(raw))
        t0 = time.monotonic()
        cmp: dict = {}
        drain_allow = 8.0 if a.quick else 45.0   # day left after a partition, to check its drain
        make_net(self.net, tun=kind == "tun")
        try:
            add_listener(self.rig, self.net.root_ip)
            self.rig.start()
            self.box.config = common.write_toml(
                self.root / "box.toml", self.rig.box_raw(retention__keep_synced_days=3650.0,
                                                         sync__window=a.window))
            self.box.spawn(scen, self.speed)
            self.day_ends = time.monotonic() + self.duration / self.speed
            if self.wait_drained(90) is None:
                self.violations.append("the box never reached the broker through the veth: "
                                       + self.box.log_tail(800))
                self.shaper.close()
                return self.report(n, t0, cmp)
            plan = self.schedule(n)
            self.shaper.apply(plan[0])
            for i in range(n):
                length = self.cut_length(i)
                # Spread what is left of the day over the partitions still to come: the
                # gap is the slack once this cut, the expected later ones and a drain
                # each are taken off, shared out, and never more than the slack itself.
                # the mean, not the median: the few long drains (a long cut healed onto
                # a thin link) are what uses up the day
                drain_est = (sum(self.drains) / len(self.drains) if self.drains else 3.0) + 1.0
                need = length + drain_est + sum(self.expected_cut(j) + drain_est
                                                for j in range(i + 1, n))
                slack = self.day_left() - drain_allow - need
                gap = min(max(1.0, slack / (n - i)) * self.rng.uniform(0.5, 1.5),
                          max(1.0, slack))
                time.sleep(gap)
                if self.box.proc.poll() is not None:
                    if self.box.proc.returncode != 0:
                        self.violations.append(f"box failed before partition {i}: "
                                               + self.box.log_tail(800))
                    break
                if self.day_left() < length + drain_allow:
                    print(f"  the day ends before partition {i + 1} ({length:.1f} s) and its "
                          f"drain check would: stopping at {i}", flush=True)
                    break
                self.shaper.poll()
                link(False, self.net)
                time.sleep(length)
                link(True, self.net)
                self.parts.append(length)
                self.shaper.apply(plan[i + 1])      # the link that comes back is degraded
                d = self.wait_drained(120)
                if d is None or d > SLOW_DRAIN_S:
                    print(f"  partition {i + 1} ({length:.1f} s, then {plan[i + 1]}): drain "
                          f"{'over 120' if d is None else f'{d:.1f}'} s; box {self.backlog()}; "
                          f"tcp {tcp_info(self.net)}", flush=True)
                if d is None and self.box.proc.poll() is not None:
                    if self.box.proc.returncode != 0:
                        self.violations.append(f"box failed after partition {i}: "
                                               + self.box.log_tail(800))
                    else:
                        self.unchecked += 1   # the day ended: the final drain checks the rest
                    break
                if d is None:
                    self.violations.append(
                        f"backlog did not drain after partition {i} ({length:.1f} s, link "
                        f"{plan[i + 1]}: {self.shaper.setting(plan[i + 1])}): "
                        f"{self.backlog()}")
                else:
                    self.drains.append(d)
                    self.drain_after[length > KEEPALIVE_S].append(d)
                if (i + 1) % 10 == 0:
                    print(f"  {i + 1} partitions, {len(self.violations)} violation(s), "
                          f"{self.shaper.drops} packets dropped so far, "
                          f"{time.monotonic() - t0:.0f} s", flush=True)
            self.shaper.close()         # the final drain runs on a clean link
            cmp = self.drain()
        finally:
            try:
                self.box.kill()
            finally:
                self.rig.stop()
                teardown(self.net)
        return self.report(n, t0, cmp)

    def drain(self) -> dict:
        """Let the day end, then a quiet boot drains the backlog; compare upstream."""
        # Wait while the day's line time advances; a box that stops advancing for 60 s,
        # or runs on past the end of its scenario, has not finished its day.
        last, t_last = self.captured(), time.monotonic()
        while self.box.proc.poll() is None:
            time.sleep(1.0)
            c = self.captured()
            if c != last:
                last, t_last = c, time.monotonic()
            if time.monotonic() - t_last > 60.0 or (c or 0.0) > self.duration + 120.0:
                self.violations.append(
                    f"the day's simulation did not finish on time (line time {c} s of "
                    f"{self.duration:.0f} s, {time.monotonic() - t_last:.0f} s without "
                    f"progress): " + self.box.log_tail(400))
                self.box.kill()
                break
        if self.box.proc.returncode not in (0, None, -9):
            self.violations.append(f"the day's box exited {self.box.proc.returncode}: "
                                   + self.box.log_tail(800))
        quiet = self.root / "quiet.json"
        start = (dt.datetime(2026, 11, 2, tzinfo=dt.UTC) + timedelta(
            seconds=8 * 3600 + self.duration + 3600)).isoformat()
        quiet.write_text(json.dumps({"rate": 8000, "start": start.replace("+00:00", "Z"),
                                     "duration": 3600.0, "lines": 4, "events": []}))
        self.box.spawn(quiet, 1.0)
        drained, _secs = common.wait_drained(self.box)
        self.box.kill()
        if not drained:
            self.violations.append(f"final backlog did not drain: "
                                   f"{common.unacked(self.box.data)} unacked")
        return common.check_upstream(self.rig, self.box.data, self.violations)

    def report(self, n: int, t0: float, cmp: dict) -> int:
        sh_ = self.shaper
        kind = sh_.kind if sh_ else None
        med = common.median(self.drains) if self.drains else None
        lossy = [p for p in sh_.profiles if p.startswith("lossy") or "loss" in (
            sh_.setting(p))] if sh_ else []
        lossy_packets = sum(sh_.stats[p]["packets"] for p in lossy) if sh_ else 0
        if kind and lossy_packets > 200 and sh_.drops == 0:
            self.violations.append("the lossy link profiles dropped no packet: the "
                                   "degradation did not take effect")
        past = sum(1 for x in self.parts if x > KEEPALIVE_S)
        past_broker = sum(1 for x in self.parts if x > 1.5 * KEEPALIVE_S)
        sent = sh_.packets if sh_ else 0
        drops = sh_.drops if sh_ else 0
        pct = 100.0 * drops / (sent + drops) if sent + drops else 0.0
        if kind == "netem":
            deg = "netem (delay, jitter, loss, reordering), both ends of the veth"
            reorder = "done (netem reorder)"
        elif kind == "tun":
            deg = ("userspace netem (this kernel has no sch_netem): a TUN relay delays, "
                   "jitters, drops, duplicates and reorders packets; tbf on the TUNs for "
                   "'thin'; partitions drop silently")
            rl = {k: sum(s[k] for s in sh_.stats.values()) for k in RELAY_COUNTS}
            reorder = (f"done (relay): {rl['reordered']} packets sent ahead, plus jitter; "
                       f"{rl['duplicated']} duplicated")
        elif kind == "tbf":
            deg = "tbf (this kernel has no sch_netem): rate limit + bounded queue, both ends"
            reorder = "NOT done: reordering needs netem, which this kernel lacks"
        else:
            deg = "none: this kernel has neither sch_netem nor sch_tbf (partitions only)"
            reorder = "NOT done: needs netem"
        rows = [
            ("partitions", f"{len(self.parts)} of {n}",
             "ok" if len(self.parts) == n else "short"),
            ("partition length (s), min/median/max",
             f"{min(self.parts):.1f} / {common.median(self.parts):.1f} / "
             f"{max(self.parts):.1f}" if self.parts else "-", ""),
            (f"partitions > keepalive {KEEPALIVE_S:.0f} s / > 1.5x ({1.5 * KEEPALIVE_S:.0f} s)",
             f"{past} / {past_broker}", ""),
            ("drain checks after heal", f"{len(self.drains)} drained of {len(self.parts)}"
             + (f" ({self.unchecked} cut short by the day's end)" if self.unchecked else ""),
             "ok" if len(self.drains) == len(self.parts) else
             "VIOLATION" if len(self.drains) + self.unchecked < len(self.parts) else "short"),
            ("drain after heal (s), median/mean/max",
             f"{med:.1f} / {sum(self.drains) / len(self.drains):.1f} / "
             f"{max(self.drains):.1f}" if self.drains else "-", ""),
            *((f"  after cuts {'>' if long_ else '<='} {KEEPALIVE_S:.0f} s (s), median/max",
               f"{common.median(xs):.1f} / {max(xs):.1f} ({len(xs)} cuts)" if xs else "-", "")
              for long_, xs in ((False, self.drain_after[False]),
                                (True, self.drain_after[True]))),
            ("link degradation", deg, ""),
            ("reordering", reorder, ""),
            ("packets dropped by the degraded link (qdisc and relay counters)",
             f"{drops} of {sent + drops} ({pct:.2f} %)", ""),
        ]
        if sh_:
            for p, s in sh_.stats.items():
                if not s["times"]:
                    continue
                lp = 100.0 * s["drops"] / (s["packets"] + s["drops"]) if s["packets"] else 0.0
                rows.append((f"  {p}: {s['setting']}",
                             f"{s['times']}x, {s['seconds']:.0f} s, {s['drops']} dropped of "
                             f"{s['packets'] + s['drops']} ({lp:.2f} %), "
                             f"{s['bytes'] / 1e6:.1f} MB sent", ""))
        rows += [
            ("box segments / upstream", f"{cmp.get('box_segments', '-')} / "
             f"{cmp.get('upstream_segments', '-')}", ""),
            ("lost upstream", len(cmp.get("lost", [])) if cmp else "-",
             "ok" if cmp and not cmp.get("lost") else "VIOLATION"),
            ("stored twice upstream", cmp.get("duplicated", "-"),
             "ok" if cmp and not cmp.get("duplicated") else "VIOLATION"),
            ("day: lines / line time (s) / speed", f"4 / {self.duration:.0f} / {self.speed:g}x",
             ""),
            ("box sync.window (items in flight)", self.args.window, ""),
            ("elapsed (s)", round(time.monotonic() - t0), ""),
        ]
        common.table("network campaign", rows)
        summary = {"campaign": "network", "quick": self.args.quick,
                   "partitions": len(self.parts), "partitions_planned": n,
                   "partitions_past_keepalive": past, "drain_checks": len(self.drains),
                   "netem": self.support["netem"], "degradation": kind,
                   "reordering": kind in ("netem", "tun"),
                   "relay": ({k: sum(s[k] for s in sh_.stats.values()) for k in RELAY_COUNTS}
                             if kind == "tun" else None),
                   "drops": drops, "packets": sent,
                   "profiles": {p: {k: (round(v, 1) if isinstance(v, float) else v)
                                    for k, v in s.items()}
                                for p, s in (sh_.stats.items() if sh_ else ()) if s["times"]},
                   "lost": len(cmp.get("lost", [])), "duplicated": cmp.get("duplicated"),
                   "segments": cmp.get("box_segments"),
                   "drain_median_s": round(med, 1) if med is not None else None,
                   "drain_max_s": round(max(self.drains), 1) if self.drains else None,
                   "drain_mean_s": (round(sum(self.drains) / len(self.drains), 1)
                                    if self.drains else None),
                   "drain_long_cut_median_s": (round(common.median(self.drain_after[True]), 1)
                                               if self.drain_after[True] else None),
                   "speed": self.speed, "line_time_s": self.duration,
                   "window": self.args.window,
                   "elapsed_s": round(time.monotonic() - t0, 1), "seed": self.args.seed}
        return common.finish(summary, self.violations, self.root, self.args.keep)


def main() -> int:
    def extra(ap):
        ap.add_argument("--partitions", type=int, default=None)
        ap.add_argument("--speed", type=float, default=None,
                        help="simulation speed (default 24x; 12x with --quick)")
        ap.add_argument("--window", type=int, default=64,
                        help="the box's sync.window (default 64; see docs/reliability.md)")
        ap.add_argument("--link", choices=LINKS, default="auto",
                        help="link degradation: netem, tun (userspace netem), tbf; auto = "
                             "the first of those this kernel has")
        ap.add_argument("--duration", type=float, default=None,
                        help="line time of the day in s (default 86400; 1500 with --quick)")
        ap.add_argument("--net", type=int, default=None, metavar="K",
                        help="use namespace lt-nK and subnet 10.76.K.0/24 (0-199) instead "
                             "of lt-dev and 10.77.0.0/24, so a test run never touches a "
                             "campaign running at the same time")
    args = common.parse_args(__doc__, extra)
    if os.geteuid() != 0:
        print("campaign-network needs root (network namespaces and a veth pair)")
        return 2
    if args.net is None:
        return Campaign(args).run()
    if not 0 <= args.net <= 199:
        print(f"--net must be 0-199, got {args.net}")
        return 2
    k = args.net
    return Campaign(args, net=Net(ns=f"lt-n{k}", veth_root=f"lt-n{k}a", veth_dev=f"lt-n{k}b",
                                  root_ip=f"10.76.{k}.1", dev_ip=f"10.76.{k}.2")).run()


if __name__ == "__main__":
    sys.exit(main())
