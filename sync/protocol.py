"""Wire format between the box and the upstream (MQTT v5 topics and payloads).

Topics, under ``<prefix>/<site>/<device>/`` (one subtree per device, enforced by the
broker ACL; see docs/sync.md):

=================  =======  ===================================================
``seg/<call>/<n>``  box->up  one chunk of segment file ``n`` of ``call``
``man/<call>``      box->up  one chunk of the call's signed manifest file
``status``          box->up  retained ``online`` / ``offline`` (last will)
``health``          box->up  JSON health (disk, backlog, lines, overruns, version)
``report``          box->up  JSON results of upstream commands (applied / rejected)
``audit``           box->up  JSON batch of the box's signed audit entries (in order)
``ack``             up->box  JSON application-level acks after a durable write
``cmd``             up->box  signed command envelope (:mod:`sync.signed_commands`)
=================  =======  ===================================================

Every ``seg``/``man`` payload starts with a fixed 44-byte chunk header so a chunk
carries its own identity even if a broker strips MQTT user properties::

    0   4  magic b"LTC1"
    4   2  chunk index, unsigned big-endian (0-based)
    6   2  chunk count (1..65535)
    8   4  total size of the whole file in bytes
    12 32  sha256 of the whole file
    44  .. chunk bytes
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from recorder.errors import ProtocolError

CHUNK_MAGIC = b"LTC1"
_HDR = HEADER = struct.Struct(">4sHHI32s")
HEADER_LEN = _HDR.size
MAX_PAYLOAD = 128 * 1024          # bytes per MQTT message, header included


@dataclass(frozen=True)
class Chunk:
    index: int
    count: int
    total: int
    sha256: str      # hex
    data: bytes


def split(blob: bytes, max_payload: int = MAX_PAYLOAD, sha256: str | None = None
          ) -> list[bytes]:
    """Split a file into MQTT payloads of at most ``max_payload`` bytes each.

    ``sha256`` (hex), if given, is the file's known hash (the box's row for a segment
    file, which is never rewritten): it goes into the headers instead of hashing the
    file again. If the file no longer matches it, the upstream drops the reassembled
    file (size or sha256 mismatch), which is what a damaged file deserves."""
    room = min(max_payload, MAX_PAYLOAD) - HEADER_LEN
    if room <= 0:
        raise ProtocolError(f"chunk size {max_payload} leaves no room for data")
    sha = bytes.fromhex(sha256) if sha256 else hashlib.sha256(blob).digest()
    if len(sha) != 32:
        raise ProtocolError("sha256 must be 32 bytes")
    n = max(1, -(-len(blob) // room))
    if n > 0xFFFF:
        raise ProtocolError(f"file of {len(blob)} bytes needs too many chunks")
    if n == 1:
        return [_HDR.pack(CHUNK_MAGIC, 0, 1, len(blob), sha) + blob]
    view = memoryview(blob)
    return [b"".join((_HDR.pack(CHUNK_MAGIC, i, n, len(blob), sha),
                      view[i * room:(i + 1) * room])) for i in range(n)]


def parse_chunk(payload: bytes) -> Chunk:
    """Decode one chunk payload; raise :class:`ProtocolError` if malformed."""
    if len(payload) < HEADER_LEN:
        raise ProtocolError("chunk shorter than its header")
    magic, idx, count, total, sha = _HDR.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise ProtocolError("bad chunk magic")
    if count == 0 or idx >= count:
        raise ProtocolError(f"chunk index {idx} of {count}")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError("chunk larger than 128 KiB")
    return Chunk(idx, count, total, sha.hex(), bytes(payload[HEADER_LEN:]))


def tcp_nodelay(client, userdata, sock) -> None:
    """paho ``on_socket_open``: turn Nagle's algorithm off. Acks and PUBACKs are small
    packets that the windowed protocol waits for; with Nagle on, one can sit in the
    kernel until the peer's delayed ACK (tens of ms) instead of leaving at once."""
    import socket
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass                          # not a TCP socket (e.g. a test double)


