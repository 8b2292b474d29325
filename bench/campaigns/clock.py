"""Clock campaign: unsynchronised clocks, NTP steps mid-call, and an RTC-less boot at 1970.

In simulation UTC is ``scenario start + line time`` and the daemon never re-reads the
system clock, so the system clock itself is never touched here. Instead:

1. an unsynchronised timebase (``Timebase(..., synchronised=False)``, what
   ``Timebase.from_system`` gives on a Pi before NTP) -> every exported call must say
   ``clock_synchronised: false`` and the ``clock_unsynchronised`` alarm must be up;
2. an NTP step mid-call, backwards (-1 h) and forwards (+1 day), applied with
   ``Timebase.resync`` (what the daemon's house tick does when the kernel reports sync)
   while calls are in progress -> call boundaries (sample indexes, segment layout) are
   identical to a run without the step, every call verifies, ``duration_s`` matches the
   sample count, and listing order follows the sample clock;
3. a boot at 1970 (RTC-less, before NTP) -> calls are not deleted by retention while
   the clock is wrong, nor when the clock later becomes right (NTP syncs and retention
   runs on real time).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

from bench.campaigns import common

RATE = 8000


class Campaign:
    def __init__(self, args):
        self.args = args
        self.root = common.workdir("clock")
        self.violations: list[str] = []
        self.rows: list[tuple] = []
        self.notes: list[str] = []
        from recorder.evidence import keys
        self.priv, self.pub = keys.practice_keygen(self.root / "practice.key")

    def run_sim(self, name, raw, *, synchronised=True, step_at=None, step_s=0.0,
                speed=0.0, retention_interval=300.0):
        from hw import scenario as scen
        from recorder import config
        from recorder.runtime import simulate
        from recorder.timebase import Timebase
        data = self.root / name
        sc = scen.from_dict(raw, self.root)
        cfg = simulate.sim_config(config.Config().replace(
            retention__interval_s=retention_interval), sc, str(data), str(self.pub))
        applied = {}

        def before_start(daemon, _line):
            daemon.hw.line_timebase = Timebase(sc.rate, sc.start.timestamp(),
                                               synchronised=synchronised)
            if step_at is not None:
                def stepper():
                    while getattr(daemon, "ring", None) is None or \
                            daemon.ring.written < step_at * RATE:
                        if daemon.stop.is_set():
                            return
                        time.sleep(0.001)
                    tb = daemon.timebase
                    n = daemon.ring.written
                    applied["step"] = tb.resync(n, tb.epoch(n) + step_s)
                    applied["at_s"] = n / RATE
                threading.Thread(target=stepper, daemon=True).start()
        res = simulate.run(sc, cfg, speed=speed, before_start=before_start)
        return data, res, applied

    def export(self, data):
        from recorder.evidence import keys
        from recorder.evidence.export import export_calls
        from recorder.storage.store import Store, device_key_for
        out = data.parent / (data.name + "-out")
        s = Store(data)
        done, failures = export_calls(s, keys.load_practice_private(self.priv), out,
                                      device_key=device_key_for(data), data_dir=data)
        metas = {d["call_id"]: json.loads((out / f"{d['call_id']}.json").read_text())
                 for d in done}
        rows = s.calls()
        segs = {r.id: [(x.seq, x.first_sample, x.samples) for x in s.segments_of(r.id)]
                for r in rows}
        s.close()
        return rows, metas, segs, failures

    def scenario(self, start: str, seed: int) -> dict:
        raw, _ = common.day_scenario(random.Random(seed), start, 240.0, lines=4,
                                     min_gap=2.0, max_gap=10.0, min_call=20.0, max_call=90.0)
        return raw

    # 1 ----------------------------------------------------------------------------------
    def unsynchronised(self):
        raw = self.scenario("2026-11-25T09:00:00Z", 1)
        data, res, _ = self.run_sim("unsync", raw, synchronised=False)
        rows, metas, _segs, failures = self.export(data)
        bad = [c for c, m in metas.items() if m.get("clock_synchronised") is not False]
        if bad or failures:
            self.violations.append(f"unsynchronised clock: {len(bad)} call(s) without "
                                   f"clock_synchronised=false; export failures {failures}")
        alarms = res.status.get("alarms", {})
        if "clock_unsynchronised" not in alarms:
            self.violations.append(f"clock_unsynchronised alarm not raised: {sorted(alarms)}")
        self.rows.append(("unsynchronised timebase", len(metas),
                          f"clock_synchronised false in {len(metas) - len(bad)}/{len(metas)}",
                          "alarm up" if "clock_unsynchronised" in alarms else "NO ALARM",
                          "ok" if not bad and not failures else "VIOLATION"))

    # 2 ----------------------------------------------------------------------------------
    def steps(self):
        raw = self.scenario("2026-11-25T09:00:00Z", 2)
        base, _, _ = self.run_sim("baseline", raw, synchronised=False)
        b_rows, b_metas, b_segs, _ = self.export(base)
        key = {(r.line, r.offhook_sample): r for r in b_rows}
        for label, step in (("NTP step -1 h mid-call", -3600.0),
                            ("NTP step +1 day mid-call", 86400.0)):
            data, _res, applied = self.run_sim(label.split()[2].replace("+", "p")
                                               .replace("-", "m"), raw, synchronised=False,
                                               step_at=100.0, step_s=step, speed=8.0)
            rows, metas, segs, failures = self.export(data)
            problems = []
            if "step" not in applied:
                problems.append("step not applied")
            got = {(r.line, r.offhook_sample): r for r in rows}
            if set(got) != set(key):
                problems.append(f"calls differ: {len(got)} vs {len(key)} in the baseline")
            for k, r in got.items():
                b = key.get(k)
                if b is None:
                    continue
                if (r.first_sample, r.end_sample) != (b.first_sample, b.end_sample) or \
                        segs[r.id] != b_segs[b.id]:
                    problems.append(f"line {k[0]}: boundaries moved")
                m = metas.get(r.id)
                if m is None:
                    problems.append(f"{r.id} not exported: {failures}")
                    continue
                want = (r.end_sample - r.offhook_sample) / RATE
                if m.get("duration_s") is None or abs(m["duration_s"] - want) > 0.05:
                    problems.append(f"{r.id}: duration_s {m.get('duration_s')} but "
                                    f"{want:.2f} s of samples")
            order = [r.id for r in rows]
            by_sample = [r.id for r in sorted(rows, key=lambda r: (r.offhook_sample or 0,
                                                                    r.created))]
            if order != by_sample:
                problems.append("listing order differs from the sample clock order")
            stamped = [m.get("clock_synchronised") for m in metas.values()]
            for p in problems:
                self.violations.append(f"{label}: {p}")
            self.rows.append((label, len(rows), f"step {applied.get('step', 0):+.0f} s at "
                              f"{applied.get('at_s', 0):.0f} s; synced flags "
                              f"{stamped.count(True)} true/{stamped.count(False)} false",
                              "; ".join(problems[:2]) or "boundaries, durations, order ok",
                              "ok" if not problems else "VIOLATION"))

    # 3 ----------------------------------------------------------------------------------
    def boot_1970(self):
        from recorder import config
        from recorder.evidence import audit
        from recorder.storage.retention.service import Retention
        from recorder.storage.store import Store
        raw = self.scenario("1970-01-01T00:00:10Z", 3)
        raw["duration"] = 120.0
        raw["events"] = [e for e in raw["events"] if e["at"] < 100] + []
        raw = json.loads(json.dumps(raw))
        # keep the hook sequence valid after the cut: close any line still off-hook
        off = {}
        for e in sorted(raw["events"], key=lambda e: e["at"]):
            if e["type"] == "offhook":
                off[e["line"]] = True
            elif e["type"] == "onhook":
                off.pop(e["line"], None)
        for ln in off:
            raw["events"].append({"at": 110.0, "line": ln, "type": "onhook"})
        data, _res, _ = self.run_sim("boot1970", raw, synchronised=False, speed=4.0,
                                     retention_interval=1.0)
        s = Store(data)
        alive = [c for c in s.calls(include_deleted=True) if c.state != "deleted"]
        n = len(s.calls(include_deleted=True))
        during = n - len(alive)
        if during:
            self.violations.append(f"1970 boot: {during} call(s) deleted while recording")
        # NTP synchronises; retention now runs on the real clock.
        cfg = config.Config().replace(device__data_dir=str(data))
        r = Retention(s, data, cfg, free_bytes=lambda: 10**12, clock=time.time)
        todo = r.tick()
        expired = [d for d in todo if d[1] == "retention_expiry"]
        folders = sorted({p.relative_to(data / "segments").parts[0]
                          for p in (data / "segments").rglob("*.seg")} or {"-"})
        if expired:
            self.violations.append(
                f"1970 boot: {len(expired)}/{len(alive)} call(s) recorded before NTP sync "
                "deleted by retention (retention_expiry) on the first tick after the clock "
                "became right: their deadline is 1970 + retention days")
        ents = [e for e in audit.read(data) if e.get("action") == "retention_expiry"]
        s.close()
        self.rows.append(("RTC-less boot at 1970", n,
                          f"deleted while recording {during}; after NTP sync "
                          f"{len(expired)} expired ({len(ents)} audited); folders {folders}",
                          "calls kept" if not expired else "calls DELETED",
                          "ok" if not expired and not during else "VIOLATION"))

    def run(self) -> int:
        t0 = time.monotonic()
        for part in (self.unsynchronised, self.steps, self.boot_1970):
            try:
                part()
            except Exception as exc:  # noqa: BLE001 - report and go on
                import traceback
                self.violations.append(f"{part.__name__} raised {type(exc).__name__}: {exc}")
                traceback.print_exc()
        common.table("Clock campaign", self.rows,
                     head=("case", "calls", "what happened", "finding", "result"))
        summary = {"campaign": "clock", "quick": self.args.quick, "cases": len(self.rows),
                   "elapsed_s": round(time.monotonic() - t0, 1)}
        for case, *_rest, result in self.rows:
            summary[case.replace(" ", "_").replace("-", "m").replace("+", "p")] = result
        return common.finish(summary, self.violations, self.root, self.args.keep)


def main() -> int:
    args = common.parse_args(__doc__)
    return Campaign(args).run()


if __name__ == "__main__":
    sys.exit(main())
