"""What a call's manifest says: the sealed body, built from the box's call and segment rows.

The writer seals this body into the manifest; a reader that cannot open a manifest (no
manifest yet, or a wrong key) falls back to the same fields from the rows, so both paths
give one shape (docs/formats.md, "Manifest body").
"""

from __future__ import annotations

from recorder.evidence import personal
from recorder.timebase import iso


def manifest_body(row, segs, fields: dict | None = None) -> dict:
    """The sealed part of a manifest: every export field known on the box.

    ``fields``: the call's caller number and name and dialled number, known only to the
    process that recorded the call (the store keeps them sealed). Without them, the
    body carries the row's sealed copy as ``personal_sealed`` (hex) and the fields are
    None until a reader with the practice key opens it (:func:`personal.reveal`)."""
    meta = row.meta or {}
    if fields is None:
        fields = personal.fields()
        if row.personal is not None:
            fields[personal.SEALED_KEY] = bytes(row.personal).hex()
    # From the sample clock, not from wall-clock times that a clock step can move.
    dur = None
    if row.end_sample is not None and row.offhook_sample is not None:
        dur = round((row.end_sample - row.offhook_sample) / row.rate, 3)
    elif row.end_time is not None and row.offhook_time is not None:
        dur = round(row.end_time - row.offhook_time, 3)
    return {
        "call_id": row.id, "device": row.device, "line": row.line,
        "direction": row.direction, "start": iso(row.start_time),
        "offhook": iso(row.offhook_time), "end": iso(row.end_time), "duration_s": dur,
        "pauses": [{"start": p["start"], "end": p["end"]} for p in meta.get("pauses", [])],
        "announcement": meta.get("announcement"),
        **fields, "masked_dtmf": meta.get("masked_dtmf", []),
        "flashes": meta.get("flashes", []), "gaps": meta.get("gaps", []),
        "recording_ended": meta.get("recording_ended"), "rollover_of": meta.get("rollover_of"),
        "end_reason": meta.get("end_reason"), "recovered": meta.get("recovered", False),
        "clock_synchronised": meta.get("clock_synchronised", True),
        "codec": row.codec, "rate": row.rate, "first_sample": row.first_sample,
        "samples": sum(s.samples for s in segs), "ring": iso(row.ring_time),
        "segments": [{"seq": s.seq, "sha256": s.sha256, "size": s.size,
                      "first_sample": s.first_sample, "samples": s.samples} for s in segs],
    }
