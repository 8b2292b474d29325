"""HTTP hardening for the portal: headers on every response, a per-address sign-in
rate limit, and the masked-number rule for what the browser may report."""

from __future__ import annotations

import re
import threading
import time
from collections import deque

from sync.upstream.portal import accounts

# No inline script or style anywhere; the browser's own crypto runs from 'self' only.
# 'wasm-unsafe-eval' is not needed (the HPKE library is plain JS + WebCrypto).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self' blob:; connect-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}

# What a masked number looks like: at most 4 leading and 2 trailing digits around stars.
MASKED = re.compile(r"^[0-9+]{0,4}\*+[0-9]{0,2}$")


class SecurityHeaders:
    """ASGI middleware adding :data:`HEADERS` (and no-store on everything dynamic)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")

        async def send_h(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.decode().lower() not in HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                if not path.startswith(("/static/", "/vendor/")):
                    headers.append((b"cache-control", b"no-store"))
                message = dict(message, headers=headers)
            await send(message)
        return await self.app(scope, receive, send_h)


class RateLimit:
    """At most ``n`` events per ``window_s`` seconds per key (a client address).
    Complements the per-account lock: it slows guessing across many user names."""

    def __init__(self, n: int = 10, window_s: float = 60.0):
        self.n, self.window = n, window_s
        self._ev: dict[str, deque] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> bool:
        """Record one event; False if ``key`` is over its limit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._ev.setdefault(key, deque())
            while q and now - q[0] > self.window:
                q.popleft()
            if len(q) >= self.n:
                return False
            q.append(now)
            if len(self._ev) > 10000:           # forget idle addresses
                for k in [k for k, v in self._ev.items() if not v]:
                    del self._ev[k]
            return True


COOKIE = "__Host-linetap"          # __Host-: Secure, path=/, no Domain: this origin only


def current(request):
    """(session, user) for the request's session cookie, or (None, None)."""
    s = accounts.session_of(request.cookies.get(COOKIE))
    return (s, s.user) if s else (None, None)
