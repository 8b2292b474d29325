"""``make demo`` goes all the way: simulated box -> mosquitto (mutual TLS) -> one ingest
worker -> upstream, leaving the config ``make portal`` serves and a manager login."""

from __future__ import annotations

import re

import pytest

from recorder.cli import demo
from sync.upstream import config as upstream_config
from sync.upstream.portal import accounts
from sync.upstream.store import UCall, open_db

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


@pytest.mark.slow
def test_demo_ends_with_calls_upstream_and_a_manager_login(tmp_path, capsys):
    out = tmp_path / "demo-out"
    assert demo.main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    conf = out / "upstream" / "upstream.toml"
    assert conf.is_file()
    assert "make portal" in text
    m = re.search(r"username: manager\s+password: (\S+)", text)
    assert m, text
    ucfg = upstream_config.load(str(conf))
    open_db(ucfg.db_url)
    exported = {p.stem for p in (out / "export").glob("*.wav")}
    stored = {r.call for r in UCall.select().where(UCall.state == "live")}
    assert stored == exported and stored
    assert accounts.authenticate("manager", m.group(1), "").user is not None
    assert (out / "upstream" / "manager-password.txt").stat().st_mode & 0o777 == 0o600
