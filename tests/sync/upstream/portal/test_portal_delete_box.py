"""Delete and the retention period set in the portal reach the box: portal -> upstream ->
signed command over a real mosquitto with mutual TLS -> the box's uploader applies it
and reports back."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from recorder.evidence import audit, keys
from sync import signed_commands as commands
from sync.upstream import config as upstream_config
from sync.upstream.portal import accounts
from sync.upstream.portal.security import RateLimit
from sync.upstream.store import Command, UAudit, UCall
from tests.support import broker as sync_conftest
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    to_toml,
    unacked,
    upstream_raw,
    wait_for,
    write_calls,
    write_command_key,
)
from tests.sync.upstream.portal.conftest import PASSWORD, Server, open_key, sign_in, wait_ready

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


@pytest.fixture
def mqtt(tmp_path):
    if not Path(sync_conftest.MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    pki = sync_conftest.PKI(tmp_path)
    pki.devices = {"dev-a": pki.client("dev-a")}
    pki.ingest = pki.client("ingest")
    d = tmp_path / "broker"
    d.mkdir()
    b = sync_conftest.Broker(d, pki)
    b.start()
    yield pki, b
    b.stop()


@pytest.fixture
def live(tmp_path, mqtt, browser):
    """A box synced through mosquitto to an upstream with one ingest worker, and the
    portal on it with a manager signed in (``page``)."""
    pki, broker = mqtt
    priv, pub = keys.practice_keygen(tmp_path / "practice.key")
    box = make_box(tmp_path / "box", keys.load_practice_public(pub))
    ids = write_calls(box, n_calls=2, segs=2)
    _key, key_pub = write_command_key(tmp_path / "command.key")
    raw = upstream_raw(tmp_path / "up", broker, pki, [box],
                       command_key=tmp_path / "command.key")
    (tmp_path / "upstream.toml").write_text(to_toml(raw))
    ucfg = upstream_config.load(str(tmp_path / "upstream.toml"))
    worker = InProcWorker(ucfg)
    run = Running(box, broker, pki, command_pub=key_pub)
    server = ctx = None
    try:
        wait_for(lambda: unacked(box.store) == 0, what="upload")
        accounts.init_tables()
        accounts.add_user("manager", "site1", "manager", PASSWORD)
        # The portal has its own copy of the config, as in its own process.
        server = Server(upstream_config.load(str(tmp_path / "upstream.toml")))
        server.app.state.limit = RateLimit(n=10000)
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        sign_in(page, server.url, "manager")
        yield SimpleNamespace(box=box, ids=ids, priv=priv, page=page, ucfg=ucfg,
                              worker=worker)
    finally:
        if ctx:
            ctx.close()
        if server:
            server.stop()
        run.close()
        worker.close()


def test_delete_reaches_the_box(live):
    box, ids, page = live.box, live.ids, live.page
    wait_ready(page)
    open_key(page, live.priv)
    row = page.locator(f"#calls tbody tr[data-call='{ids[0]}']")
    row.get_by_role("button", name="Delete").click()
    # The confirmation names the call.
    assert ids[0] in page.locator("#confirm-text").inner_text()
    page.get_by_label("Reason").fill("recorded in error")
    page.get_by_role("button", name="Delete call").click()
    row.wait_for(state="detached")
    assert UCall.get(UCall.call == ids[0]).state == "deleted"
    wait_for(lambda: box.store.call(ids[0]).state == "deleted", what="delete on the box")
    # The box audits the command just after applying it: wait for the entry too.
    wait_for(lambda: any(e["action"] == "command_applied" and e["detail"]["kind"] == "delete"
                         for e in audit.read(box.data_dir)), what="the box's audit entry")
    wait_for(lambda: Command.get(Command.kind == "delete").status == "applied",
             what="the box reports the delete applied")
    a = UAudit.get(UAudit.action == "portal_delete")
    assert a.detail["user"] == "manager" and a.detail["reason"] == "recorded in error"
    assert box.store.call(ids[1]).state != "deleted"


def test_retention_set_in_the_portal_reaches_the_box(live):
    box, page = live.box, live.page
    # The worker first pushes the config's 90 days; the portal's value must win after.
    wait_for(lambda: box.store.get_meta("retention_days") == 90.0, what="first push")
    page.get_by_role("link", name="Retention").click()
    page.locator("body[data-ready='1']").wait_for()
    assert page.get_by_label("Retention period (days)").input_value() == "90"
    page.get_by_label("Retention period (days)").fill("30")
    page.get_by_label("Reason for the change").fill("practice policy review")
    page.get_by_role("button", name="Set retention period").click()
    page.locator("#retention-status", has_text="set to 30 days (was 90)").wait_for()
    # The upstream's own deadlines follow at once ...
    for c in UCall.select().where(UCall.state == "live"):
        assert c.deadline == pytest.approx(c.start_time + 30 * 86400)
    a = UAudit.select().where(UAudit.action == "portal_retention").get()
    assert a.detail == {"user": "manager", "site": "site1", "days": 30.0, "previous": 90.0,
                        "reason": "practice policy review"}
    # ... and so does the box, by signed command.
    wait_for(lambda: box.store.get_meta("retention_days") == 30.0, what="retention on the box")
    # The worker (its own copy of the config) follows the portal's value at its tick,
    # and the last retention command the box was sent says 30 days.
    wait_for(lambda: live.ucfg.sites["site1"].retention_days == 30.0, what="worker follows")
    last = (Command.select().where(Command.kind == "retention")
            .order_by(Command.created.desc()).get())
    assert commands.parse(last.envelope.encode())[0]["days"] == 30.0
    wait_for(lambda: Command.get_by_id(last.nonce).status == "applied", what="applied report")
    assert box.store.get_meta("retention_days") == 30.0
    # A reason is required, and the range is the box's.
    csrf = page.locator("meta[name=csrf]").get_attribute("content")
    for data in ({"days": 30}, {"days": 0, "reason": "r"}, {"days": 4000, "reason": "r"},
                 {"days": True, "reason": "r"}, {"days": "30", "reason": "r"}):
        r = page.request.post(page.url.rsplit("/", 1)[0] + "/api/retention",
                              headers={"x-csrf-token": csrf}, data=data)
        assert r.status == 400, data
