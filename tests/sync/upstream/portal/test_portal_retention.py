"""Retention review: the appraisal queue, keep with a reason and a new deadline, batch
approval, approval-only deletion with reminder and escalation, and every decision
audited. Run last in its module: it expires calls."""

from __future__ import annotations

import io
import time
import zipfile

import pytest

from recorder.timebase import parse_iso
from sync.upstream import ops as upstream_ops
from sync.upstream.objectstore import open_objects
from sync.upstream.portal.decisions import PDecision, PNotice, PSite
from sync.upstream.store import UAudit, UCall
from tests.sync.upstream.portal.conftest import N1, downloads, open_key, sign_in, wait_ready

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


def _last(action):
    return UAudit.select().where(UAudit.action == action).order_by(UAudit.seq.desc()).first()


def test_keep_approve_and_settings_in_the_ui(env, context):
    page = context.new_page()
    sign_in(page, env.url, "manager")
    page.get_by_role("link", name="Retention").click()
    page.locator("body[data-ready='1']").wait_for()
    page.get_by_label("Expiring within (days)").fill("100")
    page.get_by_role("button", name="Show").click()
    page.locator(f"body[data-queue='{len(env.ids_a)}']").wait_for()
    # Keep one as part of the care record, until 2030.
    page.locator(f"#queue tr[data-call='{env.ids_a[0]}']").get_by_role("button",
                                                                          name="Keep").click()
    page.get_by_label("Reason to keep").select_option("part of the care record")
    page.get_by_label("New deadline").fill("2030-01-31")
    page.get_by_role("button", name="Keep call").click()
    page.locator("#queue-status", has_text=f"Kept {env.ids_a[0]}").wait_for()
    # Its new deadline takes it out of the queue.
    page.locator(f"body[data-queue='{len(env.ids_a) - 1}']").wait_for()
    row = UCall.get(UCall.call == env.ids_a[0])
    assert row.deadline == parse_iso("2030-01-31T00:00:00Z")
    a = _last("portal_keep")
    assert a.detail["reason"] == "part of the care record" and a.detail["user"] == "manager"
    # The workers' deadline refresh keeps the kept deadline.
    upstream_ops.refresh_deadlines(env.ucfg)
    assert UCall.get(UCall.call == env.ids_a[0]).deadline == parse_iso("2030-01-31T00:00:00Z")
    # Approve a batch.
    for c in env.ids_a[1:3]:
        page.get_by_label(f"Select {c}").check()
    page.get_by_role("button", name="Approve selected for deletion").click()
    page.locator("#queue-status", has_text="approved").wait_for()
    assert "2 call(s) approved" in page.locator("#queue-status").inner_text()
    assert {d.call for d in PDecision.select().where(PDecision.kind == "approve")} == \
        set(env.ids_a[1:3])
    assert _last("portal_approve").detail["calls"] == [f"dev-a/{c}" for c in env.ids_a[1:3]]
    # Approval-only deletion.
    page.get_by_label("Deletion at the deadline").select_option("approval")
    page.get_by_label("Reminder (days before)").fill("3")
    page.get_by_label("Deleted anyway (days after, unapproved)").fill("10")
    page.get_by_role("button", name="Save settings").click()
    page.locator("#settings-status", has_text="Settings saved").wait_for()
    s = PSite.get(PSite.site == "site1")
    assert (s.deletion, s.remind_days, s.escalate_days) == ("approval", 3.0, 10.0)
    assert _last("portal_settings").detail["deletion"] == "approval"


def test_the_export_of_a_kept_call_says_how_to_check_it_later(env, context):
    """A call kept as part of the care record: the subject access export's report says
    how its authenticity can be checked later."""
    page = context.new_page()
    sign_in(page, env.url, "manager")
    wait_ready(page)
    open_key(page, env.priv)
    page.get_by_label("Number", exact=True).fill(N1)
    got = downloads(page, 1, page.get_by_role("button", name="Subject access export").click)
    z = zipfile.ZipFile(io.BytesIO(next(iter(got.values()))))
    report = z.read("verification-report.txt").decode()
    kept = report[report.index(f"{env.ids_a[0]}: verified"):]
    assert "Kept: part of the care record, until 2030-01-31" in kept
    assert "To check its authenticity later" in kept and "linetap verify" in kept
    other = report[report.index(f"{env.ids_a[3]}: verified"):].split("\n")[1]
    assert "Kept" not in other            # only the kept call carries the note


def test_approval_only_deletion_reminds_escalates_and_never_keeps_for_ever(env):
    objects = open_objects(env.ucfg.objects)
    now = time.time()
    approved, waiting = env.ids_a[1], env.ids_a[3]
    UCall.update(deadline=now - 3600).where(UCall.call.in_([approved, waiting])).execute()
    upstream_ops.expire(objects, now)
    # The approved call goes; the unapproved one waits, escalated once.
    assert UCall.get(UCall.call == approved).state == "deleted"
    assert UCall.get(UCall.call == waiting).state == "live"
    assert PNotice.get((PNotice.call == waiting) & (PNotice.kind == "escalation"))
    assert _last("retention_escalation").detail["call"] == waiting
    upstream_ops.expire(objects, now + 60)
    assert PNotice.select().where(PNotice.call == waiting).count() >= 1
    assert UAudit.select().where(UAudit.action == "retention_escalation").count() == 1
    # Ten days past the deadline, unapproved, it is deleted anyway, and says why.
    upstream_ops.expire(objects, now + 10 * 86400)
    assert UCall.get(UCall.call == waiting).state == "deleted"
    assert _last("retention_unapproved_deleted").detail["call"] == waiting
