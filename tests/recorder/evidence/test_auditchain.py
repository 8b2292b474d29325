"""The audit chain checker (recorder/evidence/auditchain.py): one table of logs, each
with the first bad entry and the verdict it must get. Pure: no files."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.evidence import auditchain as ac
from recorder.evidence.auditchain import GENESIS, Link
from tests.support.auditlog import rechain

KEY = ed25519.Ed25519PrivateKey.generate()
OTHER = ed25519.Ed25519PrivateKey.generate()


def chain(n, key=KEY, unsigned_first=0, domain=ac.BOX_DOMAIN):
    """``n`` well-formed entries; the first ``unsigned_first`` unsigned (legacy)."""
    out, prev = [], GENESIS
    for i in range(1, n + 1):
        e = {"seq": i, "ts": f"t{i}", "action": "a", "detail": {"i": i}, "prev": prev}
        if i > unsigned_first and key is not None:
            e["signer"] = "fp"
        e["hash"] = ac.entry_hash(e)
        if i > unsigned_first and key is not None:
            e["sig"] = ac.sign(key, e["hash"], domain)
        out.append(e)
        prev = e["hash"]
    return out


def rehash(entries, key=None, frm=0):
    return rechain(entries, key=key, frm=frm, renumber=True)


def links(entries):
    return [Link(f"line {i}", e) for i, e in enumerate(entries, 1)]


def edit(i, **kv):
    def f(es):
        es[i]["detail"] = {**es[i]["detail"], **kv}
        return es
    return f


def drop(i):
    def f(es):
        del es[i]
        return es
    return f


def torn_after(i):
    def f(es):
        return es[:i + 1] + [None] + es[i + 1:]
    return f


CASES = [
    # name, make entries, key used to check, status, first bad (where, reasons)
    ("intact", lambda: chain(5), KEY, ac.VERIFIED, None),
    ("edited detail", lambda: edit(2, x=1)(chain(5)), KEY, ac.BROKEN,
     ("line 3", (ac.HASH_MISMATCH,))),
    ("edited and re-chained without the key", lambda: rehash(edit(2, x=1)(chain(5)), frm=2),
     KEY, ac.BROKEN, ("line 3", (ac.BAD_SIGNATURE,))),
    ("re-chained without the key, signer names dropped",
     lambda: rehash([{k: v for k, v in e.items() if k != "signer" or e["seq"] < 3}
                     for e in edit(2, x=1)(chain(5))], frm=2),
     KEY, ac.BROKEN, ("line 3", (ac.UNSIGNED_LATE,))),
    ("re-chained and re-signed with another key",
     lambda: rehash(edit(2, x=1)(chain(5)), key=OTHER, frm=2), KEY, ac.BROKEN,
     ("line 3", (ac.BAD_SIGNATURE,))),
    ("whole log forged with another key", lambda: chain(4, key=OTHER), KEY, ac.BROKEN,
     ("line 1", (ac.BAD_SIGNATURE,))),
    ("middle entry deleted", lambda: drop(2)(chain(5)), KEY, ac.BROKEN,
     ("line 3", (ac.SEQ_GAP, ac.CHAIN_BROKEN))),
    ("two entries swapped", lambda: (lambda es: [es[0], es[2], es[1], *es[3:]])(chain(4)),
     KEY, ac.BROKEN, ("line 2", (ac.SEQ_GAP, ac.CHAIN_BROKEN))),
    ("torn last line", lambda: chain(4) + [None], KEY, ac.VERIFIED, None),
    ("torn line, then the writer carried on",
     lambda: (lambda es: es[:3] + [None] + rehash(es[:3] + [dict(es[3])], key=KEY, frm=3)[3:])(
         chain(4)), KEY, ac.VERIFIED, None),
    ("garbage line replacing an entry", lambda: (lambda es: es[:2] + [None] + es[3:])(
        chain(5)), KEY, ac.BROKEN, ("line 3", (ac.NOT_ENTRY,))),
    ("legacy prefix, then signed", lambda: chain(5, unsigned_first=3), KEY, ac.VERIFIED, None),
    ("legacy only", lambda: chain(3, key=None), KEY, ac.UNSIGNED, None),
    ("signed but no trusted key", lambda: chain(3), None, ac.UNVERIFIABLE, None),
    ("a signature from the upstream's domain", lambda: chain(3, domain=ac.UPSTREAM_DOMAIN),
     KEY, ac.BROKEN, ("line 1", (ac.BAD_SIGNATURE,))),
    ("signature stripped, signer left", lambda: (lambda es: [es[0], {
        k: v for k, v in es[1].items() if k != "sig"}, *es[2:]])(chain(3)), KEY, ac.BROKEN,
     ("line 2", (ac.BAD_SIGNATURE,))),
    ("empty", lambda: [], KEY, ac.EMPTY, None),
]


@pytest.mark.parametrize("name,make,key,status,first", CASES, ids=[c[0] for c in CASES])
def test_check_names_the_first_bad_entry(name, make, key, status, first):
    r = ac.check(links(make()), key and key.public_key(), ac.BOX_DOMAIN)
    assert r.status == status
    assert r.exit_code == {ac.VERIFIED: 0, ac.EMPTY: 0, ac.BROKEN: 1}.get(status, 3)
    if first is None:
        assert r.first_bad is None
    else:
        assert (r.first_bad.where, r.first_bad.reasons) == first


def test_torn_lines_are_reported_and_legacy_counted():
    es = chain(4, unsigned_first=2) + [None]
    r = ac.check(links(es), KEY.public_key(), ac.BOX_DOMAIN)
    assert [t.where for t in r.torn] == ["line 5"] and r.problems == []
    assert (r.unsigned_legacy, r.signed, r.head) == (2, 2, (4, es[3]["hash"]))
    d = r.as_dict()
    assert d["status"] == "verified" and d["unsigned_legacy"] == 2 and d["torn"]
