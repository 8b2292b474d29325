"""Play, download (byte-identical to the CLI), subject access ZIP, hold, roles,
cross-practice 404, the audit entries, and the network check that the key never
leaves the browser and no plaintext audio or full number ever comes from the server."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
from cryptography.hazmat.primitives import serialization

from sync.upstream.cli import cli_main
from sync.upstream.store import Command, UAudit, UCall, USegment
from tests.sync.upstream.portal.conftest import (
    N1,
    N2,
    PASSPHRASE,
    downloads,
    open_key,
    sign_in,
    wait_ready,
)

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


def _row(page, call):
    return page.locator(f"#calls tbody tr[data-call='{call}']")


def _signed_in_with_key(context, env, user="manager", key=None, passphrase=""):
    page = context.new_page()
    sign_in(page, env.url, user)
    wait_ready(page)
    open_key(page, key or env.priv, passphrase)
    return page


@pytest.fixture(scope="module")
def cli_export(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-export")
    assert cli_main(["--config", str(env.conf), "export", "--key", str(env.priv), "--out",
                     str(out), "--call", env.ids_a[0], "--call", env.ids_a[2]]) == 0
    return out


def test_play_verifies_and_decoded_audio_reaches_the_player(env, context):
    page = _signed_in_with_key(context, env, "staff")
    _row(page, env.ids_a[0]).get_by_role("button", name="Play").click()
    player = page.locator("#player")
    page.locator("#player[data-state='playing']").wait_for()
    assert page.locator("#player-verdict").inner_text().startswith("Verified")
    page.locator("#player[data-scheduled='3']").wait_for(timeout=20000)
    # The tone of write_calls (amplitude 3000) came out of the decoder.
    assert 2900 <= int(player.get_attribute("data-peak")) <= 3000
    assert int(player.get_attribute("data-decoded")) == 3 * 10 * 8000
    # Pause, speed, seek.
    page.get_by_role("button", name="Pause").click()
    assert player.get_attribute("data-state") == "paused"
    page.get_by_label("Speed").select_option("2")
    page.get_by_role("button", name="Resume").click()
    page.locator("#player[data-state='playing']").wait_for()
    page.get_by_label("Position").fill("25")
    page.get_by_label("Position").dispatch_event("change")
    page.locator("#player[data-state='ended']").wait_for(timeout=20000)


def test_a_call_failing_verification_plays_only_after_a_warning(env, context):
    seg = USegment.get((USegment.device == "dev-a") & (USegment.call == env.ids_a[3])
                       & (USegment.seq == 1))
    path = env.ucfg.objects + "/" + seg.key
    orig = open(path, "rb").read()
    bad = bytearray(orig)
    bad[-40] ^= 1
    open(path, "wb").write(bytes(bad))
    try:
        page = _signed_in_with_key(context, env, "staff")
        # The manifest verifies; segment 1's hash is checked as it is fetched.
        _row(page, env.ids_a[3]).get_by_role("button", name="Play").click()
        page.locator("#player-verdict.bad").wait_for(timeout=20000)
        assert "segment 1 altered" in page.locator("#player-verdict").inner_text()
        # A call whose segment is missing fails before playing: warning first.
        USegment.update(seq=99).where(USegment.id == seg.id).execute()
        _row(page, env.ids_a[3]).get_by_role("button", name="Play").click()
        dialog = page.locator("#confirm")
        dialog.wait_for()
        assert "FAILED verification" in page.locator("#confirm-text").inner_text()
        assert page.locator("#player").get_attribute("data-state") != "playing"
        page.get_by_role("button", name="Play anyway").click()
        # Segment 0 plays (segment 1, missing, then stops it: the state may already
        # have moved on, the decoded count has not).
        page.locator("#player[data-decoded='80000']").wait_for()
        a = UAudit.select().where(UAudit.action == "portal_verify_failed_play") \
            .order_by(UAudit.seq.desc()).first()
        assert a.detail["status"] == "played" and a.detail["call"] == env.ids_a[3]
    finally:
        USegment.update(seq=1).where(USegment.id == seg.id).execute()
        open(path, "wb").write(orig)


@pytest.fixture(scope="module")
def box_export(env, tmp_path_factory):
    """The box's own ``linetap export`` of the same calls, from its data directory."""
    from recorder.cli.main import main
    out = tmp_path_factory.mktemp("box-export")
    assert main(["export", "--data-dir", str(env.box_a.data_dir), "--key", str(env.priv),
                 "--out", str(out), "--call", env.ids_a[0], "--call", env.ids_a[2]]) == 0
    return out


