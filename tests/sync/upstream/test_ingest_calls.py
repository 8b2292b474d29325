"""The call row a segment creates upstream: made once, with the site and defaults a
peewee insert would give it; its start (and the retention deadline from it) set by
segment 0 and only ever moved earlier. SQLite and PostgreSQL (skipped without it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from recorder.evidence import segfile
from recorder.timebase import parse_iso
from sync import protocol
from sync.upstream import config as upstream_config
from sync.upstream.ingest import Ingest
from sync.upstream.store import UCall, USegment, open_db
from tests.support.syncbox import make_box, practice_keys, upstream_raw, write_calls

DAY = 86400


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_segments_make_one_call_row_with_its_start(tmp_path, pki, request, backend):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    (cid,) = write_calls(box, n_calls=1, segs=3)
    db_url = (request.getfixturevalue("postgres").new_db("calls")
              if backend == "postgresql" else None)
    raw = upstream_raw(tmp_path / "up", SimpleNamespace(port=1), pki, [box], db_url=db_url,
                       retention_days=30.0)
    ucfg = upstream_config.from_dict(raw)
    open_db(ucfg.db_url)
    ing = Ingest(ucfg)
    msgs = {}
    for s in box.store.segments_of(cid):
        blob = box.store.abs(s.path).read_bytes()
        (chunk,) = protocol.split(blob)
        msgs[s.seq] = (protocol.seg_topic("linetap", "site1", box.device, cid, s.seq), chunk,
                       blob)

    def row():
        return UCall.get(UCall.device == box.device, UCall.call == cid)

    # later segments first: the row exists, without a start yet
    for seq in (2, 1):
        (res,) = ing.handle_batch([msgs[seq][:2]])
        assert res is not None and not isinstance(res, Exception)
    r = row()
    assert (r.site, r.state, r.legal_hold, r.start_time, r.deadline) == \
        ("site1", "live", False, None, None)
    assert r.created > 0
    # segment 0 sets the start and the deadline from the site's retention
    ing.handle_batch([msgs[0][:2]])
    start = parse_iso(segfile.parse(msgs[0][2]).header["start"])
    r = row()
    assert r.start_time == pytest.approx(start, abs=1e-3)
    assert r.deadline == pytest.approx(start + 30 * DAY, abs=1e-3)
    # a duplicate changes nothing; a later start would not move it either
    ing.handle_batch([msgs[0][:2]])
    ing._touch_call(SimpleNamespace(device=box.device, call=cid), ucfg.site_of(box.device),
                    start + 100.0)
    r = row()
    assert r.start_time == pytest.approx(start, abs=1e-3)
    assert r.deadline == pytest.approx(start + 30 * DAY, abs=1e-3)
    # an earlier one moves both
    ing._touch_call(SimpleNamespace(device=box.device, call=cid), ucfg.site_of(box.device),
                    start - 50.0)
    assert row().start_time == pytest.approx(start - 50.0, abs=1e-3)
    assert row().deadline == pytest.approx(start - 50.0 + 30 * DAY, abs=1e-3)
    assert UCall.select().count() == 1
    assert USegment.select().where(USegment.call == cid).count() == 3
