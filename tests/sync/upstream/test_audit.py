"""``linetap upstream problems`` and the hash-chained upstream audit (``uaudit``),
on SQLite and on the real PostgreSQL fixture."""

from __future__ import annotations

import json
import sqlite3
import threading
from types import SimpleNamespace

import pytest

from recorder.evidence import auditchain, keys
from sync import protocol
from sync.upstream import config as upstream_config
from sync.upstream import ops as upstream_ops
from sync.upstream.cli import cli_main
from sync.upstream.ingest import Ingest
from sync.upstream.pki import signing_key
from sync.upstream.store import (
    UAudit,
    UCall,
    audit,
    load_audit_key,
    open_db,
    verify_audit,
)
from tests.support.auditlog import rechain
from tests.support.syncbox import make_box, practice_keys, to_toml, upstream_raw, write_calls

NOBROKER = SimpleNamespace(port=1)


@pytest.fixture(params=["sqlite", "postgres"])
def upstream(request, tmp_path, pki, objects_backend):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").new_db(f"audit_{tmp_path.name[-20:]}"
                                                         .replace("-", "_").lower())
    audit_key = tmp_path / "audit.key"
    audit_key.write_bytes(signing_key()[0])
    raw = upstream_raw(tmp_path / "up", NOBROKER, pki, [box], db_url=url, audit_key=audit_key)
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    ucfg = upstream_config.from_dict(raw)
    open_db(ucfg.db_url, ucfg.audit_key)
    return SimpleNamespace(box=box, ucfg=ucfg, conf=str(conf), pub=pub, tmp=tmp_path,
                           audit_pub=load_audit_key(str(audit_key)).public_key())


def _cli(u, capsys, *args):
    capsys.readouterr()
    rc = cli_main(["--config", u.conf, *args])
    return rc, capsys.readouterr().out


