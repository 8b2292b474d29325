"""Atomic apply: a cut at any point leaves the complete old state or the complete new one.

The link is cut (pty cable relay) half-way through each request of ``apply`` in turn,
and through the commit's reply; a power cut is simulated at every durable step inside
the commit. Each time the box "comes up" again (a new dispatcher on the same folders,
recovery run as the agent does at start) and its files must be exactly the old set or
exactly the new set, never a mix.
"""

from __future__ import annotations

import io

import pytest

from provisioning import client, protocol, sitefile, tlscert
from provisioning.dispatcher import Dispatcher
from recorder import configtxn as txn
from recorder.cli import doctor
from recorder.errors import ProtocolError
from tests.provisioning.provhelpers import box_config, call
from tests.provisioning.test_pty import write_site

# Slow (`make test-fast` leaves it out): the link cut at every request.
pytestmark = pytest.mark.slow

FILES = ("etc/linetap.toml", "etc/practice.pub", "etc/upstream-command.pub",
         "etc/broker-ca.pem", "data/keys/device-cert.pem", "data/keys/device-tls.key")


def snapshot(box) -> dict:
    return {f: (box.tmp / f).read_bytes() if (box.tmp / f).exists() else None for f in FILES}


def old_state(box, tmp_path) -> dict:
    """A complete provisioned-looking state (no command key: a fresh-trust box)."""
    from recorder.evidence import keys
    (box.etc / "upstream-command.pub").unlink(missing_ok=True)
    _p, pub = keys.practice_keygen(tmp_path / "old-practice.key")
    (box.etc / "practice.pub").write_bytes(pub.read_bytes())
    ca, _ = tlscert.make_ca("old broker CA")
    (box.etc / "broker-ca.pem").write_bytes(ca)
    key = tlscert.ensure_tls_key(box.data / "keys" / "device-tls.key")
    pca, pkey = tlscert.make_ca()
    cert = tlscert.sign_csr(tlscert.make_csr(key, "lt-test0001"), pca, pkey)
    (box.data / "keys" / "device-cert.pem").write_bytes(cert)
    box.config_path.write_text(box_config(box.etc, box.data) + "\n[retention]\ndays = 10.0\n")
    return snapshot(box)


def classify(box, old: dict, site) -> str:
    now = snapshot(box)
    if now == old:
        return "old"
    new_files = {"etc/linetap.toml": site.config_text.encode(),
                 **{f"etc/{p.name}": p.read_bytes() for p in site.keys.values()}}
    if all(now[f] == v for f, v in new_files.items()) and now["data/keys/device-tls.key"] \
            != old["data/keys/device-tls.key"] and now["data/keys/device-cert.pem"] \
            != old["data/keys/device-cert.pem"]:
        from cryptography import x509
        cert = x509.load_pem_x509_certificate(now["data/keys/device-cert.pem"])
        key = tlscert.load_private(box.data / "keys" / "device-tls.key")
        if tlscert.cert_matches_key(cert, key):
            return "new"
    return "mixed: " + ", ".join(f for f in FILES if now[f] not in (old[f],))


def come_up(box) -> Dispatcher:
    """Power cycle: a fresh agent on the same folders completes any journal first."""
    d = Dispatcher(box.env)
    d.recover()
    return d


def new_site(tmp_path, box):
    site_path, _ = write_site(tmp_path, box)
    text = site_path.read_text() + "new_key = true\n"
    site_path.write_text(text)
    return sitefile.load(site_path)


class CuttingLink(client.Link):
    """Cuts the cable half-way through the ``cut_at``-th request frame it sends."""

    def __init__(self, *a, cable, cut_at: int, **kw):
        super().__init__(*a, **kw)
        self.cable, self.cut_at, self.sent_frames = cable, cut_at, 0

    def call(self, cmd, timeout_s=None, **args):
        self.sent_frames += 1
        if self.sent_frames == self.cut_at:
            frame = protocol.encode_json(protocol.T_REQUEST, self._seq + 1,
                                         {"cmd": cmd, "args": args})
            self.cable.cut_after_to_box = self.cable.bytes_to_box + len(frame) // 2
        return super().call(cmd, timeout_s, **args)


# hello, session_open, set_clock, config_stage, 3 x install_key, tls_csr, install_cert,
# config_commit: the cable is cut inside each of them in turn.
REQUESTS = 10


@pytest.mark.parametrize("cut_at", range(1, REQUESTS + 1))
def test_cut_link_at_every_request(served, tmp_path, cut_at):
    box = served.box
    old = old_state(box, tmp_path)
    site = new_site(tmp_path, box)
    link = CuttingLink(served.laptop, timeout_s=1.0, retry_s=5.0, cable=served.cable,
                       cut_at=cut_at)
    with pytest.raises(ProtocolError):
        client.apply_site(link, site, out=io.StringIO(), commit_timeout_s=1.0)
    assert served.cable.cut.is_set()
    d = come_up(box)
    # The commit frame never arrived whole: the old state, complete.
    assert classify(box, old, site) == "old"
    left = txn.leftovers(box.etc)
    staged_any = cut_at > 4           # the config is staged by request 4
    assert (left is not None) == staged_any
    if staged_any:
        assert call(d, "status")["staged_leftovers"]["staged"]
        res = doctor.check_staged(box.config_path)
        assert res.status == doctor.WARN and "interrupted apply" in res.detail
    # A new apply (cable back) discards the leftovers and puts the new state in force.
    served.cable.cut.clear()
    box.env.presence.grant()
    box.d.__init__(box.env)            # the served agent after the power cycle
    client.apply_site(client.Link(served.laptop, timeout_s=10.0), site, out=io.StringIO())
    assert classify(box, old, site) == "new"
    assert txn.leftovers(box.etc) is None