def test_download_is_byte_identical_to_the_cli_export(env, context, cli_export, box_export):
    page = _signed_in_with_key(context, env, "staff", env.enc_key, PASSPHRASE)
    for call in (env.ids_a[0], env.ids_a[2]):
        got = downloads(page, 2, _row(page, call).get_by_role("button", name="Download").click)
        assert got[f"{call}.wav"] == (cli_export / f"{call}.wav").read_bytes()
        assert got[f"{call}.json"] == (cli_export / f"{call}.json").read_bytes()
        # The same bytes as the box's own `linetap export` of that call.
        assert got[f"{call}.wav"] == (box_export / f"{call}.wav").read_bytes()
        assert got[f"{call}.json"] == (box_export / f"{call}.json").read_bytes()


def test_subject_access_zip(env, context, cli_export):
    page = _signed_in_with_key(context, env, "manager")
    page.get_by_label("Number", exact=True).fill(N1)
    with page.expect_download() as d:
        page.get_by_role("button", name="Subject access export").click()
    z = zipfile.ZipFile(io.BytesIO(open(d.value.path(), "rb").read()))
    names = set(z.namelist())
    want = {env.ids_a[0], env.ids_a[3]}
    assert names == {f"{c}.{x}" for c in want for x in ("wav", "json")} | {
        "verification-report.txt", "verification-report.json"}
    assert z.read(f"{env.ids_a[0]}.wav") == (cli_export / f"{env.ids_a[0]}.wav").read_bytes()
    rep = json.loads(z.read("verification-report.json"))
    assert {r["call"]: r["status"] for r in rep} == {c: "verified" for c in want}
    a = UAudit.select().where(UAudit.action == "portal_subject_access_export") \
        .order_by(UAudit.seq.desc()).first()
    assert a.detail["number"] == "0163*****11" and a.detail["calls"] == 2


def test_hold_set_and_release(env, context):
    page = _signed_in_with_key(context, env, "manager")
    call = env.ids_a[1]
    _row(page, call).get_by_role("button", name="Legal hold").click()
    page.get_by_label("Reason").fill("complaint 2026-14")
    page.get_by_role("button", name="Set legal hold").click()
    page.locator(f"tr[data-call='{call}'] td.hold", has_text="on hold").wait_for()
    assert UCall.get(UCall.call == call).legal_hold
    cmd = Command.select().where(Command.kind == "hold").order_by(Command.created.desc()).first()
    assert json.loads(json.loads(cmd.envelope)["body"])["call"] == call
    # Delete is refused while held.
    _row(page, call).get_by_role("button", name="Delete").click()
    page.get_by_label("Reason").fill("no longer needed")
    page.get_by_role("button", name="Delete call").click()
    page.locator("#search-status.bad", has_text="legal hold").wait_for()
    _row(page, call).get_by_role("button", name="Legal hold").click()
    page.get_by_label("Reason").fill("complaint closed")
    page.get_by_role("button", name="Release legal hold").click()
    page.locator(f"tr[data-call='{call}'] td.hold", has_text="").wait_for()
    page.wait_for_timeout(300)
    assert not UCall.get(UCall.call == call).legal_hold
    a = UAudit.select().where(UAudit.action == "portal_hold").order_by(UAudit.seq.desc()).first()
    assert a.detail == {"user": "manager", "site": "site1", "device": "dev-a", "call": call,
                        "on": False, "reason": "complaint closed"}


