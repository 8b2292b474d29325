"""A small sd_notify(3) client: tell systemd we are ready, alive, or stopping.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named in
``$NOTIFY_SOCKET``. A name starting with ``@`` is in the abstract namespace. With
``NOTIFY_SOCKET`` unset (run by hand, in tests) every call is a silent no-op, so code
can notify unconditionally. Written here rather than taken from PyPI because the
``sdnotify`` package has been unmaintained since 2017 and the protocol is a dozen lines.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class SdNotifier:
    """Send state notifications to the service manager.

    ``environ`` defaults to :data:`os.environ`; tests pass a dict. Send failures are
    logged once and then ignored: losing a notification must never stop capture.
    """

    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        self._env = env
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if addr.startswith("@"):
            self._addr = "\0" + addr[1:]
        elif addr.startswith("/"):
            self._addr = addr
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured."""
        return self._addr is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"`` ...) as one datagram. False if not sent."""
        if self._addr is None:
            return False
        msg = "\n".join(fields).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, self._addr)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self._env.get("NOTIFY_SOCKET"), exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        """Startup is complete (``Type=notify`` units leave 'activating')."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={text.splitlines()[0] if text else ''}")

    def watchdog(self) -> bool:
        """Keep-alive ping; send at least every :meth:`watchdog_interval_s` / 2."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1")

    def watchdog_interval_s(self) -> float | None:
        """The watchdog timeout in seconds, or None if no watchdog is set for this process.

        Read from ``WATCHDOG_USEC`` (microseconds); ignored when ``WATCHDOG_PID`` names
        another process (the variable was inherited, not meant for us).
        """
        usec = self._env.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid and pid.strip() != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 1e6 if value > 0 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
