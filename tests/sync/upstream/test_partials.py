"""Abandoned partial chunk uploads under ``partial/`` are removed after
``objects.partial_max_age_days`` (default 7), audited; fresh ones are kept."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from recorder.errors import ConfigError
from sync import protocol
from sync.upstream import config as upstream_config
from sync.upstream import ops as upstream_ops
from sync.upstream.ingest import Ingest, Worker
from sync.upstream.store import UAudit, USegment, open_db, verify_audit
from tests.support.syncbox import make_box, practice_keys, upstream_raw, write_calls

DAY = 86400


def _age(objects, folder, days):
    t = time.time() - days * DAY
    for key, _m in objects.walk(folder):
        os.utime(objects.root / key, (t, t))


def test_abandoned_partials_cleaned(tmp_path, pki, postgres):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    ids = write_calls(box, n_calls=3, segs=1, noisy=True)        # > 128 KiB: chunked
    raw = upstream_raw(tmp_path / "up", SimpleNamespace(port=1), pki, [box],
                       db_url=postgres.new_db("partials"))
    ucfg = upstream_config.from_dict(raw)
    assert ucfg.partial_max_age_s == 7 * DAY
    open_db(ucfg.db_url)
    ing = Ingest(ucfg)
    folders = {}
    for cid in ids:
        s = box.store.segments_of(cid)[0]
        chunks = protocol.split(box.store.abs(s.path).read_bytes())
        assert len(chunks) > 1
        t = protocol.seg_topic("linetap", "site1", box.device, cid, 0)
        assert ing.handle_batch([(t, chunks[0])]) == [None]       # the rest never came
        folders[cid] = f"partial/{box.device}/{cid}/00000.{s.sha256}"
        assert ing.objects.walk(folders[cid])
    _age(ing.objects, folders[ids[0]], 8)        # abandoned
    _age(ing.objects, folders[ids[1]], 6)        # not yet
    # The worker's tick cleans (no broker needed for it).
    Worker(ucfg).tick()
    assert not ing.objects.walk(folders[ids[0]])
    assert not (ing.objects.root / f"partial/{box.device}/{ids[0]}").exists()   # pruned
    assert ing.objects.walk(folders[ids[1]]) and ing.objects.walk(folders[ids[2]])
    a = [u.detail for u in UAudit.select() if u.action == "partial_cleanup"]
    assert len(a) == 1 and a[0]["folders"] == 1 and a[0]["removed"] == [folders[ids[0]]]
    assert verify_audit().problems == []
    # A box that still wants the segment resends every chunk: it is stored whole.
    s = box.store.segments_of(ids[0])[0]
    t = protocol.seg_topic("linetap", "site1", box.device, ids[0], 0)
    res = ing.handle_batch([(t, p) for p in protocol.split(box.store.abs(s.path)
                                                           .read_bytes())])
    assert protocol.parse_ack(res[-1][1])["segs"] == [(ids[0], 0, s.sha256)]
    assert USegment.select().where(USegment.call == ids[0]).count() == 1
    # Nothing more to do: no audit row for an empty pass.
    assert upstream_ops.clean_partials(ing.objects, ucfg.partial_max_age_s) == 0
    # A shorter configured age takes the 6-day-old one too.
    assert upstream_ops.clean_partials(ing.objects, 5 * DAY) == 1
    assert not ing.objects.walk(folders[ids[1]]) and ing.objects.walk(folders[ids[2]])


def test_partial_age_config(tmp_path, pki):
    raw = upstream_raw(tmp_path, SimpleNamespace(port=1), pki, [])
    raw["objects"]["partial_max_age_days"] = 2
    assert upstream_config.from_dict(raw).partial_max_age_s == 2 * DAY
    raw["objects"]["partial_max_age_days"] = 0
    with pytest.raises(ConfigError, match="partial_max_age_days"):
        upstream_config.from_dict(raw)
    raw["objects"]["partial_max_age"] = 2
    with pytest.raises(ConfigError, match="did you mean"):
        upstream_config.from_dict(raw)
