"""A manifest signed by crash recovery carries the box's sealed copy of the caller
(``personal_sealed``, docs/formats.md): the portal opens it like the CLI does, for the
search and for a download byte-identical to ``linetap upstream export``."""

from __future__ import annotations

import json

import pytest

from recorder.evidence import keys, segfile
from sync.upstream.cli import cli_main
from sync.upstream.objectstore import open_objects
from sync.upstream.portal.security import RateLimit
from sync.upstream.store import UCall
from tests.sync.upstream.portal.conftest import (
    N1,
    Server,
    add_users,
    build_upstream,
    downloads,
    open_key,
    sign_in,
    wait_ready,
)

# Slow (`make test-fast` leaves it out): a browser.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = build_upstream(tmp_path_factory.mktemp("portal-recovered"), n_calls=2, segs=1,
                       resign=(0,))
    e.users = add_users()
    e.server = Server(e.ucfg)
    e.server.app.state.limit = RateLimit(n=10000)
    e.url = e.server.url
    yield e
    e.server.stop()


def test_portal_opens_the_sealed_copy_of_a_recovered_manifest(env, context, tmp_path):
    call = env.ids_a[0]
    row = UCall.get(UCall.call == call)
    body = json.loads(segfile.open_payload(
        segfile.parse(open_objects(env.ucfg).get(row.manifest_key)),
        keys.load_practice_private(env.priv)))
    assert body["caller_number"] is None and body["personal_sealed"]   # the case at hand
    out = tmp_path / "cli"
    assert cli_main(["--config", str(env.conf), "export", "--key", str(env.priv), "--out",
                     str(out), "--call", call]) == 0
    assert json.loads((out / f"{call}.json").read_text())["caller_number"] == N1

    page = context.new_page()
    sign_in(page, env.url, "manager")
    wait_ready(page)
    open_key(page, env.priv)
    page.get_by_label("Number", exact=True).fill(N1)
    page.get_by_role("button", name="Search").click()
    page.locator("body[data-results='1']").wait_for()     # site1's one call from N1
    tr = page.locator(f"#calls tbody tr[data-call='{call}']")
    got = downloads(page, 2, tr.get_by_role("button", name="Download").click)
    assert got[f"{call}.json"] == (out / f"{call}.json").read_bytes()
