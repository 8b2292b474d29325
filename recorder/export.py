"""Export calls as WAV + JSON (design brief §4), verifying before writing.

Writes ``OUT/<call_id>.wav`` (16-bit PCM mono at the capture rate, paused spans as exact
zeros of their true length) and ``OUT/<call_id>.json``. A call that fails verification
is still exported as far as its authentic segments allow, with
``integrity.status = "failed"`` and the precise problems in ``integrity.detail``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder import codec, segfile
from recorder.errors import SegmentFormatError
from recorder.fsutil import atomic_write
from recorder.timebase import iso
from recorder.verify import verify_call
from recorder.writer import manifest_body

log = logging.getLogger(__name__)


def call_audio(store, row, private_key) -> tuple[np.ndarray, list[str]]:
    """Decrypt and decode every readable segment into one int16 array."""
    problems: list[str] = []
    parts = []
    for s in store.segments_of(row.id):
        try:
            data = store.abs(s.path).read_bytes()
            p = segfile.parse(data, signed=False)
            pcm = codec.decode(segfile.open_payload(p, private_key), p.header["samples"],
                               p.header.get("codec", row.codec))
            parts.append((int(p.header["first_sample"]), pcm))
        except (OSError, SegmentFormatError, KeyError) as exc:
            problems.append(f"segment {s.seq} not exported: {exc}")
    if not parts:
        return np.zeros(0, np.int16), problems
    first = row.first_sample if row.first_sample is not None else parts[0][0]
    end = max(a + len(p) for a, p in parts)
    out = np.zeros(end - first, dtype=np.int16)
    for a, pcm in parts:
        if a >= first:
            out[a - first:a - first + len(pcm)] = pcm
    return out, problems


def call_json(store, row, header: dict, private_key, verdict) -> dict:
    """The export JSON: from the signed manifest when it opens, else from the store."""
    body = None
    if row.manifest:
        try:
            p = segfile.parse(store.abs(row.manifest).read_bytes())
            body = json.loads(segfile.open_payload(p, private_key))
        except (OSError, SegmentFormatError, ValueError):
            body = None
    if body is None:
        body = manifest_body(row, store.segments_of(row.id))
    segs = body.pop("segments", [])
    out = dict(body)
    out["segments"] = len(segs)
    out["segment_list"] = segs
    out["integrity"] = {"status": verdict.status, "detail": verdict.detail}
    return out


def export_calls(store, private_key, out_dir, ids=None, number=None, device_key=None,
                 data_dir=None) -> tuple[list[dict], int]:
    """Export the chosen calls (all with audio by default). Returns (summaries, failures)."""
    from recorder import audit
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = store.calls(ids=ids or None, number=number)
    if ids:
        missing = set(ids) - {r.id for r in rows}
        if missing:
            from recorder.errors import StoreError
            raise StoreError(f"no such call(s): {', '.join(sorted(missing))}")
    done, failures = [], 0
    for row in rows:
        if row.state == "missed" and not ids and not number:
            continue
        verdict, header = verify_call(store, row, device_key)
        pcm, problems = (np.zeros(0, np.int16), []) if row.state == "missed" else \
            call_audio(store, row, private_key)
        if problems:
            verdict.status = "failed"
            verdict.problems += problems
        meta = call_json(store, row, header, private_key, verdict)
        if row.state != "missed":
            wav = out / f"{row.id}.wav"
            tmp = out / f".{row.id}.wav.part"
            sf.write(str(tmp), pcm, row.rate, format="WAV", subtype="PCM_16")
            tmp.replace(wav)
            meta["start"] = iso(row.start_time)
        atomic_write(out / f"{row.id}.json",
                     (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(), mode=0o640)
        if verdict.status == "failed":
            failures += 1
            log.error("call %s failed verification: %s", row.id, verdict.detail)
        done.append({"call_id": row.id, "status": verdict.status,
                     "duration_s": meta.get("duration_s")})
    if data_dir is not None:
        audit.record(data_dir, "export", calls=len(done), failed=failures,
                     by_number=bool(number), out=str(out))
    return done, failures
