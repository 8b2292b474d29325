"""The call processor: edges and audio in sample order -> calls, pauses, segments.

Runs on its own thread, never on the capture thread. Each pass it takes the GPIO edges
and audio captured so far, runs the pure state machines of :mod:`recorder.calls.state`,
acts at once on what must happen now (the announcement, LEDs), and places everything
that shapes the recording on a per-line timeline.

The :class:`LineRecorder` reads that timeline behind the processor
(:meth:`Processor.cut_point`): far enough back that a hang-up (decided ``hangup_s``
after its edge) or a DTMF digit (reported when it ends; the recorder waits while the
detector has a candidate tone open) is known before the audio it affects is cut into
a segment or journalled. A long press, known ``end_hold_s`` after it began, trims the
already-paused tail.
"""

from __future__ import annotations

import bisect
import copy
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from hw.gpio import Edge
from recorder.calls import state as cs
from recorder.calls.announce import Announcer, Clip
from recorder.calls.dialling import Dialling, dial_step
from recorder.calls.dsp.dtmf import DtmfDetector
from recorder.calls.dsp.dtmf_mask import DtmfMasker
from recorder.calls.jobs import (
    CallInfo,
    CloseCall,
    JournalAppend,
    MissedCall,
    OpenCall,
    UpdateCall,
    WriteSegment,
)
from recorder.capture.ring import Overrun, RingBuffer
from recorder.privacy import mask_number

log = logging.getLogger(__name__)

CLI_LOOKBACK_S = 8.0        # caller ID arrives before the first ring
MASK_GUARD_S = 0.03         # silence kept either side of a masked digit
BEEP_HORIZON_S = 10.0       # warning beeps are queued this far ahead
DTMF_HOLD_MAX_S = 4.0       # longest wait for a DTMF candidate tone to be decided
DEAD_PEAK = 2               # peak (LSB) at or below which a line is dead: about -84 dBFS,
                            # under the hum and noise any live analog line carries


@dataclass(order=True)
class Mark:
    """A timeline entry: something that changes the recording at ``sample``."""

    sample: int
    order: int
    kind: str = field(compare=False)
    data: object = field(compare=False, default=None)


@dataclass
class LineSettings:
    record: bool
    announcement: Clip | None
    announce_outbound: bool
    delay: int                 # samples
    beep: Clip | None
    beep_interval: int         # samples; 0 = off


