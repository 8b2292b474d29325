"""The box's broker link, explained: why a connection failed, when it is retried, and
whether uploads the broker accepted are reaching the ingest.

A failed connection used to be silent (paho retries quietly; only a debug line). Here
every failure is turned into one sentence naming the cause and the fix, logged at
once by the uploader with the next retry delay, and kept for ``status`` with the
attempt count. Pure functions and a small state object; the uploader feeds them.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.x509.oid import NameOID

from recorder.errors import ConfigError, KeyFileError


def describe_error(exc: BaseException, host: str = "", port: int = 0) -> str:
    """One sentence for a failed connection attempt (``exc`` from the socket or TLS)."""
    where = f"{host}:{port}" if host else "the broker"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the broker's certificate is not trusted ({exc.verify_message}); "
                "check sync.ca and that the broker certificate names sync.host")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or str(exc)
        text = str(reason).lower()
        if "alert" in text:
            hint = {"revoked": "this box's certificate is revoked upstream",
                    "unknown_ca": "the broker does not trust the CA of this box's "
                                  "certificate",
                    "certificate_required": "the broker wants a client certificate",
                    "expired": "a certificate has expired",
                    "bad_certificate": "the broker refused this box's certificate"}
            why = next((v for k, v in hint.items() if k in text), "the broker refused the "
                       "TLS handshake")
            return f"TLS alert from the broker: {reason} ({why})"
        return f"TLS error: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (nothing listening on that port?)"
    if isinstance(exc, socket.gaierror):
        return f"host name {host!r} not found ({exc.strerror or exc})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer from {where} (timed out; firewall or wrong address?)"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def describe_refusal(reason_code) -> str:
    """One sentence for a CONNACK or DISCONNECT reason code from the broker."""
    text = str(reason_code)
    low = text.lower()
    if "not authorized" in low or "bad user name" in low:
        return (f"broker refused: {text} (the certificate CN is the MQTT user name: is it "
                "the device id, and is the device enrolled upstream?)")
    return f"broker refused: {text}"


def certificate_cn(path: str) -> str:
    """The CN of the first certificate in ``path`` (PEM)."""
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise KeyFileError(f"device certificate {path}: {exc.strerror or exc}") from exc
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError) as exc:
        raise KeyFileError(f"device certificate {path} is not a PEM certificate") from exc
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cns[0].value if cns else ""


def check_certificate_cn(path: str, device: str) -> None:
    """:class:`ConfigError` naming both if the certificate's CN is not ``device``.

    The broker knows a device by its certificate CN alone (``use_identity_as_username``)
    and its ACL lets a device publish only under its own id: with any other CN every
    upload is accepted by the broker and dropped, in silence."""
    cn = certificate_cn(path)
    if cn != device:
        raise ConfigError([f"device certificate {path} is for CN '{cn}' but the device id "
                           f"is '{device}': the broker's ACL would drop every upload. Enrol "
                           f"the box as '{cn}' (device.id) or issue a certificate for "
                           f"'{device}'"])


@dataclass
class LinkWatch:
    """Connection attempts and failures, and acks against broker deliveries.

    Times are ``time.monotonic()`` seconds. ``backoff`` mirrors paho's: the first retry
    after ``min_s``, doubling to ``max_s``."""

    min_s: float = 1.0
    max_s: float = 60.0
    attempts: int = 0                 # failed attempts since the last success
    last_error: str = ""
    last_failure: float | None = None
    next_retry_s: float | None = None
    connected_since: float | None = None
    # The first broker PUBACK since the last ingest ack: uploads the broker took that
    # nobody answered. Cleared by any ack.
    unanswered_since: float | None = None
    history: list = field(default_factory=list)

    def failed(self, why: str, now: float | None = None) -> float:
        """Record a failed attempt; returns the delay (s) before the next one."""
        now = time.monotonic() if now is None else now
        self.attempts += 1
        self.last_error, self.last_failure = why, now
        self.connected_since = None
        self.next_retry_s = min(self.min_s * 2 ** (self.attempts - 1), self.max_s)
        return self.next_retry_s

    def connected(self, now: float | None = None) -> None:
        self.connected_since = time.monotonic() if now is None else now
        self.attempts, self.next_retry_s = 0, None
        self.unanswered_since = None

    def delivered(self, now: float) -> None:
        if self.unanswered_since is None:
            self.unanswered_since = now

    def acked(self) -> None:
        self.unanswered_since = None

    def unanswered_s(self, now: float | None = None) -> float | None:
        """How long uploads the broker accepted have gone without any ingest ack, while
        connected; None if nothing is waiting."""
        if self.unanswered_since is None or self.connected_since is None:
            return None
        now = time.monotonic() if now is None else now
        return now - max(self.unanswered_since, self.connected_since)


class Client(mqtt.Client):
    """paho's client, keeping the exception of the last failed connection attempt
    (paho calls ``on_connect_fail`` without it, and logs it only at debug level)."""

    last_error: BaseException | None = None

    def reconnect(self):
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = exc
            raise
