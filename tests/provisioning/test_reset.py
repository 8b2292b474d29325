"""Factory reset never silently destroys evidence: un-uploaded calls, upstream notice."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioning import evidence, protocol
from recorder.evidence import audit, keys
from recorder.storage.store import Store
from sync import authz
from tests.provisioning.provhelpers import call


def add_calls(data, n_unsynced: int, n_synced: int = 0) -> None:
    """Call rows as the recorder leaves them: acked upstream or not."""
    st = Store(data)
    C, S = st.m.Call, st.m.Segment
    for i in range(n_unsynced + n_synced):
        synced = i >= n_unsynced
        C.create(id=f"c{i}", device="lt-test0001", line=0, direction="inbound",
                 state="closed", rate=8000, codec="flac", created=time.time(),
                 manifest="m", manifest_acked=synced)
        S.create(call=f"c{i}", seq=0, path="p", first_sample=0, samples=1, size=1,
                 sha256="0" * 64, chain="0" * 64, created=time.time(), acked=synced)
    # A call deleted on purpose is not evidence at risk.
    C.create(id="gone", device="lt-test0001", line=0, direction="inbound", state="deleted",
             rate=8000, codec="flac", created=time.time())
    st.close()


@pytest.fixture
def key(box):
    k = ed25519.Ed25519PrivateKey.generate()
    (box.etc / "upstream-command.pub").write_bytes(keys.pem_public(k.public_key()))
    return k


def test_unsynced_count(box):
    assert evidence.unsynced_calls(box.data) == 0          # no store yet
    add_calls(box.data, 2, 3)
    assert evidence.unsynced_calls(box.data) == 2


def test_reset_refused_while_calls_are_not_uploaded(box, key, fake_recorder):
    add_calls(box.data, 2, 1)
    call(box.d, "authorise", token=authz.mint(key, "lt-test0001", ["factory_reset"]).decode())
    r = call(box.d, "factory_reset_begin")
    assert r["code"] == protocol.E_UNSYNCED and r["unsynced_calls"] == 2
    assert "2 call(s) on this box are not yet uploaded" in r["message"]
    assert "--destroy-unsynced" in r["message"]
    assert (box.data / "linetap.db").exists()
    assert audit.read(box.data)[-1]["detail"]["reason"] == "2 unsynced call(s)"


def test_reset_with_destroy_unsynced_token_names_the_loss(box, key, fake_recorder):
    add_calls(box.data, 2)
    tok = authz.mint(key, "lt-test0001", ["factory_reset"], destroy_unsynced=True)
    call(box.d, "authorise", token=tok.decode())
    begin = call(box.d, "factory_reset_begin")
    assert begin["unsynced_calls"] == 2 and "2 call(s) not yet uploaded WILL BE LOST" in \
        begin["warning"]
    r = call(box.d, "factory_reset", code=begin["code"])
    assert r["reset"] and r["unsynced_calls_destroyed"] == 2
    assert r["announced_upstream"] == {"delivered": False, "link": "offline"}
    (entry,) = audit.read(box.data)
    assert entry["detail"]["unsynced_calls_destroyed"] == 2
    assert entry["detail"]["token_nonce"] == authz.commands.parse(tok)[0]["nonce"]
    assert not (box.data / "linetap.db").exists()


def test_reset_waits_for_the_upstream_when_the_link_is_up(box, key, fake_recorder):
    tok = authz.mint(key, "lt-test0001", ["factory_reset"])
    call(box.d, "authorise", token=tok.decode())
    # Link up but the broker does not acknowledge: nothing is erased.
    fake_recorder.announce_reply = {"ok": True, "delivered": False, "link": "online",
                                    "error": "timeout"}
    code = call(box.d, "factory_reset_begin")["code"]
    r = call(box.d, "factory_reset", code=code)
    assert r["code"] == protocol.E_RECORDER and "did not acknowledge" in r["message"]
    assert keys.identity_path(box.data).exists() and ("stop",) not in box.calls
    # Acknowledged: the notice went first, then the reset.
    fake_recorder.announce_reply = {"ok": True, "delivered": True, "link": "online"}
    code = call(box.d, "factory_reset_begin")["code"]
    r = call(box.d, "factory_reset", code=code)
    assert r["announced_upstream"] == {"delivered": True, "link": "online"}
    notice = [q for q in fake_recorder.requests if q["cmd"] == "announce"][-1]
    assert notice["event"] == "factory_reset" and notice["detail"]["unsynced_calls"] == 0
    assert audit.read(box.data)[0]["detail"]["announced_upstream"] is True


def test_fresh_box_reset_needs_explicit_destroy(box):
    (box.etc / "upstream-command.pub").unlink(missing_ok=True)
    add_calls(box.data, 1)
    assert call(box.d, "factory_reset_begin")["code"] == protocol.E_UNSYNCED
    begin = call(box.d, "factory_reset_begin", destroy_unsynced=True)
    r = call(box.d, "factory_reset", code=begin["code"], destroy_unsynced=True)
    assert r["unsynced_calls_destroyed"] == 1


def test_unreadable_store_is_not_taken_for_empty(box):
    (box.etc / "upstream-command.pub").unlink(missing_ok=True)
    (box.data / "linetap.db").write_bytes(b"not a database at all" * 10)
    r = call(box.d, "factory_reset_begin")
    assert r["code"] == protocol.E_IO and "cannot count" in r["message"]
    # Told to destroy what it holds, the box goes ahead and says it could not count.
    begin = call(box.d, "factory_reset_begin", destroy_unsynced=True)
    assert "cannot be read" in begin["warning"] and begin["unsynced_calls"] == -1
    assert call(box.d, "factory_reset", code=begin["code"], destroy_unsynced=True)["reset"]
