"""The practice private key at rest: encrypted PKCS#8 (PBES2) under a passphrase.

File format (PEM label ``ENCRYPTED PRIVATE KEY``, RFC 5958 ``EncryptedPrivateKeyInfo``)::

    SEQUENCE {
      SEQUENCE { OID pbes2 (1.2.840.113549.1.5.13),
        SEQUENCE {
          SEQUENCE { OID pbkdf2 (1.2.840.113549.1.5.12),
            SEQUENCE { OCTET STRING salt (16 bytes), INTEGER iterations (600000),
                       SEQUENCE { OID hmacWithSHA256 (1.2.840.113549.2.9), NULL } } }
          SEQUENCE { OID aes256-CBC (2.16.840.1.101.3.4.1.42), OCTET STRING iv (16) } } }
      OCTET STRING  AES-256-CBC(key = PBKDF2-HMAC-SHA256(passphrase, salt, iterations, 32),
                                iv, PKCS#7-padded DER PrivateKeyInfo of the X25519 key) }

This is the standard OpenSSL writes with ``openssl pkcs8 -topk8 -v2 aes-256-cbc
-v2prf hmacWithSHA256 -iter 600000``; ``openssl pkcs8 -passin`` opens it, and so can a
browser with WebCrypto (``deriveKey`` PBKDF2/SHA-256 into AES-CBC, ``decrypt``, then
``importKey("pkcs8", ..., "X25519")``).

Why it is encoded here: ``cryptography`` (the project's crypto library, 51.x) refuses
``PrivateFormat.PKCS8.encryption_builder()`` ("only supported with OpenSSH and PKCS12"),
and its ``BestAvailableEncryption`` for PKCS#8 uses PBES2 with only 2048 PBKDF2
iterations. The key derivation and cipher are ``cryptography``'s; only the fixed DER
wrapper (a few nested SEQUENCEs) is written by :func:`_der`. Reading uses
``cryptography``'s own PKCS#8 parser, which accepts any iteration count.

600 000 iterations of PBKDF2-HMAC-SHA256 is OWASP's 2023 figure for that PRF: about
0.3 s per open on a PC, which only the practice's machine pays (the box never holds
this key).
"""

from __future__ import annotations

import base64
import getpass
import logging
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from recorder.errors import KeyFileError

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 600_000
MIN_PASSPHRASE = 12          # characters; refused shorter at keygen
ENCRYPTED_LABEL = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"

_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_HMAC_SHA256 = "1.2.840.113549.2.9"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


# -- DER (only the constructs EncryptedPrivateKeyInfo needs) ------------------------------
def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(ln)]) + ln + body


def _seq(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


def _oid(dotted: str) -> bytes:
    a, b, *rest = (int(x) for x in dotted.split("."))
    out = bytearray([40 * a + b])
    for v in rest:
        chunk = [v & 0x7F]
        v >>= 7
        while v:
            chunk.append(0x80 | (v & 0x7F))
            v >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _int(v: int) -> bytes:
    return _der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def _octets(b: bytes) -> bytes:
    return _der(0x04, b)


def encrypt_pkcs8(key, passphrase: bytes, iterations: int = PBKDF2_ITERATIONS) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` of ``key`` (any key ``cryptography`` can write as
    PKCS#8) under ``passphrase`` (non-empty bytes), as described in the module docstring."""
    if not passphrase:
        raise KeyFileError("an empty passphrase cannot protect a key")
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    salt, iv = os.urandom(16), os.urandom(16)
    k = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(k), modes.CBC(iv)).encryptor()
    ct = enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()
    alg = _seq(_oid(_OID_PBES2), _seq(
        _seq(_oid(_OID_PBKDF2), _seq(_octets(salt), _int(iterations),
                                     _seq(_oid(_OID_HMAC_SHA256), b"\x05\x00"))),
        _seq(_oid(_OID_AES256_CBC), _octets(iv))))
    der = _seq(alg, _octets(ct))
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return ENCRYPTED_LABEL + b"\n" + b"\n".join(lines) + b"\n-----END ENCRYPTED PRIVATE KEY-----\n"


def is_encrypted(pem: bytes) -> bool:
    return pem.lstrip().startswith(ENCRYPTED_LABEL)


# -- passphrases --------------------------------------------------------------------------
def read_passphrase_file(path: str | os.PathLike) -> bytes:
    """The passphrase in ``path``: its first line, UTF-8, without the line ending (the
    convention of ``openssl -passin file:``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"passphrase file {path} unreadable: {exc.strerror}") from exc
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise KeyFileError(f"passphrase file {path} is empty")
    return line


def get_passphrase(passphrase_file: str | os.PathLike | None, *, new: bool = False,
                   prompt=getpass.getpass, isatty=None) -> bytes:
    """The passphrase from ``passphrase_file``, or asked at the terminal.

    ``new``: for a key being written: asked twice, and at least :data:`MIN_PASSPHRASE`
    characters. Without a file and without a terminal on stdin this is an error naming
    ``--passphrase-file`` (a passphrase is never taken from the command line, where
    ``ps`` and shell history would show it).
    """
    if passphrase_file is not None:
        pw = read_passphrase_file(passphrase_file)
    else:
        tty = sys.stdin.isatty() if isatty is None else isatty()
        if not tty:
            raise KeyFileError("a passphrase is needed: run at a terminal or pass "
                               "--passphrase-file FILE")
        pw = prompt("practice key passphrase: ").encode()
        if new and prompt("repeat the passphrase: ").encode() != pw:
            raise KeyFileError("the two passphrases differ")
    if new and len(pw.decode(errors="replace")) < MIN_PASSPHRASE:
        raise KeyFileError(f"passphrase too short: at least {MIN_PASSPHRASE} characters")
    return pw
