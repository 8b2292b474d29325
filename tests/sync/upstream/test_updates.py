"""Staged rollouts (sync/upstream/updates.py): the pure decisions as tables, then offer,
box reports, canary, automatic pause, resume and the CLI on a real SQLite store, and the
bundle server over real mutual TLS with byte ranges and a CRL."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.errors import ConfigError
from recorder.evidence.keys import raw_public
from sync import signed_commands
from sync.upstream import config as upstream_config
from sync.upstream import updates
from sync.upstream.cli import cli_main
from sync.upstream.ingest import Ingest
from sync.upstream.store import Command, Health, Rollout, RolloutTarget, UAudit, open_db
from sync.upstream.updates import RolloutError, Tally, Verdict
from tests.support.syncbox import write_command_key

LINETAP = str(Path(sys.executable).parent / "linetap")
SHA = "ab" * 32

# -- pure decisions ----------------------------------------------------------------------

J = dict(max_failure_rate=0.1, min_reports=3, canary_timeout_s=3600.0)


@pytest.mark.parametrize("phase,tally,age,want", [
    # canary still running
    ("canary", Tally(5, good=2, offered=5, all_good=2), 10, "wait"),
    # every canary box good: advance
    ("canary", Tally(5, good=5, offered=5, all_good=5), 10, "advance"),
    # finished with one silent (offline all along) and the rest good: advance
    ("canary", Tally(5, good=4, silent=1, offered=5, all_good=4), 10, "advance"),
    # one failure among 5 finished = 20 % > 10 %: pause
    ("canary", Tally(5, good=4, failed=1, offered=5, all_good=4, all_failed=1), 10, "pause"),
    # one failure but only 1 of min 3 finished: not judged yet
    ("canary", Tally(5, failed=1, offered=5, all_failed=1), 10, "wait"),
    # a canary of 2 (fewer offered than min_reports): judged when both finished
    ("canary", Tally(2, good=1, failed=1, offered=2, all_good=1, all_failed=1), 10, "pause"),
    # a canary of 1 that failed: judged at once
    ("canary", Tally(1, failed=1, offered=1, all_failed=1), 10, "pause"),
    # every canary box silent: nothing says the bundle is good
    ("canary", Tally(3, silent=3, offered=3), 10, "pause"),
    # timeout with some good and others still open: advance on partial results
    ("canary", Tally(5, good=2, offered=5, all_good=2), 3600, "advance"),
    # timeout with no good at all: pause
    ("canary", Tally(5, offered=5), 3600, "pause"),
    # rest: 1 failure in 40 finished is 2.5 %: carry on
    ("rest", Tally(95, good=30, failed=1, offered=100, all_good=35, all_failed=1), 10, "wait"),
    # rest: 6 of 40 failed (15 %): pause
    ("rest", Tally(95, good=29, failed=6, offered=100, all_good=34, all_failed=6), 10, "pause"),
    # after a resume that accepted 6 failures, 1 new one in 20 new finishes is 5 %
    ("rest", Tally(95, good=49, failed=7, offered=100, all_good=54, all_failed=7,
                   base_good=34, base_failed=6), 10, "wait"),
    # every device finished: done
    ("rest", Tally(95, good=94, silent=1, offered=100, all_good=99), 10, "done"),
    # rest with nothing finished and no timeout rule: wait, however long
    ("rest", Tally(95, offered=100, all_good=5), 10**7, "wait"),
])
def test_judge(phase, tally, age, want):
    v = updates.judge(phase, tally, phase_age_s=age, **J)
    assert isinstance(v, Verdict) and v.action == want, v
    if want == "pause":
        assert v.reason


def test_canary_set_is_stable_sized_and_spread_by_bundle():
    devs = [f"lt-{i:03d}" for i in range(200)]
    a = updates.canary_set(devs, 0.1, "a" * 64)
    assert len(a) == 20 and a == updates.canary_set(list(reversed(devs)), 0.1, "a" * 64)
    assert a != updates.canary_set(devs, 0.1, "b" * 64)       # another bundle, other boxes
    assert updates.canary_set(devs, 0.0, "a") == set()
    assert len(updates.canary_set(devs[:3], 0.01, "a")) == 1  # at least one
    assert updates.canary_set(devs[:3], 1.0, "a") == set(devs[:3])
    assert updates.canary_set([], 0.5, "a") == set()


@pytest.mark.parametrize("old,new,want", [
    (None, "accepted", "accepted"),
    ("accepted", "downloading", "downloading"),
    ("installing", "downloading", "installing"),   # late report: never backwards
    ("installed", "good", "good"),
    ("downloading", "failed", "failed"),
    ("good", "failed", "failed"),                  # failed after good (e.g. a later reset)
    ("failed", "accepted", "accepted"),            # a retried box starts again
])
def test_next_stage(old, new, want):
    assert updates.next_stage(old, new) == want


@pytest.mark.parametrize("raw,problem", [
    ({"url": "http://x:8443"}, "https://"),
    ({"port": 0}, "updates.port"),
    ({"canary_share": 1.5}, "canary_share"),
    ({"max_failure_rate": -0.1}, "max_failure_rate"),
    ({"min_reports": 0}, "min_reports"),
    ({"canary_timeout_h": 0}, "canary_timeout_h"),
])
def test_bad_update_settings_are_named(raw, problem):
    with pytest.raises(ConfigError) as e:
        updates.settings_from(raw)
    assert any(problem in p for p in e.value.problems)


def test_update_section_checked_with_the_whole_config(tmp_path):
    with pytest.raises(ConfigError) as e:
        upstream_config.from_dict({"updates": {"canary_shar": 0.2, "port": "x"}})
    text = " ".join(e.value.problems)
    assert "did you mean 'canary_share'" in text and "updates.port: wrong type" in text


# -- rollouts on a real store --------------------------------------------------------------

N_DEV = 10


@pytest.fixture
def up(tmp_path):
    key, pub = write_command_key(tmp_path / "command.key")
    devs = {f"lt-{i:02d}": raw_public(ed25519.Ed25519PrivateKey.generate().public_key()).hex()
            for i in range(N_DEV)}
    raw = {"database": {"url": f"sqlite:///{tmp_path / 'up.db'}"},
           "objects": {"path": str(tmp_path / "objects")},
           "broker": {"host": "127.0.0.1", "port": 8883},
           "commands": {"key": str(tmp_path / "command.key")},
           "updates": {"dir": str(tmp_path / "bundles"), "url": "https://up.example:8443",
                       "canary_share": 0.2, "max_failure_rate": 0.25, "min_reports": 2,
                       "canary_timeout_h": 1},
           "sites": {"s1": {"retention_days": 90, "devices": dict(list(devs.items())[:6])},
                     "s2": {"retention_days": 90, "devices": dict(list(devs.items())[6:])}}}
    ucfg = upstream_config.from_dict(raw)
    open_db(ucfg.db_url)
    bundle = tmp_path / "linetap-1.2.raucb"
    bundle.write_bytes(os.urandom(300_000))
    return ucfg, pub, bundle, raw


def _report(ucfg, device, stage, sha, **kw):
    """A box's stage report, through the ingest's real handler for the report topic."""
    site = ucfg.site_of(device).name
    body = {"kind": "update", "nonce": "n" * 32, "bundle": sha, "stage": stage,
            "version": "1.2", **kw}
    Ingest(ucfg).handle(f"linetap/{site}/{device}/report", json.dumps(body).encode())


def _targets(r):
    return {t.device: t for t in RolloutTarget.select().where(RolloutTarget.rollout == r.id)}


def test_offer_stores_the_bundle_and_signs_commands_to_the_canary_only(up):
    ucfg, pub, bundle, _ = up
    from recorder.evidence.keys import load_ed25519_public
    r = updates.offer(ucfg, bundle, "1.2")
    stored = Path(ucfg.updates.dir) / f"{r.sha256}.raucb"
    assert stored.read_bytes() == bundle.read_bytes() and r.size == 300_000
    assert not [p for p in Path(ucfg.updates.dir).iterdir() if p.name.startswith(".")]
    ts = _targets(r)
    assert len(ts) == N_DEV
    canary = {d for d, t in ts.items() if t.phase == "canary"}
    assert len(canary) == 2 and r.phase == "canary"
    cmds = list(Command.select().where(Command.kind == "update"))
    assert {c.device for c in cmds} == canary
    key = load_ed25519_public(pub)
    for c in cmds:
        body = signed_commands.verify(c.envelope.encode(), key, c.device)
        assert body["url"] == f"https://up.example:8443/bundles/{r.sha256}.raucb"
        assert (body["size"], body["sha256"], body["version"]) == (300_000, r.sha256, "1.2")
        assert ts[c.device].nonce == c.nonce and ts[c.device].stage == "offered"
    assert UAudit.select().where(UAudit.action == "update_offered").count() == 1
    # A second tick offers nothing more while the canary runs.
    updates.tick(ucfg)
    assert Command.select().where(Command.kind == "update").count() == 2


def test_canary_good_advances_then_rest_done(up):
    ucfg, _pub, bundle, _ = up
    r = updates.offer(ucfg, bundle, "1.2")
    canary = [d for d, t in _targets(r).items() if t.phase == "canary"]
    for d in canary:
        for st in ("accepted", "downloading", "downloaded", "installing", "installed",
                   "rebooting"):
            _report(ucfg, d, st, r.sha256, bytes=1000)
        assert updates.tick(ucfg) == [] or d == canary[-1]
        _report(ucfg, d, "good", r.sha256)
    events = updates.tick(ucfg)
    assert any("past its canary" in e for e in events)
    r = Rollout.get_by_id(r.id)
    assert r.phase == "rest" and r.state == "active"
    assert Command.select().where(Command.kind == "update").count() == N_DEV
    for d, t in _targets(r).items():
        if t.phase == "rest":
            _report(ucfg, d, "good", r.sha256)
    assert any("done" in e for e in updates.tick(ucfg))
    assert Rollout.get_by_id(r.id).state == "done"
    rows = updates.status(r.id)
    assert rows[0]["stages"] == {"good": N_DEV}


def test_failures_pause_by_themselves_and_resume_accepts_them(up):
    ucfg, _pub, bundle, _ = up
    r = updates.offer(ucfg, bundle, "1.2", canary_share=0.5)
    canary = sorted(d for d, t in _targets(r).items() if t.phase == "canary")
    assert len(canary) == 5
    _report(ucfg, canary[0], "failed", r.sha256, reason="rauc: signature invalid")
    _report(ucfg, canary[1], "good", r.sha256)
    events = updates.tick(ucfg)
    assert events and "paused" in events[0] and "1 of 2" in events[0]
    r = Rollout.get_by_id(r.id)
    assert r.state == "paused" and "50%" in r.reason
    # Paused: the rest is never offered, whatever the canary does next.
    for d in canary[2:]:
        _report(ucfg, d, "good", r.sha256)
    updates.tick(ucfg)
    assert Command.select().where(Command.kind == "update").count() == 5
    st = updates.status(r.id)[0]
    failed = [d for d in st["devices"] if d["stage"] == "failed"]
    assert failed == [{**failed[0], "device": canary[0], "reason": "rauc: signature invalid"}]
    # The operator resumes: the failure is accepted, the canary (4 good of 5) advances.
    updates.resume(ucfg, r.id)
    assert any("past its canary" in e for e in updates.tick(ucfg))
    assert Command.select().where(Command.kind == "update").count() == N_DEV
    audits = [a.action for a in UAudit.select().order_by(UAudit.seq)]
    assert audits.count("update_paused") == 1 and "update_resumed" in audits
    assert "update_failed" in audits


def test_a_refused_command_counts_as_failed_and_an_expired_one_as_silent(up):
    ucfg, _pub, bundle, _ = up
    r = updates.offer(ucfg, bundle, "1.2", canary_share=0.3)
    c1, c2, c3 = sorted(d for d, t in _targets(r).items() if t.phase == "canary")
    t = _targets(r)
    Command.update(status="rejected", result="bad signature").where(
        Command.nonce == t[c1].nonce).execute()
    Command.update(expires=time.time() - 1).where(Command.nonce == t[c2].nonce).execute()
    _report(ucfg, c3, "good", r.sha256)
    st = {d["device"]: d for d in updates.status(r.id)[0]["devices"]}
    assert st[c1]["stage"] == "failed" and st[c1]["reason"] == "bad signature"
    assert st[c2]["stage"] == "silent"
    # 1 failed of 2 finished (50 % > 25 %): paused, not advanced.
    assert "paused" in updates.tick(ucfg)[0]


def test_offer_refuses_what_it_cannot_do_and_skips_current_boxes(up, tmp_path):
    ucfg, _pub, bundle, _ = up
    with pytest.raises(RolloutError, match="version must be"):
        updates.offer(ucfg, bundle, "1.2 beta")
    with pytest.raises(RolloutError, match="no such site"):
        updates.offer(ucfg, bundle, "1.2", sites=["nowhere"])
    with pytest.raises(RolloutError, match="not an enrolled device"):
        updates.offer(ucfg, bundle, "1.2", devices=["lt-99"])
    with pytest.raises(RolloutError, match="bundle"):
        updates.offer(ucfg, tmp_path / "missing.raucb", "1.2")
    for d in ucfg.sites["s2"].devices:
        Health.create(device=d, site="s2", body={"version": "1.2"}, time=time.time())
    with pytest.raises(RolloutError, match="already runs 1.2"):
        updates.offer(ucfg, bundle, "1.2", sites=["s2"])
    r = updates.offer(ucfg, bundle, "1.2", canary_share=0)
    assert set(_targets(r)) == set(ucfg.sites["s1"].devices) and r.phase == "rest"
    with pytest.raises(RolloutError, match="still in another rollout"):
        updates.offer(ucfg, bundle, "1.3", sites=["s1"])
    assert Rollout.select().count() == 1


def test_reports_for_bundles_never_offered_change_nothing(up):
    ucfg, _pub, bundle, _ = up
    r = updates.offer(ucfg, bundle, "1.2")
    rest = next(d for d, t in _targets(r).items() if t.phase == "rest")
    canary = next(d for d, t in _targets(r).items() if t.phase == "canary")
    _report(ucfg, canary, "good", "cd" * 32)             # another bundle
    _report(ucfg, canary, "exploded", r.sha256)          # no such stage
    _report(ucfg, rest, "installing", "ZZ")              # not a hash
    assert {t.stage for t in _targets(r).values()} == {None, "offered"}


def test_cli_offer_status_pause_resume(up, tmp_path, capsys):
    ucfg, _pub, bundle, raw = up
    from tests.support.syncbox import to_toml
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))

    def cli(*a):
        capsys.readouterr()
        rc = cli_main(["--config", str(conf), "update", *a])
        out = capsys.readouterr()
        return rc, out.out + out.err
    rc, out = cli("offer", str(bundle), "--version", "1.2", "--site", "s1")
    assert rc == 0 and "rollout 1  1.2  active (canary)  6 device(s)" in out
    rc, out = cli("status", "--json")
    rows = json.loads(out)
    assert rc == 0 and rows[0]["stages"] == {"offered": 2, "pending": 4}
    rc, out = cli("pause", "--reason", "practice complaint")
    assert rc == 0 and Rollout.get_by_id(1).state == "paused"
    rc, out = cli("pause", "--reason", "again")
    assert rc == 2 and "is paused, not active" in out
    rc, out = cli("status")
    assert "paused" in out and "practice complaint" in out
    rc, out = cli("resume")
    assert rc == 0 and Rollout.get_by_id(1).state == "active"
    rc, out = cli("offer", str(tmp_path / "nope.raucb"), "--version", "2")
    assert rc == 2 and "nope.raucb" in out


# -- serving bundles over mutual TLS ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """A real upstream folder (`upstream init`), two enrolled boxes (one then revoked), a
    rollout, and `linetap upstream update serve` running as its own process."""
    from sync.upstream import setup
    d = Path(tempfile.mkdtemp(prefix="linetap-up-"))
    lay = setup.init(d / "up", port=_free_port(), bind="127.0.0.1", workers=1,
                     out=open(os.devnull, "w"))
    cfg = str(lay.config)
    boxes = {}
    for dev in ("lt-good", "lt-gone"):
        ident = ed25519.Ed25519PrivateKey.generate()
        boxes[dev] = setup.enrol(cfg, "s1", dev, identity=raw_public(ident.public_key()).hex())
    setup.revoke(cfg, "lt-gone")
    port = _free_port()
    with open(cfg, "a") as f:
        f.write(f'\n[updates]\nport = {port}\nurl = "https://localhost:{port}"\n')
    ucfg = upstream_config.load(cfg)
    open_db(ucfg.db_url)
    bundle = tmp_path / "b.raucb"
    bundle.write_bytes(os.urandom(200_000))
    r = updates.offer(ucfg, bundle, "1.2", devices=["lt-good"])
    log = open(d / "serve.log", "wb")
    p = subprocess.Popen([LINETAP, "upstream", "--config", cfg, "update", "serve", "--bind",
                          "127.0.0.1"], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert p.poll() is None and time.monotonic() < deadline, \
                (d / "serve.log").read_text()
            time.sleep(0.1)
    yield lay, boxes, port, r, bundle.read_bytes()
    p.terminate()
    p.wait(10)
    log.close()
    shutil.rmtree(d, ignore_errors=True)


def _get(lay, box_folder, port, path, headers=None):
    ctx = ssl.create_default_context(cafile=str(lay.ca))
    if box_folder is not None:
        ctx.load_cert_chain(str(box_folder / "device-cert.pem"),
                            str(box_folder / "device-tls.key"))
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        resp = c.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        c.close()


def test_bundle_served_to_an_enrolled_box_with_ranges(served):
    lay, boxes, port, r, data = served
    path = f"/bundles/{r.sha256}.raucb"
    st, _h, body = _get(lay, boxes["lt-good"], port, path)
    assert st == 200 and body == data
    # A download cut at 120,000 bytes resumes from there.
    st, h, body = _get(lay, boxes["lt-good"], port, path, {"Range": "bytes=120000-"})
    assert st == 206 and body == data[120000:]
    assert h["content-range"] == f"bytes 120000-199999/{len(data)}"
    assert _get(lay, boxes["lt-good"], port, f"/bundles/{'0' * 64}.raucb")[0] == 404
    assert _get(lay, boxes["lt-good"], port, "/bundles/../pki/ca.key")[0] == 404


@pytest.mark.parametrize("who", ["no certificate", "revoked"])
def test_bundle_refused_without_a_valid_device_certificate(served, who):
    lay, boxes, port, r, _data = served
    folder = None if who == "no certificate" else boxes["lt-gone"]
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        _get(lay, folder, port, f"/bundles/{r.sha256}.raucb")
