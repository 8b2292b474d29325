"""Keyset pages of the call list: the cursor a page ends with, and the page size.

The list is ordered newest first by (start time, device, call), all descending; a
cursor names the last row of a page (its exact stored start, not the millisecond the
page shows), and the next page is every row strictly after it in that order. Unlike an
offset, a cursor does not shift when calls arrive or go while someone pages. Calls
without a start time yet come after all the others, by (device, call) descending: two
runs, so that the first is the plain ``start_time DESC`` order an index on
``(site, start_time DESC)`` serves (PostgreSQL has one, ``pgschema.py``).
"""

from __future__ import annotations

import base64
import json
import math

from recorder.errors import LinetapError

DEFAULT_PAGE = 200           # rows per page unless the request asks
MAX_PAGE = 1000              # rows per page at most


class PageError(LinetapError, ValueError):
    """A page size or cursor the server did not give."""


def encode_cursor(start: float | None, device: str, call: str) -> str:
    """The cursor after the row (``start``: epoch s, None for a call without one)."""
    raw = json.dumps([start, device, call], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float | None, str, str]:
    """(start epoch s or None, device, call) of a cursor made by :func:`encode_cursor`."""
    try:
        v = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError) as exc:
        raise PageError("after: not a cursor this server gave") from exc
    if not (isinstance(v, list) and len(v) == 3
            and (v[0] is None or isinstance(v[0], (int, float)) and not isinstance(v[0], bool)
                 and math.isfinite(v[0]))
            and isinstance(v[1], str) and isinstance(v[2], str)):
        raise PageError("after: not a cursor this server gave")
    return (None if v[0] is None else float(v[0])), v[1], v[2]


def page_limit(text: str | None) -> int:
    """Rows per page from a ``limit`` parameter: 1..:data:`MAX_PAGE`, default
    :data:`DEFAULT_PAGE`."""
    if text in (None, ""):
        return DEFAULT_PAGE
    try:
        n = int(text)
    except ValueError as exc:
        raise PageError(f"limit: a whole number of rows in 1..{MAX_PAGE}") from exc
    if not 1 <= n <= MAX_PAGE:
        raise PageError(f"limit: a whole number of rows in 1..{MAX_PAGE}")
    return n
