"""The one client of the recorder daemon's control socket (the server is :mod:`.control_socket`).

The running recorder owns ALSA and GPIO, so live tests (line state, tone) go through it:
a Unix stream socket at ``<data_dir>/run/control.sock``, one JSON object per line each
way. Errors from the daemon come back as ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from recorder.errors import LinetapError, ProtocolError
from recorder.runtime.control_socket import SOCKET

MAX_REPLY = 1024 * 1024


class RecorderNotRunning(LinetapError, ConnectionError):
    """The control socket is absent or nobody is listening on it."""


def socket_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / SOCKET


def request(path: str | os.PathLike, obj: dict, *, timeout_s: float = 5.0) -> dict:
    """Send ``obj`` and return the daemon's reply object.

    ``timeout_s`` bounds connect and each read (seconds; a tone test needs its length
    plus a margin). Raises :class:`RecorderNotRunning` when the daemon is not there and
    :class:`ProtocolError` for a reply that is not one JSON object on one line.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise RecorderNotRunning(f"recorder not running (no control socket at {path})") \
                from exc
        buf = bytearray()
        try:
            sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise RecorderNotRunning(f"recorder stopped (control socket {path})") from exc
        while b"\n" not in buf:
            try:
                chunk = sock.recv(65536)
            except TimeoutError as exc:
                raise ProtocolError(f"recorder did not answer within {timeout_s} s") from exc
            except ConnectionResetError as exc:
                # It stopped while we asked (its socket closed with our request unread).
                raise RecorderNotRunning(f"recorder stopped (control socket {path})") \
                    from exc
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REPLY:
                raise ProtocolError("recorder reply too long")
    finally:
        sock.close()
    line = bytes(buf).split(b"\n", 1)[0]
    if not line:
        raise ProtocolError("recorder closed the control socket without answering")
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"recorder reply is not JSON: {exc}") from None
    if not isinstance(reply, dict):
        raise ProtocolError("recorder reply is not a JSON object")
    return reply
