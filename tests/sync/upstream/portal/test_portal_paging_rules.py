"""Cursors and page sizes of the paged call list (pure, table-tested)."""

from __future__ import annotations

import pytest

from sync.upstream.portal.paging import (
    DEFAULT_PAGE,
    MAX_PAGE,
    PageError,
    decode_cursor,
    encode_cursor,
    page_limit,
)


@pytest.mark.parametrize("start, device, call", [
    (1764900000.123, "dev-a", "20261125T090000Z-L0-ab12"),
    (0.0, "d", "c"),
    (1.5, "dev/with/slashes", "call with spaces ~ and = signs"),
    (1764900000.0, "ünïcode", "ça"),
    (None, "dev-a", "a call whose start is not known yet"),
    (1764900000.123456, "d", "c"),           # the exact stored start, not milliseconds
])
def test_a_cursor_round_trips(start, device, call):
    text = encode_cursor(start, device, call)
    assert "=" not in text and "/" not in text and "+" not in text      # URL-safe
    assert decode_cursor(text) == (start, device, call)


@pytest.mark.parametrize("text", [
    "", "not a cursor", "%%%", encode_cursor(1, "d", "c")[:-3] + "x",
    "WzEsMl0",                                   # [1,2]
    "WyJhIiwiYiIsImMiXQ",                        # ["a","b","c"]
    "W3RydWUsImIiLCJjIl0",                       # [true,"b","c"]
    "eyJhIjoxfQ",                                # {"a":1}
])
def test_a_cursor_the_server_did_not_give_is_refused(text):
    with pytest.raises(PageError, match="after: not a cursor"):
        decode_cursor(text)


@pytest.mark.parametrize("text, want", [
    (None, DEFAULT_PAGE), ("", DEFAULT_PAGE), ("1", 1), ("200", 200),
    (str(MAX_PAGE), MAX_PAGE),
])
def test_page_limit(text, want):
    assert page_limit(text) == want


@pytest.mark.parametrize("text", ["0", "-1", str(MAX_PAGE + 1), "x", "1.5"])
def test_page_limit_out_of_range(text):
    with pytest.raises(PageError, match=f"limit: .*1..{MAX_PAGE}"):
        page_limit(text)
