"""Delete in the portal reaches the box: portal -> upstream -> signed command over a real
mosquitto with mutual TLS -> the box's uploader applies it and reports back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from recorder.evidence import audit, keys
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


def test_delete_reaches_the_box(tmp_path, mqtt, browser):
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
    server = None
    try:
        wait_for(lambda: unacked(box.store) == 0, what="upload")
        accounts.init_tables()
        accounts.add_user("manager", "site1", "manager", PASSWORD)
        server = Server(ucfg)
        server.app.state.limit = RateLimit(n=10000)
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        sign_in(page, server.url, "manager")
        wait_ready(page)
        open_key(page, priv)
        row = page.locator(f"#calls tbody tr[data-call='{ids[0]}']")
        row.get_by_role("button", name="Delete").click()
        # The confirmation names the call.
        assert ids[0] in page.locator("#confirm-text").inner_text()
        page.get_by_label("Reason").fill("recorded in error")
        page.get_by_role("button", name="Delete call").click()
        row.wait_for(state="detached")
        assert UCall.get(UCall.call == ids[0]).state == "deleted"
        wait_for(lambda: box.store.call(ids[0]).state == "deleted", what="delete on the box")
        assert any(e["action"] == "command_applied" and e["detail"]["kind"] == "delete"
                   for e in audit.read(box.data_dir))
        wait_for(lambda: Command.get(Command.kind == "delete").status == "applied",
                 what="the box reports the delete applied")
        a = UAudit.get(UAudit.action == "portal_delete")
        assert a.detail["user"] == "manager" and a.detail["reason"] == "recorded in error"
        assert box.store.call(ids[1]).state != "deleted"
        ctx.close()
    finally:
        if server:
            server.stop()
        run.close()
        worker.close()
        time.sleep(0)
