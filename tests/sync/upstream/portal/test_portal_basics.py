"""Sign-in (with and without TOTP), lock-out, key open (plain and PBES2) and search by
number, in Debian's chromium."""

from __future__ import annotations

import pyotp
import pytest

from sync.upstream.portal import accounts
from sync.upstream.portal.security import RateLimit
from tests.sync.upstream.portal.conftest import (
    N1,
    N2,
    PASSPHRASE,
    PASSWORD,
    key_open_in_new_tab,
    open_key,
    sign_in,
    wait_ready,
)

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


def test_sign_in_without_totp_shows_the_calls(env, context):
    page = context.new_page()
    sign_in(page, env.url, "staff")
    assert page.url.rstrip("/") == env.url
    wait_ready(page)
    for h in ("Started", "Line", "Direction", "Number", "Duration", "Integrity"):
        assert page.get_by_role("columnheader", name=h, exact=True).count() == 1
    # Only this practice's calls (4 of site1, none of site2's 2).
    assert page.locator("#calls tbody tr").count() == len(env.ids_a)
    cookies = {c["name"]: c for c in context.cookies()}
    c = cookies["__Host-linetap"]
    assert c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict"


def test_wrong_password_is_refused(env, context):
    page = context.new_page()
    sign_in(page, env.url, "auditor", password="not the password")
    assert "/login" in page.url
    assert page.get_by_role("alert").inner_text().startswith("Wrong username")


def test_totp_user_needs_the_code(env, context):
    page = context.new_page()
    sign_in(page, env.url, "totpuser")                     # no code
    assert "/login" in page.url
    secret = accounts.get_user("totpuser").totp_secret
    sign_in(page, env.url, "totpuser", code=pyotp.TOTP(secret).now())
    assert page.url.rstrip("/") == env.url
    accounts.reset("totpuser")                             # clear failure count


def test_lock_out_after_repeated_failures(env, context):
    env.server.app.state.limit = RateLimit(n=10000)        # this test's attempts only
    accounts.add_user("locky", "site1", "staff", PASSWORD)
    page = context.new_page()
    for _ in range(accounts.MAX_FAILURES):
        sign_in(page, env.url, "locky", password="wrong password!")
    # The right password no longer works while the lock holds.
    sign_in(page, env.url, "locky")
    assert "/login" in page.url
    assert "locked" in page.get_by_role("alert").inner_text()
    accounts.reset("locky")
    sign_in(page, env.url, "locky")
    assert page.url.rstrip("/") == env.url


def test_rate_limit_per_address(env, context):
    env.server.app.state.limit = RateLimit(n=3, window_s=600)
    page = context.new_page()
    for _ in range(3):
        sign_in(page, env.url, "nobody", password="whatever123")
    sign_in(page, env.url, "staff")                  # right password, but over the limit
    assert "/login" in page.url
    assert "Too many sign-in attempts" in page.get_by_role("alert").inner_text()
    env.server.app.state.limit = RateLimit(n=10000)


def test_key_open_plain_and_search_by_number(env, context):
    page = context.new_page()
    sign_in(page, env.url, "staff")
    wait_ready(page)
    open_key(page, env.priv)
    assert "Key open" in page.locator("#key-status").inner_text()
    page.get_by_label("Number", exact=True).fill(N1)
    page.get_by_role("button", name="Search").click()
    page.locator("body[data-results]").wait_for()
    rows = page.locator("#calls tbody tr")
    # N1 called in on calls 0 and 3 of dev-a; dev-b's N1 call is another practice's.
    assert sorted(rows.nth(i).get_attribute("data-call") for i in range(rows.count())) == \
        sorted([env.ids_a[0], env.ids_a[3]])
    page.get_by_label("Number", exact=True).fill(N2)
    page.get_by_role("button", name="Search").click()
    page.locator("body[data-results='2']").wait_for()
    calls = {rows.nth(i).get_attribute("data-call") for i in range(rows.count())}
    assert calls == {env.ids_a[1], env.ids_a[2]}     # dialled (outbound) and caller
    # The same number forms as the box and the upstream CLI (recorder.privacy.number_key).
    page.get_by_label("Number", exact=True).fill("+44 (0)1632 960-111")
    page.get_by_role("button", name="Search").click()
    # (N2's search also showed 2 rows: wait for a row that only this one shows)
    page.locator(f"#calls tbody tr[data-call='{env.ids_a[0]}']").wait_for()
    calls = {rows.nth(i).get_attribute("data-call") for i in range(rows.count())}
    assert calls == {env.ids_a[0], env.ids_a[3]}


def test_key_open_pbes2_encrypted(env, context):
    page = context.new_page()
    sign_in(page, env.url, "manager")
    wait_ready(page)
    open_key(page, env.enc_key, "wrong passphrase")
    assert "wrong passphrase" in page.locator("#key-status").inner_text()
    open_key(page, env.enc_key, PASSPHRASE)
    assert "Key open" in page.locator("#key-status").inner_text()


def test_sealed_index_is_reused_and_a_forged_one_ignored(env, context):
    from sync.upstream.objectstore import open_objects
    page = context.new_page()
    sign_in(page, env.url, "staff")
    wait_ready(page)
    open_key(page, env.priv)
    objects = open_objects(env.ucfg.objects)
    blob = objects.get("portal-index/site1.bin")
    assert N1.encode() not in blob and b"inbound" not in blob     # sealed
    # A fresh tab: the index comes back from the server, no manifest is opened.
    p2, said = key_open_in_new_tab(context, env.url, env.priv)
    assert f"{len(env.ids_a)} from the sealed index, 0 manifests opened" in said
    p2.get_by_label("Number", exact=True).fill(N1)
    p2.get_by_role("button", name="Search").click()
    p2.locator("body[data-results='2']").wait_for()
    # An altered index fails its tag: ignored, rebuilt from the manifests, stored again.
    bad = bytearray(blob)
    bad[40] ^= 1
    objects.put("portal-index/site1.bin", bytes(bad))
    _p3, said = key_open_in_new_tab(context, env.url, env.priv)
    assert f"0 from the sealed index, {len(env.ids_a)} manifests opened" in said
    assert objects.get("portal-index/site1.bin") != bytes(bad)
