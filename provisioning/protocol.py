"""Provisioning wire protocol: frames on the USB serial gadget.

One frame, all integers big-endian (layout documented in ``docs/provisioning.md``)::

    offset size field
    0      2    magic        b"LT" (0x4C 0x54)
    2      1    version      protocol version, 1
    3      1    type         REQUEST 0x01, RESPONSE 0x02, ERROR 0x03
    4      2    seq          chosen by the sender of a request, echoed in the reply (0..65535)
    6      4    length       payload length in bytes (0..MAX_PAYLOAD)
    10     2    header_crc   low 16 bits of CRC-32 over bytes 0..9
    12     n    payload      UTF-8 JSON object
    12+n   4    crc          CRC-32 over bytes 0..12+n-1 (header and payload)

The header CRC exists so that a corrupted length cannot make the receiver wait for
megabytes that will never come: a header is believed only when its own CRC is right,
otherwise the parser drops one byte and hunts for the next magic.

:class:`FrameParser` is a pure, incremental decoder: bytes in, events out. It never
raises on input and never buffers more than ``HEADER_SIZE + MAX_PAYLOAD + 4`` bytes.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from recorder.errors import ProtocolError

MAGIC = b"LT"
VERSION = 1
MAX_PAYLOAD = 256 * 1024
"""Largest payload in bytes. Configs, PEM keys and certificates are a few KiB each."""

T_REQUEST = 0x01
T_RESPONSE = 0x02
T_ERROR = 0x03
TYPES = {T_REQUEST: "request", T_RESPONSE: "response", T_ERROR: "error"}

_HEAD = struct.Struct(">2sBBHI")  # magic, version, type, seq, length
HEADER_SIZE = _HEAD.size + 2       # plus the 16-bit header CRC
TRAILER_SIZE = 4

# Error codes carried in ERROR frames ({"code": ..., "message": ..., ...}).
E_BAD_FRAME = "bad_frame"            # garbage or a header that does not check
E_BAD_CRC = "bad_crc"                # header fine, payload CRC wrong
E_BAD_VERSION = "unsupported_version"
E_TOO_LARGE = "too_large"            # length above MAX_PAYLOAD
E_BAD_TYPE = "bad_type"              # not a REQUEST where one was expected
E_BAD_JSON = "bad_json"              # payload is not a UTF-8 JSON object
E_UNKNOWN_COMMAND = "unknown_command"
E_BAD_ARGS = "bad_args"
E_PRESENCE = "presence_required"     # state change outside provisioning mode
E_CONFIG = "config_invalid"          # with "problems": [...]
E_KEY = "key_invalid"
E_NOT_RUNNING = "recorder_not_running"
E_RECORDER = "recorder_error"        # the recorder answered ok=false
E_CONFIRM = "confirmation_required"  # factory reset code missing, wrong or expired
E_IO = "io_error"
E_INTERNAL = "internal"
E_PRESENCE_EXPIRED = "presence_expired"   # the window opened, then timed out or was ended
E_BUSY = "busy"                      # another session holds the box
E_UNAUTHORISED = "authorisation_required"  # protected change without a valid token
E_UNSYNCED = "unsynced_recordings"   # factory reset would destroy un-uploaded calls
E_TRANSACTION = "transaction"        # an apply journal cannot be completed

ERROR_CODES = (E_BAD_FRAME, E_BAD_CRC, E_BAD_VERSION, E_TOO_LARGE, E_BAD_TYPE, E_BAD_JSON,
               E_UNKNOWN_COMMAND, E_BAD_ARGS, E_PRESENCE, E_CONFIG, E_KEY, E_NOT_RUNNING,
               E_RECORDER, E_CONFIRM, E_IO, E_INTERNAL, E_PRESENCE_EXPIRED, E_BUSY,
               E_UNAUTHORISED, E_UNSYNCED, E_TRANSACTION)


def _crc16(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFF


def encode(ftype: int, seq: int, payload: bytes, *, version: int = VERSION) -> bytes:
    """One complete frame. ``seq`` is taken modulo 65536."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = _HEAD.pack(MAGIC, version, ftype, seq & 0xFFFF, len(payload))
    head += struct.pack(">H", _crc16(head))
    body = head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def encode_json(ftype: int, seq: int, obj: dict) -> bytes:
    """A frame whose payload is ``obj`` as compact UTF-8 JSON."""
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return encode(ftype, seq, data)