def test_cut_after_the_commit_arrived(served, tmp_path):
    """The commit's reply is lost: the box has the new state, complete."""
    box = served.box
    old = old_state(box, tmp_path)
    site = new_site(tmp_path, box)
    real = box.d.handle_request

    def cut_on_commit(seq, obj):
        out = real(seq, obj)
        if obj.get("cmd") == "config_commit":
            served.cable.cut.set()
        return out
    box.d.handle_request = cut_on_commit
    with pytest.raises(ProtocolError):
        client.apply_site(client.Link(served.laptop, timeout_s=1.0, retry_s=5.0), site,
                          out=io.StringIO(), commit_timeout_s=1.0)
    come_up(box)
    assert classify(box, old, site) == "new"


STEPS = ["begin", "journal"] + [f"rename:{i}" for i in range(6)]


@pytest.mark.parametrize("step", STEPS)
def test_power_cut_inside_the_commit(box, tmp_path, step):
    """A crash at each durable step of the commit: old before the journal, new after."""
    old = old_state(box, tmp_path)
    site = new_site(tmp_path, box)

    class PowerCut(Exception):
        pass

    def fault(at):
        if at == step:
            raise PowerCut(at)
    box.env.fault = fault
    d = box.d
    assert call(d, "config_stage", text=site.config_text)["staged"]
    for kind, p in site.keys.items():
        assert call(d, "install_key", kind=kind, pem=p.read_text())["staged"]
    csr = call(d, "tls_csr", new_key=True)["csr"]
    ca_cert, ca_key = site.ca_cert.read_bytes(), site.ca_key.read_bytes()
    assert call(d, "install_cert", pem=tlscert.sign_csr(csr.encode(), ca_cert, ca_key)
                .decode())["staged"]
    assert classify(box, old, site) == "old"   # everything staged, nothing in force
    r = call(d, "config_commit")
    assert r["code"] == protocol.E_INTERNAL    # the "power cut"
    journal = (box.etc / txn.JOURNAL).exists()
    assert journal == (step != "begin")
    if journal:
        assert doctor.check_staged(box.config_path).status == doctor.FAIL
    box.env.fault = None
    come_up(box)
    assert classify(box, old, site) == ("old" if step == "begin" else "new")
    if step != "begin":
        assert txn.leftovers(box.etc) is None


def test_four_applies_at_once_never_mix(served, tmp_path):
    """Four clients on one port (as four processes would), two sites: the box ends with
    the old state or one site's complete state; the others are told `busy` or get no
    answer, and nothing of theirs is left in force."""
    import threading

    import serial
    box = served.box
    old = old_state(box, tmp_path)
    sites = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        site = new_site(d, box)
        cfg = site.source.parent / "box.toml"
        cfg.write_text(cfg.read_text().replace("days = 45.0", f"days = {40 + len(sites)}.0"))
        sites.append(sitefile.load(site.source))
    results: list = [None] * 4

    def one(i):
        with serial.Serial(served.cable.laptop_path, 115200, timeout=0.05) as port:
            try:
                client.apply_site(client.Link(port, timeout_s=6.0), sites[i % 2],
                                  out=io.StringIO(), commit_timeout_s=6.0, set_clock=False)
                results[i] = "applied"
            except client.RemoteError as exc:
                results[i] = exc.code
            except ProtocolError as exc:       # no answer, or the port drained by another
                results[i] = "port" if "another linetap-provision" in str(exc) else \
                    "no answer"
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    come_up(box)
    states = {classify(box, old, s) for s in sites}
    assert states & {"old", "new"}, states          # one site's state or the old one
    assert results.count("applied") <= 1, results
    assert all(r in ("applied", protocol.E_BUSY, protocol.E_PRESENCE_EXPIRED, "no answer",
                     "port") for r in results), results
    if "new" not in states:
        assert "applied" not in results
    # Whatever the losers staged is reported, never in force.
    assert (txn.leftovers(box.etc) is None) == \
        (doctor.check_staged(box.config_path).status == doctor.OK)


def test_a_new_apply_drops_what_a_failed_one_staged(box, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from recorder.evidence import keys
    old = old_state(box, tmp_path)
    text = box.config_path.read_text()
    call(box.d, "config_stage", text=text)
    stray = keys.pem_public(ed25519.Ed25519PrivateKey.generate().public_key()).decode()
    assert call(box.d, "install_key", kind="command_key", pem=stray)["staged"]
    # The first attempt died here; the engineer runs apply again without a command key.
    call(box.d, "config_stage", text=text + "\n")
    assert call(box.d, "config_commit")["applied"]
    assert not (box.etc / "upstream-command.pub").exists()
    assert snapshot(box)["etc/practice.pub"] == old["etc/practice.pub"]
    assert txn.leftovers(box.etc) is None
