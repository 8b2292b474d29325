"""Synthetic stored calls for the portal's paging tests and bench: real sealed, signed
manifests (HPKE to the practice key, Ed25519 by a box identity, 18 segments listed
each: a 3-minute call), written to the object store, with the ``UCall`` rows to insert.
No segments are stored: the list, the index and search need only the manifests."""

from __future__ import annotations

import secrets
import time

from recorder.evidence import keys, segfile
from recorder.evidence.chain import chain_of
from recorder.timebase import iso


def synthetic(n: int, ident, pub, objects, rng, *, site: str, device: str, number: str,
              every: int = 997, days: float = 90.0) -> list[dict]:
    """``n`` calls of ``device`` spread over the last ``days`` (at least an hour ago);
    call ``k`` has ``number`` (caller if inbound, dialled if outbound) when
    ``k % every == 0``, else another number that never equals it. Returns the UCall
    rows (``site``, 90-day deadlines) for ``UCall.insert_many``."""
    rows = []
    now = time.time()
    suite = segfile.suite_ids()
    signer = keys.raw_public(ident.public_key()).hex()
    for k in range(n):
        call = f"B{k:06d}-L{k % 2}-{secrets.token_hex(3)}"
        start = now - rng.uniform(3600, days * 86400)
        segs = [{"seq": s, "sha256": secrets.token_hex(32), "size": 40000 + s}
                for s in range(18)]
        header = {"v": 1, "kind": "manifest", "device": device, "call": call,
                  "created": iso(start + 180), "recovered": False, "signer": signer,
                  "suite": suite, "segments": segs,
                  "chain_head": chain_of(device, call, [bytes.fromhex(s["sha256"])
                                                        for s in segs]).hex()}
        inbound = k % 3 != 0
        other = f"0163296{int(rng.integers(1000, 10**4)):04d}"
        num = number if k % every == 0 else (other if other != number else "01632961000")
        body = {"call_id": call, "device": device, "line": k % 2,
                "direction": "inbound" if inbound else "outbound", "start": iso(start),
                "offhook": iso(start + 0.5), "end": iso(start + 180), "duration_s": 179.5,
                "pauses": [], "announcement": None,
                "caller_number": num if inbound else None, "caller_name": None,
                "dialled_digits": "" if inbound else num, "masked_dtmf": [], "flashes": [],
                "gaps": [], "codec": "flac", "rate": 8000, "first_sample": 0,
                "samples": 180 * 8000,
                "segments": [dict(s, first_sample=s["seq"] * 80000, samples=80000)
                             for s in segs]}
        blob = segfile.seal(segfile.KIND_MANIFEST, header, segfile.canonical(body), pub,
                            signer=ident)
        key = f"man/{device}/{call}.ltm"
        objects.put(key, blob, durable=False)
        rows.append({"device": device, "call": call, "site": site, "start_time": start,
                     "deadline": start + 90 * 86400, "manifest_key": key,
                     "manifest_sha256": "", "expected": segs})
    return rows
