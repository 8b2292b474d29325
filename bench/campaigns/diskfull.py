"""Full-disk campaign: the data dir on a small tmpfs, successive days of busy 4-line
calls with the broker down, then up, then a disk filled to the last byte (ENOSPC).

Runs the real daemon in this process (``recorder.runtime.simulate.run``), with the retention
service's free-space probe pointed at the tmpfs (``simulate.run(free_bytes=...)``; simulation
otherwise uses a virtual 32 GB disk) and ``retention.interval_s = 1``. Each "day" is one
boot whose scenario starts on the next calendar day (compressed: minutes of busy lines,
not 24 hours). Needs root (tmpfs mount); skips with a message otherwise.

Checked: no crash (no daemon thread dies, the run reaches the end of its scenario);
eviction follows the policy (with the broker up and the backlog drained, no unsynced
segment is evicted); the ``low_storage`` alarm is raised while unsynced data is evicted
and cleared once the box is synced and above the threshold (``run/status.json``,
sampled every 0.2 s); the audit log names every evicted call and segment; ``PRAGMA
integrity_check`` is ok after every boot, including the one that hit ENOSPC; every call
with all its segments verifies.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.campaigns import common
from tests.support.disk import fill_to_last_byte


class LogTrap(logging.Handler):
    """Keeps ERROR records (with exception types) and counts low_storage transitions
    (the alarm set logs "alarm raised: NAME" and "alarm cleared: NAME")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.raised = self.cleared = 0

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("alarm raised: low_storage"):
            self.raised += 1
        elif msg.startswith("alarm cleared: low_storage"):
            self.cleared += 1
        if record.levelno >= logging.ERROR:
            self.records.append(record)


class StatusWatch(threading.Thread):
    """Samples run/status.json alarms while a boot runs."""

    def __init__(self, data: Path):
        super().__init__(daemon=True)
        self.data, self.stop = data, threading.Event()
        self.samples: list[tuple[float, dict, dict]] = []

    def run(self):
        while not self.stop.wait(0.2):
            st = common.read_status(self.data)
            if st:
                self.samples.append((st.get("time", 0), st.get("alarms") or {},
                                     st.get("sync") or {}))


class Campaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.root = common.workdir("diskfull")
        self.mnt = self.root / "tmpfs"
        self.violations: list[str] = []
        self.rows: list[tuple] = []
        self.trap = LogTrap()
        self.base = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
        self.day = 0
        self.alarm_raised = self.alarm_cleared = False
        self.enospc = {"hit": False, "daemon_stopped": False, "error": None}
        self.reserve_mb = 4 if args.quick else 6
        self.announcement = self.root / "announcement.wav"
        _tone_wav(self.announcement, 440.0, self.ANN_S)

    def mount(self, mb: int) -> None:
        self.mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m,mode=0755", "tmpfs",
                        str(self.mnt)], check=True)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.mnt)], check=False)

    # -- one boot in this process -----------------------------------------------------------
    def boot(self, phase: str, seconds: float, busy=True, fill=False, speed=None) -> dict:
        from hw import scenario as scen
        from recorder import config
        from recorder.runtime import simulate
        self.day += 1
        start = (self.base + timedelta(days=self.day)).isoformat().replace("+00:00", "Z")
        calls = []
        if busy:
            raw, calls = common.day_scenario(self.rng, start, seconds, lines=4,
                                             min_gap=1.0, max_gap=6.0, min_call=15.0,
                                             max_call=120.0)
            raw["noise_dbfs"] = -40            # realistic segment sizes (~100 KB)
        else:
            raw = {"rate": 8000, "start": start, "duration": seconds, "lines": 4,
                   "events": []}
        sc = scen.from_dict(raw, self.root)
        cfg = config.from_dict(self.rig.box_raw(
            retention__interval_s=1.0, retention__min_free_mb=self.min_free_mb,
            retention__keep_synced_days=3650.0, retention__reserve_mb=self.reserve_mb,
            announcement__file=str(self.announcement)))
        cfg = simulate.sim_config(cfg, sc, str(self.box.data), str(self.box.practice_pub))
        data = self.box.data
        filler = {}

        def before_start(daemon, line):
            filler["daemon"] = daemon
            if fill:
                # On line time, not wall time: at speed 0 a loaded machine can take
                # longer to start than a fast one takes for the whole day.
                def when_recording():
                    while line.written < self.FILL_AT_S * 8000 and not line.finished:
                        time.sleep(0.01)
                    filler["at_line_s"] = round(line.written / 8000, 1)
                    self._fill(0.0)
                    filler["until_line_s"] = round(line.written / 8000, 1)
                filler["thread"] = threading.Thread(target=when_recording, daemon=True)
                filler["thread"].start()
        watch = StatusWatch(data)
        watch.start()
        n_err = len(self.trap.records)
        t0 = time.monotonic()
        error = None
        try:
            res = simulate.run(sc, cfg, speed=self.args.speed if speed is None else speed,
                               before_start=before_start, keep_playback=True,
                               free_bytes=lambda: shutil.disk_usage(data).free)
            status = res.status
            unannounced = self._unannounced(res.line.played, calls, seconds)
        except Exception as exc:  # noqa: BLE001 - a crash is what we look for
            error = exc
            status = {}
            unannounced = []
        watch.stop.set()
        watch.join()
        if "thread" in filler:
            filler["thread"].join()
        wall = time.monotonic() - t0
        d = filler.get("daemon")
        dead = [t.name for t in (d.threads if d else []) if getattr(t, "error", None)]
        errs = self.trap.records[n_err:]
        captured = status.get("captured_s", 0)
        ended = captured >= seconds - 1
        info = {"phase": phase, "day": self.day, "wall_s": round(wall, 1),
                "captured_s": captured, "ended": ended, "dead_threads": dead,
                "errors": [f"{r.name}: {r.getMessage()[:120]}"
                           + (f" [{type(r.exc_info[1]).__name__}: {r.exc_info[1]}]"
                              if r.exc_info else "") for r in errs],
                "exception": repr(error) if error else None,
                "alarms_seen": sorted({a for _t, al, _s in watch.samples for a in al}),
                "samples": watch.samples,
                "free_mb": round(shutil.disk_usage(data).free / 2**20, 1),
                "backlog": (status.get("sync") or {}).get("backlog"),
                "announced": len(calls) - len(unannounced), "unannounced": unannounced,
                "reserve_released": d.reserve.released_count if d and
                hasattr(d, "reserve") else 0,
                "writer_abandoned": d.writer.abandoned_jobs if d and
                hasattr(d, "writer") else 0,
                "writer_alive": [t.name for t in (d.threads if d else []) if t.is_alive()],
                "disk_full_events": getattr(d, "disk_full_events", 0) if d else 0,
                "full_line_s": (filler.get("at_line_s"), filler.get("until_line_s"))}
        return info

    FILL_AT_S = 20.0       # line time at which the ENOSPC day's disk fills
    ANN_S = 2.0            # the announcement: a 2 s tone
    ANN_LATE_S = 1.5       # how much later than answer + delay it may start at speed 0

    def _unannounced(self, played, calls, seconds) -> list:
        """Calls (line, answered at s) whose announcement is not in the device's
        playback: a tone starting within ANN_LATE_S of answer + delay. A call shorter
        than that (or cut by the end of the day) is not judged."""
        import numpy as np
        rate, delay = 8000, 0.3
        out = []
        for ln, off, on in calls:
            end = on if on is not None else seconds
            if end - off < delay + self.ANN_LATE_S + self.ANN_S:
                continue
            a = int((off + delay) * rate)
            b = int((off + delay + self.ANN_LATE_S + 0.5) * rate)
            seg = played[a:b, ln].astype(np.int32) if len(played) >= b else None
            if seg is None or not len(seg) or np.abs(seg).max() < 500:
                out.append((ln, round(off, 2)))
        return out

    def _fill(self, delay: float, hold: bool = False) -> None:
        """After ``delay`` s, fill the tmpfs to the last byte; keep it full for
        ``--full-s`` seconds, taking back every byte freed meanwhile (by eviction, by
        the reserve), so the writer meets ENOSPC however the threads are scheduled; or
        fill once and leave it until :meth:`unfill` if ``hold``."""
        time.sleep(delay)
        ballast = self.mnt / "ballast"
        self._top_up(ballast)
        if hold:
            return
        t_end = time.monotonic() + self.args.full_s      # the disk stays full this long
        while time.monotonic() < t_end:
            time.sleep(0.05)
            self._top_up(ballast)
        ballast.unlink(missing_ok=True)

    @staticmethod
    def _top_up(ballast: Path) -> None:
        fill_to_last_byte(ballast)

    def unfill(self) -> None:
        (self.mnt / "ballast").unlink(missing_ok=True)

    # -- checks ------------------------------------------------------------------------------
    def check_store(self, tag: str, crashed: bool = False) -> dict:
        from recorder.evidence import audit
        from recorder.evidence.verify import verify_call
        from recorder.storage.store import Store, device_key_for
        data = self.box.data
        s = Store(data)
        out = {"calls": 0, "deleted": 0, "partial": 0, "verified": 0}
        try:
            ic = s.integrity_check()
            if ic != "ok":
                self.violations.append(f"{tag}: integrity_check {ic!r}")
            entries = list(audit.read(data))
            whole = {e["detail"]["call"] for e in entries if e.get("action") == "eviction"
                     and e["detail"].get("whole_call", True)}
            part: dict[str, set] = {}
            for e in entries:
                if e.get("action") == "eviction" and not e["detail"].get("whole_call", True):
                    part.setdefault(e["detail"]["call"], set()).update(e["detail"]["seqs"])
            key = device_key_for(data)
            for r in s.calls(include_deleted=True):
                out["calls"] += 1
                if r.state == "deleted":
                    out["deleted"] += 1
                    if r.delete_reason == "eviction" and r.id not in whole:
                        self.violations.append(f"{tag}: call {r.id} evicted without an "
                                               "audit entry")
                    continue
                if r.state == "active" and crashed:
                    out["left_active"] = out.get("left_active", 0) + 1
                    continue        # the next boot must recover it (checked there)
                if r.state == "active":
                    self.violations.append(f"{tag}: call {r.id} still active after the boot")
                    continue
                v, h = verify_call(s, r, key)
                if v.status == "verified":
                    out["verified"] += 1
                    continue
                listed = {x["seq"] for x in (h or {}).get("segments", [])}
                present = {x.seq for x in s.segments_of(r.id)}
                missing = listed - present
                if missing and missing <= part.get(r.id, set()):
                    out["partial"] += 1        # evicted segments, each one audited
                    continue
                self.violations.append(f"{tag}: call {r.id} ({r.state}) {v.status}: "
                                       f"{v.detail}; missing {sorted(missing)[:8]} audited "
                                       f"{sorted(part.get(r.id, set()))[:8]}")
            out["evictions_audited"] = sum(1 for e in entries if e.get("action") == "eviction")
            out["unsynced_evicted"] = sum(e["detail"].get("unsynced_segments", 0)
                                          for e in entries if e.get("action") == "eviction")
            out["audit_entries"] = len(entries)
        finally:
            s.close()
        for p in common.stale_temp_files(data):
            self.violations.append(f"{tag}: temp file left: {p.name}")
        p = subprocess.run([sys.executable, "-m", "recorder.cli", "audit", "--verify",
                            "--data-dir", str(data)], capture_output=True, text=True,
                           cwd=str(common.ROOT))
        if p.returncode != 0:
            self.violations.append(f"{tag}: audit log does not verify: {p.stdout[-300:]}")
        return out

    def judge_boot(self, info: dict, expect_crashfree=True) -> None:
        tag = f"day {info['day']} ({info['phase']})"
        if info["exception"]:
            self.violations.append(f"{tag}: simulate raised {info['exception']}")
        if info["unannounced"]:
            self.violations.append(f"{tag}: {len(info['unannounced'])} call(s) answered "
                                   f"without the announcement played, e.g. (line, s) "
                                   f"{info['unannounced'][:3]}")
        if info["writer_alive"]:
            self.violations.append(f"{tag}: daemon thread(s) still running after "
                                   f"shutdown: {info['writer_alive']}")
        if info["dead_threads"]:
            self.violations.append(f"{tag}: daemon thread(s) died: {info['dead_threads']}; "
                                   f"{info['errors'][:3]}")
        elif not info["ended"] and expect_crashfree:
            self.violations.append(f"{tag}: stopped at {info['captured_s']} s of line time")
        if "low_storage" in info["alarms_seen"] or self.trap.raised:
            self.alarm_raised = True

    def audit_since(self, n0: int) -> list[dict]:
        from recorder.evidence import audit
        return list(audit.read(self.box.data))[n0:]

    # -- the campaign -----------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        if os.geteuid() != 0:
            print("SKIPPED: the full-disk campaign mounts a tmpfs and needs root")
            print(json.dumps({"campaign": "diskfull", "skipped": "needs root",
                              "violations": 0}))
            return 0
        logging.getLogger().addHandler(self.trap)
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("recorder.runtime.alarms").setLevel(logging.INFO)
        days_down = getattr(a, "days_down", None) or (2 if a.quick else 5)
        day_s = getattr(a, "day_s", None) or (300.0 if a.quick else 900.0)
        phases = getattr(a, "phases", "ABC")
        self.min_free_mb = 4 if a.quick else 8
        size_mb = 16 if a.quick else 40
        t0 = time.monotonic()
        self.mount(size_mb)
        try:
            self.box = common.new_box(self.mnt)
            self.rig = common.SyncRig(self.root, self.box)
            self.box.config = None
            # Phase A: broker down (nothing listening on its port) for several days.
            from recorder.evidence import audit
            for _ in range(days_down if "A" in phases else 0):
                info = self.boot("broker down", day_s)
                self.judge_boot(info)
                st = self.check_store(f"day {info['day']}")
                self.rows.append(self.row(info, st))
            entries_a = list(audit.read(self.box.data))
            n_audit_a = len(entries_a)
            lost_a = sum(e["detail"].get("unsynced_segments", 0) for e in entries_a
                         if e.get("action") == "eviction")
            if lost_a and not self.alarm_raised:
                self.violations.append(f"low_storage never raised while {lost_a} unsynced "
                                       "segment(s) were evicted with the broker down")
            # Phase B: broker and ingest up; a busy day, then a quiet one to drain.
            self.rig.start()
            info = self.boot("broker up", day_s)
            self.judge_boot(info)
            st = self.check_store(f"day {info['day']}")
            self.rows.append(self.row(info, st))
            info = self.boot("broker up, quiet", 40.0 if a.quick else 120.0, busy=False,
                             speed=1.0)
            # The drain runs in real time against a loaded machine: how much is left
            # after one quiet boot varies from run to run at the same seed. Another
            # quiet boot (at most two more) is a later moment of the same policy.
            for _ in range(2):
                if info["backlog"] in (0, None) or info["exception"]:
                    break
                self.judge_boot(info)
                self.rows.append(self.row(info, self.check_store(f"day {info['day']}")))
                info = self.boot("broker up, quiet", 40.0 if a.quick else 120.0,
                                 busy=False, speed=1.0)
            if info["backlog"] != 0:
                self.violations.append(f"backlog did not drain with the broker up: "
                                       f"{info['backlog']} left")
            self.judge_boot(info)
            st = self.check_store(f"day {info['day']}")
            self.rows.append(self.row(info, st))
            last = info["samples"][-1] if info["samples"] else (0, {}, {})
            if "low_storage" in last[1]:
                self.violations.append(f"low_storage still raised after the backlog "
                                       f"drained: {last[1]['low_storage']}")
            else:
                self.alarm_cleared = True
            # Policy: once drained, evictions take synced data only.
            drained_at = next((t for t, _al, sy in info["samples"]
                               if sy.get("backlog") == 0), None)
            late = [e for e in self.audit_since(n_audit_a)
                    if e.get("action") == "eviction" and drained_at is not None
                    and e.get("ts") and _ts(e["ts"]) > drained_at + 2
                    and e["detail"].get("unsynced_segments", 0) > 0]
            if late:
                self.violations.append(f"{len(late)} eviction(s) of unsynced data after the "
                                       f"backlog drained, e.g. {late[0]['detail']}")
            if "C" not in phases:
                raise _Done
            # Phase C: the disk fills to the last byte while 4 lines record.
            info = self.boot("ENOSPC", 120.0 if a.quick else 300.0, fill=True)
            self.enospc = {"hit": info["disk_full_events"] > 0,
                           "full_at_line_s": info["full_line_s"], "wall_s": info["wall_s"],
                           "writes_refused": info["disk_full_events"],
                           "reserve_released": info["reserve_released"],
                           "dead_threads": info["dead_threads"],
                           "stopped_at_s": info["captured_s"], "ended": info["ended"],
                           "errors": [e for e in info["errors"] if "No space" in e
                                      or "ENOSPC" in e or "disk full" in e][:3]}
            self.judge_boot(info)
            if not self.enospc["hit"]:
                self.violations.append(f"day {info['day']} (ENOSPC): the disk was held full "
                                       f"for {a.full_s} s and no write met it: the phase "
                                       "tested nothing")
            st = self.check_store(f"day {info['day']} (after ENOSPC)",
                                  crashed=not info["ended"])
            self.rows.append(self.row(info, st))
            # Start with the disk already full (a box that stopped on ENOSPC restarts).
            self._fill(0.0, hold=True)
            info = self.boot("start on a full disk", 60.0)
            self.start_full = {"ended": info["ended"], "exception": info["exception"],
                               "dead_threads": info["dead_threads"],
                               "free_mb_after": info["free_mb"]}
            self.judge_boot(info)
            self.unfill()
            st = self.check_store(f"day {info['day']} (started on a full disk)",
                                  crashed=not info["ended"])
            self.rows.append(self.row(info, st))
            # And the box records again once there is room.
            info = self.boot("after ENOSPC", 60.0)
            self.judge_boot(info)
            st = self.check_store(f"day {info['day']}")
            self.rows.append(self.row(info, st))
        except _Done:
            pass
        finally:
            try:
                self.rig.stop()
            except Exception:  # noqa: BLE001
                pass
            if self.violations or a.keep:
                # The data dir lives on the tmpfs: keep a copy to look at, then unmount.
                shutil.copytree(self.mnt, self.root / "data-at-end", dirs_exist_ok=True,
                                ignore_dangling_symlinks=True)
            self.umount()
        elapsed = time.monotonic() - t0
        common.table("Full-disk campaign (tmpfs "
                     f"{size_mb} MB, min_free_mb {self.min_free_mb})", self.rows,
                     head=("day", "phase", "line s", "ended", "alarms seen", "free MB",
                           "calls", "evicted", "partial", "verified", "unsynced evicted",
                           "backlog"))
        common.table("Summary", [
            ("low_storage raised / cleared", f"{self.alarm_raised} / {self.alarm_cleared}"),
            ("ENOSPC reached the writer (writes refused)",
             f"{self.enospc.get('hit')} ({self.enospc.get('writes_refused')})"),
            ("ENOSPC: disk reserve released (times)", self.enospc.get("reserve_released")),
            ("ENOSPC: disk full from/to line time (s); day's wall time (s)",
             f"{self.enospc.get('full_at_line_s')}; {self.enospc.get('wall_s')}"),
            ("after ENOSPC: daemon threads died", self.enospc.get("dead_threads")),
            ("after ENOSPC: scenario completed", self.enospc.get("ended")),
            ("ENOSPC errors logged", self.enospc.get("errors")),
            ("start on a full disk", getattr(self, "start_full", None)),
            ("low_storage raise/clear transitions (log)",
             f"{self.trap.raised} / {self.trap.cleared}"),
            ("violations", len(self.violations))], head=("measure", "value"))
        last = self.rows[-1]
        summary = {"campaign": "diskfull", "quick": a.quick, "seed": a.seed,
                   "tmpfs_mb": size_mb, "days": len(self.rows),
                   "calls": last[6], "evicted_calls": last[7], "partial_calls": last[8],
                   "unsynced_segments_evicted": last[10],
                   "low_storage_raised": self.alarm_raised,
                   "low_storage_cleared": self.alarm_cleared,
                   "enospc_hit": self.enospc.get("hit"),
                   "enospc_daemon_died": bool(self.enospc.get("dead_threads")),
                   "start_on_full_disk_ok": bool(getattr(self, "start_full", {})
                                                 .get("ended")),
                   "low_storage_transitions": [self.trap.raised, self.trap.cleared],
                   "elapsed_s": round(elapsed, 1)}
        return common.finish(summary, self.violations, self.root, a.keep,
                             " (the tmpfs's last state in data-at-end)")

    @staticmethod
    def row(info, st) -> tuple:
        return (info["day"], info["phase"], info["captured_s"], info["ended"],
                ",".join(info["alarms_seen"]) or "-", info["free_mb"], st["calls"],
                st["deleted"], st["partial"], st["verified"], st.get("unsynced_evicted"),
                info["backlog"])


def _tone_wav(path: Path, hz: float, seconds: float, rate: int = 8000) -> None:
    import numpy as np
    import soundfile as sf
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate,
             subtype="PCM_16")


class _Done(Exception):
    """The phases asked for are done."""


def _ts(s) -> float:
    if isinstance(s, (int, float)):
        return float(s)
    from recorder.timebase import parse_iso
    return parse_iso(s)


def main() -> int:
    def extra(ap):
        ap.add_argument("--speed", type=float, default=0.0,
                        help="pacing (0 = as fast as the CPU allows)")
        ap.add_argument("--full-s", type=float, default=3.0,
                        help="seconds the disk stays completely full in the ENOSPC phase")
        ap.add_argument("--days-down", type=int, default=None,
                        help="days with the broker down (default 5; 2 with --quick)")
        ap.add_argument("--day-s", type=float, default=None,
                        help="line seconds of each busy day (default 900; 300 with --quick)")
        ap.add_argument("--phases", default="ABC",
                        help="A broker down, B broker up and drain, C ENOSPC and a start on "
                             "a full disk (default ABC)")
    args = common.parse_args(__doc__, extra)
    return Campaign(args).run()


if __name__ == "__main__":
    sys.exit(main())