def test_roles_in_the_ui_and_as_403(env, context):
    page = context.new_page()
    sign_in(page, env.url, "auditor")
    wait_ready(page)
    assert page.locator("#calls tbody tr").count() == len(env.ids_a)
    for b in ("Play", "Download", "Delete", "Legal hold", "Open key", "Subject access export"):
        assert page.get_by_role("button", name=b, exact=True).count() == 0
    assert page.get_by_role("link", name="Audit").count() == 1
    base = f"{env.url}/api/call/dev-a/{env.ids_a[0]}"
    csrf = page.locator("meta[name=csrf]").get_attribute("content")
    for url in (base, base + "/manifest", base + "/seg/0", env.url + "/api/manifests"):
        assert page.request.get(url).status == 403
    assert page.request.post(base + "/delete", headers={"x-csrf-token": csrf},
                             data={"confirm": env.ids_a[0]}).status == 403
    staff = context.browser.new_context()
    p2 = staff.new_page()
    sign_in(p2, env.url, "staff")
    wait_ready(p2)
    assert p2.get_by_role("button", name="Delete", exact=True).count() == 0
    assert p2.get_by_role("link", name="Audit").count() == 0
    csrf2 = p2.locator("meta[name=csrf]").get_attribute("content")
    assert p2.request.post(base + "/hold", headers={"x-csrf-token": csrf2},
                           data={"on": True}).status == 403
    assert p2.request.get(env.url + "/api/audit").status == 403
    assert p2.request.get(env.url + "/audit").status == 403
    # Retention is the manager's: no link, no page, and 403 from the API.
    assert p2.get_by_role("link", name="Retention").count() == 0
    assert p2.request.get(env.url + "/manage").status == 403
    for who, p, tok in (("staff", p2, csrf2), ("auditor", page, csrf)):
        r = p.request.post(env.url + "/api/retention", headers={"x-csrf-token": tok},
                           data={"days": 1, "reason": "x"})
        assert r.status == 403, who
    assert p2.request.get(base + "/manifest").status == 200
    # Without the CSRF token even the manager's POST is refused.
    staff.close()


def test_other_practice_call_ids_answer_404(env, context):
    page = context.new_page()
    sign_in(page, env.url, "manager")
    wait_ready(page)
    csrf = page.locator("meta[name=csrf]").get_attribute("content")
    theirs = f"{env.url}/api/call/dev-b/{env.ids_b[0]}"
    for url in (theirs, theirs + "/manifest", theirs + "/seg/0"):
        r = page.request.get(url)
        assert r.status == 404 and r.json() == {"error": "no such call"}
    for act, data in (("delete", {"confirm": env.ids_b[0]}), ("hold", {"on": True}),
                      ("keep", {"reason": "x", "until": "2099-01-01"})):
        assert page.request.post(f"{theirs}/{act}", headers={"x-csrf-token": csrf},
                                 data=data).status == 404
    # A call id of theirs under our own device name is no better.
    assert page.request.get(f"{env.url}/api/call/dev-a/{env.ids_b[0]}").status == 404
    assert page.request.post(f"{env.url}/api/event", headers={"x-csrf-token": csrf},
                             data={"action": "play", "device": "dev-b",
                                   "call": env.ids_b[0]}).status == 404
    # And the list holds none of theirs.
    listed = {c["call"] for c in page.request.get(env.url + "/api/calls").json()["calls"]}
    assert listed == set(env.ids_a)
    assert page.request.post(f"{env.url}/api/call/dev-a/{env.ids_a[0]}/hold",
                             data={"on": True}).status == 403          # no CSRF token


