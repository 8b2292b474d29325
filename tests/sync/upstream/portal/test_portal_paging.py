"""The call list is paged by the server (keyset on start time, device, call), and search
by number still covers every call the user may see, on whatever page it would be."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recorder.evidence import keys
from recorder.timebase import parse_iso
from sync.upstream.objectstore import open_objects
from sync.upstream.portal import paging
from sync.upstream.store import UCall, db
from tests.support.portalcalls import synthetic
from tests.sync.upstream.portal.conftest import (
    key_open_in_new_tab,
    open_key,
    sign_in,
    wait_ready,
)

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow

N3 = "01632960333"
MANY = 450                   # more than two pages of 200


def _add(env, n, seed):
    rows = synthetic(n, env.box_a.identity, keys.load_practice_public(env.pub),
                     open_objects(env.ucfg.objects), np.random.default_rng(seed),
                     site="site1", device="dev-a", number=N3, every=50)
    with db.atomic():
        UCall.insert_many(rows).execute()
    return rows


TIES, UNDATED = 7, 5          # calls sharing one start time, calls with none yet


@pytest.fixture(scope="module")
def big(env):
    env.synthetic = _add(env, MANY, 1)
    # Rows without a manifest (segments only, so far): ties on one start, and calls
    # whose start is not known yet, which come last.
    same = env.synthetic[0]["start_time"] + 0.000123
    UCall.insert_many([{"device": "dev-a", "call": f"T{k}", "site": "site1",
                        "start_time": same} for k in range(TIES)]
                      + [{"device": "dev-a", "call": f"U{k}", "site": "site1"}
                         for k in range(UNDATED)]).execute()
    return env


def _all_pages(page, url, limit, extra=""):
    out, after, first = [], None, None
    while True:
        q = f"{url}/api/calls?limit={limit}{extra}" + (f"&after={after}" if after else "")
        j = page.request.get(q).json()
        first = first or j
        out += j["calls"]
        after = j["next"]
        if after is None:
            return first, out


def test_pages_cover_every_call_once_newest_first(big, context):
    page = context.new_page()
    sign_in(page, big.url, "staff")
    first, rows = _all_pages(page, big.url, 100)
    live = UCall.select().where((UCall.site == "site1") & (UCall.state == "live")).count()
    assert len(first["calls"]) == 100 and first["total"] == live
    assert len(rows) == live == MANY + len(big.ids_a) + TIES + UNDATED
    assert len({(r["device"], r["call"]) for r in rows}) == live
    starts = [parse_iso(r["start"]) for r in rows[:-UNDATED]]
    assert starts == sorted(starts, reverse=True)
    assert [r["call"] for r in rows[-UNDATED:]] == [f"U{k}" for k in reversed(range(UNDATED))]
    # Pages of 3 cut through the ties and the undated calls, and still miss none.
    _, small = _all_pages(page, big.url, 3)
    assert [(r["device"], r["call"]) for r in small] == [(r["device"], r["call"]) for r in rows]
    # A date range is applied by the server too, across pages.
    day = big.synthetic[0]["start_time"]
    d = dt.datetime.fromtimestamp(day, dt.UTC).date().isoformat()
    first_d, ranged = _all_pages(page, big.url, 7, f"&from={d}&to={d}")
    lo = parse_iso(d + "T00:00:00Z")
    in_day = [r for r in rows if r["start"] and lo <= parse_iso(r["start"]) < lo + 86400]
    assert ranged == in_day and first_d["total"] == len(in_day) >= 1
    for bad in ("limit=0", "limit=1001", "limit=x", "after=not-a-cursor", "after=WzEsMl0"):
        r = page.request.get(f"{big.url}/api/calls?{bad}")
        assert r.status == 400 and r.json()["error"].split(":")[0] in ("limit", "after"), bad


def test_search_by_number_finds_calls_on_every_page(big, context):
    want = {r["call"] for k, r in enumerate(big.synthetic) if k % 50 == 0}
    page = context.new_page()
    sign_in(page, big.url, "staff")
    wait_ready(page)
    assert page.locator("#calls tbody tr").count() == paging.DEFAULT_PAGE
    page.get_by_role("button", name="Show more").click()
    page.locator(f"#calls tbody tr >> nth={2 * paging.DEFAULT_PAGE - 1}").wait_for()
    # The matches are spread over the 90 days: most are beyond the first page.
    first_page = {r["call"] for r in page.request.get(big.url + "/api/calls").json()["calls"]}
    assert len(want - first_page) >= len(want) // 2
    open_key(page, big.priv)

    def search(p, number):
        p.get_by_label("Number", exact=True).fill(number)
        p.get_by_role("button", name="Search").click()
        p.locator(f"body[data-results='{len(want)}']").wait_for()
        rows = p.locator("#calls tbody tr")
        return {rows.nth(i).get_attribute("data-call") for i in range(rows.count())}
    assert search(page, N3) == want
    # A sealed filter with more matches than a page: pages of the index's results.
    inbound = sum(1 for k in range(MANY) if k % 3 != 0) + 3     # 3 of the 4 real calls
    page.get_by_label("Number", exact=True).fill("")
    page.get_by_label("Direction", exact=True).select_option("inbound")
    page.get_by_role("button", name="Search").click()
    page.locator(f"body[data-results='{inbound}']").wait_for()
    rows = page.locator("#calls tbody tr")
    assert rows.count() == paging.DEFAULT_PAGE
    page.get_by_role("button", name="Show more").click()
    page.locator(f"#calls tbody tr >> nth={inbound - 1}").wait_for()
    assert rows.count() == inbound and page.get_by_role("button", name="Show more").is_hidden()
    assert set(rows.locator("td:nth-child(3)").all_inner_texts()) == {"inbound"}
    page.get_by_label("Direction", exact=True).select_option("")
    # A fresh tab reads the sealed index back; calls added since are opened and found.
    later = _add(big, 60, 2)
    want |= {r["call"] for k, r in enumerate(later) if k % 50 == 0}
    p2, said = key_open_in_new_tab(context, big.url, big.priv)
    assert f"{MANY + len(big.ids_a)} from the sealed index, 60 manifests opened" in said
    assert search(p2, N3) == want
