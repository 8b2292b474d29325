"""The portal's own SQL on PostgreSQL (the upstream at scale): the call list, a keep,
and approval-only expiry, browser-free."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import feed, to_toml
from synchelpers import make_box, write_calls

from recorder import keys
from recorder.keys import raw_public
from sync import upstream_config, upstream_ops
from sync.objectstore import open_objects
from sync.portal import accounts, api
from sync.portal.decisions import PDecision, PSite
from sync.upstream_store import UCall, open_db

_spec = importlib.util.spec_from_file_location(
    "sync_conftest_pg", Path(__file__).parent.parent / "sync" / "conftest.py")
sync_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_conftest)


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