def error_frame(seq: int, code: str, message: str, **extra) -> bytes:
    """An ERROR frame carrying ``code`` (one of :data:`ERROR_CODES`) and ``message``."""
    obj = {"ok": False, "code": code, "message": message}
    obj.update(extra)
    frame = encode_json(T_ERROR, seq, obj)
    if len(frame) > HEADER_SIZE + MAX_PAYLOAD + TRAILER_SIZE:  # pragma: no cover - defensive
        frame = encode_json(T_ERROR, seq, {"ok": False, "code": code, "message": message[:200]})
    return frame


@dataclass(frozen=True)
class Frame:
    """A frame whose header and CRC checked out (the version may still be unknown)."""

    version: int
    type: int
    seq: int
    payload: bytes

    def json(self) -> dict:
        """The payload as a JSON object; :class:`ProtocolError` if it is not one."""
        try:
            obj = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"payload is not UTF-8 JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError("payload JSON is nested too deeply") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"payload is JSON {type(obj).__name__}, not an object")
        return obj


@dataclass(frozen=True)
class BadFrame:
    """Something arrived that is not a usable frame. ``seq`` is None if unknown."""

    code: str
    message: str
    seq: int | None = None


class FrameParser:
    """Incremental decoder with resynchronisation on the magic.

    Feed it any bytes with :meth:`feed`; it returns the :class:`Frame` and
    :class:`BadFrame` events completed so far. Skipped garbage is reported once per
    run of skipped bytes, as ``BadFrame(E_BAD_FRAME)``.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self._buf = bytearray()
        self._skipped = 0

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> list[BadFrame]:
        """Drop a partial frame (after a read timeout); report it if there was one."""
        n = len(self._buf) + self._skipped
        self._buf.clear()
        self._skipped = 0
        if n:
            return [BadFrame(E_BAD_FRAME, f"incomplete frame dropped after timeout ({n} bytes)")]
        return []

    def _flush_skipped(self, out: list) -> None:
        if self._skipped:
            out.append(BadFrame(E_BAD_FRAME, f"skipped {self._skipped} byte(s) of garbage "
                                "before a frame"))
            self._skipped = 0

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self._skipped += n

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        """Consume ``data``; return every event it completes, in order."""
        self._buf += data
        out: list[Frame | BadFrame] = []
        while True:
            i = self._buf.find(MAGIC)
            if i < 0:
                # Keep a trailing first magic byte: it may start the next frame.
                keep = 1 if self._buf[-1:] == MAGIC[:1] else 0
                self._skip(len(self._buf) - keep)
                break
            if i:
                self._skip(i)
            if len(self._buf) < HEADER_SIZE:
                break
            _magic, version, ftype, seq, length = _HEAD.unpack_from(self._buf)
            (hcrc,) = struct.unpack_from(">H", self._buf, _HEAD.size)
            if hcrc != _crc16(bytes(self._buf[:_HEAD.size])):
                self._skip(1)
                continue
            self._flush_skipped(out)
            if length > self.max_payload:
                del self._buf[:HEADER_SIZE]
                out.append(BadFrame(E_TOO_LARGE, f"payload length {length} exceeds "
                                    f"{self.max_payload}", seq))
                # The payload bytes that follow are skipped as garbage while hunting.
                continue
            total = HEADER_SIZE + length + TRAILER_SIZE
            if len(self._buf) < total:
                break
            body = bytes(self._buf[:HEADER_SIZE + length])
            (crc,) = struct.unpack_from(">I", self._buf, HEADER_SIZE + length)
            if crc != zlib.crc32(body):
                # Drop only the header: a real frame may start inside the bad payload.
                del self._buf[:HEADER_SIZE]
                out.append(BadFrame(E_BAD_CRC, "frame CRC mismatch", seq))
                continue
            del self._buf[:total]
            if version != VERSION:
                out.append(BadFrame(E_BAD_VERSION, f"protocol version {version} is not "
                                    f"supported (this end speaks {VERSION})", seq))
                continue
            out.append(Frame(version, ftype, seq, body[HEADER_SIZE:]))
        return out
