"""The portal's own SQL on PostgreSQL (the upstream at scale): the call list, a keep,
and approval-only expiry, browser-free."""

from __future__ import annotations

import json
import subprocess
import time
from types import SimpleNamespace

import pytest

from recorder.evidence import keys
from recorder.evidence.keys import raw_public
from sync.upstream import config as upstream_config
from sync.upstream import ops as upstream_ops
from sync.upstream.objectstore import open_objects
from sync.upstream.portal import accounts, api
from sync.upstream.portal.decisions import PDecision, PSite
from sync.upstream.store import UCall, open_db
from tests.support import broker as sync_conftest
from tests.support.syncbox import make_box, write_calls
from tests.sync.upstream.portal.conftest import feed, to_toml

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg():
    if not (sync_conftest.PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL binaries not found")
    p = sync_conftest.Postgres()
    try:
        p.start()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"PostgreSQL did not start: {exc}")
    yield p
    p.stop()


def test_call_list_keep_and_approval_on_postgres(tmp_path, pg):
    _priv, pub = keys.practice_keygen(tmp_path / "practice.key")
    box = make_box(tmp_path / "box", keys.load_practice_public(pub))
    ids = write_calls(box, n_calls=3, segs=2)
    raw = {"database": {"url": pg.new_db("portal")},
           "objects": {"path": str(tmp_path / "objects")},
           "sites": {"site1": {"retention_days": 90, "devices": {
               "dev-a": raw_public(box.identity.public_key()).hex()}}}}
    (tmp_path / "u.toml").write_text(to_toml(raw))
    ucfg = upstream_config.load(str(tmp_path / "u.toml"))
    open_db(ucfg.db_url)
    feed(ucfg, box, "site1")
    accounts.init_tables()
    u = accounts.add_user("m", "site1", "manager", "a long password")
    req = SimpleNamespace(query_params={}, app=SimpleNamespace(state=SimpleNamespace(
        ucfg=ucfg, objects=None)), path_params={})
    body = json.loads(api.calls.__wrapped__(req, u, None).body)
    assert {c["call"] for c in body["calls"]} == set(ids)
    assert all(c["complete"] and c["expected"] == 2 for c in body["calls"])
    req.path_params = {"device": "dev-a", "call": ids[0]}
    api.keep.__wrapped__(req, u, {"reason": "complaint", "until": "2099-01-01"})
    upstream_ops.refresh_deadlines(ucfg)
    assert UCall.get(UCall.call == ids[0]).deadline > time.time() + 50 * 365 * 86400
    accounts.site_settings("site1")
    PSite.update(deletion="approval").where(PSite.site == "site1").execute()
    UCall.update(deadline=time.time() - 10).where(UCall.call.in_(ids[1:])).execute()
    PDecision.create(device="dev-a", call=ids[1], site="site1", kind="approve",
                     reason="appraised", user="m")
    upstream_ops.expire(open_objects(ucfg.objects))
    assert UCall.get(UCall.call == ids[1]).state == "deleted"
    assert UCall.get(UCall.call == ids[2]).state == "live"
