"""Encrypted segment and manifest files (format version 1; see docs/formats.md).

Layout of every file::

    0   4  magic  b"LTAP"
    4   1  format version (1)
    5   1  kind (1 = segment, 2 = manifest, 3 = a call's personal data on the box)
    6   4  header length H, unsigned big-endian
    10  H  header: canonical JSON (UTF-8, sorted keys, no spaces)
    ..  32 HPKE encapsulated key (X25519)
    ..  n  AEAD ciphertext of the payload, with its 16-byte tag
    ..  64 Ed25519 signature (manifests only) over every byte before it

The payload is sealed with HPKE (RFC 9180) base mode, single shot, to the practice's
X25519 public key. ``info`` is ``b"linetap-v1"`` followed by the 10-byte preamble and the
header, so a header cannot be moved onto another payload. The suite ids are in the
header. Only the practice private key can open a payload; the box cannot decrypt its
own recordings.

A segment whose header has a ``key`` field (the journal's records, :class:`ContentKey`)
is sealed in two steps instead: a fresh content key, sealed once with HPKE to the
practice key, is carried in the header, and the payload is the suite's AEAD under that
key with the segment's ``seq`` as nonce and ``b"linetap-v1"`` + preamble as associated
data; there is no ``enc`` field. One HPKE operation then serves a run of records
(the journal of one segment in progress) instead of one per half second of audio.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from recorder.errors import SegmentFormatError

MAGIC = b"LTAP"
VERSION = 1
KIND_SEGMENT, KIND_MANIFEST, KIND_PERSONAL = 1, 2, 3
INFO_PREFIX = b"linetap-v1"
ENC_LEN = 32
TAG_LEN = 16
SIG_LEN = 64
MAX_HEADER = 4 * 1024 * 1024
_PRE = struct.Struct(">4sBBI")

# RFC 9180 registry ids, written into headers so a reader knows the suite.
KEM_X25519 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEADS = {"chacha20poly1305": (0x0003, hpke.AEAD.CHACHA20_POLY1305),
         "aes128gcm": (0x0001, hpke.AEAD.AES_128_GCM)}
_AEAD_BY_ID = {v[0]: v[1] for v in AEADS.values()}
# The same AEADs used directly under a content key: id -> (key length, class).
_CONTENT_AEAD = {0x0003: (32, ChaCha20Poly1305), 0x0001: (16, AESGCM)}
KEY_INFO = INFO_PREFIX + b" content-key"     # HPKE info when sealing a content key
NONCE_LEN = 12


def canonical(obj) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def suite_ids(aead: str = "chacha20poly1305") -> dict:
    return {"kem": KEM_X25519, "kdf": KDF_HKDF_SHA256, "aead": AEADS[aead][0]}


def _suite(ids: dict) -> hpke.Suite:
    if not isinstance(ids, dict):
        raise SegmentFormatError(f"HPKE suite {ids!r} is not an object")
    if ids.get("kem") != KEM_X25519 or ids.get("kdf") != KDF_HKDF_SHA256 \
            or ids.get("aead") not in _AEAD_BY_ID:
        raise SegmentFormatError(f"unsupported HPKE suite {ids}")
    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, _AEAD_BY_ID[ids["aead"]])


@dataclass(frozen=True)
class Parsed:
    kind: int
    header: dict
    preamble: bytes       # magic..header: what ``info`` binds and the signature covers
    sealed: bytes         # enc || ciphertext
    signature: bytes | None


def seal(kind: int, header: dict, payload: bytes, public_key: x25519.X25519PublicKey,
         signer: ed25519.Ed25519PrivateKey | None = None) -> bytes:
    """Build a complete file: preamble, header, HPKE-sealed payload, optional signature."""
    hdr = canonical(header)
    pre = _PRE.pack(MAGIC, VERSION, kind, len(hdr)) + hdr
    sealed = _suite(header["suite"]).encrypt(payload, public_key, info=INFO_PREFIX + pre)
    body = pre + sealed
    if signer is not None:
        body += signer.sign(body)
    return body


class ContentKey:
    """A fresh AEAD key, sealed once to the practice public key, for many payloads.

    Each :meth:`seal` makes a complete kind-1 file whose header carries the sealed key
    (``key``, hex of HPKE ``enc || ct``) and whose payload is the suite's AEAD under the
    key, nonce = the header's ``seq`` (12 bytes big-endian). A key seals at most one
    payload per seq; the writer makes a new one for every segment in progress, whose
    records all have different seqs. The key lives in memory only.
    """

    def __init__(self, suite_ids: dict, public_key: x25519.X25519PublicKey):
        n, cls = _CONTENT_AEAD[suite_ids["aead"]]
        key = os.urandom(n)
        self.suite = suite_ids
        self.sealed_key = _suite(suite_ids).encrypt(key, public_key, info=KEY_INFO).hex()
        self._aead = cls(key)
        self._used: set[int] = set()

    def seal(self, header: dict, payload: bytes) -> bytes:
        seq = header["seq"]
        if seq in self._used:
            raise ValueError(f"content key already sealed seq {seq}")   # nonce reuse
        self._used.add(seq)
        hdr = canonical(dict(header, key=self.sealed_key, suite=self.suite))
        pre = _PRE.pack(MAGIC, VERSION, KIND_SEGMENT, len(hdr)) + hdr
        return pre + self._aead.encrypt(_nonce(seq), payload, INFO_PREFIX + pre)


def _keyed(kind: int, header: dict) -> bool:
    """Is this a segment sealed under a content key (:class:`ContentKey`)?"""
    return kind == KIND_SEGMENT and "key" in header


def _nonce(seq) -> bytes:
    if type(seq) is not int or not 0 <= seq < 1 << 32:
        raise SegmentFormatError(f"seq {seq!r} is not 0..2^32-1")
    return seq.to_bytes(NONCE_LEN, "big")


def parse(data: bytes, *, signed: bool | None = None) -> Parsed:
    """Split a file into its parts, checking the structure (not the crypto)."""
    if len(data) < _PRE.size:
        raise SegmentFormatError(f"file too short ({len(data)} bytes)")
    magic, version, kind, hlen = _PRE.unpack_from(data)
    if magic != MAGIC:
        raise SegmentFormatError("bad magic: not a Linetap file")
    if version != VERSION:
        raise SegmentFormatError(f"format version {version} is not supported")
    if kind not in (KIND_SEGMENT, KIND_MANIFEST, KIND_PERSONAL):
        raise SegmentFormatError(f"unknown kind {kind}")
    if hlen > MAX_HEADER or _PRE.size + hlen > len(data):
        raise SegmentFormatError("header length runs past the end of the file")
    pre = data[: _PRE.size + hlen]
    try:
        header = json.loads(pre[_PRE.size:])
    except (ValueError, RecursionError) as exc:
        raise SegmentFormatError("header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise SegmentFormatError("header is not a JSON object")
    if signed is None:
        signed = kind == KIND_MANIFEST
    tail = SIG_LEN if signed else 0
    enc_len = 0 if _keyed(kind, header) else ENC_LEN
    if len(data) < len(pre) + enc_len + TAG_LEN + tail:
        raise SegmentFormatError("file is truncated")
    sealed = data[len(pre): len(data) - tail]
    sig = data[len(data) - tail:] if signed else None
    return Parsed(kind, header, pre, sealed, sig)


def open_payload(p: Parsed, private_key: x25519.X25519PrivateKey) -> bytes:
    """Decrypt and authenticate the payload with the practice private key."""
    from cryptography.exceptions import InvalidTag
    suite = _suite(p.header.get("suite", {}))
    try:
        if not _keyed(p.kind, p.header):
            return suite.decrypt(p.sealed, private_key, info=INFO_PREFIX + p.preamble)
        sealed_key = p.header["key"]
        if not isinstance(sealed_key, str) or len(sealed_key) > 256:
            raise SegmentFormatError("content key is not a hex string")
        try:
            sealed_key = bytes.fromhex(sealed_key)
        except ValueError as exc:
            raise SegmentFormatError("content key is not a hex string") from exc
        n, cls = _CONTENT_AEAD[p.header["suite"]["aead"]]
        try:
            key = suite.decrypt(sealed_key, private_key, info=KEY_INFO)
        except (InvalidTag, ValueError) as exc:     # ValueError: too short for enc + tag
            raise SegmentFormatError("content key does not open: wrong key, or the file "
                                     "was altered") from exc
        if len(key) != n:
            raise SegmentFormatError(f"content key is {len(key)} bytes, not {n}")
        return cls(key).decrypt(_nonce(p.header.get("seq")), p.sealed,
                                INFO_PREFIX + p.preamble)
    except InvalidTag as exc:
        raise SegmentFormatError("payload does not decrypt: wrong key, or the file was "
                                 "altered") from exc


def check_signature(p: Parsed, public_key: ed25519.Ed25519PublicKey) -> bool:
    from cryptography.exceptions import InvalidSignature
    if p.signature is None:
        return False
    try:
        public_key.verify(p.signature, p.preamble + p.sealed)
        return True
    except InvalidSignature:
        return False
