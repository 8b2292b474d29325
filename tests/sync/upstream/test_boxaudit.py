"""The upstream's copy of each box's audit log (sync/upstream/boxaudit.py): the pure
decision per entry, then the ingest storing real signed entries in SQLite, refusing
tampered ones with a named reason, and raising every break in the box's chain."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.evidence import audit, keys
from recorder.evidence import auditchain as ac
from recorder.evidence.auditchain import GENESIS
from sync import protocol
from sync.upstream import boxaudit as ba
from sync.upstream import config as upstream_config
from sync.upstream import tracking
from sync.upstream.cli import cli_main
from sync.upstream.ingest import Ingest
from sync.upstream.pki import signing_key
from sync.upstream.store import BoxAudit, Problem, UAudit, open_db
from sync.upstream.store import audit as uaudit
from tests.support.auditlog import rechain
from tests.support.syncbox import make_box, practice_keys, to_toml, upstream_raw

KEY = ed25519.Ed25519PrivateKey.generate()
H = ba.Head(0, 3, "a" * 64, True)


def entry(seq, prev, key=KEY, **kv):
    e = {"seq": seq, "ts": "t", "action": "x", "detail": kv, "prev": prev}
    if key is not None:
        e["signer"] = "fp"
    e["hash"] = ac.entry_hash(e)
    if key is not None:
        e["sig"] = ac.sign(key, e["hash"], ac.BOX_DOMAIN)
    return e


def tampered():
    e = entry(4, "a" * 64)
    e["detail"] = {"changed": 1}
    return e


CASES = [
    # name, entry, head, held, verdict kind, reason starts with
    ("first entry", entry(1, GENESIS), None, False, ba.EXTEND, ""),
    ("extends the head", entry(4, "a" * 64), H, False, ba.EXTEND, ""),
    ("already held", entry(4, "a" * 64), H, True, ba.DUPLICATE, ""),
    ("edited", tampered(), H, False, ba.REFUSE, ac.HASH_MISMATCH),
    ("signed by another key", entry(4, "a" * 64, key=ed25519.Ed25519PrivateKey.generate()),
     H, False, ba.REFUSE, ac.BAD_SIGNATURE),
    ("unsigned after signed", entry(4, "a" * 64, key=None), H, False, ba.REFUSE,
     ac.UNSIGNED_LATE),
    ("unsigned legacy start", entry(1, GENESIS, key=None), None, False, ba.EXTEND, ""),
    ("not an entry", {"seq": "1"}, H, False, ba.REFUSE, ac.NOT_ENTRY),
    ("log restarted", entry(1, GENESIS), H, False, ba.BREAK, ba.RESTART),
    ("unsigned first entry of a reset log", entry(1, GENESIS, key=None), H, False, ba.BREAK,
     ba.RESTART),
    ("went backwards", entry(2, "b" * 64), H, False, ba.BREAK, ba.BACKWARDS),
    ("sequence gap", entry(6, "b" * 64), H, False, ba.BREAK, ac.SEQ_GAP),
    ("next seq, other prev", entry(4, "b" * 64), H, False, ba.BREAK, ac.CHAIN_BROKEN),
]


@pytest.mark.parametrize("name,e,head,held,kind,reason", CASES, ids=[c[0] for c in CASES])
def test_judge(name, e, head, held, kind, reason):
    v = ba.judge(e, head, held, KEY.public_key())
    assert v.kind == kind and v.reason.startswith(reason)
    if kind == ba.BREAK:
        assert v.epoch == head.epoch + 1


HEAD = ba.Head(0, 5, "e" * 64, True)
NOW = 1000.0


@pytest.mark.parametrize("seq,h,stored,next_ts,want", [
    (5, "e" * 64, "e" * 64, None, None),                  # level with the upstream
    (7, "g" * 64, None, None, None),                      # ahead: not shipped yet
    (0, GENESIS, None, NOW - 60, "deleted"),
    (3, "c" * 64, "c" * 64, NOW - 60, "truncated"),
    (3, "c" * 64, "c" * 64, NOW + 1, None),               # seq 4 written after the report
    (3, "x" * 64, "c" * 64, NOW - 60, "rewritten"),
    (5, "x" * 64, "e" * 64, None, "rewritten"),
])
def test_behind(seq, h, stored, next_ts, want):
    why = ba.behind(seq, h, HEAD, stored, next_ts, NOW)
    assert (why is None) if want is None else (want in why)


@pytest.fixture
def up(tmp_path, pki):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    audit_key = tmp_path / "audit.key"
    audit_key.write_bytes(signing_key()[0])
    raw = upstream_raw(tmp_path / "up", SimpleNamespace(port=1), pki, [box],
                       audit_key=audit_key)
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    ucfg = upstream_config.from_dict(raw)
    open_db(ucfg.db_url, ucfg.audit_key)
    return SimpleNamespace(box=box, ucfg=ucfg, conf=str(conf), ing=Ingest(ucfg))


def send(u, entries):
    """One audit message through the ingest; returns the parsed ack."""
    t = protocol.audit_topic("linetap", "site1", u.box.device)
    (res,) = u.ing.handle_batch([(t, protocol.audit_payload(entries))])
    assert not isinstance(res, Exception), res
    return protocol.parse_ack(res[1])


def verify(u, capsys):
    capsys.readouterr()
    rc = cli_main(["--config", u.conf, "audit", "--verify", "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_entries_stored_acked_and_verified(up, capsys):
    d = up.box.data_dir
    for i in range(4):
        audit.record(d, "export", calls=i)
    es = audit.read(d)
    ack = send(up, es)
    assert ack["audit"] == [(e["seq"], e["hash"]) for e in es] and not ack["audit_refused"]
    assert send(up, es[2:])["audit"] == [(3, es[2]["hash"]), (4, es[3]["hash"])]   # resent
    assert BoxAudit.select().count() == 4
    rc, out = verify(up, capsys)
    (b,) = out["boxes"]
    assert (b["device"], b["entries"], b["signed"], b["status"]) == ("dev-a", 4, 4, "verified")


def test_a_tampered_entry_is_refused_with_its_reason(up, capsys):
    d = up.box.data_dir
    for i in range(3):
        audit.record(d, "export", calls=i)
    es = audit.read(d)
    send(up, es[:1])
    es[1]["detail"]["calls"] = 99                      # edited on the box
    ack = send(up, es[1:])
    assert ack["audit"] == [] and ack["audit_refused"] == [(2, ac.HASH_MISMATCH)]
    rechain(es, frm=1)                                 # re-chained without the key
    ack = send(up, es[1:])
    assert ack["audit_refused"] == [(2, "bad signature (signature missing)")]
    assert BoxAudit.select().count() == 1
    kinds = {(p.kind, p.detail) for p in Problem.select()}
    assert ("audit_refused", ac.HASH_MISMATCH) in kinds
    assert [a.action for a in UAudit.select()].count("box_audit_refused") == 2


def test_a_deleted_or_truncated_box_log_is_a_visible_break(up, capsys):
    d = up.box.data_dir
    for i in range(5):
        audit.record(d, "export", calls=i)
    es = audit.read(d)
    send(up, es)
    # The box's copy deleted; a health message a minute later says it is now empty.
    (d / audit.AUDIT_FILE).unlink()
    assert "deleted" in ba.check_head("dev-a", *audit.head(d), time.time() + 60)
    # The box writes on: its chain restarts at seq 1, stored in a new epoch and acked.
    audit.record(d, "resume", n=1)
    new = audit.read(d)
    ack = send(up, new)
    assert ack["audit"] == [(1, new[0]["hash"])]
    p = Problem.get(Problem.kind == "audit_break")
    assert p.detail.startswith("restart: the box's log starts again at seq 1 after seq 5")
    assert UAudit.select().where(UAudit.action == "box_audit_break").count() == 1
    rc, out = verify(up, capsys)
    (b,) = out["boxes"]
    assert rc == 1 and b["status"] == "broken" and b["epochs"] == 2
    assert any("epoch 1 begins at seq 1: restart" in x for x in b["breaks"])
    assert any("its copy was deleted" in x for x in b["breaks"])
    # Text output names the break too.
    capsys.readouterr()
    assert cli_main(["--config", up.conf, "audit", "--verify"]) == 1
    assert "BOX LOG BREAK: dev-a epoch 1 begins at seq 1: restart" in capsys.readouterr().out
    assert cli_main(["--config", up.conf, "problems"]) == 0
    out = capsys.readouterr().out
    assert "audit_break" in out and "audit entry 1" in out and "audit_behind" in out
    # An operator who confirms it (a factory reset, say) resolves both problems; the
    # breaks are then listed as resolved and verify passes.
    for p in Problem.select():
        tracking.resolve_problem(p.id, "factory reset, box_notice confirmed")
    rc, out = verify(up, capsys)
    (b,) = out["boxes"]
    assert rc == 0 and b["status"] == "verified" and b["breaks"] == []
    assert b["resolved"][0].endswith("[resolved: factory reset, box_notice confirmed]")


def test_a_truncated_log_that_carries_on_goes_backwards(up):
    d = up.box.data_dir
    for i in range(5):
        audit.record(d, "export", calls=i)
    es = audit.read(d)
    send(up, es)
    lines = (d / audit.AUDIT_FILE).read_bytes().splitlines(keepends=True)
    (d / audit.AUDIT_FILE).write_bytes(b"".join(lines[:3]))     # seq 4 and 5 cut off
    assert ba.check_head("dev-a", *audit.head(d), time.time() - 60) is None   # stale report
    assert "truncated" in ba.check_head("dev-a", *audit.head(d), time.time() + 60)
    audit.record(d, "export", calls=99)                          # a new seq 4
    ack = send(up, audit.read(d))
    assert [s for s, _h in ack["audit"]] == [1, 2, 3, 4]
    p = Problem.get(Problem.kind == "audit_break")
    assert p.detail.startswith("went backwards: seq 4")
    assert BoxAudit.select().where(BoxAudit.seq == 4).count() == 2   # both kept


def test_an_epoch_from_before_a_repin_verifies_only_if_the_upstream_vouched(up):
    """A factory-reset box gets a new identity, pinned again upstream: its old entries
    are checked with the key they were accepted under, but only because the upstream's
    own trail recorded that key pinned for the device (as `upstream enrol` does)."""
    d = up.box.data_dir
    for i in range(2):
        audit.record(d, "export", calls=i)
    send(up, audit.read(d))
    new = ed25519.Ed25519PrivateKey.generate().public_key()
    r = ba.verify_device("dev-a", new).report
    assert r.first_bad is not None and ac.BAD_SIGNATURE in r.first_bad.reasons
    old_fp = keys.fingerprint(keys.raw_public(up.box.identity.public_key()))
    uaudit("device_enrolled", device="dev-b", identity=old_fp)      # another device's
    assert ba.verify_device("dev-a", new).report.problems
    uaudit("device_enrolled", device="dev-a", identity=old_fp)
    r = ba.verify_device("dev-a", new).report
    assert r.problems == [] and r.signed == 2 and r.status == "verified"