class LineRecorder:
    """Cuts one line's recording out of the ring buffer, ``hold`` samples behind."""

    def __init__(self, line: int, ring: RingBuffer, put, *, segment: int, preroll: int,
                 journal: int = 0):
        self.line, self.ring, self.put = line, ring, put
        self.segment, self.preroll = segment, preroll
        self.journal = journal       # samples per journal record; 0 = no journal
        self.journaled = 0           # samples of ``buf`` already journalled
        self.timeline: list[Mark] = []
        self._order = 0
        self.pos = 0
        self.call: CallInfo | None = None
        self.buf: list[np.ndarray] = []
        self.buf_len = 0
        self.buf_first = 0
        self.seq = 0
        self.paused_since: int | None = None
        self.ended = False
        self.last_end = 0            # pre-roll never reaches back past this
        self.masks: list[tuple[int, int]] = []
        self.overruns = 0
        self.late_masks = 0

    def mark(self, sample: int, kind: str, data=None) -> None:
        self._order += 1
        m = Mark(sample, self._order, kind, data)
        if kind == "mask" and sample < self.pos:
            self.late_masks += 1
            log.warning("line %d: DTMF reported after its audio was cut; masking the rest",
                        self.line)
        bisect.insort(self.timeline, m)

    def advance(self, target: int) -> None:
        """Consume audio and marks up to sample ``target``."""
        while self.pos < target:
            nxt = self.timeline[0].sample if self.timeline else None
            if nxt is not None and nxt <= self.pos:
                self._apply(self.timeline.pop(0))
                continue
            end = target if nxt is None else min(target, nxt)
            self._consume(self.pos, end)
            self.pos = end
        while self.timeline and self.timeline[0].sample <= self.pos and \
                self.timeline[0].sample <= target:
            self._apply(self.timeline.pop(0))

    def _consume(self, a: int, b: int) -> None:
        if self.call is None or self.ended or b <= a:
            return
        paused = self.paused_since is not None
        if paused:
            # Paused audio never reaches the encoder, and is wiped from the ring too.
            self.ring.zero(self.line, a, b)
            pcm = np.zeros(b - a, dtype=np.int16)
        else:
            try:
                pcm = self.ring.read(self.line, a, b)
            except Overrun:
                self.overruns += 1
                merge_span(self.call.gaps, a, b)
                log.error("line %d: audio %d..%d lost to an overrun", self.line, a, b)
                pcm = np.zeros(b - a, dtype=np.int16)
        # Frames the sound card dropped (an xrun) are silence in the ring at their true
        # place on the sample clock; the call lists them as a gap.
        for g0, g1 in self.ring.gaps_in(a, b) if self.ring.gaps else ():
            merge_span(self.call.gaps, g0, g1)
        self._apply_masks(pcm, a)
        self._append(pcm, a)

    def _apply_masks(self, pcm: np.ndarray, a: int) -> None:
        b = a + len(pcm)
        keep = []
        for m0, m1 in self.masks:
            lo, hi = max(a, m0), min(b, m1)
            if hi > lo:
                pcm[lo - a:hi - a] = 0
            if m1 > b:
                keep.append((m0, m1))
        self.masks = keep

    def _append(self, pcm: np.ndarray, a: int) -> None:
        if self.buf_len == 0:
            self.buf_first = a
        self.buf.append(pcm)
        self.buf_len += len(pcm)
        while self.buf_len >= self.segment:
            self._emit(self.segment)
        if self.journal and self.buf_len - self.journaled >= self.journal:
            self._journal_out()

    def _journal_out(self) -> None:
        """Hand the audio cut since the last record to the writer's journal. Records never
        span segments: segments are cut first, and what remains is not journalled yet."""
        need = self.buf_len - self.journaled
        parts, got = [], 0
        for chunk in reversed(self.buf):        # only the chunks not journalled yet
            parts.append(chunk)
            got += len(chunk)
            if got >= need:
                break
        tail = np.concatenate(parts[::-1])[got - need:]     # a copy: buf may change
        self.put(JournalAppend(self.call.id, self.buf_first + self.journaled, tail))
        self.journaled = self.buf_len

    def _emit(self, n: int) -> None:
        allpcm = np.concatenate(self.buf) if len(self.buf) > 1 else self.buf[0]
        seg, rest = allpcm[:n], allpcm[n:]
        self.put(WriteSegment(self.call.id, self.seq, self.buf_first, seg))
        self.seq += 1
        self.buf_first += n
        self.buf = [rest] if len(rest) else []
        self.buf_len = len(rest)
        self.journaled = 0

    def _trim_to(self, s: int) -> None:
        """Drop buffered audio from sample ``s`` on (zeros: a long press paused it at
        ``s``). Audio already cut into a segment stays; it is zeros, and the metadata's
        ``recording_ended`` says where recording really ended."""
        keep = max(0, s - self.buf_first)
        if keep >= self.buf_len:
            return
        allpcm = np.concatenate(self.buf) if self.buf else np.zeros(0, np.int16)
        if allpcm[keep:].any():
            # Cannot happen (the press paused it); if it ever does, keep the audio.
            log.error("line %d: audio after a long press was not paused; kept", self.line)
            return
        self.buf = [allpcm[:keep]] if keep else []
        self.buf_len = keep
        self.journaled = min(self.journaled, keep)

    def _persist(self) -> None:
        """Store the call's metadata now (pauses matter most), on the same timeline as
        its segments, so a power cut loses neither."""
        snap = copy.copy(self.call)
        snap.pauses = [list(p) for p in self.call.pauses]
        snap.masked_dtmf = [list(p) for p in self.call.masked_dtmf]
        snap.flashes = [list(p) for p in self.call.flashes]
        snap.gaps = [list(p) for p in self.call.gaps]
        self.put(UpdateCall(snap))

    def _apply(self, m: Mark) -> None:
        s = m.sample
        if m.kind == "start":
            info: CallInfo = m.data
            begin = max(s - self.preroll, self.last_end, self.ring.oldest())
            info.first_sample = begin
            self.call, self.seq, self.ended, self.paused_since = info, 0, False, None
            self.buf, self.buf_len, self.buf_first, self.journaled = [], 0, begin, 0
            self.put(OpenCall(info))
            # Pre-roll: audio from before the off-hook edge, already in the ring.
            self.pos = begin
        elif m.kind == "end" and self.call is not None:
            info = self.call
            if self.paused_since is not None:
                info.pauses.append([self.paused_since, s])
            info.open_pause = None
            info.end_sample = s
            if self.buf_len:
                self._emit(self.buf_len)
            self.put(CloseCall(info))
            self.call, self.paused_since, self.masks = None, None, []
            self.last_end = s
        elif self.call is None:
            return
        elif m.kind == "pause" and self.paused_since is None and not self.ended:
            self.paused_since = self.call.open_pause = s
            self._persist()
        elif m.kind == "resume" and self.paused_since is not None:
            if s > self.paused_since:
                self.call.pauses.append([self.paused_since, s])
            self.paused_since = self.call.open_pause = None
            self._persist()
        elif m.kind == "ended" and not self.ended:
            if self.pos > s:
                self._trim_to(s)
            if self.paused_since is not None and s > self.paused_since:
                self.call.pauses.append([self.paused_since, s])
            self.paused_since = self.call.open_pause = None
            self.ended = True
            self.call.recording_ended = s
            self._persist()
        elif m.kind == "mask":
            self.masks.append(m.data)


