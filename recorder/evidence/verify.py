"""Verify stored calls: hashes, chain, manifest signature and signer. No practice key needed."""

from __future__ import annotations

import re
from pathlib import Path

from recorder.evidence import chain as evidence
from recorder.evidence.chain import Expected, Found, Verdict

SEG_NAME = re.compile(r"^(\d{5})\.seg$")


def found_files(call_dir: Path) -> dict[int, Found]:
    """Every ``NNNNN.seg`` file in a call's folder, read whole."""
    out: dict[int, Found] = {}
    if not call_dir.is_dir():
        return out
    for p in call_dir.iterdir():
        m = SEG_NAME.match(p.name)
        if m:
            out[int(m.group(1))] = Found.from_bytes(int(m.group(1)), p.read_bytes())
    return out


def verify_call(store, row, device_key) -> tuple[Verdict, dict]:
    """Verdict for one call row, plus the manifest header (empty if none)."""
    if row.state == "missed":
        return Verdict("verified", ["missed call: no audio"]), {}
    segs = store.segments_of(row.id)
    call_dir = store.call_dir(row.id, row.start_time or 0)
    if segs:
        call_dir = store.abs(segs[0].path).parent
    found = found_files(call_dir)
    if row.state == "active":
        exp = [Expected(s.seq, s.sha256, s.size) for s in segs]
        problems = evidence.diagnose(exp, {k: v for k, v in found.items()
                                           if k < len(exp)})
        return Verdict("failed" if problems else "in_progress",
                       problems or ["call in progress: no manifest yet"]), {}
    if not row.manifest:
        return Verdict("failed", ["manifest missing"]), {}
    mpath = store.abs(row.manifest)
    try:
        mdata = mpath.read_bytes()
    except FileNotFoundError:
        return Verdict("failed", ["manifest missing"]), {}
    header, problems = evidence.check_manifest(mdata, row.id, row.device, device_key)
    exp = evidence.expected_from_manifest(header) if header else []
    if not header:
        exp = [Expected(s.seq, s.sha256, s.size) for s in segs]
    problems += evidence.diagnose(exp, found)
    if header and len(segs) != len(exp):
        problems.append(f"database lists {len(segs)} segment(s), manifest {len(exp)}")
    if not problems and device_key is None:
        # Intact and signed, but by a key only the manifest itself names.
        from recorder.evidence.trust import UNVERIFIABLE
        return Verdict("unverifiable", [UNVERIFIABLE]), header
    return Verdict("failed" if problems else "verified", problems), header
