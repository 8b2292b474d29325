"""The segment writer: encode, encrypt, write atomically, chain, commit; sign manifests.

One thread owns every write of call data, in order, so a call's rows, files and chain
can never interleave. Jobs arrive on a queue from the call processor:

* :class:`OpenCall` - insert the call row (state ``active``).
* :class:`WriteSegment` - FLAC/Opus in memory, HPKE-seal to the practice key, temp +
  fsync + rename + fsync dir, then the row with ``sha256`` and ``chain``.
* :class:`JournalAppend` - the audio cut since the last record, sealed like a segment
  and appended to the call's journal with fdatasync (:mod:`recorder.storage.journal`).
* :class:`CloseCall` - final metadata, then the signed, sealed manifest; state ``closed``;
  the journal is deleted.
* :class:`MissedCall` - a ring nobody answered: a row with no audio.

Plaintext audio exists only in this process's memory, and so do a call's caller
number and name and its dialled number: they are written only sealed to the
practice key (the row's ``personal``, and the manifest's sealed body), and shown only
masked (``party_masked``); never in a clear column (:mod:`recorder.evidence.personal`).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import peewee as pw

from recorder.calls.jobs import (
    CallInfo,
    CloseCall,
    JournalAppend,
    MissedCall,
    OpenCall,
    SegmentShed,
    UpdateCall,
    WriteSegment,
)
from recorder.evidence import chain as evidence
from recorder.evidence import codec, personal, segfile
from recorder.evidence.manifest import manifest_body
from recorder.fsutil import atomic_write
from recorder.privacy import mask_number
from recorder.storage import journal
from recorder.storage.store import Store, disk_full
from recorder.timebase import iso

log = logging.getLogger(__name__)

MAX_QUEUE_BYTES = 16 * 2**20   # audio queued for the writer: ~4 min of 4 lines at 8 kHz


@dataclass
class Restamp:
    """The system clock was just synchronised: capture sample ``frames`` is UTC
    ``wall_now``. The writer re-anchors the timebase itself, in queue order: every job
    queued before this one was stamped with the old anchor and is moved by the step,
    every job after it is stamped with the new one and is not (re-anchoring from the
    daemon's thread would let a job still queued be stamped new and then moved too)."""

    frames: int
    wall_now: float


class Writer:
    """Consumes jobs on its own thread (see module docstring)."""

    def __init__(self, store: Store, *, device: str, rate: int, codec_name: str, aead: str,
                 public_key, identity, timebase, retention_s: float,
                 max_queue: int = 64, max_queue_bytes: int = MAX_QUEUE_BYTES):
        self.store, self.device, self.rate = store, device, rate
        self.codec, self.aead = codec_name, aead
        self.public_key, self.identity, self.timebase = public_key, identity, timebase
        self.retention_s = retention_s
        # Unbounded in jobs, bounded in audio bytes: put() never blocks the call
        # processor (see put). max_queue is the backlog a simulated line waits on.
        self.q: queue.Queue = queue.Queue()
        self.max_queue, self.max_queue_bytes = max_queue, max_queue_bytes
        self._queued_bytes = 0
        self._qlock = threading.Lock()
        self.shed_segments = 0          # segments never queued: the store was stuck
        self.stalled = False            # retrying a write on a full disk right now
        self.abort = threading.Event()  # shutdown gave up waiting: drop what is left
        self.abandoned_jobs = 0
        self._chains: dict[str, tuple[int, bytes]] = {}   # call -> (next seq, chain)
        # The journal's records are numbered on from the committed segments (recovery
        # recomputes their chain when it adopts them): call -> (next seq, content key of
        # this segment in progress).
        self._jchains: dict[str, tuple[int, segfile.ContentKey | None]] = {}
        self.journal = journal.JournalFiles()
        self.journal_skipped = 0
        self._dirs: dict = {}                               # call -> its segment folder
        self._jpaths: dict = {}                             # call -> its journal file
        self._dropped: dict[str, list] = {}    # call -> [[first, end)] of segments given up
        self._suite = segfile.suite_ids(aead)
        self.segments_written = 0
        self.bytes_written = 0
        self.dropped_segments = 0
        self.opened: list[str] = []          # calls this process created (this boot)
        self.corrected: dict[str, float] = {}  # call -> clock step applied to its times
        # Hooks the daemon sets: raise the alarm, evict now, and report a dropped segment.
        self.on_disk_full = lambda: None
        self.make_room = lambda: None
        self.on_dropped = lambda job: None
        self.cpu_s = 0.0
        self.idle = threading.Event()
        self.idle.set()

    # -- queue side ----------------------------------------------------------------------
    def put(self, job) -> None:
        """Queue a job. Never blocks: the caller is the call processor, which decides
        the announcements that playback plays, and it must never wait on the store.

        While the writer is stuck (a full disk it is retrying on), audio jobs pile up;
        once ``max_queue_bytes`` of audio is queued, new journal records are skipped
        (their audio is in the segment to come) and new segments are shed: a
        :class:`SegmentShed` marker takes their place, so the call records a gap and
        goes on. Control jobs (open, close, metadata) are small and always queued."""
        self.idle.clear()
        pcm = getattr(job, "pcm", None)
        if pcm is not None:
            with self._qlock:
                over = self._queued_bytes + pcm.nbytes > self.max_queue_bytes
                if not over:
                    self._queued_bytes += pcm.nbytes
            if over:
                if isinstance(job, JournalAppend):
                    self.journal_skipped += 1
                    return
                self.shed_segments += 1
                if self.shed_segments == 1 or self.shed_segments % 100 == 0:
                    log.error("writer queue over %d MB (the store is stuck): %d "
                              "segment(s) shed", self.max_queue_bytes >> 20,
                              self.shed_segments)
                job = SegmentShed(job.call_id, job.seq, int(job.first_sample), len(pcm))
        self.q.put(job)

    def behind(self) -> bool:
        """More than ``max_queue`` jobs waiting while the writer is working (not stuck on
        a full disk). A simulated line, which has no clock of its own, waits on this:
        the old bounded queue's back-pressure, without ever blocking the processor,
        and without stopping line time while the disk is full (it would not stop on
        a real line either)."""
        return not self.stalled and self.q.qsize() > self.max_queue

    def _dequeued(self, job) -> None:
        pcm = getattr(job, "pcm", None)
        if pcm is not None:
            with self._qlock:
                self._queued_bytes -= pcm.nbytes

    def run(self, stop: threading.Event) -> None:
        """Thread body: process jobs until ``stop`` is set and the queue is empty."""
        while True:
            try:
                job = self.q.get(timeout=0.2)
            except queue.Empty:
                self.idle.set()
                if stop.is_set() or self.abort.is_set():
                    self.journal.close_all()
                    return
                continue
            self._dequeued(job)
            if job is None or self.abort.is_set():
                if job is not None:
                    self._abandon_rest(job)
                self.journal.close_all()
                self.idle.set()
                return
            t = time.thread_time()
            self._handle_until_stored(job)
            if self.journal.dirty and not self._journal_waiting():
                self._sync_journal()
            self.cpu_s += time.thread_time() - t
            self.q.task_done()
            if self.q.empty():
                self.idle.set()

    def _abandon_rest(self, job) -> None:
        """Shutdown gave up on a full disk: drop ``job`` and everything queued. The calls
        they belong to stay ``active`` and are recovered at the next start, from their
        stored segments and journal."""
        n = 1
        while True:
            try:
                nxt = self.q.get_nowait()
            except queue.Empty:
                break
            self._dequeued(nxt)
            n += nxt is not None
        self.abandoned_jobs += n
        log.error("writer stopped on a full disk: %d queued job(s) abandoned; the calls "
                  "still open are recovered at the next start", n)

    def abandon(self) -> None:
        """Stop retrying and drop the queue (Daemon.shutdown, once its grace is over)."""
        self.abort.set()

    def _journal_waiting(self) -> bool:
        """Is the next queued job another journal record (to share this one's sync)?"""
        with self.q.mutex:
            return bool(self.q.queue) and isinstance(self.q.queue[0], JournalAppend)

    def _sync_journal(self) -> None:
        try:
            self.journal.sync()
        except OSError as exc:
            # The records are cut back; their audio is still in the segment to come.
            self.journal_skipped += 1
            if disk_full(exc):
                self.on_disk_full()
            else:
                log.error("journal sync failed: %s", exc)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is done."""
        t_end = None if timeout is None else time.monotonic() + timeout
        while not (self.q.empty() and self.idle.is_set()):
            if t_end is not None and time.monotonic() > t_end:
                return False
            time.sleep(0.01)
        return True

    def _handle_until_stored(self, job) -> None:
        """Run ``job``; when the disk is full, make room and retry instead of dying.

        The daemon must keep recording through a full disk: raise ``low_storage``, ask
        retention to evict (synced recordings first), and retry with backoff. Only a
        segment that still cannot be stored after DISK_FULL_RETRIES is given up, and that
        is counted, alarmed and audited; call rows and manifests are retried until they
        are stored, because later segments depend on them.
        """
        delay = 0.2
        for attempt in range(1, 1 << 30):
            try:
                self.handle(job)
                if attempt > 1:
                    # low_storage is cleared by retention, which knows the free space and
                    # whether unsynced recordings were just lost; not here.
                    log.warning("disk space recovered; write stored after %d tries", attempt)
                    self.stalled = False
                return
            except (OSError, pw.OperationalError) as exc:
                if not disk_full(exc):
                    self.stalled = False
                    raise
                self.on_disk_full()
                if isinstance(job, JournalAppend):
                    # The segment will carry this audio; waiting here would delay it.
                    self.journal_skipped += 1
                    return
                if attempt == 1:
                    log.error("disk full writing %s: making room", type(job).__name__)
                if isinstance(job, WriteSegment) and attempt >= DISK_FULL_RETRIES:
                    self.stalled = False
                    self._drop(job.call_id, job.seq, int(job.first_sample), len(job.pcm))
                    self._report_dropped(job)
                    return
                self.stalled = True
            try:
                self.make_room()
            except Exception:
                log.exception("making room failed")
            if self.abort.wait(delay):
                # Shutdown gave up: run() drops the rest, and recovery finishes the call.
                self.stalled = False
                self.abandoned_jobs += 1
                return
            delay = min(delay * 2, 5.0)

    def _report_dropped(self, job) -> None:
        """Tell the daemon (it audits it). Never raises: on the full disk that dropped
        the segment, the audit write can fail too, and that must neither kill the writer
        nor make the drop be counted twice by a retry."""
        try:
            self.on_dropped(job)
        except Exception:
            log.exception("call %s: dropped segment %d not reported", job.call_id, job.seq)

    def _drop(self, call_id: str, seq: int, first_sample: int, samples: int) -> None:
        """A segment that will never be stored: a gap in its call (the manifest lists
        it), the stored seqs stay contiguous."""
        self.dropped_segments += 1
        self._dropped.setdefault(call_id, []).append([first_sample, first_sample + samples])
        self._jchains.pop(call_id, None)
        log.error("call %s: segment %d could not be stored (disk full); %d s of audio lost",
                  call_id, seq, samples // self.rate)

    # -- jobs ---------------------------------------------------------------------------
    def handle(self, job) -> None:
        if isinstance(job, WriteSegment):
            self._segment(job)
        elif isinstance(job, SegmentShed):
            self._drop(job.call_id, job.seq, job.first_sample, job.samples)
            self._report_dropped(job)
        elif isinstance(job, JournalAppend):
            self._journal(job)
        elif isinstance(job, OpenCall):
            self._open(job.info)
        elif isinstance(job, CloseCall):
            self._close(job.info)
        elif isinstance(job, Restamp):
            self._restamp(self.timebase.resync(job.frames, job.wall_now))
        elif isinstance(job, UpdateCall):
            C = self.store.m.Call
            C.update(meta=self._meta(job.info)).where(C.id == job.info.id).execute()
        elif isinstance(job, MissedCall):
            self._missed(job.info, job.ring_end)
        else:
            raise TypeError(f"unknown writer job {job!r}")

    def _epoch(self, sample):
        return None if sample is None else self.timebase.epoch(sample)

    def _open(self, info: CallInfo) -> None:
        # The writer re-anchors the timebase (Restamp), so it alone knows whether this
        # call is stamped before or after the clock synchronised.
        info.clock_ok = self.timebase.synchronised
        C = self.store.m.Call
        start = self._epoch(info.first_sample)
        C.insert(id=info.id, device=self.device, line=info.line, direction=info.direction,
                 state="active", rate=self.rate, codec=self.codec,
                 first_sample=info.first_sample, offhook_sample=info.offhook_sample,
                 start_time=start, offhook_time=self._epoch(info.offhook_sample),
                 ring_time=self._epoch(info.ring_sample), **self._personal(info),
                 meta=self._meta(info),
                 deadline=start + self.retention_s, created=time.time()).execute()
        self._chains[info.id] = (0, evidence.chain_init(self.device, info.id))
        self.opened.append(info.id)

    def _missed(self, info: CallInfo, ring_end: int) -> None:
        C = self.store.m.Call
        t = self._epoch(info.ring_sample)
        C.insert(id=info.id, device=self.device, line=info.line, direction="inbound",
                 state="missed", rate=self.rate, codec=self.codec, start_time=t,
                 ring_time=t, end_time=self._epoch(ring_end), **self._personal(info),
                 meta={"missed": True,
                       "clock_synchronised": self.timebase.synchronised},
                 deadline=t + self.retention_s, created=time.time()).execute()
        self.opened.append(info.id)
        log.info("missed call on line %d", info.line)

    @staticmethod
    def _fields(info: CallInfo) -> dict:
        return personal.fields(info.caller_number, info.caller_name, info.dialled_digits)

    def _personal(self, info: CallInfo) -> dict:
        """The row's columns for the call's personal data: sealed, and masked."""
        f = self._fields(info)
        return {"personal": personal.seal(self.device, info.id, f, self.public_key, self.aead),
                "party_masked": mask_number(f["caller_number"] or f["dialled_digits"]) or None}

    def _call_dir(self, call_id: str):
        """The call's segment folder, made once per call (cached: no query per segment)."""
        d = self._dirs.get(call_id)
        if d is None:
            call = self.store.call(call_id)
            if call is None:
                raise RuntimeError(f"segment for unknown call {call_id}")
            d = self.store.call_dir(call_id, call.start_time)
            d.mkdir(parents=True, exist_ok=True)
            self._dirs[call_id] = d
        return d

    # The hot path writes its two rows with plain SQL: the ORM's query building cost
    # more CPU per segment than the HPKE seal. Column names follow recorder.storage.store.
    _INSERT_SEGMENT = ("INSERT INTO segment (call_id, seq, path, first_sample, samples, size, "
                       "sha256, chain, created, acked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)")
    _UPDATE_CALL = ("UPDATE call SET segments = ?, chain_head = ?, samples = samples + ? "
                    "WHERE id = ?")

    def _header(self, call_id: str, seq: int, first_sample: int, samples: int,
                codec_name: str) -> dict:
        return {"v": 1, "kind": "segment", "device": self.device, "call": call_id,
                "seq": seq, "first_sample": int(first_sample), "samples": int(samples),
                "rate": self.rate, "codec": codec_name, "suite": self._suite,
                "start": iso(self._epoch(first_sample))}

    def _seal(self, call_id: str, seq: int, first_sample: int, pcm: np.ndarray) -> bytes:
        """Encode and seal one segment file (the plaintext never leaves memory)."""
        audio = codec.encode(pcm, self.rate, self.codec)
        header = self._header(call_id, seq, first_sample, len(pcm), self.codec)
        return segfile.seal(segfile.KIND_SEGMENT, header, audio, self.public_key)

    def _journal(self, job: JournalAppend) -> None:
        """Seal the audio cut since the last record as the call's next segment would be,
        but raw (``pcm``) under the content key of this segment in progress: one HPKE
        seal per segment, not per record (see recorder.evidence.segfile.ContentKey)."""
        path = self._jpaths.get(job.call_id)
        if path is None:
            path = self._jpaths[job.call_id] = self._call_dir(job.call_id) / journal.NAME
        win = self._jchains.get(job.call_id)
        if win is None:
            win = ((self._chains.get(job.call_id) or self._resume_chain(job.call_id))[0], None)
        seq, key = win
        if key is None:
            key = segfile.ContentKey(self._suite, self.public_key)
        header = self._header(job.call_id, seq, job.first_sample, len(job.pcm), codec.PCM)
        data = key.seal(header, codec.encode(job.pcm, self.rate, codec.PCM))
        sha = hashlib.sha256(data).digest()
        ok = False
        try:
            ok = self.journal.append(job.call_id, path, data, sha)
        finally:
            # A record that was not written still used its seq under this key: the next
            # one, which takes the same seq, gets a fresh key (a nonce is never reused).
            self._jchains[job.call_id] = (seq + 1, key) if ok else (seq, None)

    def _segment(self, job: WriteSegment) -> None:
        d = self._call_dir(job.call_id)
        seq, chain = self._chains.get(job.call_id) or self._resume_chain(job.call_id)
        # After a segment was given up (disk full), the recorder's numbering runs ahead
        # of the stored one: the stored seqs stay contiguous, so the chain and the
        # manifest stay whole, and the lost audio is a gap in time (first_sample).
        if job.seq - len(self._dropped.get(job.call_id, ())) != seq:
            raise RuntimeError(f"call {job.call_id}: segment {job.seq} where {seq} was due")
        n = int(len(job.pcm))
        path = d / f"{seq:05d}.seg"
        if job.sealed is not None and job.sealed[0] == seq:
            # A retry after the full disk refused the commit (or the file): the same
            # bytes, and no second copy if the first one reached its name.
            _, data, sha, chain = job.sealed
            if not _holds(path, sha):
                atomic_write(path, data, mode=0o640)
        else:
            data = self._seal(job.call_id, seq, job.first_sample, job.pcm)
            sha = hashlib.sha256(data).digest()
            chain = evidence.chain_next(chain, seq, sha)
            job.sealed = (seq, data, sha, chain)
            atomic_write(path, data, mode=0o640)
        db = self.store.db
        with db.atomic():
            db.execute_sql(self._INSERT_SEGMENT, (
                job.call_id, seq, self.store.rel(path), int(job.first_sample), n,
                len(data), sha.hex(), chain.hex(), time.time()))
            db.execute_sql(self._UPDATE_CALL, (seq + 1, chain.hex(), n, job.call_id))
        self._chains[job.call_id] = (seq + 1, chain)
        self._jchains.pop(job.call_id, None)    # the segment supersedes its records
        self.journal.reset(job.call_id)         # so they need not take disk space
        self.segments_written += 1
        self.bytes_written += len(data)

    def _restamp(self, step: float) -> None:
        """Calls of this boot were stamped from an unsynchronised clock: shift their times
        and deadlines by the step (they share one sample clock, so the step is exact),
        note it in the metadata, and re-sign finished calls' manifests."""
        C = self.store.m.Call
        for call_id in self.opened:
            if call_id in self.corrected:
                continue
            row = self.store.call(call_id)
            if row is None or row.state == "deleted":
                continue
            shift = {f: getattr(row, f) + step for f in
                     ("start_time", "offhook_time", "end_time", "ring_time", "deadline")
                     if getattr(row, f) is not None}
            meta = dict(row.meta or {})
            meta["clock_corrected_s"] = round(step, 3)
            C.update(meta=meta, **shift).where(C.id == call_id).execute()
            self.corrected[call_id] = round(step, 3)
            if row.manifest:
                self.write_manifest(self.store.call(call_id))
        log.warning("re-stamped %d call(s) by %+.3f s after clock synchronisation",
                    len(self.corrected), step)

    def _resume_chain(self, call_id: str) -> tuple[int, bytes]:
        segs = self.store.segments_of(call_id)
        if not segs:
            return 0, evidence.chain_init(self.device, call_id)
        return segs[-1].seq + 1, bytes.fromhex(segs[-1].chain)

    def _meta(self, info: CallInfo) -> dict:
        ep = self._epoch
        pauses = [[a, b] for a, b in info.pauses]
        if info.open_pause is not None:
            pauses.append([info.open_pause, None])     # closed at recovery if cut short
        return {
            "pauses": [{"start": iso(ep(a)), "end": iso(ep(b)), "start_sample": a,
                        "end_sample": b} for a, b in pauses],
            "masked_dtmf": [{"start": iso(ep(a)), "end": iso(ep(b))}
                            for a, b in info.masked_dtmf],
            "flashes": [{"at": iso(ep(s)), "length_s": n / self.rate}
                        for s, n in info.flashes],
            "gaps": [{"start": iso(ep(a)), "end": iso(ep(b)), "start_sample": a,
                      "end_sample": b, "frames": b - a}
                     for a, b in sorted([*info.gaps, *self._dropped.get(info.id, ())])],
            "announcement": info.announcement and {
                "id": info.announcement["id"], "sha256": info.announcement["sha256"],
                "start": iso(ep(info.announcement["start_sample"]))},
            "recording_ended": iso(ep(info.recording_ended)),
            "rollover_of": info.rollover_of,
            "end_reason": info.end_reason,
            "recovered": info.recovered,
            "clock_synchronised": info.clock_ok,
            "clock_corrected_s": self.corrected.get(info.id),
        }

    def _close(self, info: CallInfo) -> None:
        C = self.store.m.Call
        row = self.store.call(info.id)
        meta = self._meta(info)
        end = self._epoch(info.end_sample)
        C.update(state="recovered" if info.recovered else "closed", end_sample=info.end_sample,
                 end_time=end, **self._personal(info), meta=meta) \
            .where(C.id == info.id).execute()
        self.write_manifest(self.store.call(info.id), self._fields(info))
        d = self._dirs.get(info.id) or self.store.call_dir(info.id, row and row.start_time or 0)
        self.journal.remove(info.id, d / journal.NAME)
        self._chains.pop(info.id, None)
        self._jchains.pop(info.id, None)
        self._dirs.pop(info.id, None)
        self._jpaths.pop(info.id, None)
        self._dropped.pop(info.id, None)
        log.info("call %s closed: %s, line %d, %d segment(s)", info.id, info.direction,
                 info.line, row.segments if row else 0)

    def write_manifest(self, row, fields: dict | None = None) -> None:
        """Sign and seal the manifest of a finished call, then point the row at it.

        ``fields``: the call's personal data, when this process still has it in memory;
        without it (recovery, a re-sign) the manifest carries the row's sealed copy."""
        segs = self.store.segments_of(row.id)
        shas = [bytes.fromhex(s.sha256) for s in segs]
        head = evidence.chain_of(self.device, row.id, shas).hex()
        from recorder.evidence.keys import raw_public
        body = manifest_body(row, segs, fields)
        header = {"v": 1, "kind": "manifest", "device": self.device, "call": row.id,
                  "created": iso(time.time()), "chain_head": head,
                  "segments": [{"seq": s.seq, "sha256": s.sha256, "size": s.size}
                               for s in segs],
                  "recovered": row.state == "recovered" or bool(row.meta.get("recovered")),
                  "signer": raw_public(self.identity.public_key()).hex(),
                  "suite": segfile.suite_ids(self.aead)}
        data = segfile.seal(segfile.KIND_MANIFEST, header, segfile.canonical(body),
                            self.public_key, signer=self.identity)
        d = self.store.call_dir(row.id, row.start_time or time.time())
        d.mkdir(parents=True, exist_ok=True)
        path = d / "manifest.ltm"
        atomic_write(path, data, mode=0o640)
        C = self.store.m.Call
        # A new manifest (a re-signed one after recovery, say) must be sent again, even
        # if an earlier version was already acked upstream.
        C.update(manifest=self.store.rel(path), manifest_sha256=hashlib.sha256(data).hexdigest(),
                 chain_head=head, segments=len(segs), manifest_acked=False) \
            .where(C.id == row.id).execute()


DISK_FULL_RETRIES = 40      # about 3 minutes of backoff before a segment is given up


def _holds(path, sha: bytes) -> bool:
    """Does ``path`` exist with exactly the content hashing to ``sha``?"""
    try:
        return hashlib.sha256(path.read_bytes()).digest() == sha
    except FileNotFoundError:
        return False