def test_no_key_leaves_and_no_plaintext_arrives(env, context, cli_export):
    sent, received = [], []
    context.on("request", lambda r: sent.append((r.url, r.post_data_buffer or b"",
                                                 json.dumps(r.headers))))

    def on_response(r):
        try:
            received.append((r.url, r.body()))
        except Exception:  # noqa: BLE001 - redirects and aborted requests have no body
            pass
    context.on("response", on_response)
    page = _signed_in_with_key(context, env, "manager", env.enc_key, PASSPHRASE)
    page.get_by_label("Number", exact=True).fill(N1)
    page.get_by_role("button", name="Search").click()
    _row(page, env.ids_a[0]).get_by_role("button", name="Play").click()
    page.locator("#player[data-scheduled='3']").wait_for(timeout=20000)
    downloads(page, 2, _row(page, env.ids_a[0]).get_by_role("button", name="Download").click)
    page.wait_for_load_state("networkidle")
    pem = env.priv.read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    secrets_ = [raw, raw.hex().encode(), base64.b64encode(raw),
                base64.urlsafe_b64encode(raw).rstrip(b"="), base64.b64encode(der),
                env.enc_key.read_bytes()[40:100],
                PASSPHRASE.encode(), N1.encode()]
    assert len(sent) > 10
    for url, body, headers in sent:
        blob = url.encode() + body + headers.encode()
        for s in secrets_:
            assert s not in blob, f"request to {url} carries a secret"
    wav = (cli_export / f"{env.ids_a[0]}.wav").read_bytes()
    tone = wav[44 + 8000: 44 + 8064]          # 32 samples of the call's audio
    assert any(u.endswith("/seg/0") for u, _ in received)
    for url, body in received:
        code = "/static/" in url or "/vendor/" in url     # our own JS names the magics
        for bad in (N1.encode(), N2.encode(), tone, *(() if code else
                                                       (b"RIFF", b"fLaC", b"OggS"))):
            assert bad not in body, f"response from {url} carries {bad[:8]!r}"


def test_audit_entries(env, context):
    page = context.new_page()
    sign_in(page, env.url, "auditor")
    page.goto(env.url + "/audit")
    assert "intact" in page.locator("#chain").inner_text()
    text = page.locator("#audit").inner_text()
    for action in ("portal_signin", "portal_search", "portal_play", "portal_download",
                   "portal_hold", "portal_subject_access_export", "portal_key_open"):
        assert action in text, action
    assert N1 not in text and N2 not in text
    assert "0163*****11" in text
    # Masked only: the server refuses a full number in an event.
    csrf = page.locator("meta[name=csrf]").get_attribute("content")
    assert page.request.post(f"{env.url}/api/event", headers={"x-csrf-token": csrf},
                             data={"action": "search", "number": N1}).status == 400
    # Another practice's user sees none of site1's entries.
    other = context.browser.new_context()
    p2 = other.new_page()
    sign_in(p2, env.url, "other")
    p2.goto(env.url + "/audit")
    t2 = p2.locator("#audit").inner_text()
    assert "dev-a" not in t2
    users = {r.split("\t")[2] for r in t2.splitlines()[1:]}
    assert users <= {"other", ""}, users
    other.close()


def test_bulk_export_is_split_into_zips_at_tablet_width(env, browser, cli_export):
    ctx = browser.new_context(viewport={"width": 820, "height": 1180}, accept_downloads=True)
    try:
        page = _signed_in_with_key(ctx, env, "manager")
        # One 30 s call's WAV is 480 KB: a 600 KB limit makes one ZIP per call.
        page.locator("#bulk").evaluate("b => b.dataset.maxBytes = '600000'")
        n = page.locator("#calls tbody tr").count()
        got = downloads(page, n, page.get_by_role("button", name="Export everything").click)
        assert sorted(got) == [f"linetap-export-part-{k:03d}.zip" for k in range(1, n + 1)]
        calls = set()
        for data in got.values():
            z = zipfile.ZipFile(io.BytesIO(data))
            wavs = [x for x in z.namelist() if x.endswith(".wav")]
            assert len(wavs) == 1 and "verification-report.txt" in z.namelist()
            calls.add(wavs[0][:-4])
            if wavs[0][:-4] in (env.ids_a[0], env.ids_a[2]):
                assert z.read(wavs[0]) == (cli_export / wavs[0]).read_bytes()
        assert calls == {page.locator("#calls tbody tr").nth(i).get_attribute("data-call")
                         for i in range(n)}
        a = UAudit.select().where(UAudit.action == "portal_bulk_export") \
            .order_by(UAudit.seq.desc()).first()
        assert a.detail["files"] == n
    finally:
        ctx.close()
