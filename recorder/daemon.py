"""The recorder daemon: the same code on a Pi (``linetap run``) and on the simulated line.

Threads, started in dependency order and stopped in reverse:

========== =====================================================================
writer     encode, encrypt, write, commit (:mod:`recorder.writer`)
playback   keeps playback ``lead`` frames ahead of capture (announcements, beeps)
capture    ALSA -> ring buffer; never waits on anything but ALSA
calls      edges + audio -> calls, pauses, segments (:mod:`recorder.calls`)
house      status file, LEDs, alarms, watchdog ping while capture is alive
========== =====================================================================

Hardware is injected (:class:`Hardware`): the Pi build opens real ALSA devices and a
gpiozero factory; ``linetap simulate`` passes the ALSA ``file`` PCMs, a MockFactory and
the simulator's clock and pacer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hw.audio import AlsaCapture, AlsaPlayback
from hw.clock import CaptureClock, SampleClock
from hw.gpio import Board, make_factory
from hw.pins import PinMap
from recorder import __version__, audit, keys
from recorder import alarms as alarm_rules
from recorder.alarms import Alarms
from recorder.announce import Announcer, load_clip, tone_clip
from recorder.calls import DtmfStream, LineSettings, Processor
from recorder.config import Config, device_id
from recorder.errors import KeyFileError, LinetapError
from recorder.fsutil import atomic_write, remove_temp_files
from recorder.recovery import recover
from recorder.ring import RingBuffer
from recorder.runpaths import status_path
from recorder.service import LoopThread, ServiceThread, join_all
from recorder.store import Store
from recorder.timebase import Timebase, clock_synchronised
from recorder.writer import Restamp, Writer, disk_full

log = logging.getLogger(__name__)

STATUS_FILE = "run/status.json"     # without systemd; see recorder.runpaths
WATCHDOG_AUDIO_S = 5.0     # no audio for this long and systemd's watchdog is not fed
RECOVERY_TRIES = 12        # about 40 s of making room before start-up gives up


def watchdog_ok(capture_thread_alive: bool, capture_age_s: float) -> bool:
    """Feed systemd's watchdog only while audio is really arriving: a capture thread
    stuck inside an ALSA read is alive but useless, and systemd should restart us."""
    return capture_thread_alive and capture_age_s < WATCHDOG_AUDIO_S


@dataclass
class Hardware:
    """Where audio and pins come from."""

    capture_device: str
    playback_device: str
    factory: object = None
    clock: SampleClock | None = None
    pacer: object = None
    timebase: Timebase | None = None


class Daemon:
    def __init__(self, cfg: Config, hw: Hardware, *, notifier=None):
        self.cfg, self.hw = cfg, hw
        self.data_dir = Path(cfg.device.data_dir)
        self.rate, self.lines = cfg.audio.rate, cfg.audio.lines
        self.device = device_id(cfg)
        self.stop = threading.Event()
        self.done = threading.Event()
        self.alarms = Alarms()
        self.notifier = notifier
        self.threads: list = []
        self.store: Store | None = None
        self.capture = self.playback = self.board = None
        self.capture_done = threading.Event()
        self.played = 0
        self.last_capture = time.monotonic()
        self._link_down_since: float | None = None
        self._led_slot = 0

    # -- start ---------------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg = self.cfg
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "run").mkdir(exist_ok=True)
        removed = remove_temp_files(self.data_dir)
        if removed:
            log.warning("removed %d temp file(s) left by a power cut", len(removed))
        self.store = Store(self.data_dir)
        # The identity is "made" once its fingerprint is in the store. A power cut
        # while the key was first being written leaves no fingerprint, so it is made
        # again; after that, a missing, corrupt or different key is an alarm.
        known = self.store.get_meta("identity_fingerprint")
        try:
            self.identity = keys.ensure_identity(self.data_dir, first_start=known is None)
            fp = keys.fingerprint(keys.raw_public(self.identity.public_key()))
            if known is not None and fp != known:
                raise KeyFileError(f"device identity key is {fp}, but this store was "
                                   f"recorded by {known}")
        except KeyFileError as exc:
            self.alarms.set("identity_key", True, detail=str(exc))
            # The daemon will not run, so leave the alarm where `linetap status` and
            # the provisioning agent look for it.
            atomic_write(status_path(self.data_dir), json.dumps(
                {"running": False, "device": self.device, "version": __version__,
                 "alarms": self.alarms.snapshot()}).encode(), mode=0o644, sync=False)
            raise LinetapError(f"refusing to record: {exc}. Restore the key from backup, "
                               "or re-provision the box (factory reset)") from exc
        if known is None:
            self.store.set_meta("identity_fingerprint", fp)
            audit.record(self.data_dir, "identity_created", device=self.device,
                         fingerprint=fp)
        self.public_key = keys.load_practice_public(cfg.recording.public_key)
        self.timebase = self.hw.timebase or Timebase.from_system(self.rate)
        self.resync_queued = False      # a Restamp is on its way to the writer
        self.sim_pacer_cpu_s = 0.0      # simulation only: CPU spent pacing the line
        self.writer = Writer(self.store, device=self.device, rate=self.rate,
                             codec_name=cfg.recording.codec, aead=cfg.recording.aead,
                             public_key=self.public_key, identity=self.identity,
                             timebase=self.timebase,
                             retention_s=cfg.retention.days * 86400)
        self.writer.on_disk_full = lambda: self.alarms.set(
            "low_storage", True, detail="a write failed: disk full")
        self.writer.make_room = self._make_room
        self.writer.on_dropped = lambda job: audit.record(
            self.data_dir, "segment_dropped", call=job.call_id, seq=job.seq,
            reason="disk full")
        n = self._recover_making_room()
        if n:
            log.warning("recovered %d call(s) left open by a crash or power cut", n)
            self._audit_quietly("recovery", calls=n)

    def _recover_making_room(self) -> int:
        """Recovery writes (rows, manifests) before anything else runs. On a disk that
        is still full, evict the way retention does (synced first) and try again, so a
        full disk never becomes a crash loop under systemd."""
        delay = 0.2
        for attempt in range(1, RECOVERY_TRIES + 1):
            try:
                return recover(self.store, self.writer, self.device)
            except Exception as exc:
                if not disk_full(exc) or attempt == RECOVERY_TRIES:
                    raise
                self.alarms.set("low_storage", True, detail="disk full at start-up")
                log.error("disk full during recovery (try %d); making room", attempt)
                if getattr(self, "retention", None) is None:
                    from recorder.services import make_retention
                    self.retention = make_retention(self)
                try:
                    self.retention.tick()
                except Exception:
                    log.exception("making room failed")
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        return 0

    def _line_settings(self) -> list[LineSettings]:
        cfg, out = self.cfg, []
        ac = cfg.announcement
        beep = tone_clip(ac.beep_hz, ac.beep_ms / 1000, self.rate, ac.level_db, "beep") \
            if ac.beep_interval_s else None
        clips = {}
        for ln in range(self.lines):
            lc = cfg.line_config(ln)
            path = lc.announcement or ac.file
            clip = None
            if path:
                clip = clips.get(path) or clips.setdefault(
                    path, load_clip(path, self.rate, 0.0))
            out.append(LineSettings(record=lc.record, announcement=clip,
                                    announce_outbound=ac.outbound,
                                    delay=round(ac.delay_s * self.rate), beep=beep,
                                    beep_interval=round(ac.beep_interval_s * self.rate)))
        return out

    def start(self) -> None:
        """Open everything and start the threads (dependency order)."""
        cfg = self.cfg
        self._prepare()
        settings = self._line_settings()
        self.ring = RingBuffer(int(cfg.audio.ring_s * self.rate), self.lines)
        self.announcer = Announcer(self.lines)
        period = cfg.audio.period_frames
        self.lead = max(cfg.audio.playback_lead_frames, 6 * period)
        clock = self.hw.clock or CaptureClock(self.rate)
        self.clock = clock
        factory = self.hw.factory or make_factory(cfg.pins.factory)
        self.processor = Processor(cfg=cfg, ring=self.ring, put=self.writer.put,
                                   announcer=self.announcer, board=None,
                                   timebase=self.timebase, lines=self.lines, rate=self.rate,
                                   settings=settings, dsp_factory=DtmfStream,
                                   audit=self._audit_quietly)
        self.board = Board(PinMap.from_config(cfg.pins, self.lines), factory, clock,
                           self.processor.edge)
        self.processor.board = self.board
        for e in self.board.initial_edges():
            self.processor.edge(e)
        # The writer ends on the calls thread's end marker, never on the stop event, so
        # every open call is closed and signed before the daemon exits.
        t_writer = LoopThread("writer", lambda: self.writer.run(threading.Event()), self.stop)
        t_writer.start()
        self.threads.append(t_writer)
        self.playback = AlsaPlayback(self.hw.playback_device, self.lines, self.rate, period)
        t_play = LoopThread("playback", self._playback_loop, self.stop)
        t_play.start()
        self.threads.append(t_play)
        self.capture = AlsaCapture(self.hw.capture_device, self.lines, self.rate, period,
                                   pacer=self._sim_pacer() if self.hw.pacer else None)
        self.t_capture = LoopThread("capture", self._capture_loop, self.stop)
        self.t_capture.start()
        self.threads.append(self.t_capture)
        self.t_calls = LoopThread("calls", self._calls_loop, self.stop)
        self.t_calls.start()
        self.threads.append(self.t_calls)
        from recorder.control import ControlServer
        control = ControlServer(self)
        control.start()
        self.threads.append(control)
        self.house = ServiceThread("house", 1.0, self._house_tick, self.stop)
        self.house.start()
        self.threads.append(self.house)
        led = ServiceThread("led", alarm_rules.SLOT_S, self._led_tick, self.stop)
        led.start()
        self.threads.append(led)
        self._extra_services()
        if self.notifier:
            self.notifier.ready()
        log.info("linetap %s recording %d line(s) at %d Hz as %s", __version__, self.lines,
                 self.rate, self.device)

    def _extra_services(self) -> None:
        """Hook for sync and retention services (started after recording is live)."""
        try:
            from recorder.services import start_services
        except ImportError:
            return
        self.threads += start_services(self)

    def _sim_pacer(self):
        """Simulation only: the line runs as fast as the daemon keeps up, no faster.

        A real codec delivers audio in real time, and the call processor runs a couple
        of periods behind it. A simulated line has no clock of its own, so capture may
        lead the processor by only a few periods, as it would in real time. Decisions
        that set playback (announcement, beeps) are then taken as promptly as on a Pi,
        and the recorders, which trail the processor within the ring, are never lapped.
        """
        limit = 4 * self.cfg.audio.period_frames
        ring, proc = self.ring, self.processor

        def pacer(wanted: int) -> bool:
            t0 = time.thread_time()
            try:
                with ring.cond:
                    ring.cond.wait_for(lambda: wanted - proc.pos <= limit
                                       or self.stop.is_set())
                return self.hw.pacer(wanted)
            finally:
                # The simulator's work done on the capture thread, which a Pi's capture
                # (blocked in the ALSA read) never does: benches leave it out.
                self.sim_pacer_cpu_s += time.thread_time() - t0
        return pacer

    # -- loops ---------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        cap, ring = self.capture, self.ring
        mark = getattr(self.clock, "mark", None)
        while not self.stop.is_set():
            block = cap.read()
            if block is None:
                break
            ring.write(block)
            self.last_capture = time.monotonic()
            if mark is not None:
                mark(cap.frames)
        self.capture_done.set()
        with ring.cond:
            ring.cond.notify_all()

    def _playback_loop(self) -> None:
        ring, pb, period = self.ring, self.playback, self.playback.period
        while not self.stop.is_set():
            with ring.cond:
                ring.cond.wait_for(lambda: ring.written + self.lead > self.played
                                   or self.capture_done.is_set() or self.stop.is_set(),
                                   timeout=0.5)
            if self.capture_done.is_set():
                break
            want = ring.written + self.lead - self.played
            while want > 0 and not self.stop.is_set():
                n = min(period, want)
                pb.write(self.announcer.render(self.played, n))
                self.played += n
                want -= n
        pb.close()

    def _calls_loop(self) -> None:
        ring, proc = self.ring, self.processor
        real = self.hw.pacer is None
        # On real hardware an edge reaches us a little after the audio it belongs with;
        # processing two periods behind capture keeps them in order.
        latency = 2 * self.cfg.audio.period_frames if real else 0
        while True:
            with ring.cond:
                ring.cond.wait_for(lambda: ring.written - latency > proc.pos
                                   or self.capture_done.is_set() or self.stop.is_set(),
                                   timeout=0.5)
            done = self.capture_done.is_set() or self.stop.is_set()
            upto = ring.written if done else ring.written - latency
            proc.process(upto)
            if not real:
                with ring.cond:
                    ring.cond.notify_all()     # the simulated line may move on
            if done and proc.pos >= ring.written:
                break
        proc.finish()
        self.writer.put(None)

    # -- housekeeping -----------------------------------------------------------------------
    def status(self) -> dict:
        p = self.processor
        lines = []
        for ln in range(self.lines):
            st = p.states[ln]
            call = p.calls[ln]
            lines.append({"line": ln, "state": st.phase, "hook": "off" if st.off else "on",
                          "ringing": st.phase == "ringing",
                          "call": call.id if call else None,
                          "paused": any(x[0] == ln for x in p.button.paused),
                          "level_dbfs": round(float(p.levels[ln]), 1),
                          "clipped_blocks": p.clipped[ln]})
        overruns = sum(r.overruns for r in p.recorders)
        return {"version": __version__, "device": self.device, "time": time.time(),
                "captured_s": round(self.ring.written / self.rate, 3),
                "processed_s": round(p.pos / self.rate, 3),
                "lines": lines, "alarms": self.alarms.snapshot(),
                "overruns": {"consumer": overruns, "alsa_xruns": self.capture.xruns,
                             "late_dtmf_masks": sum(r.late_masks for r in p.recorders),
                             "late_edges": p.counts["late_edges"]},
                "counts": dict(p.counts),
                "writer": {"segments": self.writer.segments_written,
                           "queue": self.writer.q.qsize(),
                           "journal_records": self.writer.journal.records,
                           "journal_bytes": self.writer.journal.bytes,
                           "journal_syncs": self.writer.journal.syncs,
                           "journal_skipped": self.writer.journal_skipped},
                "sync": getattr(self, "sync_status", lambda: None)()}

    def _alarm_inputs(self, st: dict) -> alarm_rules.Inputs:
        p, now = self.processor, time.monotonic()
        line_now = self.ring.written
        sync = st.get("sync") or {}
        link = sync.get("link")
        if link is not None and link != alarm_rules.LINK_ONLINE:
            self._link_down_since = self._link_down_since or now
        else:
            self._link_down_since = None
        return alarm_rules.Inputs(
            overruns=st["overruns"]["consumer"] + st["overruns"]["alsa_xruns"],
            capture_age_s=0.0 if self.capture_done.is_set() else now - self.last_capture,
            clock_synchronised=self.timebase.synchronised,
            sync_on=link is not None,
            link_down_s=None if self._link_down_since is None else now - self._link_down_since,
            oldest_unsynced_age_s=sync.get("oldest_age_s"),
            silent_s=tuple(0.0 if s is None else (line_now - s) / self.rate
                           for s in p.silent_since),
            clip_age_s=tuple(None if s is None else (line_now - s) / self.rate
                             for s in p.last_clip),
            stuck_lines=tuple(sorted(p.stuck)))

    def _audit_quietly(self, action: str, **detail) -> None:
        """Audit from the call processor: a failed audit write (a full disk) is logged
        and alarmed, never allowed to stop recording."""
        try:
            audit.record(self.data_dir, action, **detail)
        except OSError as exc:
            self.alarms.set("audit_write_failed", True, action=action, error=exc.strerror)
            log.error("audit entry %s could not be written: %s", action, exc.strerror)

    def _make_room(self) -> None:
        """Run retention now (it evicts synced recordings first when space is low)."""
        retention = getattr(self, "retention", None)
        if retention is not None:
            retention.tick()

    def _check_clock(self) -> None:
        """Re-anchor UTC labels once NTP synchronises (never in simulation)."""
        if self.timebase.synchronised or self.resync_queued or self.hw.timebase is not None:
            return
        if clock_synchronised():
            self.clock_synced(time.time())

    def clock_synced(self, wall_now: float) -> float:
        """Re-anchor the timebase to ``wall_now`` and re-stamp this boot's calls (both
        done by the writer, in order with the jobs already queued)."""
        frames = self.ring.written
        step = self.timebase.step_to(frames, wall_now)
        self.resync_queued = True
        self.writer.put(Restamp(frames, wall_now))
        log.warning("system clock synchronised; call times re-anchored by %+.3f s", step)
        self._audit_quietly("clock_synchronised", step_s=round(step, 3))
        return step

    def _house_tick(self) -> None:
        self._check_clock()
        st = self.status()
        for name, detail in alarm_rules.evaluate(self._alarm_inputs(st)).items():
            self.alarms.set(name, detail is not None, **(detail or {}))
        st["alarms"] = self.alarms.snapshot()
        atomic_write(status_path(self.data_dir), json.dumps(st, default=str).encode(),
                     mode=0o644, sync=False)
        if self.notifier and watchdog_ok(self.capture_alive(),
                                         time.monotonic() - self.last_capture):
            self.notifier.watchdog()

    def _led_tick(self) -> None:
        """Status LED: a heartbeat, or the blink code of the most urgent alarm."""
        self._led_slot += 1
        code = alarm_rules.blink_code(self.alarms.snapshot())
        self.board.set_status_led(alarm_rules.led_on(code, self._led_slot))

    def capture_alive(self) -> bool:
        t = getattr(self, "t_capture", None)
        return t is not None and t.is_alive()

    # -- stop ---------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the calls thread has finished (end of a simulated line)."""
        t = getattr(self, "t_calls", None)
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def shutdown(self) -> list[str]:
        """Stop in reverse order; every open call is closed and its manifest signed."""
        if self.notifier:
            self.notifier.stopping()
        self.stop.set()
        stuck = []
        if self.threads:
            # calls finishes its open calls and queues the end marker for the writer.
            stuck += join_all([t for t in self.threads if t.name == "calls"], 30)
            stuck += join_all([t for t in self.threads if t.name == "writer"], 60)
            stuck += join_all([t for t in reversed(self.threads)
                               if t.name not in ("calls", "writer")], 10)
        for closer in (self.capture, self.board):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    log.exception("closing %r", closer)
        if self.store is not None:
            try:
                self.store.checkpoint()
            except Exception as exc:
                # A full disk can refuse the checkpoint; the WAL is still valid and is
                # checkpointed on the next start, so this must not fail the shutdown.
                log.warning("WAL checkpoint at shutdown failed: %s", exc)
            finally:
                self.store.close()
        self.thread_cpu = {t.name: round(getattr(t, "cpu_s", 0.0), 4) for t in self.threads}
        errors = [t.error for t in self.threads if getattr(t, "error", None)]
        self.done.set()
        if errors:
            raise LinetapError(f"daemon thread failed: {errors[0]}") from errors[0]
        return stuck

