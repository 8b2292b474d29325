"""The operator's Fleet page (issue 20): every box and its alerts, never a call; the
practice roles never see it."""

from __future__ import annotations

import time

import pytest

from sync.upstream import fleet
from sync.upstream.portal import accounts
from tests.sync.upstream.portal.conftest import PASSWORD, sign_in

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


def test_the_operator_sees_the_fleet_and_no_calls(env, context):
    if accounts.PUser.get_or_none(accounts.PUser.name == "operator") is None:
        accounts.add_user("operator", "site1", "operator", PASSWORD)
    fleet.record_health("dev-a", "site1", {"version": "9.9.1", "disk_free_mb": 812.5,
                                          "backlog": 0, "lines": [{"state": "idle"}]},
                        time.time())
    page = context.new_page()
    sign_in(page, env.url, "operator")
    # The calls page is not the operator's: it lands on the fleet.
    assert page.url.rstrip("/").endswith("/fleet")
    assert page.get_by_role("heading", name="Fleet", exact=True).count() == 1
    row = page.locator("#fleet tbody tr", has_text="dev-a")
    assert row.count() == 1 and "9.9.1" in row.inner_text() and "812.5 MB" in row.inner_text()
    assert page.get_by_role("link", name="Calls", exact=True).count() == 0
    # And the API refuses it every call.
    assert page.request.get(env.url + "/api/calls").status == 403
    assert page.request.get(env.url + "/api/manifests").status == 403


def test_practice_roles_do_not_see_the_fleet(env, context):
    page = context.new_page()
    sign_in(page, env.url, "manager")
    assert page.get_by_role("link", name="Fleet", exact=True).count() == 0
    assert page.request.get(env.url + "/fleet").status == 403
