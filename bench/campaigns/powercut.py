"""Power-cut campaign: SIGKILL ``linetap simulate`` (4 lines, sync on) at random instants
and inside fsync/rename, restart it, and check the store after every restart.

Each boot replays a fresh busy 4-line scenario (distinct start times per boot, one hour
apart) paced at ``--speed`` times real time (4 by default: the same threads, pacer and
write path as real time, 4x faster, slow enough for the kill time to be known to
0.2 s of line time). A local mosquitto (mutual TLS + ACL) and one
ingest worker subprocess (SQLite upstream) run throughout.

Checked after every restart (once the new boot is recording, i.e. recovery is done):
``PRAGMA integrity_check`` is ok; every committed call verifies (hashes, chain,
signature); no temp file from a dead process and no plaintext audio exists (an audio
container, or a test tone as headerless PCM, at any offset: tests/support/plaintext.py);
every call that was open at the kill is ``recovered`` (row, metadata and signed
manifest header); the audio lost per open call is at most 2 s with the journal on (the
default: the recorder's hold + ``journal_s``), ``segment_s`` + the hold without it, plus
what the box was measurably behind at the kill: the larger of its backlog at its last
status (processor lag, writer queue: :func:`behind_s`) and the run-queue wait of its
most-delayed thread on the audio path (``AUDIO_PATH``) while the lost audio arrived
(the last loss / speed seconds of wall time before the kill), times the speed
(``tests/support/schedstat.py``). That lag must itself stay under ``LAG_CEILING_S``
(2 s); each loss over the bound is reported split into durability loss and lag. A
loaded machine can need the allowance on one run and not on the next; such losses are
counted in ``losses_over_bound_while_behind``. The daemon runs at the recorder unit's
``Nice=`` (when this process may set it, as root), so the campaign tests the box as
shipped. At
the end: the backlog drains, nothing lost or duplicated upstream, ``linetap verify``
and ``linetap audit --verify`` pass.

Kill time in line time is estimated from the last ``run/status.json`` (its ``time`` and
``captured_s``) plus the wall time since, times the speed: an upper bound, so the loss
figures are upper bounds too.

Last, deletions cut short: between boots a finished call is deleted (retention's
``synced`` clean-up) by a process killed at each step of the deletion
(``delete_marked``, ``delete_unlinked``, ``delete_committed``, ``delete_audited``); the
next boot must finish it: the call a tombstone, no segment row, one audit entry, no
deletion marker left, every other call still verifying.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.campaigns import common
from tests.support import schedstat
from tests.support.plaintext import plaintext_files
from tests.support.simbox import can_renice, unit_nice

RATE = 8000
SEGMENT_S = 10.0


def _hold_s() -> float:
    """The recorder's hold in seconds: the hang-up decision lag + 1 s (recorder/calls/processor.py,
    ``CallProcessor.hold``), from the default timing config."""
    from recorder.calls import state as callstate
    from recorder.config import Config
    return callstate.Timing.from_config(Config().timing, RATE).decision_lag / RATE + 1.0


def _journal_s() -> float:
    from recorder.config import Config
    return Config().recording.journal_s


HOLD_S = _hold_s()
JOURNAL_S = _journal_s()
# The target with the journal: at most 2 s lost (hold + journal_s + one pass).
LOSS_BOUND_S = 2.0 if JOURNAL_S else SEGMENT_S + HOLD_S
LINES = 4


def behind_s(processor_lag_s: float, writer_queue: int) -> float:
    """Line time a box was behind at its last status: the processor's lag behind
    capture, plus the writer's queue (per line, each queued job is at most one
    ``journal_s`` record or a segment whose audio its records already hold)."""
    per_job = JOURNAL_S if JOURNAL_S else SEGMENT_S
    return max(0.0, processor_lag_s) + writer_queue * per_job / LINES
STATUS_JITTER_S = 0.05  # wall time: the kill-time estimate's allowance, times the speed
# Starvation at the kill: the audio a call lost arrived in the last loss / speed seconds
# of wall time before the kill. The run-queue wait of the daemon's most-delayed thread in
# that span (tests/support/schedstat.py, sampled every 50 ms), times the speed, is line
# time the box fell behind real time just then because it was not running, which its
# last status (up to 1 s old) cannot show.
# A loss whose lag is over this (line seconds) does not test the journal but the
# machine: counted as a violation, so a sweep on a machine that starves the daemon (even
# at the unit's priority) fails and says so instead of passing on a bound stretched to fit.
LAG_CEILING_S = 2.0
# The daemon's threads that audio waits on before it is in the journal: capture, the
# call processor, the writer, and in simulation the device playback the simulated line
# loops back, plus the threads the daemon does not name (the simulated line's, which
# paces capture, and the main one). Not the house, LED, control, uploader or retention
# threads: their waiting delays no audio (recorder/threads.py names them all).
AUDIO_PATH = ("capture", "calls", "writer", "playback")

POINTS = ("before_fsync", "before_rename", "before_dirsync", "journal_before_sync")
# A deletion of a finished call (retention's "synced" clean-up), cut at each of its
# steps between boots; the next boot's recovery must finish it
# (recorder/storage/retention/).
DELETE_POINTS = ("delete_marked", "delete_unlinked", "delete_committed", "delete_audited")
_DELETE_CUT = """
import sys
from recorder.storage.retention.service import Retention
from recorder.storage.store import Store
Retention(Store(sys.argv[1]), sys.argv[1], None).delete_call(sys.argv[2], "synced")
sys.exit(3)     # the crash point was never reached
"""


class Campaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.root = common.workdir("powercut")
        self.box = common.new_box(self.root / "box")
        self.rig = common.SyncRig(self.root, self.box)
        self.violations: list[str] = []
        self.pending: list[dict] = []          # kills whose recovery is not checked yet
        self.verified: set[str] = set()
        # files the plaintext scan found clean, so each restart reads only what changed
        self.scanned_clean: dict = {}
        self.losses: list[float] = []
        self.over_bound_behind = 0      # losses over the bound, within what was behind
        self.behind_max = 0.0
        self.loss_unmeasured = 0
        self.lags: list[tuple[float, int]] = []   # (processor lag s, writer queue) per kill
        self.starved: list[float] = []    # line seconds behind at the kill, per loss measured
        self.starved_over = 0             # losses whose lag is over LAG_CEILING_S
        self.delayed_threads: dict[str, int] = {}  # most-delayed thread -> losses (lag > 0.1)
        self.net_losses: list[float] = []         # durability share of each loss
        want = unit_nice() if args.nice is None else args.nice
        self.nice = want if can_renice(want) else None
        self.box.nice = self.nice
        if self.nice is None:
            print(f"note: cannot start the daemon at Nice={want} (not root); it runs at "
                  "ours, so starvation at a kill is more likely", flush=True)
        self.recovered_checked = 0
        self.stats = {"kills": 0, "random_kills": 0, "startup_kills": 0, "crash_points": 0,
                      "crash_points_fired": 0, "restarts_checked": 0, "boots": 0,
                      "max_backlog": 0, "overruns": 0, "deletion_cuts": 0,
                      "deletion_cuts_fired": 0, "deletions_finished": 0}
        self.deleting: list[str] = []          # calls whose cut deletion is not checked
        self.base = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
        self.slack = STATUS_JITTER_S * args.speed

    # -- one boot --------------------------------------------------------------------------
    def scenario(self, k: int) -> tuple[Path, list]:
        start = (self.base + timedelta(hours=k)).isoformat().replace("+00:00", "Z")
        raw, calls = common.day_scenario(self.rng, start, 2400.0, lines=4)
        p = self.root / "scenarios" / f"boot-{k:04d}.json"
        p.parent.mkdir(exist_ok=True)
        p.write_text(json.dumps(raw))
        return p, calls

    def wait_running(self, spawned: float, timeout=90.0) -> dict | None:
        """Wait for a fresh status.json (recovery done, capture running)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = common.read_status(self.box.data)
            if st and st.get("time", 0) > spawned and st.get("captured_s", 0) > 0:
                return st
            if self.box.proc.poll() is not None:
                return None
            time.sleep(0.02)
        self.violations.append(f"boot {self.box.boots}: not recording after {timeout} s")
        return None

    def boot(self, k: int, mode: str, point: str | None = None) -> None:
        sc, calls = self.scenario(k)
        env = {"LINETAP_CRASH_AT": point} if point else None
        spawned = time.time()
        proc = self.box.spawn(sc, self.args.speed, env=env)
        sampler = schedstat.Sampler(proc.pid, nice=self.nice).start()
        self.stats["boots"] += 1
        st = None
        if mode == "startup":
            time.sleep(self.rng.uniform(0.0, 1.5))
        else:
            st = self.wait_running(spawned)
            if st is not None:
                self.check_restart()
        if mode == "random":
            deadline = time.monotonic() + self.rng.uniform(0.3, 10.0)
            while time.monotonic() < deadline and proc.poll() is None:
                s2 = common.read_status(self.box.data)
                if s2 and s2.get("time", 0) > spawned:
                    st = s2
                time.sleep(0.05)
        elif mode == "point":
            while proc.poll() is None:
                s2 = common.read_status(self.box.data)
                if s2 and s2.get("time", 0) > spawned:
                    st = s2
                time.sleep(0.01)
        alive = proc.poll() is None
        sampler.stop()
        t_kill = self.box.kill()
        # For a crash point the daemon killed itself: its last sample is the kill's moment.
        t_end = t_kill if alive or not sampler.samples else sampler.samples[-1].t
        if mode == "point":
            fired = proc.returncode == -9
            self.stats["crash_points"] += 1
            self.stats["crash_points_fired"] += fired
            if not fired and proc.returncode != 0:
                self.violations.append(f"boot {self.box.boots} ({point}): exit "
                                       f"{proc.returncode}: {self.box.log_tail(600)}")
            if not fired:
                return
        else:
            if not alive:
                self.violations.append(f"boot {self.box.boots}: daemon died before the kill "
                                       f"(rc {proc.returncode}): {self.box.log_tail(800)}")
            self.stats["random_kills" if mode == "random" else "startup_kills"] += 1
        self.stats["kills"] += 1
        st_fresh = st if st and st.get("time", 0) > spawned else None
        if st_fresh:
            self.stats["overruns"] = max(self.stats["overruns"],
                                         st_fresh["overruns"]["consumer"])
        tk = None
        if st_fresh:
            tk = st_fresh["captured_s"] + max(0.0, t_kill - st_fresh["time"]) * self.args.speed
        if st_fresh:
            # How far the daemon was behind at its last status: the processor behind
            # capture, and jobs waiting for the writer. Loss beyond the bound with a
            # big lag is the box falling behind, not the journal.
            self.lags.append((round(st_fresh["captured_s"] - st_fresh.get("processed_s", 0), 2),
                              st_fresh["writer"]["queue"]))
        self.pending.append({"boot": self.box.boots, "k": k, "calls": calls, "tk": tk,
                             "active": self.open_calls(), "mode": mode, "point": point,
                             "lag": self.lags[-1] if st_fresh else None,
                             "sched": list(sampler.samples), "t_end": t_end,
                             "threads": sampler.names, "pid": proc.pid,
                             "status_age": None if not st_fresh
                             else round(t_kill - st_fresh["time"], 2)})

    def deletion_cut(self, point: str) -> None:
        """Between boots: delete a finished call in a separate process that dies with
        SIGKILL at ``point`` (the box is not running, as after any kill here)."""
        from recorder.storage.store import Store
        pending = {a["id"] for p in self.pending for a in p["active"]}
        s = Store(self.box.data)
        try:
            C = s.m.Call
            ids = [r.id for r in C.select(C.id).where(
                C.state.in_(["closed", "recovered"]) & (C.legal_hold == False))  # noqa: E712
                if r.id not in pending]
        finally:
            s.close()
        if not ids:
            return
        cid = self.rng.choice(ids)
        self.stats["deletion_cuts"] += 1
        p = subprocess.run([sys.executable, "-c", _DELETE_CUT, str(self.box.data), cid],
                           cwd=str(common.ROOT), capture_output=True, text=True, timeout=120,
                           env={**os.environ, "LINETAP_CRASH_AT": point})
        if p.returncode != -9:
            self.violations.append(f"deletion cut at {point}: exit {p.returncode}: "
                                   f"{p.stderr[-400:]}")
            return
        self.stats["deletion_cuts_fired"] += 1
        self.deleting.append(cid)

    def check_deletions(self, s, tag: str) -> None:
        """Every cut deletion is finished by the boot after it, audited exactly once,
        and no deletion marker survives a boot."""
        from recorder.evidence import audit
        acts = [e for e in audit.tail(self.box.data, 1 << 22)
                if e["action"] == "delete" and e["detail"].get("reason") == "synced"]
        for cid in self.deleting:
            row = s.call(cid)
            n = sum(1 for e in acts if e["detail"].get("call") == cid)
            if row is None or row.state != "deleted" or s.segments_of(cid) or n != 1:
                self.violations.append(
                    f"{tag}: deletion of {cid} cut short not finished: state "
                    f"{row.state if row else None}, {len(s.segments_of(cid))} segment "
                    f"row(s), {n} audit entr(y/ies)")
            else:
                self.stats["deletions_finished"] += 1
        self.deleting = []
        marks = [q for q in (self.box.data / "segments").rglob("*") if q.name.endswith(".del")]
        if marks:
            self.violations.append(f"{tag}: deletion markers survived: "
                                   f"{[str(q.relative_to(self.box.data)) for q in marks[:5]]}")

    def open_calls(self) -> list[dict]:
        from recorder.storage.store import Store
        s = Store(self.box.data)
        try:
            C = s.m.Call
            return [{"id": r.id, "line": r.line, "first": r.first_sample,
                     "offhook": r.offhook_sample} for r in C.select().where(C.state == "active")]
        finally:
            s.close()

    # -- checks ----------------------------------------------------------------------------
    def check_restart(self) -> None:
        from recorder.evidence.verify import verify_call
        from recorder.storage.store import Store, device_key_for
        self.stats["restarts_checked"] += 1
        data = self.box.data
        tag = f"after boot {self.box.boots - 1} (checked in boot {self.box.boots})"
        s = Store(data)
        try:
            ic = s.integrity_check()
            if ic != "ok":
                self.violations.append(f"{tag}: integrity_check {ic!r}")
            key = device_key_for(data)
            self.check_deletions(s, tag)
            rows = {r.id: r for r in s.calls()}
            for pend in self.pending:
                for a in pend["active"]:
                    r = rows.get(a["id"])
                    if r is None:
                        continue   # deleted by retention (not expected here)
                    if r.state == "active":
                        self.violations.append(f"{tag}: call {a['id']} still active")
                        continue
                    self.recovered_checked += 1
                    if r.state != "recovered" or not (r.meta or {}).get("recovered"):
                        self.violations.append(f"{tag}: call {a['id']} open at the kill is "
                                               f"{r.state}, meta.recovered="
                                               f"{(r.meta or {}).get('recovered')}")
                    v, h = verify_call(s, r, key)
                    if v.status != "verified":
                        self.violations.append(f"{tag}: recovered call {a['id']} "
                                               f"{v.status}: {v.detail}")
                    elif not h.get("recovered"):
                        self.violations.append(f"{tag}: manifest of {a['id']} not marked "
                                               "recovered")
                    self.verified.add(a["id"])
                self.measure_loss(pend, s, rows, tag)
            self.pending = []
            for r in rows.values():
                if r.id in self.verified or r.state == "active":
                    continue
                v, _h = verify_call(s, r, key)
                if v.status != "verified":
                    self.violations.append(f"{tag}: call {r.id} ({r.state}) {v.status}: "
                                           f"{v.detail}")
                self.verified.add(r.id)
        finally:
            s.close()
        stale = common.stale_temp_files(data, self.box.proc.pid)
        if stale:
            self.violations.append(f"{tag}: temp files survived: "
                                   f"{[str(p.relative_to(data)) for p in stale[:5]]}")
        plain = plaintext_files(data, self.scanned_clean)
        if plain:
            self.violations.append(f"{tag}: plaintext audio files: "
                                   f"{[str(p.relative_to(data)) for p in plain[:5]]}")
        st = common.read_status(data) or {}
        sync = st.get("sync") or {}
        self.stats["max_backlog"] = max(self.stats["max_backlog"], sync.get("backlog") or 0)

    def measure_loss(self, pend, s, rows, tag) -> None:
        """Loss per call open at the kill: min(hang-up, kill) - end of what was recorded."""
        tk = pend["tk"]
        behind = 0.0
        if pend.get("lag"):
            tag = (f"{tag} [{pend['mode']}; at the last status ({pend['status_age']} s "
                   f"before the kill) processor lag {pend['lag'][0]} s, writer queue "
                   f"{pend['lag'][1]}]")
            behind = behind_s(*pend["lag"])
        if tk is None:
            self.loss_unmeasured += sum(1 for _ in pend["active"])
            return
        for ln, off, on in pend["calls"]:
            if off + 0.2 >= tk or (on is not None and on <= tk - HOLD_S - 1.0):
                continue   # started after the kill, or over well before it
            cands = [a for a in pend["active"] if a["line"] == ln and a["offhook"] is not None
                     and abs(a["offhook"] / RATE - off) < 1.0]
            if not cands:
                if on is not None and on <= tk:
                    continue   # hung up before the kill and closed normally
                # In progress at the kill with no row: the kill came within the hold.
                loss = tk - off
                self.losses.append(max(0.0, loss))
                self.check_loss(loss, tag, f"line {ln} call at {off:.1f} s (no row)", behind,
                                pend)
                continue
            r = rows.get(cands[0]["id"])
            if r is None or r.end_sample is None:
                self.loss_unmeasured += 1
                continue
            expected_end = min(tk, on if on is not None else tk)
            loss = expected_end - r.end_sample / RATE
            self.losses.append(max(0.0, loss))
            self.check_loss(loss, tag, f"call {r.id}", behind, pend)

    def starved_lag(self, pend: dict, loss: float) -> tuple[float | None, str]:
        """Line seconds the box fell behind while the audio lost arrived: the run-queue
        wait of its most-delayed thread on the audio path (AUDIO_PATH and the unnamed
        ones) in the last ``loss / speed`` s before the kill,
        times the speed (None: too few samples, e.g. a loss under 0.1 s), and that
        thread's name (the daemon names its threads: recorder/threads.py)."""
        names = pend["threads"]
        unnamed = names.get(pend["pid"])       # the main thread's name: the process's
        path = {tid for tid, n in names.items() if n in AUDIO_PATH or n == unnamed}
        d = schedstat.most_delayed(pend["sched"], pend["t_end"],
                                   max(0.0, loss) / self.args.speed, only=path or None)
        if d is None:
            return None, ""
        who = pend["threads"].get(d.tid, "?") if d.tid is not None else "-"
        return round(d.seconds * self.args.speed, 2), who

    def check_loss(self, loss, tag, what, behind: float = 0.0, pend=None) -> None:
        """The bound holds while the box keeps up; a box measured behind at the kill (a
        loaded machine: the same seed can be either) may also lose what it had not
        captured, processed or written yet: the larger of ``behind`` (its backlog at
        its last status) and the starvation measured at the kill, and no more; and that
        lag must stay under LAG_CEILING_S."""
        starved, who = self.starved_lag(pend, loss) if pend else (None, "")
        if starved is not None:
            self.starved.append(starved)
            if starved > 0.1:
                self.delayed_threads[who] = self.delayed_threads.get(who, 0) + 1
            if starved > LAG_CEILING_S:
                self.starved_over += 1
                self.violations.append(
                    f"{tag}: {what}: the box was {starved:.2f} s behind real time at the "
                    f"kill (thread {who!r} waited {starved / self.args.speed:.2f} s for a CPU in "
                    f"the last {loss / self.args.speed:.2f} s), over the {LAG_CEILING_S} s "
                    "ceiling: the machine, not the journal, decided this loss")
        behind = schedstat.allowance_s(behind, starved)
        net, lag = schedstat.split_loss(loss, behind)
        self.net_losses.append(net)
        if loss > LOSS_BOUND_S + self.slack and behind > 0:
            self.over_bound_behind += 1
            self.behind_max = max(self.behind_max, behind)
            print(f"  {tag}: {what} lost {loss:.2f} s: {net:.2f} s durability + "
                  f"{lag:.2f} s the box was behind (most delayed thread: {who or '-'})",
                  flush=True)
        if loss > LOSS_BOUND_S + self.slack + behind:
            self.violations.append(f"{tag}: {what} lost {loss:.2f} s of audio (bound "
                                   f"{LOSS_BOUND_S} s + {self.slack:.2f} s estimate slack"
                                   f" + {behind:.2f} s the box was behind)")

    # -- the end ---------------------------------------------------------------------------
    def drain(self) -> dict:
        """A quiet boot recovers the last kill, drains the backlog, and stops."""
        quiet = self.root / "scenarios" / "quiet.json"
        k = self.stats["boots"] + 1
        start = (self.base + timedelta(hours=k)).isoformat().replace("+00:00", "Z")
        quiet.write_text(json.dumps({"rate": RATE, "start": start, "duration": 3600.0,
                                     "lines": 4, "events": []}))
        spawned = time.time()
        self.box.spawn(quiet, self.args.speed)
        if self.wait_running(spawned) is not None:
            self.check_restart()
        drained, drain_s = common.wait_drained(self.box)
        self.box.kill()
        if not drained:
            self.violations.append(f"backlog did not drain: {common.unacked(self.box.data)} "
                                   "item(s) unacked")
        cmp = common.check_upstream(self.rig, self.box.data, self.violations)
        objs = sum(1 for p in (self.root / "objects").rglob("*.seg") if p.is_file()) \
            if (self.root / "objects").exists() else None
        cmp["objects"] = objs
        cmp["drain_s"] = round(drain_s, 1)
        return cmp

    def final_cli_checks(self) -> dict:
        py = sys.executable
        out = {}
        for name, cmd in (("verify", ["verify", "--data-dir", str(self.box.data)]),
                          ("audit", ["audit", "--verify", "--data-dir", str(self.box.data)])):
            p = subprocess.run([py, "-m", "recorder.cli", *cmd], cwd=str(common.ROOT),
                               capture_output=True, text=True, timeout=600)
            out[name] = p.returncode
            if p.returncode != 0:
                bad = [ln for ln in p.stdout.splitlines() if "failed" in ln or "BAD ENTRY" in ln]
                self.violations.append(f"linetap {name} exit {p.returncode}: {bad[:5]}")
        return out

    def run(self) -> int:
        a = self.args
        n_random = a.kills if a.kills is not None else (10 if a.quick else 200)
        n_points = a.points if a.points is not None else (6 if a.quick else 45)
        n_deletes = a.deletes if a.deletes is not None else \
            (len(DELETE_POINTS) if a.quick else 3 * len(DELETE_POINTS))
        t0 = time.monotonic()
        self.rig.start()
        self.box.config = common.write_toml(
            self.root / "box.toml",
            self.rig.box_raw(retention__keep_synced_days=3650.0))
        try:
            k = 0
            for i in range(n_random):
                mode = "startup" if self.rng.random() < 0.12 else "random"
                self.boot(k, mode)
                k += 1
                if i % 20 == 19:
                    print(f"  {i + 1} random kills, {len(self.violations)} violation(s)",
                          flush=True)
            for i in range(n_points):
                point = POINTS[i % len(POINTS)]
                n = self.rng.choice([1, 1, 2, 3]) if i < 6 else self.rng.randint(1, 60)
                self.boot(k, "point", f"{point}:{n}")
                k += 1
            for i in range(n_deletes):
                self.deletion_cut(DELETE_POINTS[i % len(DELETE_POINTS)])
                self.boot(k, "random")
                k += 1
            cmp = self.drain()
            clis = self.final_cli_checks()
        finally:
            self.rig.stop()
        elapsed = time.monotonic() - t0
        st = self.stats
        losses = self.losses
        lmax = max(losses) if losses else None
        lmed = common.median(losses)
        common.table("Power-cut campaign", [
            ("boots", st["boots"], ""),
            ("SIGKILLs at random instants", st["random_kills"], ""),
            ("SIGKILLs during start-up/recovery", st["startup_kills"], ""),
            ("crash points run / fired", f"{st['crash_points']} / {st['crash_points_fired']}",
             ""),
            ("deletions cut / fired / finished at the next boot",
             f"{st['deletion_cuts']} / {st['deletion_cuts_fired']} / "
             f"{st['deletions_finished']}",
             "ok" if st["deletions_finished"] == st["deletion_cuts_fired"] else "VIOLATION"),
            ("restarts checked", st["restarts_checked"], ""),
            ("recovered calls checked", self.recovered_checked, ""),
            ("calls verified", len(self.verified), ""),
            ("audio lost per open call, max (s)", f"{lmax:.2f}" if lmax is not None else "-",
             "ok" if lmax is None or lmax <= LOSS_BOUND_S + self.slack else
             "over the bound (see the lag at the kill below)"),
            ("audio lost per open call, median (s)",
             f"{lmed:.2f}" if lmed is not None else "-", ""),
            ("loss samples / unmeasured", f"{len(losses)} / {self.loss_unmeasured}", ""),
            ("daemon niceness (the unit's Nice=)", "-" if self.nice is None else self.nice,
             ""),
            ("behind real time at the kill (run-queue wait while the lost audio arrived"
             " x speed), max (s)", max(self.starved, default="-"),
             "ok" if not self.starved_over else "VIOLATION"),
            ("losses with the box behind at the kill (> 0.1 s)",
             sum(1 for x in self.starved if x > 0.1), ""),
            ("most-delayed thread at those losses (count)",
             ", ".join(f"{k} {v}" for k, v in sorted(self.delayed_threads.items())) or "-",
             ""),
            ("loss net of the lag at the kill (durability), max (s)",
             f"{max(self.net_losses):.2f}" if self.net_losses else "-", ""),
            ("processor lag at the last status, max (s)",
             max((lag for lag, _ in self.lags), default="-"), ""),
            ("writer queue at the last status, max", max((q for _, q in self.lags),
                                                         default="-"), ""),
            ("max sync backlog seen", st["max_backlog"], ""),
            ("consumer overruns (max per boot)", st["overruns"], ""),
            ("segments box / upstream", f"{cmp['box_segments']} / {cmp['upstream_segments']}",
             ""),
            ("lost / duplicated upstream", f"{len(cmp['lost'])} / {cmp['duplicated']}",
             "ok" if not cmp["lost"] and not cmp["duplicated"] else "VIOLATION"),
            ("manifests missing upstream", len(cmp["manifests_lost"]),
             "ok" if not cmp["manifests_lost"] else "VIOLATION"),
            ("final drain (s)", cmp["drain_s"], ""),
            ("linetap verify / audit --verify exit", f"{clis['verify']} / {clis['audit']}", ""),
            ("violations", len(self.violations), "ok" if not self.violations else "FAIL"),
            ("elapsed (s)", round(elapsed, 1), ""),
        ], head=("measure", "value", "result"))
        summary = {"campaign": "powercut", "quick": a.quick, "seed": a.seed, "speed": a.speed,
                   "kills": st["kills"], "random_kills": st["random_kills"] + st["startup_kills"],
                   "crash_points": st["crash_points"],
                   "crash_points_fired": st["crash_points_fired"],
                   "deletion_cuts": st["deletion_cuts_fired"],
                   "deletions_finished": st["deletions_finished"],
                   "restarts_checked": st["restarts_checked"],
                   "recovered_calls": self.recovered_checked,
                   "calls_verified": len(self.verified),
                   "loss_max_s": round(lmax, 2) if lmax is not None else None,
                   "loss_median_s": round(lmed, 2) if lmed is not None else None,
                   "loss_bound_s": LOSS_BOUND_S, "loss_slack_s": round(self.slack, 2),
                   "lag_max_s": max((lag for lag, _ in self.lags), default=None),
                   "losses_over_bound_while_behind": self.over_bound_behind,
                   "daemon_nice": self.nice,
                   "starved_at_kill_max_s": max(self.starved, default=None),
                   "starved_at_kill_median_s": common.median(self.starved),
                   "losses_behind": sum(1 for x in self.starved if x > 0.1),
                   "lag_ceiling_s": LAG_CEILING_S,
                   "losses_over_lag_ceiling": self.starved_over,
                   "most_delayed_threads": self.delayed_threads,
                   "durability_loss_max_s": round(max(self.net_losses), 2)
                   if self.net_losses else None,
                   "behind_allowance_max_s": round(self.behind_max, 2),
                   "writer_queue_max": max((q for _, q in self.lags), default=None),
                   "journal_s": JOURNAL_S,
                   "segments": cmp["box_segments"], "upstream_lost": len(cmp["lost"]),
                   "upstream_duplicated": cmp["duplicated"],
                   "manifests_missing_upstream": len(cmp["manifests_lost"]),
                   "elapsed_s": round(elapsed, 1)}
        return common.finish(summary, self.violations, self.root, a.keep)


def main() -> int:
    def extra(ap):
        ap.add_argument("--speed", type=float, default=4.0, help="pacing, x real time")
        ap.add_argument("--kills", type=int, default=None, help="random kills")
        ap.add_argument("--points", type=int, default=None, help="crash-point runs")
        ap.add_argument("--deletes", type=int, default=None,
                        help="deletions cut at a crash point between boots")
        ap.add_argument("--nice", type=int, default=None,
                        help="the daemon's niceness (default: the recorder unit's Nice=; "
                        "0 shows a box without it)")
    args = common.parse_args(__doc__, extra)
    return Campaign(args).run()


if __name__ == "__main__":
    sys.exit(main())
