"""Evidence: per-call hash chains, signed manifests, and verification.

Chain (``docs/formats.md``)::

    chain_init = sha256(b"linetap-chain-v1\\0" || device || b"\\0" || call_id)
    chain_n    = sha256(chain_{n-1} || seq as 4-byte big-endian || sha256(segment file n))

The manifest file's *header* is readable without the practice key and lists every
segment's seq, size and sha256 plus the chain head and the signer's public key; the
Ed25519 signature covers the header and the sealed payload. The sealed payload holds
the call metadata. So anyone can check completeness and integrity; only the practice
can read who called.

:func:`diagnose` is the pure core: it compares what the manifest promises with the
files found and names each problem precisely ("segment 7 altered", "segments 4 and 5
swapped", "segment 3 missing", ...).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from recorder.errors import SegmentFormatError
from recorder.evidence.segfile import KIND_MANIFEST, KIND_SEGMENT, check_signature, parse

CHAIN_PREFIX = b"linetap-chain-v1\0"


def chain_init(device: str, call_id: str) -> bytes:
    return hashlib.sha256(CHAIN_PREFIX + device.encode() + b"\0" + call_id.encode()).digest()


def chain_next(prev: bytes, seq: int, seg_sha: bytes) -> bytes:
    return hashlib.sha256(prev + struct.pack(">I", seq) + seg_sha).digest()


def chain_of(device: str, call_id: str, shas: list[bytes]) -> bytes:
    c = chain_init(device, call_id)
    for seq, s in enumerate(shas):
        c = chain_next(c, seq, s)
    return c


@dataclass(frozen=True)
class Expected:
    seq: int
    sha256: str
    size: int


@dataclass
class Found:
    """A segment file as found on disk, keyed by the seq its *name* claims."""

    name_seq: int
    data: bytes | None = None
    sha256: str = ""
    header_seq: int | None = None
    header_call: str | None = None
    error: str | None = None

    @classmethod
    def from_bytes(cls, name_seq: int, data: bytes) -> Found:
        f = cls(name_seq, data, hashlib.sha256(data).hexdigest())
        try:
            p = parse(data, signed=False)
            if p.kind != KIND_SEGMENT:
                f.error = "not a segment file"
            f.header_seq = p.header.get("seq")
            f.header_call = p.header.get("call")
        except SegmentFormatError as exc:
            f.error = str(exc)
        return f


@dataclass
class Verdict:
    status: str                 # "verified" | "failed" | "in_progress" | "unverifiable"
    problems: list[str] = field(default_factory=list)

    @property
    def detail(self) -> str:
        return "; ".join(self.problems) if self.problems else "all segments, chain and " \
            "signature verified"


def diagnose(expected: list[Expected], found: dict[int, Found]) -> list[str]:
    """Compare promised segments with the files present. Pure: no I/O."""
    problems: list[str] = []
    by_sha = {e.sha256: e.seq for e in expected}
    exp = {e.seq: e for e in expected}
    reported_swaps: set[int] = set()
    for e in expected:
        f = found.get(e.seq)
        if f is None:
            moved = [x.name_seq for x in found.values()
                     if x.sha256 == e.sha256 and x.name_seq not in exp]
            problems.append(f"segment {e.seq} missing" +
                            (f" (found renamed as {moved[0]})" if moved else ""))
            continue
        if f.sha256 == e.sha256:
            continue
        other = by_sha.get(f.sha256)
        if other is not None and other != e.seq:
            g = found.get(other)
            if g is not None and g.sha256 == e.sha256:
                if e.seq not in reported_swaps:
                    a, b = sorted((e.seq, other))
                    problems.append(f"segments {a} and {b} swapped")
                    reported_swaps.update((a, b))
            else:
                problems.append(f"segment {e.seq} replaced by a copy of segment {other}")
            continue
        if f.data is not None and len(f.data) < e.size:
            problems.append(f"segment {e.seq} truncated ({len(f.data)} of {e.size} bytes)")
        elif f.data is not None and len(f.data) > e.size:
            problems.append(f"segment {e.seq} altered (extra bytes appended)")
        else:
            problems.append(f"segment {e.seq} altered")
    for seq in sorted(set(found) - set(exp)):
        f = found[seq]
        dup = by_sha.get(f.sha256)
        if dup is not None:
            problems.append(f"segment {seq} duplicates segment {dup}")
        else:
            problems.append(f"unexpected segment {seq} not in the manifest")
    return problems


def check_manifest(data: bytes, call_id: str, device: str, device_key) -> tuple[dict, list[str]]:
    """Check a manifest file's structure, call, signature and signer.

    ``device_key`` is the Ed25519 public key the call must be signed by (the box's
    identity, or the one registered upstream). Returns (header, problems).
    """
    from recorder.evidence.keys import load_ed25519_public, raw_public
    try:
        p = parse(data)
    except SegmentFormatError as exc:
        return {}, [f"manifest unreadable: {exc}"]
    h = p.header
    problems = []
    if p.kind != KIND_MANIFEST:
        return h, ["manifest file is not a manifest"]
    if h.get("call") != call_id:
        problems.append(f"manifest belongs to call {h.get('call')}, not {call_id}")
    try:
        signer = load_ed25519_public(bytes.fromhex(h.get("signer", "")))
    except (ValueError, Exception):  # noqa: BLE001 - any bad key is the same verdict
        return h, problems + ["manifest signer key unreadable"]
    if not check_signature(p, signer):
        problems.append("manifest signature invalid")
    elif device_key is not None and raw_public(signer) != raw_public(device_key):
        problems.append("signed by a different device")
    if h.get("device") != device:
        problems.append(f"manifest names device {h.get('device')}, not {device}")
    segs = h.get("segments", [])
    try:
        shas = [bytes.fromhex(s["sha256"]) for s in segs]
        if [s["seq"] for s in segs] != list(range(len(segs))):
            problems.append("manifest segment list is not in order")
        if chain_of(h.get("device", ""), h.get("call", ""), shas).hex() != h.get("chain_head"):
            problems.append("manifest chain head does not match its segment list")
    except (KeyError, TypeError, ValueError):
        problems.append("manifest segment list is malformed")
    return h, problems


def expected_from_manifest(h: dict) -> list[Expected]:
    return [Expected(int(s["seq"]), str(s["sha256"]), int(s["size"]))
            for s in h.get("segments", [])]
