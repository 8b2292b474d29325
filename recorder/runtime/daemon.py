"""The recorder daemon: the same code on a Pi (``linetap run``) and on the simulated line.

Threads, started in dependency order and stopped in reverse:

========== =====================================================================
writer     encode, encrypt, write, commit (:mod:`recorder.storage.writer`)
playback   keeps playback ``lead`` frames ahead of capture (:mod:`recorder.capture.streams`)
capture    sound card -> ring buffer; waits on nothing but the hardware's stream
calls      edges + audio -> calls, pauses, segments (:mod:`recorder.calls.processor`)
control    the local control socket (:mod:`recorder.runtime.control_socket`)
house      status file, alarms, watchdog ping while capture is alive
led        status LED heartbeat or blink code
services   retention and the uploader (:mod:`recorder.runtime.assembly`)
========== =====================================================================

The daemon is assembled from parts passed in: the hardware
(:class:`~recorder.runtime.hardware.Hardware`: the Pi's real ALSA devices and pin
factory, or the simulated line's :class:`~recorder.runtime.simulate.SimHardware`) and a
builder of the services (:func:`recorder.runtime.assembly.build_services`: retention
and the uploader). It has no branch on whether it is simulated.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hw.gpio import Board, Edge
from hw.pins import PinMap
from recorder import __version__
from recorder.calls.announce import Announcer, load_clip, tone_clip
from recorder.calls.jobs import SegmentShed
from recorder.calls.processor import DtmfStream, LineSettings, Processor
from recorder.capture.ring import RingBuffer
from recorder.capture.streams import CaptureLoop, PlaybackLoop
from recorder.config import Config, device_id
from recorder.errors import KeyFileError, LinetapError
from recorder.evidence import audit, keys, personal, trust
from recorder.fsutil import atomic_write, remove_temp_files
from recorder.runpaths import status_path
from recorder.runtime import alarms as alarm_rules
from recorder.runtime import ledmode
from recorder.runtime.alarms import Alarms
from recorder.runtime.button_edges import ButtonEdges
from recorder.runtime.control_socket import ControlServer
from recorder.runtime.hardware import Hardware, Reader
from recorder.runtime.service_api import ServiceContext, ServicesLike
from recorder.storage.recovery import recover
from recorder.storage.reserve import FILE as RESERVE_FILE
from recorder.storage.reserve import Reserve
from recorder.storage.retention.deletion import resume_deletions
from recorder.storage.store import Store
from recorder.storage.writer import Restamp, Writer, disk_full
from recorder.threads import LoopThread, ServiceThread, join_all

log = logging.getLogger(__name__)

STATUS_FILE = "run/status.json"     # without systemd; see recorder.runpaths
PROCESS_LAG_PERIODS = 2    # the call processor trails capture by this many periods
WATCHDOG_AUDIO_S = 5.0     # no audio for this long and systemd's watchdog is not fed
RECOVERY_TRIES = 12        # about 40 s of making room before start-up gives up


def watchdog_ok(capture_thread_alive: bool, capture_age_s: float) -> bool:
    """Feed systemd's watchdog only while audio is really arriving: a capture thread
    stuck inside an ALSA read is alive but useless, and systemd should restart us."""
    return capture_thread_alive and capture_age_s < WATCHDOG_AUDIO_S


class Daemon:
    """One box's recorder. ``services`` builds retention and the uploader once the store
    is open (:func:`recorder.runtime.assembly.build_services`); None runs without them
    (tests of the recording path alone). ``notifier`` talks to systemd."""

    # Shutdown waits this long (s) for the writer to store what is queued; a writer
    # still retrying on a full disk is then stopped, never left running (issue 22).
    WRITER_GRACE_S = 60.0

    def __init__(self, cfg: Config, hw: Hardware, *,
                 services: Callable[[ServiceContext], ServicesLike] | None = None,
                 notifier=None):
        self.cfg, self.hw = cfg, hw
        self._build_services = services
        self.services: ServicesLike | None = None
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
        self.disk_full_events = 0       # writes refused by a full disk (ENOSPC/SQLITE_FULL)
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
        self.free_bytes = self.hw.free_bytes(self.data_dir)
        self.reserve = Reserve(self.data_dir / RESERVE_FILE, self.hw.reserve_bytes(
            int(cfg.retention.reserve_mb * 2**20)))
        self._release_reserve_if_low()
        self.public_key = keys.load_practice_public(cfg.recording.public_key)
        # Only a store made before numbers were sealed needs it (its migration).
        self.store = Store(self.data_dir, sealer=functools.partial(
            personal.seal, public_key=self.public_key, aead=cfg.recording.aead))
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
            trust.pin(self.store, self.identity.public_key())
            audit.record(self.data_dir, "identity_created", device=self.device,
                         fingerprint=fp)
        elif self.store.get_meta(trust.PUB_KEY) is None:
            # a store pinned before the public key was kept: the key matches the
            # pinned fingerprint (checked above), so pin it now
            trust.pin(self.store, self.identity.public_key())
        self.timebase = self.hw.timebase(self.rate)
        self.resync_queued = False      # a Restamp is on its way to the writer
        self.writer = Writer(self.store, device=self.device, rate=self.rate,
                             codec_name=cfg.recording.codec, aead=cfg.recording.aead,
                             public_key=self.public_key, identity=self.identity,
                             timebase=self.timebase,
                             retention_s=cfg.retention.days * 86400)
        self.writer.on_disk_full = self._on_disk_full
        self.writer.make_room = self._make_room
        self.writer.on_dropped = lambda job: self._audit_quietly(
            "segment_dropped", call=job.call_id, seq=job.seq,
            reason="writer queue full" if isinstance(job, SegmentShed) else "disk full")
        if self._build_services is not None:
            self.services = self._build_services(ServiceContext(
                cfg=cfg, store=self.store, data_dir=self.data_dir, device=self.device,
                alarms=self.alarms, stop=self.stop, status=self.status, now=self.hw.now,
                free_bytes=self.free_bytes, reserve=self.reserve))
        n = self._recover_making_room()
        if n:
            log.warning("recovered %d call(s) left open by a crash or power cut", n)
            self._audit_quietly("recovery", calls=n)

    def _release_reserve_if_low(self) -> None:
        """Starting with less than ``min_free_mb`` free (a box that stopped on a full
        disk): the reserve goes first, so the database can open and recovery commit."""
        if self.reserve.size == 0:
            return
        try:
            low = self.free_bytes() < self.cfg.retention.min_free_mb * 2**20
        except OSError:
            low = True
        if low and self.reserve.release("start-up below retention.min_free_mb"):
            self.alarms.set("low_storage", True, detail="started on a full disk: reserve "
                            "released")

    def _on_disk_full(self) -> None:
        """A write failed with ENOSPC / SQLITE_FULL: record into the reserve while
        retention makes room."""
        self.disk_full_events += 1
        self.alarms.set("low_storage", True, detail="a write failed: disk full")
        self.reserve.release("a write failed")

    def _recover_making_room(self) -> int:
        """Recovery writes (rows, manifests) before anything else runs. On a disk that
        is still full, evict the way retention does (synced first) and try again, so a
        full disk never becomes a crash loop under systemd."""
        delay = 0.2
        for attempt in range(1, RECOVERY_TRIES + 1):
            try:
                # Deletions cut short first: their files may be gone while their rows
                # remain, and they free space the rest of recovery may need.
                resume_deletions(self.store, self.store.root)
                return recover(self.store, self.writer, self.device)
            except Exception as exc:
                if not disk_full(exc) or attempt == RECOVERY_TRIES:
                    raise
                self.alarms.set("low_storage", True, detail="disk full at start-up")
                log.error("disk full during recovery (try %d); making room", attempt)
                if self.reserve.release("recovery"):
                    continue            # the reserve's space first, then eviction
                try:
                    self._make_room()
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
        lead = max(cfg.audio.playback_lead_frames, 6 * period)
        clock = self.hw.sample_clock(self.rate)
        self.clock = clock
        factory = self.hw.pin_factory()
        self.processor = Processor(cfg=cfg, ring=self.ring, put=self.writer.put,
                                   announcer=self.announcer, board=None,
                                   timebase=self.timebase, lines=self.lines, rate=self.rate,
                                   settings=settings, dsp_factory=DtmfStream,
                                   audit=self._audit_quietly)
        # The pause button's edges are also kept, numbered, for the provisioning agent's
        # presence check: it asks for them over the control socket while we own the line.
        self.button_edges = ButtonEdges()
        self.board = Board(PinMap.from_config(cfg.pins, self.lines), factory, clock,
                           self._edge)
        self.processor.board = self.board
        for e in self.board.initial_edges():
            self._edge(e)
        # The writer ends on the calls thread's end marker, never on the stop event, so
        # every open call is closed and signed before the daemon exits.
        t_writer = LoopThread("writer", lambda: self.writer.run(threading.Event()), self.stop)
        t_writer.start()
        self.threads.append(t_writer)
        # Playback first (as on the card: its frames go out with the capture samples
        # of the same index), then capture; capture_done is shared by both loops.
        capture_done = threading.Event()
        self.playback = PlaybackLoop(self.hw.open_playback(self.lines, self.rate, period),
                                     self.ring, self.announcer, lead, capture_done,
                                     self.stop)
        t_play = LoopThread("playback", self.playback.run, self.stop)
        t_play.start()
        self.threads.append(t_play)
        self.capture = CaptureLoop(self.hw.open_capture(
            self.lines, self.rate, period,
            Reader(position=lambda: self.processor.pos, cond=self.ring.cond, stop=self.stop,
                   store_behind=self.writer.behind)), self.ring, clock, self.stop,
            done=capture_done)
        self.t_capture = LoopThread("capture", self.capture.run, self.stop)
        self.t_capture.start()
        self.threads.append(self.t_capture)
        self.t_calls = LoopThread("calls", self._calls_loop, self.stop)
        self.t_calls.start()
        self.threads.append(self.t_calls)
        control = ControlServer(self)
        control.start()
        self.threads.append(control)
        self.house = ServiceThread("house", 1.0, self._house_tick, self.stop)
        self.house.start()
        self.threads.append(self.house)
        led = ServiceThread("led", alarm_rules.SLOT_S, self._led_tick, self.stop)
        led.start()
        self.threads.append(led)
        if self.services is not None:
            self.threads += self.services.start()
        if self.notifier:
            self.notifier.ready()
        log.info("linetap %s recording %d line(s) at %d Hz as %s", __version__, self.lines,
                 self.rate, self.device)

    def _edge(self, e: Edge) -> None:
        """GPIO callback thread: every edge to the calls, the button's also to the log."""
        if e.kind == "button":
            self.button_edges.record(e.active)
        self.processor.edge(e)

    # -- loops ---------------------------------------------------------------------------
    def _calls_loop(self) -> None:
        ring, proc = self.ring, self.processor
        # An edge reaches us a little after the audio it belongs with (on a Pi, up to a
        # period late: hw/clock.py); processing two periods behind capture keeps them in
        # order. The simulated line stamps edges exactly, but runs the same latency so
        # that its timing is the Pi's (docs/architecture.md, "Time").
        latency = PROCESS_LAG_PERIODS * self.cfg.audio.period_frames
        while True:
            with ring.cond:
                ring.cond.wait_for(lambda: ring.written - latency > proc.pos
                                   or self.capture.done.is_set() or self.stop.is_set(),
                                   timeout=0.5)
            done = self.capture.done.is_set() or self.stop.is_set()
            upto = ring.written if done else ring.written - latency
            proc.process(upto)
            with ring.cond:
                ring.cond.notify_all()     # a capture paced on its reader may move on
            if done and proc.pos >= ring.written:
                break
        proc.finish()
        self.writer.put(None)

    # -- housekeeping -----------------------------------------------------------------------
    def status(self) -> dict:
        p = self.processor
        lines = []
        for line in p.line:
            st, call, ln = line.state, line.call, line.index
            lines.append({"line": ln, "state": st.phase, "hook": "off" if st.off else "on",
                          "ringing": st.phase == "ringing",
                          "call": call.id if call else None,
                          "paused": any(x[0] == ln for x in p.button.paused),
                          "level_dbfs": round(float(line.level_dbfs), 1),
                          "clipped_blocks": line.clipped})
        overruns = sum(line.recorder.overruns for line in p.line)
        return {"version": __version__, "device": self.device, "time": time.time(),
                # what the systemd watchdog is fed on (the update's health gate reads it)
                "watchdog_fed": watchdog_ok(self.capture_alive(), self.capture.age_s()),
                "captured_s": round(self.ring.written / self.rate, 3),
                "processed_s": round(p.pos / self.rate, 3),
                "lines": lines, "alarms": self.alarms.snapshot(),
                # None while the button works; why not while its line is busy
                "pause_button_error": self.board.button_error,
                "overruns": {"consumer": overruns, "alsa_xruns": self.capture.xruns,
                             "late_dtmf_masks": sum(line.recorder.late_masks for line in p.line),
                             "late_edges": p.counts["late_edges"]},
                "counts": dict(p.counts),
                "writer": {"segments": self.writer.segments_written,
                           "queue": self.writer.q.qsize(),
                           "journal_records": self.writer.journal.records,
                           "journal_bytes": self.writer.journal.bytes,
                           "journal_syncs": self.writer.journal.syncs,
                           "journal_skipped": self.writer.journal_skipped,
                           # segments lost to a full disk: given up after retries, or
                           # shed because the writer's queue was over its audio budget
                           "dropped_segments": self.writer.dropped_segments,
                           "shed_segments": self.writer.shed_segments},
                "sync": self.services.sync_status() if self.services else None}

    def _alarm_inputs(self, st: dict) -> alarm_rules.Inputs:
        p, now = self.processor, time.monotonic()
        line_now = self.ring.written
        sync = st.get("sync") or {}
        link = sync.get("link")
        if link is not None and not sync.get("online"):
            self._link_down_since = self._link_down_since or now
        else:
            self._link_down_since = None
        return alarm_rules.Inputs(
            overruns=st["overruns"]["consumer"] + st["overruns"]["alsa_xruns"],
            capture_age_s=self.capture.age_s(),
            clock_synchronised=self.timebase.synchronised,
            sync_on=link is not None,
            link_down_s=None if self._link_down_since is None else now - self._link_down_since,
            oldest_unsynced_age_s=sync.get("oldest_age_s"),
            unanswered_s=sync.get("unanswered_s"),
            silent_s=tuple(0.0 if ln.silent_since is None
                           else (line_now - ln.silent_since) / self.rate for ln in p.line),
            clip_age_s=tuple(None if ln.last_clip is None
                             else (line_now - ln.last_clip) / self.rate for ln in p.line),
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
        if self.services is not None:
            self.services.retention.tick()

    def _check_clock(self) -> None:
        """Re-anchor UTC labels once NTP synchronises (the simulated line's clock never
        does: its calls carry line time)."""
        if self.timebase.synchronised or self.resync_queued:
            return
        if self.hw.system_clock_synchronised():
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
        # Busy at start (the agent was reading it for presence): claim it once free.
        if self.board.button is None and self.board.claim_button():
            for e in self.board.initial_edges():
                if e.kind == "button":
                    self._edge(e)
        st = self.status()
        limits = alarm_rules.Thresholds(broker_down_s=self.cfg.sync.unreachable_alarm_s,
                                        ack_silence_s=self.cfg.sync.ack_alarm_s)
        for name, detail in alarm_rules.evaluate(self._alarm_inputs(st), limits).items():
            self.alarms.set(name, detail is not None, **(detail or {}))
        st["alarms"] = self.alarms.snapshot()
        atomic_write(status_path(self.data_dir), json.dumps(st, default=str).encode(),
                     mode=0o644, sync=False)
        if self.notifier and watchdog_ok(self.capture_alive(),
                                         self.capture.age_s()):
            self.notifier.watchdog()

    def _led_tick(self) -> None:
        """Status LED: a heartbeat, or the blink code of the most urgent alarm."""
        self._led_slot += 1
        mode = ledmode.current_mode(self.data_dir)
        if mode is not None:
            # The agent's press window: lit steadily while it waits, fast flashing open.
            self.board.set_status_led(mode == ledmode.WAITING
                                      or ledmode.led_on(self._led_slot))
            return
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
            writer = [t for t in self.threads if t.name == "writer"]
            if join_all(writer, self.WRITER_GRACE_S):
                # Still retrying on a full disk. Left running, it would write after the
                # store is closed, into whatever comes next; the calls it holds are
                # recovered at the next start instead.
                log.error("writer still storing after %.0f s (disk full?): stopping it",
                          self.WRITER_GRACE_S)
                self.writer.abandon()
                stuck += join_all(writer, 10)
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

