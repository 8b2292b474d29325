"""One-time codes set up in the portal: the enrolment page (otpauth URI, QR code and
secret; switched on only by a first valid code), and a practice that requires codes
sending a user without one to enrolment before anything else. Both audited."""

from __future__ import annotations

import time

import pyotp
import pytest

from sync.upstream.portal import accounts
from sync.upstream.portal.decisions import PSite
from sync.upstream.store import UAudit
from tests.sync.upstream.portal.conftest import sign_in, wait_ready

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


def _last(action):
    return UAudit.select().where(UAudit.action == action).order_by(UAudit.seq.desc()).first()


def _wrong_code(secret: str) -> str:
    """A code that is not valid in any step the server accepts now."""
    t = pyotp.TOTP(secret)
    valid = {t.at(t.timecode(time.time()) * 30 + d * 30) for d in (-1, 0, 1)}
    return next(c for c in (f"{k:06d}" for k in range(1000000)) if c not in valid)


def _shown_secret(page) -> str:
    secret = page.locator("#enrol-secret").inner_text().replace(" ", "")
    uri = page.locator("#enrol-uri").inner_text()
    assert uri.startswith("otpauth://totp/Linetap:") and f"secret={secret}" in uri
    assert "issuer=Linetap" in uri
    assert page.locator("#enrol-qr").get_attribute("src").startswith("data:image/svg+xml")
    return secret


def _confirm(page, code):
    page.get_by_label("One-time code", exact=True).fill(code)
    page.get_by_role("button", name="Turn on one-time codes").click()
    page.wait_for_load_state("networkidle")


def test_enrol_on_the_page_and_confirm_with_a_first_code(env, context):
    page = context.new_page()
    sign_in(page, env.url, "staff")
    page.get_by_role("link", name="One-time codes").click()
    secret = _shown_secret(page)
    # Coming back shows the same pending secret (the app may already hold it).
    page.reload()
    assert _shown_secret(page) == secret
    _confirm(page, _wrong_code(secret))
    assert "not right" in page.get_by_role("alert").inner_text()
    assert accounts.get_user("staff").totp_secret is None
    assert _last("portal_totp_enrol_failed").detail["user"] == "staff"
    _confirm(page, pyotp.TOTP(secret).now())
    assert page.url.rstrip("/") == env.url
    assert accounts.get_user("staff").totp_secret == secret
    assert _last("portal_totp_enrolled").detail == {"user": "staff", "site": "site1"}
    page.goto(env.url + "/enrol")
    assert "are on for your account" in page.locator("#enrol-status").inner_text()
    # From now on the password alone does not sign in; with the code it does.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, env.url, "staff")
    assert "/login" in page.url
    sign_in(page, env.url, "staff", code=pyotp.TOTP(secret).now())
    assert page.url.rstrip("/") == env.url
    accounts.reset("staff", totp=False)


def test_required_codes_send_a_user_without_one_to_enrolment(env, context):
    accounts.site_settings("site1")
    PSite.update(require_totp=True).where(PSite.site == "site1").execute()
    try:
        page = context.new_page()
        sign_in(page, env.url, "auditor")                  # password only: enrol first
        assert page.url == env.url + "/enrol"
        assert "requires a one-time code" in page.get_by_role("alert").inner_text()
        assert page.get_by_role("link", name="Calls").count() == 0
        assert _last("portal_signin").detail["enrol"] is True
        # Nothing else is reachable until enrolled: pages redirect, the API says 403.
        for path in ("/", "/audit"):
            page.goto(env.url + path)
            assert page.url == env.url + "/enrol", path
        for path in ("/api/calls", "/api/audit"):
            r = page.request.get(env.url + path)
            assert r.status == 403 and "enrol" in r.json()["error"], path
        secret = _shown_secret(page)
        _confirm(page, pyotp.TOTP(secret).now())
        assert page.url.rstrip("/") == env.url
        wait_ready(page)
        assert page.locator("#calls tbody tr").count() == len(env.ids_a)
        assert page.request.get(env.url + "/api/audit").status == 200
        assert _last("portal_totp_enrolled").detail["user"] == "auditor"
        # A user who has codes is not sent to enrolment.
        page.get_by_role("button", name="Sign out").click()
        sign_in(page, env.url, "auditor", code=pyotp.TOTP(secret).now())
        assert page.url.rstrip("/") == env.url
    finally:
        PSite.update(require_totp=False).where(PSite.site == "site1").execute()
        accounts.reset("auditor", totp=False)
