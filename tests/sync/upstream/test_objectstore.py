"""The object-store contract, on the filesystem and on S3 (moto's server): put/get/exists,
list and walk, idempotent re-upload, deletion of every copy, bad keys; and on S3, legal
hold mapped onto Object Lock, buckets without it, and the [objects] settings."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from recorder.errors import CommandRejected, ConfigError, StoreError
from sync.upstream import config as upstream_config
from sync.upstream import ops as upstream_ops
from sync.upstream.ingest import Ingest
from sync.upstream.objectstore import FsObjectStore, open_objects
from sync.upstream.s3store import S3ObjectStore, S3Options
from sync.upstream.store import UCall, open_db
from tests.support import syncbox
from tests.support.syncbox import make_box, practice_keys, stored_objects, upstream_raw, write_calls


def _opts(srv) -> S3Options:
    return S3Options(endpoint=srv.endpoint, region="us-east-1",
                     access_key_id="testing-key-id",
                     secret_access_key_file=str(srv.secret_file), addressing="path")


@pytest.fixture(params=["fs", "s3"])
def store(request, tmp_path):
    if request.param == "fs":
        return FsObjectStore(tmp_path / "objects")
    srv = request.getfixturevalue("s3server")
    return S3ObjectStore(f"s3://{srv.new_bucket()}/pre/fix", _opts(srv))


def _copies(store, prefix):
    if isinstance(store, S3ObjectStore):
        r = store.client.list_object_versions(Bucket=store.bucket,
                                              Prefix=store.prefix + prefix + "/")
        return sorted(v["Key"][len(store.prefix):] for v in r.get("Versions", []))
    return [k for k, _m in store.walk(prefix)]


def test_contract(store):
    t0 = time.time()
    store.put("seg/d/c/00000.aa", b"one")
    store.put("seg/d/c/00001.bb", b"two", dirs=set())
    store.put("seg/d/c/sub/x", b"deeper", durable=False)
    store.sync_dirs(set())
    assert store.get("seg/d/c/00000.aa") == b"one"
    assert store.exists("seg/d/c/00001.bb") and not store.exists("seg/d/c/nope")
    assert store.list("seg/d/c") == ["seg/d/c/00000.aa", "seg/d/c/00001.bb"]
    assert store.list("seg/d/c/") == store.list("seg/d/c")
    assert store.list("seg/none") == []
    walked = store.walk("seg/d")
    assert [k for k, _m in walked] == ["seg/d/c/00000.aa", "seg/d/c/00001.bb",
                                       "seg/d/c/sub/x"]
    assert all(abs(m - t0) < 300 for _k, m in walked)       # epoch seconds, not ms
    # Idempotent re-upload: the same key again leaves one copy.
    store.put("seg/d/c/00000.aa", b"one")
    assert _copies(store, "seg/d/c") == ["seg/d/c/00000.aa", "seg/d/c/00001.bb",
                                         "seg/d/c/sub/x"]
    with pytest.raises(StoreError, match="not found"):
        store.get("seg/d/c/nope")
    for bad in ("", "/abs", "a/../b"):
        with pytest.raises(StoreError, match="bad object key"):
            store.put(bad, b"x")
    # Deletion removes every copy; deleting a missing key is fine.
    store.delete("seg/d/c/00000.aa")
    store.delete("seg/d/c/00000.aa")
    assert not store.exists("seg/d/c/00000.aa")
    assert "seg/d/c/00000.aa" not in _copies(store, "seg/d/c")
    assert store.list("seg/d/c") == ["seg/d/c/00001.bb"]


def test_temp_files_of_a_dead_writer_are_cleaned(store, tmp_path):
    """A writer killed mid-put leaves a temp file under ``tmp/`` (filesystem), never
    beside the objects; clean_temp removes the ones older than the age given."""
    store.put("seg/d/c/00000.aa", b"one")
    if isinstance(store, S3ObjectStore):
        assert store.clean_temp(0) == 0 and store.exists("seg/d/c/00000.aa")
        return
    assert store.walk("tmp") == []                        # the put left nothing behind
    old, fresh = store.root / "tmp" / "123.1.0", store.root / "tmp" / "123.1.1"
    old.write_bytes(b"half"), fresh.write_bytes(b"half")
    t = time.time() - 7200
    os.utime(old, (t, t))
    assert store.clean_temp(3600) == 1
    assert [k for k, _m in store.walk("tmp")] == ["tmp/123.1.1"]
    assert store.walk("seg") == [("seg/d/c/00000.aa", store.walk("seg")[0][1])]


def test_s3_versions_and_legal_hold(s3server):
    s = S3ObjectStore(f"s3://{s3server.new_bucket(object_lock=True)}", _opts(s3server))
    assert s.object_lock and s.versioned and s.prefix == ""
    # A plain PUT over an existing key (a server without If-None-Match) adds a version:
    # delete must remove them all, or a copy would outlive its deadline.
    s.put("man/d/c.ltm", b"v1")
    s.client.put_object(Bucket=s.bucket, Key="man/d/c.ltm", Body=b"v1")
    assert len(_copies(s, "man/d")) == 2
    assert s.set_hold("man/d/c.ltm", True) is True and s.held("man/d/c.ltm")
    with pytest.raises(StoreError, match="delete man/d/c.ltm"):
        s.delete("man/d/c.ltm")
    assert s.get("man/d/c.ltm") == b"v1"
    s.set_hold("man/d/c.ltm", False)
    assert not s.held("man/d/c.ltm")
    s.delete("man/d/c.ltm")
    assert _copies(s, "man/d") == [] and not s.exists("man/d/c.ltm")
    r = s.client.list_object_versions(Bucket=s.bucket, Prefix="man/")
    assert not r.get("Versions") and not r.get("DeleteMarkers")


@pytest.mark.parametrize("versioned", [True, False])
def test_s3_bucket_without_object_lock(s3server, caplog, versioned):
    s = S3ObjectStore(f"s3://{s3server.new_bucket(object_lock=False, versioned=versioned)}/p",
                      _opts(s3server))
    assert not s.object_lock and s.versioned is versioned
    s.put("seg/a", b"x")
    assert s.set_hold("seg/a", True) is False and not s.held("seg/a")
    assert "no Object Lock" in caplog.text
    s.delete("seg/a")
    assert not s.exists("seg/a") and _copies(s, "seg") == []


def test_s3_settings_and_errors(tmp_path, s3server, pki):
    box = SimpleNamespace(device="dev-a", identity=__import__(
        "cryptography.hazmat.primitives.asymmetric.ed25519",
        fromlist=["x"]).Ed25519PrivateKey.generate())
    raw = upstream_raw(tmp_path, SimpleNamespace(port=1), pki, [box])
    raw["objects"] = s3server.objects_section(s3server.new_bucket(), "pre")
    ucfg = upstream_config.from_dict(raw)
    o = open_objects(ucfg)
    assert isinstance(o, S3ObjectStore) and o.prefix == "pre/"
    # s3_* settings on a filesystem path, and a bad addressing style, are named.
    raw["objects"]["path"] = str(tmp_path / "objects")
    raw["objects"]["s3_addressing"] = "sideways"
    with pytest.raises(ConfigError) as e:
        upstream_config.from_dict(raw)
    assert "only for an s3:// objects.path" in str(e.value)
    assert "s3_addressing" in str(e.value)
    with pytest.raises(ConfigError, match="no bucket"):
        open_objects("s3:///x")
    with pytest.raises(ConfigError, match="s3_secret_access_key_file"):
        S3ObjectStore("s3://b", S3Options(endpoint=s3server.endpoint, access_key_id="k"))
    with pytest.raises(ConfigError, match="No such file"):
        S3ObjectStore("s3://b", S3Options(endpoint=s3server.endpoint, access_key_id="k",
                                          secret_access_key_file=str(tmp_path / "none")))
    with pytest.raises(StoreError, match="NoSuchBucket"):
        S3ObjectStore("s3://no-such-bucket", _opts(s3server))


def test_practice_hold_locks_the_calls_objects_on_s3(tmp_path, pki, s3server):
    """``linetap upstream hold`` puts every object of the call under S3 legal hold (so
    not even the bucket's owner deletes it without lifting the hold first), and lifting
    it releases them; deletion then removes every copy."""
    bucket = s3server.new_bucket(object_lock=True)
    syncbox.OBJECTS_SECTION = lambda tmp: s3server.objects_section(bucket)
    try:
        _priv, pub, *_ = practice_keys(tmp_path)
        box = make_box(tmp_path / "box", pub)
        (cid,) = write_calls(box, n_calls=1, segs=2)
        ucfg = syncbox.upstream_cfg(tmp_path / "up", SimpleNamespace(port=1), pki, [box])
    finally:
        syncbox.OBJECTS_SECTION = None
    from tests.sync.upstream.test_faults import _items
    syncbox.write_command_key(tmp_path / "command.key")
    ucfg.command_key = str(tmp_path / "command.key")
    open_db(ucfg.db_url)
    ing = Ingest(ucfg)
    for topic, payload in _items(box):
        ing.handle(topic, payload)
    row = UCall.get(UCall.call == cid)
    keys = upstream_ops.call_keys(row)
    assert len(keys) == 3
    upstream_ops.user_hold(ucfg, cid, True)
    assert all(ing.objects.held(k) for k in keys)
    with pytest.raises(StoreError):
        ing.objects.delete(keys[0])
    with pytest.raises(CommandRejected, match="legal hold"):
        upstream_ops.user_delete(ucfg, ing.objects, cid)
    upstream_ops.user_hold(ucfg, cid, False)
    assert not any(ing.objects.held(k) for k in keys)
    upstream_ops.user_delete(ucfg, ing.objects, cid)
    assert UCall.get(UCall.call == cid).state == "deleted"
    assert stored_objects(ucfg, "seg") == [] and stored_objects(ucfg, "man") == []
