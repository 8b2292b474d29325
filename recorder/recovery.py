"""Start-up recovery after a crash or power cut.

* A segment file that was renamed into place but whose row never committed is adopted
  if its header names the call and the next seq and it continues the audio: at most the
  audio still in memory is lost, never a written segment.
* A call left ``active`` is closed at the end of its last segment, marked
  ``recovered``, and its manifest is signed over the segments that exist.
"""

from __future__ import annotations

import hashlib
import logging
import time

from recorder import evidence, segfile
from recorder.errors import SegmentFormatError

log = logging.getLogger(__name__)


def adopt_orphans(store, row, device: str) -> int:
    """Insert rows for complete segment files of ``row`` written after its last row."""
    segs = store.segments_of(row.id)
    seq = len(segs)
    chain = bytes.fromhex(segs[-1].chain) if segs else evidence.chain_init(device, row.id)
    nxt = segs[-1].first_sample + segs[-1].samples if segs else None
    d = store.call_dir(row.id, row.start_time or time.time())
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
        if h.get("call") != row.id or h.get("seq") != seq or h.get("device") != device or \
                (nxt is not None and h.get("first_sample") != nxt):
            log.error("call %s: file %s does not continue the call; not adopted", row.id,
                      path.name)
            break
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
        nxt = h["first_sample"] + h["samples"]
        seq += 1
        adopted += 1
    if adopted:
        log.warning("call %s: adopted %d segment(s) written just before the crash", row.id,
                    adopted)
    return adopted


def recover(store, writer, device: str) -> int:
    """Close every call left active, and sign every finished call that has no manifest
    (a power cut between the row's state change and the manifest's rename). Returns how
    many calls were recovered or completed."""
    C = store.m.Call
    n = 0
    for row in C.select().where(C.state.in_(["closed", "recovered"]) & C.manifest.is_null()):
        log.warning("call %s: finished without a manifest; signing it now", row.id)
        writer.write_manifest(row)
        n += 1
    for row in C.select().where(C.state == "active"):
        adopt_orphans(store, row, device)
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
    return n
