"""Export calls as WAV + JSON (fields in docs/formats.md, "Manifest"), verifying first.

Writes ``OUT/<call_id>.wav`` (16-bit PCM mono at the capture rate, paused spans as exact
zeros of their true length) and ``OUT/<call_id>.json``. A call that fails verification
is still exported as far as its authentic segments allow, with
``integrity.status = "failed"`` and the precise problems in ``integrity.detail``. With
no trusted identity key (:mod:`recorder.evidence.trust`) an otherwise intact call is
``"unverifiable"``, never ``"verified"``.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.errors import SegmentFormatError
from recorder.evidence import codec, personal, segfile
from recorder.evidence.manifest import manifest_body
from recorder.evidence.verify import verify_call
from recorder.fsutil import atomic_write
from recorder.timebase import iso

log = logging.getLogger(__name__)

MAX_SAMPLE = 1 << 48                       # sample indexes beyond this are nonsense
MAX_CALL_SAMPLES = 86400 * 16000           # the longest call part config allows


def decode_segments(blobs, private_key, first_sample: int | None, default_codec: str
                    ) -> tuple[np.ndarray, list[str]]:
    """Decrypt and decode segment files (``(seq, bytes)`` pairs) into one int16 array.

    Each segment is placed at its header's ``first_sample``, relative to
    ``first_sample`` (the call's first recorded sample); gaps stay zero.
    """
    problems: list[str] = []
    parts = []
    for seq, data in blobs:
        try:
            p = segfile.parse(data, signed=False)
            a = p.header.get("first_sample")
            if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < MAX_SAMPLE:
                raise SegmentFormatError(f"first_sample {a!r} is not a sample index")
            pcm = codec.decode(segfile.open_payload(p, private_key), p.header.get("samples"),
                               p.header.get("codec", default_codec))
            parts.append((a, pcm))
        except SegmentFormatError as exc:
            problems.append(f"segment {seq} not exported: {exc}")
    first = first_sample if first_sample is not None else \
        min((a for a, _ in parts), default=0)
    # A call part is never longer than the longest max_call_s allows; a segment placed
    # beyond that is reported, not allocated for.
    keep, parts = parts, []
    for a, pcm in keep:
        if a < first or a + len(pcm) - first > MAX_CALL_SAMPLES:
            problems.append(f"segment at sample {a} lies outside the call")
        else:
            parts.append((a, pcm))
    if not parts:
        return np.zeros(0, np.int16), problems
    end = max(a + len(p) for a, p in parts)
    out = np.zeros(end - first, dtype=np.int16)
    for a, pcm in parts:
        if a >= first:
            out[a - first:a - first + len(pcm)] = pcm
    return out, problems


def open_manifest(data: bytes | None, private_key) -> dict | None:
    """The sealed metadata of a manifest file, or None if it does not open. A manifest
    signed without the personal fields in memory has them put back from its
    ``personal_sealed`` copy (:func:`recorder.evidence.personal.reveal`)."""
    if data is None:
        return None
    try:
        body = json.loads(segfile.open_payload(segfile.parse(data), private_key))
    except (SegmentFormatError, ValueError):
        return None
    return personal.reveal(body, private_key) if isinstance(body, dict) else None


def export_json(body: dict, start_time: float | None, status: str, detail: str) -> dict:
    """The export JSON from a manifest body (fields in docs/formats.md, "Manifest")."""
    out = dict(body)
    segs = out.pop("segments", [])
    out["segments"] = len(segs)
    out["segment_list"] = segs
    if start_time is not None:
        out["start"] = iso(start_time)
    out["integrity"] = {"status": status, "detail": detail}
    return out


def write_call(out_dir: Path, call_id: str, pcm: np.ndarray | None, rate: int,
               meta: dict) -> None:
    """Write ``<call_id>.wav`` (unless ``pcm`` is None) and ``<call_id>.json``, both mode
    0600: they are a patient's call in clear, readable by the person who exported them
    and nobody else on that machine. Written whole (temp, fsync, rename)."""
    if pcm is not None:
        wav = io.BytesIO()
        sf.write(wav, pcm, rate, format="WAV", subtype="PCM_16")
        atomic_write(out_dir / f"{call_id}.wav", wav.getvalue(), mode=0o600)
    atomic_write(out_dir / f"{call_id}.json",
                 (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)


def _blobs(store, row):
    for s in store.segments_of(row.id):
        try:
            yield s.seq, store.abs(s.path).read_bytes()
        except OSError:
            continue


def _key_opens_any(store, rows, private_key) -> bool:
    """False only if calls with segments were chosen and the key opens the first
    segment of none of them (a wrong key must be an error, not a folder of silence)."""
    tried = False
    for row in rows:
        for _seq, data in _blobs(store, row):
            tried = True
            try:
                segfile.open_payload(segfile.parse(data, signed=False), private_key)
                return True
            except (SegmentFormatError, ValueError):
                pass
            break
    return not tried


def export_calls(store, private_key, out_dir, ids=None, number=None, device_key=None,
                 data_dir=None) -> tuple[list[dict], int]:
    """Export the chosen calls (all with audio by default). Returns (summaries, failures)."""
    from recorder.evidence import audit
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = store.calls(ids=ids or None)
    if number:
        rows, unreadable = personal.with_number(rows, private_key, number)
        if unreadable:
            from recorder.errors import KeyFileError
            raise KeyFileError(f"the personal data of {unreadable} call(s) did not open "
                               "with this practice key, so the search by number is "
                               "incomplete: nothing was exported")
    if ids:
        missing = set(ids) - {r.id for r in rows}
        if missing:
            from recorder.errors import StoreError
            raise StoreError(f"no such call(s): {', '.join(sorted(missing))}")
    if not _key_opens_any(store, rows, private_key):
        from recorder.errors import KeyFileError
        raise KeyFileError(f"the practice key opens none of the {len(rows)} call(s) chosen: "
                           "wrong key? Nothing was exported")
    done, failures = [], 0
    for row in rows:
        if row.state == "missed" and not ids and not number:
            continue
        verdict, _header = verify_call(store, row, device_key)
        pcm, problems = None, []
        if row.state != "missed":
            pcm, problems = decode_segments(_blobs(store, row), private_key, row.first_sample,
                                            row.codec)
        if problems:
            verdict.status = "failed"
            verdict.problems += problems
            if pcm is not None and pcm.size == 0:
                pcm = None     # nothing opened: no empty WAV that passes for a silent call
        mdata = None
        if row.manifest:
            try:
                mdata = store.abs(row.manifest).read_bytes()
            except OSError:
                mdata = None
        body = open_manifest(mdata, private_key) or personal.reveal(
            manifest_body(row, store.segments_of(row.id)), private_key)
        meta = export_json(body, row.start_time, verdict.status, verdict.detail)
        write_call(out, row.id, pcm, row.rate, meta)
        if verdict.status == "failed":
            failures += 1
            log.error("call %s failed verification: %s", row.id, verdict.detail)
        elif verdict.status == "unverifiable":
            log.warning("call %s is unverifiable: %s", row.id, verdict.detail)
        done.append({"call_id": row.id, "status": verdict.status,
                     "duration_s": meta.get("duration_s")})
    if data_dir is not None:
        audit.record(data_dir, "export", calls=len(done), failed=failures,
                     by_number=bool(number), out=str(out))
    return done, failures
