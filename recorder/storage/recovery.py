"""Start-up recovery after a crash or power cut.

* A segment file that was renamed into place but whose row never committed is adopted
  if its header names the call and the next seq and it continues the audio: at most the
  audio still in memory is lost, never a written segment.
* The call's journal (:mod:`recorder.storage.journal`) holds the segment in progress as sealed
  records written every ``journal_s``; those that continue the call past its last
  segment are adopted as segments too, so only the audio not yet journalled is lost.
* A deletion cut short (its folder or files renamed to deletion markers by
  :mod:`recorder.storage.retention.service`) is finished first, so no row names a file that is gone.
* A call left ``active`` is closed at the end of its last segment, marked
  ``recovered``, and its manifest is signed over the segments that exist. Journals of
  finished calls are deleted.
"""

from __future__ import annotations

import hashlib
import logging
import time

from recorder.errors import SegmentFormatError
from recorder.evidence import chain as evidence
from recorder.evidence import segfile
from recorder.fsutil import atomic_write
from recorder.storage import journal
from recorder.storage.store import SEGMENTS

log = logging.getLogger(__name__)


def _position(store, row, device: str):
    """(next seq, chain, next first sample or None, call folder) after the last row."""
    segs = store.segments_of(row.id)
    seq = len(segs)
    chain = bytes.fromhex(segs[-1].chain) if segs else evidence.chain_init(device, row.id)
    nxt = segs[-1].first_sample + segs[-1].samples if segs else None
    d = store.abs(segs[0].path).parent if segs else \
        store.call_dir(row.id, row.start_time or time.time())
    return seq, chain, nxt, d


def _continues(h: dict, row, device: str, seq: int, nxt: int | None) -> bool:
    return (h.get("call") == row.id and h.get("seq") == seq and h.get("device") == device
            and isinstance(h.get("samples"), int) and h["samples"] > 0
            and (nxt is None or h.get("first_sample") == nxt))


def _insert(store, row, seq: int, chain: bytes, path, data: bytes, h: dict) -> bytes:
    """Row for an adopted segment file; returns the chain after it."""
    sha = hashlib.sha256(data).digest()
    chain = evidence.chain_next(chain, seq, sha)
    S = store.m.Segment
    with store.db.atomic():
        S.insert(call=row.id, seq=seq, path=store.rel(path),
                 first_sample=h["first_sample"], samples=h["samples"], size=len(data),
                 sha256=sha.hex(), chain=chain.hex(), created=time.time()).execute()
        store.m.Call.update(segments=seq + 1, chain_head=chain.hex(),
                            samples=store.m.Call.samples + h["samples"]) \
            .where(store.m.Call.id == row.id).execute()
    return chain


def adopt_orphans(store, row, device: str) -> int:
    """Insert rows for complete segment files of ``row`` written after its last row."""
    seq, chain, nxt, d = _position(store, row, device)
    adopted = 0
    while True:
        path = d / f"{seq:05d}.seg"
        try:
            data = path.read_bytes()
            h = segfile.parse(data, signed=False).header
        except FileNotFoundError:
            break
        except SegmentFormatError as exc:
            log.error("call %s: segment %d unreadable (%s); not adopted", row.id, seq, exc)
            break
        if not _continues(h, row, device, seq, nxt):
            log.error("call %s: file %s does not continue the call; not adopted", row.id,
                      path.name)
            break
        chain = _insert(store, row, seq, chain, path, data, h)
        nxt = h["first_sample"] + h["samples"]
        seq += 1
        adopted += 1
    if adopted:
        log.warning("call %s: adopted %d segment(s) written just before the crash", row.id,
                    adopted)
    return adopted


def adopt_journal(store, row, device: str) -> int:
    """Adopt the journal records that continue ``row`` past its last segment.

    Records of segments already stored are skipped (they start before the call's next
    sample); the rest must follow on, seq by seq and sample by sample, or adoption
    stops there. Each adopted record becomes a segment file (temp, fsync, rename) and a
    row, exactly as if the writer had cut a short segment.
    """
    seq, chain, nxt, d = _position(store, row, device)
    path = d / journal.NAME
    if not path.exists():
        # A clock step re-stamps the call after its folder was made: look by id.
        found = list(store.root.glob(f"{SEGMENTS}/*/*/*/{row.id}/{journal.NAME}"))
        if not found:
            return 0
        path = found[0]
        d = path.parent
    data = path.read_bytes()
    blobs, problem = journal.read(data)
    if problem:
        log.warning("call %s: journal ends early (%s); the records before it are used",
                    row.id, problem)
    adopted = 0
    for blob in blobs:
        try:
            h = segfile.parse(blob, signed=False).header
        except SegmentFormatError as exc:
            log.error("call %s: journal record unreadable (%s); stopping there", row.id, exc)
            break
        first = h.get("first_sample")
        if nxt is not None and isinstance(first, int) and first < nxt:
            continue                      # its segment was stored: the record is obsolete
        if not _continues(h, row, device, seq, nxt):
            log.error("call %s: journal record %s does not continue the call; stopping "
                      "there", row.id, h.get("seq"))
            break
        seg_path = d / f"{seq:05d}.seg"
        atomic_write(seg_path, blob, mode=0o640)
        chain = _insert(store, row, seq, chain, seg_path, blob, h)
        nxt = first + h["samples"]
        seq += 1
        adopted += 1
    if adopted:
        log.warning("call %s: adopted %d journal record(s) (%.1f s of audio) written "
                    "before the crash", row.id, adopted,
                    sum(s.samples for s in store.segments_of(row.id)[-adopted:]) / row.rate)
    return adopted


def remove_stale_journals(store) -> int:
    """Delete the journals of calls that are no longer in progress (a crash between a
    call's manifest and its journal's deletion), and of calls the store does not know."""
    removed = 0
    for path in store.root.glob(f"{SEGMENTS}/*/*/*/*/{journal.NAME}"):
        row = store.call(path.parent.name)
        if row is None or row.state != "active":
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def recover(store, writer, device: str) -> int:
    """Close every call left active, and sign every finished call that has no manifest
    (a power cut between the row's state change and the manifest's rename). Returns how
    many calls were recovered or completed. Deletions a power cut interrupted are finished
    before this (:func:`recorder.storage.retention.deletion.resume_deletions`): their files
    may be gone while their rows remain, and they free space recovery may need."""
    C = store.m.Call
    n = 0
    for row in C.select().where(C.state.in_(["closed", "recovered"]) & C.manifest.is_null()):
        log.warning("call %s: finished without a manifest; signing it now", row.id)
        writer.write_manifest(row)
        n += 1
    for row in C.select().where(C.state == "active"):
        adopt_orphans(store, row, device)
        adopt_journal(store, row, device)
        segs = store.segments_of(row.id)
        end = segs[-1].first_sample + segs[-1].samples if segs else row.offhook_sample
        meta = dict(row.meta or {})
        meta["recovered"] = True
        meta["end_reason"] = "recovered"
        end_time = None
        if row.start_time is not None and end is not None and row.first_sample is not None:
            end_time = row.start_time + (end - row.first_sample) / row.rate
        # A pause still open at the power cut ends where the recording ends.
        from recorder.timebase import iso
        for p in meta.get("pauses", []):
            if p.get("end") is None:
                p["end"], p["end_sample"] = iso(end_time), end
        C.update(state="recovered", end_sample=end, end_time=end_time, meta=meta) \
            .where(C.id == row.id).execute()
        writer.write_manifest(store.call(row.id))
        n += 1
    remove_stale_journals(store)
    return n