# -- topics -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topic:
    prefix: str
    site: str
    device: str
    kind: str                    # seg | man | status | health | report | audit | ack | cmd
    call: str | None = None
    seq: int | None = None


def base(prefix: str, site: str, device: str) -> str:
    return f"{prefix}/{site}/{device}"


def seg_topic(prefix, site, device, call, seq) -> str:
    return f"{base(prefix, site, device)}/seg/{call}/{seq}"


def man_topic(prefix, site, device, call) -> str:
    return f"{base(prefix, site, device)}/man/{call}"


def parse_topic(topic: str) -> Topic:
    """Split a topic into its parts; raise :class:`ProtocolError` for an unknown shape."""
    parts = topic.split("/")
    if len(parts) < 4 or not all(parts[:4]):
        raise ProtocolError(f"topic {topic!r} has no site/device/kind")
    prefix, site, device, kind = parts[:4]
    rest = parts[4:]
    try:
        if kind == "seg" and len(rest) == 2:
            return Topic(prefix, site, device, kind, rest[0], int(rest[1]))
        if kind == "man" and len(rest) == 1:
            return Topic(prefix, site, device, kind, rest[0])
    except ValueError:
        raise ProtocolError(f"topic {topic!r}: bad segment number") from None
    if kind in ("status", "health", "report", "audit", "ack", "cmd") and not rest:
        return Topic(prefix, site, device, kind)
    raise ProtocolError(f"topic {topic!r} is not a Linetap topic")


# -- acks ---------------------------------------------------------------------------------------
ACK_KEYS = ("segs", "mans", "conflicts", "rejected", "audit", "audit_refused")


def ack_payload(segs=(), mans=(), conflicts=(), rejected=(), audit=(), audit_refused=()
                ) -> bytes:
    """``segs``: (call, seq, sha256); ``mans``: (call, sha256); ``conflicts``: like segs;
    ``rejected``: (call, reason) for manifests the upstream refused; ``audit``: (seq,
    hash) of box audit entries stored durably (or already held); ``audit_refused``:
    (seq, reason) of the first box audit entry refused. The audit keys are left out
    when empty, so an ack without them reads the same to a box from before them."""
    body = {"segs": [list(s) for s in segs], "mans": [list(m) for m in mans],
            "conflicts": [list(c) for c in conflicts],
            "rejected": [list(r) for r in rejected]}
    if audit:
        body["audit"] = [list(a) for a in audit]
    if audit_refused:
        body["audit_refused"] = [list(a) for a in audit_refused]
    return json.dumps(body, separators=(",", ":")).encode()


def parse_ack(payload: bytes) -> dict:
    try:
        d = json.loads(payload)
        out = {"segs": [(str(c), int(s), str(h)) for c, s, h in d.get("segs", [])],
               "mans": [(str(c), str(h)) for c, h in d.get("mans", [])],
               "conflicts": [(str(c), int(s), str(h)) for c, s, h in d.get("conflicts", [])],
               "rejected": [(str(c), str(r)) for c, r in d.get("rejected", [])],
               "audit": [(int(s), str(h)) for s, h in d.get("audit", [])],
               "audit_refused": [(int(s), str(r)) for s, r in d.get("audit_refused", [])]}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed ack: {exc}") from exc
    return out


# -- the box's audit entries -------------------------------------------------------------------
def audit_topic(prefix, site, device) -> str:
    return f"{base(prefix, site, device)}/audit"


def audit_payload(entries: list[dict]) -> bytes:
    """A batch of audit entries, oldest first, exactly as the box's log holds them."""
    return json.dumps({"entries": entries}, sort_keys=True, separators=(",", ":")).encode()


def parse_audit(payload: bytes) -> list[dict]:
    """The entries of an ``audit`` message; :class:`ProtocolError` if it is not one."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError("audit message larger than 128 KiB")
    try:
        entries = json.loads(payload)["entries"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ProtocolError(f"malformed audit message: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ProtocolError("malformed audit message: entries must be a list of objects")
    return entries