@dataclass
class Line:
    """One line as the processor sees it: its settings, recorder and detector, and the
    state that moves as edges and audio arrive. Sample indexes are absolute (the ring's).
    """

    index: int
    settings: LineSettings
    recorder: LineRecorder
    dsp: DtmfStream | None                  # None: no DTMF detection on this line
    state: cs.LineState = field(default_factory=cs.LineState)
    call: CallInfo | None = None            # the call in progress
    last_call: CallInfo | None = None       # the previous call (a rollover continues it)
    pending_cli: dict | None = None         # caller ID decoded before the call started
    ring_sample: int | None = None          # first ring of the pending inbound call
    dsp_pos: int = 0                        # audio scanned for levels and DTMF up to here
    next_beep: int | None = None            # when the next warning beep is due
    dial: Dialling = field(default_factory=lambda: Dialling(open=False))  # dialled number
    level_dbfs: float = -120.0              # peak level of the last block scanned
    clipped: int = 0                        # blocks that reached full scale
    silent_since: int | None = None         # near-silence began here (dead-line alarm)
    last_clip: int | None = None            # sample of the last clip


class Processor:
    """Turns edges and audio into calls for every line (see module docstring).

    ``line[n]`` is line n's :class:`Line`; ``button`` the pause button's state, which
    spans lines.
    """

    def __init__(self, *, cfg, ring: RingBuffer, put, announcer: Announcer, board,
                 timebase, lines: int, rate: int, settings: list[LineSettings],
                 dsp_factory=None, audit=None):
        self.ring, self.put, self.announcer, self.board = ring, put, announcer, board
        self.timebase, self.lines, self.rate = timebase, lines, rate
        self.timing = cs.Timing.from_config(cfg.timing, rate)
        self.ptiming = cs.PauseTiming.from_config(cfg.pause, rate)
        # The recorder must know of a hang-up and a DTMF digit before it cuts the audio
        # they affect. It stays the hang-up decision behind the processor, and while
        # the DTMF detector has a candidate tone open (or audio not yet analysed) also
        # before that tone's earliest possible start, so a digit is masked before any
        # of it is cut: typically 0.2 s more, at most ``hold`` in all (a tone longer
        # than that masks the rest of itself: LineRecorder.mark). A long press may be
        # known later, but its press already paused the audio, so the recorder trims
        # the paused tail back to the press (LineRecorder._apply, "ended").
        self.lag = self.timing.decision_lag
        self.hold = self.lag + round(DTMF_HOLD_MAX_S * rate)
        self.guard = round(MASK_GUARD_S * rate)
        self.button = cs.ButtonState()
        self.line = [Line(i, settings[i],
                          LineRecorder(i, ring, put, segment=round(cfg.recording.segment_s
                                                                   * rate),
                                       preroll=round(cfg.timing.preroll_s * rate),
                                       journal=round(cfg.recording.journal_s * rate)),
                          dsp_factory(rate) if dsp_factory else None)
                     for i in range(lines)]
        self.edges: deque[Edge] = deque()
        self.pos = 0
        self.dtmf_mask = cfg.recording.dtmf_mask
        self.callerid_std = cfg.recording.callerid
        self.audit = audit or (lambda *a, **k: None)
        self.counts = {"calls": 0, "missed": 0, "late_edges": 0, "flashes": 0}
        self.stuck: set[int] = set()                           # lines past max_call_s

    # -- inputs ---------------------------------------------------------------------------
    def edge(self, e: Edge) -> None:
        """GPIO callback thread: queue an edge (cheap and thread-safe)."""
        self.edges.append(e)

    # -- main step ------------------------------------------------------------------------
    def process(self, upto: int) -> None:
        """Handle every edge before sample ``upto`` and all audio up to it."""
        if upto <= self.pos:
            return
        batch = []
        while self.edges and self.edges[0].sample < upto:
            batch.append(self.edges.popleft())
        batch.sort(key=lambda e: e.sample)
        for e in batch:
            s = e.sample
            if s < self.pos:
                self.counts["late_edges"] += 1
                s = self.pos
            self._scan_audio(s)
            self._edge(e._replace(sample=s))
        self._scan_audio(upto)
        for ln in range(self.lines):
            self._line_event(ln, cs.Tick(upto))
        self._button("tick", upto)
        self._beeps(upto)
        self.pos = upto
        for ln in self.line:
            ln.recorder.advance(max(0, self.cut_point(ln.index, upto)))

    def cut_point(self, ln: int, upto: int) -> int:
        """Sample up to which line ``ln``'s audio is final once the processor is at
        ``upto``: no hang-up or DTMF mask can still change audio before it."""
        t = upto - self.lag
        det = self.line[ln].dsp
        if self.dtmf_mask and det is not None and self.line[ln].call is not None:
            settled = det.settled_before()
            if settled is not None:
                t = min(t, max(settled - self.guard, upto - self.hold))
        return t

    def finish(self) -> None:
        """The line has ended (shutdown or end of simulation): close every call."""
        end = self.pos
        for ln in range(self.lines):
            st = self.line[ln].state
            if st.phase == "offhook":
                at = st.onhook_at if st.onhook_at is not None else end
                self._act(ln, cs.CallEnd(at, "hangup" if st.onhook_at is not None
                                         else "shutdown"))
                self.line[ln].state = cs.LineState()
            elif st.phase == "ringing":
                self._act(ln, cs.Missed(st.ring_start, st.last_ring or end))
                self.line[ln].state = cs.LineState()
        for ln in self.line:
            ln.recorder.advance(end)

    # -- edges -----------------------------------------------------------------------------
    def _edge(self, e: Edge) -> None:
        if e.kind == "hook":
            self._line_event(e.line, cs.Hook(e.sample, e.active))
        elif e.kind == "ring":
            if e.active:
                self._line_event(e.line, cs.RingPulse(e.sample))
        elif e.kind == "button":
            self._button("press" if e.active else "release", e.sample)

    def _line_event(self, ln: int, ev) -> None:
        line = self.line[ln]
        line.state, actions = cs.step(line.state, ev, self.timing)
        for a in actions:
            self._act(ln, a)

    def _active_lines(self) -> list[int]:
        return [ln.index for ln in self.line if ln.call is not None]

    def _button(self, kind: str, s: int) -> None:
        self.button, actions = cs.button_step(self.button, kind, s, self._active_lines(),
                                              self.ptiming)
        for a in actions:
            rec = self.line[a.line].recorder
            call = self.line[a.line].call
            if isinstance(a, cs.PauseStart):
                rec.mark(a.sample, "pause")
                self._led(a.line, "blink")
                self.audit("pause", line=a.line, call=call and call.id,
                           at=self._iso(a.sample))
            elif isinstance(a, cs.PauseEnd):
                rec.mark(a.sample, "resume")
                self._led(a.line, "on")
                self.audit("resume", line=a.line, call=call and call.id,
                           at=self._iso(a.sample), reason=a.reason)
            elif isinstance(a, cs.RecordingEnded):
                rec.mark(a.sample, "ended")
                self._led(a.line, "off")
                self.audit("recording_ended", line=a.line, call=call and call.id,
                           at=self._iso(a.sample))

    def _iso(self, s):
        from recorder.timebase import iso
        return iso(self.timebase.epoch(s))

    # -- actions ---------------------------------------------------------------------------
    def _act(self, ln: int, a) -> None:
        line = self.line[ln]
        rec = line.recorder
        if isinstance(a, cs.RingStart):
            line.ring_sample = a.sample
            line.pending_cli = self._decode_cli(ln, a.sample)
        elif isinstance(a, cs.CallStart):
            self._start_call(ln, a)
        elif isinstance(a, cs.CallEnd):
            call = line.call
            if call is None:
                return
            call.end_reason = a.reason
            if a.reason != "max_call":
                self.stuck.discard(ln)
            rec.mark(a.sample, "end")
            self.announcer.cancel(ln, a.sample)
            line.call = None
            line.last_call = call       # a rollover continues from it
            line.next_beep = None
            self.button = cs.button_call_ended(self.button, ln)
            self._led(ln, "off")
            log.info("line %d: call %s ended (%s)", ln, call.id, a.reason)
        elif isinstance(a, cs.Missed):
            cli = line.pending_cli or {}
            info = CallInfo(self._new_id(ln, a.ring_start), ln, "inbound", a.ring_start,
                            ring_sample=a.ring_start, caller_number=cli.get("number"),
                            caller_name=cli.get("name"))
            self.put(MissedCall(info, a.ring_end))
            self.counts["missed"] += 1
            line.pending_cli = None
            line.ring_sample = None
        elif isinstance(a, cs.Flash):
            if line.call is not None:
                line.call.flashes.append([a.sample, a.length])
            self.counts["flashes"] += 1
        elif isinstance(a, cs.StuckOffHook):
            self.stuck.add(ln)
            log.warning("line %d: off-hook for more than max_call_s; rolling over", ln)

    def _new_id(self, ln: int, sample: int) -> str:
        t = time.gmtime(self.timebase.epoch(sample))
        return f"{time.strftime('%Y%m%dT%H%M%SZ', t)}-L{ln}-{secrets.token_hex(3)}"

    def _start_call(self, ln: int, a: cs.CallStart) -> None:
        line = self.line[ln]
        st = line.settings
        prev = line.last_call
        if not st.record:
            log.info("line %d: call not recorded (recording is off for this line)", ln)
            return
        info = CallInfo(self._new_id(ln, a.sample), ln, a.direction, a.sample,
                        ring_sample=a.ring_start)
        if a.rollover and prev is not None:
            info.rollover_of = prev.id
            info.caller_number, info.caller_name = prev.caller_number, prev.caller_name
            info.announcement = None
        elif a.direction == "inbound":
            cli = line.pending_cli or {}
            info.caller_number = cli.get("number")
            info.caller_name = cli.get("name")
        line.pending_cli = None
        line.call = info
        self.counts["calls"] += 1
        line.recorder.mark(a.sample, "start", info)
        line.dial = Dialling(open=a.direction == "outbound")
        if line.dsp is not None:
            # Scan the call from its off-hook edge: audio already seen goes in first.
            line.dsp.reset(a.sample)
            try:
                for d in line.dsp.feed(self.ring.read(ln, a.sample, line.dsp_pos),
                                       a.sample):
                    self._digit(ln, info, *d)
                self._mask_spans(ln, info)
                self._mask_spans(ln, info)
            except (Overrun, ValueError):
                log.warning("line %d: could not scan the start of the call for DTMF", ln)
        if not a.rollover and st.announcement is not None and (
                a.direction == "inbound" or st.announce_outbound):
            start = self.announcer.schedule(ln, st.announcement, a.sample + st.delay)
            info.announcement = {"id": st.announcement.id, "sha256": st.announcement.sha256,
                                 "start_sample": start}
        if st.beep is not None and st.beep_interval:
            line.next_beep = a.sample + st.beep_interval
        self._led(ln, "on")
        log.info("line %d: %s call %s started, caller %s", ln, a.direction, info.id,
                 mask_number(info.caller_number))

    def _beeps(self, upto: int) -> None:
        for line in self.line:
            due, st = line.next_beep, line.settings
            # Queue beeps well ahead of the playback position (clips not yet played
            # are cancelled at hang-up), so a busy processor never makes one late.
            if due is not None and due <= upto + BEEP_HORIZON_S * self.rate:
                self.announcer.schedule(line.index, st.beep, due)
                line.next_beep = due + st.beep_interval

    def _led(self, ln: int, mode: str) -> None:
        if self.board is not None:
            try:
                self.board.set_rec_led(ln, mode)
            except Exception:
                log.exception("LED %d", ln)

    # -- audio analysis (caller ID, DTMF, levels) ------------------------------------------
    def _decode_cli(self, ln: int, ring_start: int) -> dict | None:
        if self.callerid_std == "off":
            return None
        lo = max(self.ring.oldest(), ring_start - int(CLI_LOOKBACK_S * self.rate))
        try:
            audio = self.ring.read(ln, lo, ring_start)
            from recorder.calls.dsp import callerid
            res = callerid.decode(audio, self.rate, standard=self.callerid_std)
        except Exception:
            log.exception("line %d: caller ID decoding failed", ln)
            return None
        if not res:
            return None
        number = res.get("number")
        if not number and res.get("absence_reason"):
            number = res["absence_reason"]
        return {"number": number, "name": res.get("name")}

    def _scan_audio(self, upto: int) -> None:
        """Levels and DTMF on audio [dsp_pos, upto) of every line in a call."""
        for line in self.line:
            ln, a = line.index, line.dsp_pos
            if upto <= a:
                continue
            line.dsp_pos = upto
            call = line.call
            if call is None and line.dsp is None:
                continue
            try:
                x = self.ring.read(ln, max(a, self.ring.oldest()), upto)
            except Overrun:
                continue
            if len(x):
                # max and min, not abs(): no temporary array on the hot path
                peak = max(int(x.max()), -int(x.min()))
                line.level_dbfs = 20 * np.log10(max(peak, 1) / 32768.0)
                if peak >= 32767:
                    line.clipped += 1
                    line.last_clip = upto
                if peak <= DEAD_PEAK:
                    if line.silent_since is None:
                        line.silent_since = upto - len(x)
                else:
                    line.silent_since = None
            det = line.dsp
            if call is None or det is None:
                continue
            for digit, d0, d1 in det.feed(x, upto - len(x)):
                self._digit(ln, call, digit, d0, d1)
            self._mask_spans(ln, call)
            self._mask_spans(ln, call)

    def _digit(self, ln: int, call: CallInfo, digit: str, d0: int, d1: int) -> None:
        """A DTMF digit on a call: part of the dialled number on an outbound call
        (:mod:`recorder.calls.dialling`; any later digit is never stored), then masking."""
        if call.direction == "outbound":
            line = self.line[ln]
            line.dial = dial_step(line.dial, digit, d0, d1, call.offhook_sample, self.rate)
            call.dialled_digits = line.dial.digits
        self._mask(ln, call, d0, d1)

    def _mask_spans(self, ln: int, call: CallInfo) -> None:
        """Spans the masking detector found (tones that may be digits, named or not)."""
        take = getattr(self.line[ln].dsp, "take_spans", None)
        for d0, d1 in take() if take else ():
            self._mask(ln, call, d0, d1)

    def _mask(self, ln: int, call: CallInfo, d0: int, d1: int) -> None:
        if not self.dtmf_mask:
            return
        g = self.guard
        merge_span(call.masked_dtmf, d0, d1)
        self.line[ln].recorder.mark(max(0, d0 - g), "mask", (max(0, d0 - g), d1 + g))