def test_problems_and_audit_chain(upstream, capsys):
    u = upstream
    box = u.box
    ids = write_calls(box, n_calls=2, segs=2)
    ing = Ingest(u.ucfg)
    msgs = []
    for c in box.store.calls():
        for s in box.store.segments_of(c.id):
            t = protocol.seg_topic("linetap", "site1", box.device, c.id, s.seq)
            msgs += [(t, p) for p in protocol.split(box.store.abs(s.path).read_bytes())]
        t = protocol.man_topic("linetap", "site1", box.device, c.id)
        msgs += [(t, p) for p in protocol.split(box.store.abs(c.manifest).read_bytes())]
    ing.handle_batch(msgs)
    rc, out = _cli(u, capsys, "problems", "--json")
    assert rc == 0 and json.loads(out) == []
    # A conflicting segment and a manifest signed by a stranger.
    s0 = box.store.segments_of(ids[0])[0]
    evil = bytearray(box.store.abs(s0.path).read_bytes())
    evil[-1] ^= 1
    ing.handle_batch([(protocol.seg_topic("linetap", "site1", box.device, ids[0], 0), p)
                      for p in protocol.split(bytes(evil))])
    stranger = make_box(u.tmp / "stranger", u.pub)
    sid = write_calls(stranger, n_calls=1, segs=1)[0]
    forged = stranger.store.abs(stranger.store.call(sid).manifest).read_bytes()
    ing.handle_batch([(protocol.man_topic("linetap", "site1", box.device, sid), p)
                      for p in protocol.split(forged)])
    rc, out = _cli(u, capsys, "problems", "--json")
    rows = json.loads(out)
    assert rc == 0 and sorted((r["kind"], r["call_id"], r["seq"]) for r in rows) == sorted(
        [("conflict", ids[0], 0), ("rejected", sid, None)])
    assert any("different device" in r["detail"] for r in rows)
    rc, out = _cli(u, capsys, "problems")
    assert "2 open problem(s)" in out and "segment 0" in out and "manifest" in out
    # Audited acts form one chain, also with several writers at once.
    upstream_ops.delete_call(ing.objects, UCall.get(UCall.call == ids[1]), "upstream_delete")

    def many(n):
        for i in range(10):
            audit("test", writer=n, i=i)
    ts = [threading.Thread(target=many, args=(n,)) for n in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    r = verify_audit(u.audit_pub)
    n = r.entries
    assert r.problems == [] and n == UAudit.select().count() >= 41 and r.signed == n
    assert [a.seq for a in UAudit.select().order_by(UAudit.seq)] == list(range(1, n + 1))
    rc, out = _cli(u, capsys, "audit", "--verify")
    assert rc == 0 and f"{n} with a verified signature: verified" in out
    rc, out = _cli(u, capsys, "audit", "--json")
    assert [e["action"] for e in json.loads(out)][0] == "delete"
    # Tampering is found: an edited detail, then a removed row.
    UAudit.update(detail={"call": "someone-else"}).where(UAudit.seq == 1).execute()
    rc, out = _cli(u, capsys, "audit", "--verify")
    assert rc == 1 and out.startswith("FIRST BAD ROW: seq 1: hash mismatch")
    UAudit.delete().where(UAudit.seq == 5).execute()
    r = verify_audit(u.audit_pub)
    assert str(r.problems[1]).startswith("seq 6: sequence gap, chain broken")
    rc, out = _cli(u, capsys, "audit", "--verify", "--json")
    assert rc == 1 and json.loads(out)["status"] == "broken"


def test_a_rechained_uaudit_is_caught_by_its_signature(upstream, capsys, tmp_path):
    """Someone with write access to the database but not the audit key edits a row and
    re-chains every row after it: the hashes agree again, the signatures do not (the
    unsigned chain of before passed this)."""
    u = upstream
    for i in range(4):
        audit("delete", call=f"c{i}")
    rows = list(UAudit.select().order_by(UAudit.seq))
    entries = [{"seq": r.seq, "time": r.time, "action": r.action, "detail": r.detail,
                "prev": r.prev, "hash": r.hash} for r in rows]
    entries[1]["detail"] = {"call": "someone-else"}
    rechain(entries, frm=1)
    for r, e in zip(rows[1:], entries[1:], strict=True):
        UAudit.update(detail=e["detail"], prev=e["prev"], hash=e["hash"], sig=None) \
            .where(UAudit.id == r.id).execute()
    rc, out = _cli(u, capsys, "audit", "--verify")
    assert rc == 1 and out.startswith("FIRST BAD ROW: seq 2: unsigned after signing started")
    # Re-signed with a key of the forger's own: refused against the configured key and
    # against --audit-pub; with no key at all the answer is unverifiable, not intact.
    forger_pem = tmp_path / "forger.key"
    forger_pem.write_bytes(signing_key()[0])
    forger = load_audit_key(str(forger_pem))
    for r, e in zip(rows[1:], rechain(entries, key=forger, frm=1,
                                      domain=auditchain.UPSTREAM_DOMAIN)[1:], strict=True):
        UAudit.update(sig=e.get("sig")).where(UAudit.id == r.id).execute()
    rc, out = _cli(u, capsys, "audit", "--verify")
    assert rc == 1 and out.startswith("FIRST BAD ROW: seq 2: bad signature")
    pub = tmp_path / "audit.pub"
    pub.write_bytes(keys.pem_public(u.audit_pub))
    assert _cli(u, capsys, "audit", "--verify", "--audit-pub", str(pub))[0] == 1
    assert verify_audit(None).status == "unverifiable"
    raw = upstream_config.load(u.conf)
    assert raw.audit_key                              # the key signs from open_db on


def test_unchained_uaudit_is_migrated(tmp_path):
    """A database from before the chain gets the columns and its rows chained."""
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE uaudit (id INTEGER PRIMARY KEY, time REAL NOT NULL, "
                "action VARCHAR(255) NOT NULL, detail TEXT NOT NULL)")
    con.executemany("INSERT INTO uaudit (time, action, detail) VALUES (?, ?, ?)",
                    [(1.5, "delete", '{"call": "a"}'), (2.5, "legal_hold", '{"on": true}')])
    con.commit()
    con.close()
    open_db(f"sqlite:///{path}")
    r = verify_audit()
    assert (r.entries, r.problems, r.status) == (2, [], "unsigned (legacy)")
    audit("export", call="b")
    assert (verify_audit().entries, verify_audit().problems) == (3, [])
    assert [a.action for a in UAudit.select().order_by(UAudit.seq)] == [
        "delete", "legal_hold", "export"]
    # The migrated table got the unique seq index: a fork cannot be stored.
    import peewee as pw
    with pytest.raises(pw.IntegrityError):
        UAudit.create(seq=1, time=3.0, action="x", detail={}, prev="0", hash="0")