def merge_span(spans: list, a: int, b: int) -> None:
    """Add ``[a, b)`` to a list of ``[start, end]`` spans kept sorted and disjoint (a
    digit the recogniser names and the masker's span for it are one masked span)."""
    i = bisect.bisect_left([s[0] for s in spans], a)
    lo, hi = i, i
    while lo > 0 and spans[lo - 1][1] >= a:
        lo -= 1
    while hi < len(spans) and spans[hi][0] <= b:
        hi += 1
    if lo < hi:
        a, b = min(a, spans[lo][0]), max(b, spans[hi - 1][1])
    spans[lo:hi] = [[a, b]]


class DtmfStream:
    """Adapts :class:`recorder.calls.dsp.dtmf.DtmfDetector` to absolute sample numbers."""

    def __init__(self, rate: int):
        self.rate = rate
        self.base = 0
        self.det = None

    def reset(self, sample: int) -> None:
        self.det, self.base = DtmfDetector(self.rate), sample
        self.masker, self.spans = DtmfMasker(self.rate), []

    def feed(self, x: np.ndarray, first_sample: int) -> list[tuple[str, int, int]]:
        """Digits the recogniser named; the masker's spans wait in :meth:`take_spans`."""
        if self.det is None or not len(x):
            return []
        self.spans += [(self.base + a, self.base + b) for a, b in self.masker.feed(x)]
        return [(d, self.base + a, self.base + b) for d, a, b in self.det.feed(x)]

    def take_spans(self) -> list[tuple[int, int]]:
        """Mask spans (absolute samples) found since the last call."""
        out, self.spans = self.spans, []
        return out

    def settled_before(self) -> int | None:
        """Absolute sample before which no digit or mask span can still be reported
        (None: no scan)."""
        if self.det is None:
            return None
        return self.base + min(self.det.settled_before(), self.masker.settled_before())
