"""Fixtures for the portal: an upstream filled through the real ingest code, the portal
served by uvicorn on a free loopback port, and Debian's chromium driven by Playwright.

Two practices: ``site1`` (box ``dev-a``, the users below) and ``site2`` (box ``dev-b``,
whose calls site1's users must never reach)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from recorder.evidence.keys import raw_public
from sync import protocol
from sync.upstream import config as upstream_config
from sync.upstream.ingest import Ingest
from sync.upstream.store import open_db
from tests.support.syncbox import box_writer, make_box, to_toml, write_calls, write_command_key

CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               "--autoplay-policy=no-user-gesture-required"]
PASSWORD = "correct horse battery"
N1, N2 = "01632960111", "01632960222"
PASSPHRASE = "practice key passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def feed(ucfg, box, site: str) -> None:
    """Every segment and manifest of ``box`` through the real ingest message handler
    (as the MQTT worker would hand them over)."""
    ing = Ingest(ucfg)
    msgs = []
    st = box.store
    for s in st.m.Segment.select():
        blob = st.abs(s.path).read_bytes()
        for p in protocol.split(blob):
            msgs.append((protocol.seg_topic("linetap", site, box.device, s.call_id, s.seq), p))
    for c in st.m.Call.select().where(st.m.Call.manifest.is_null(False)):
        blob = st.abs(c.manifest).read_bytes()
        for p in protocol.split(blob):
            msgs.append((protocol.man_topic("linetap", site, box.device, c.id), p))
    for k in range(0, len(msgs), 32):
        for r in ing.handle_batch(msgs[k:k + 32]):
            assert not isinstance(r, Exception), r


def encrypted_copy(priv_path: Path, out: Path, passphrase: str) -> Path:
    """The practice key as PKCS#8 PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC), as
    ``linetap keygen --passphrase-file`` writes it."""
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(priv_path.read_bytes(), None)
    out.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode())))
    return out


def build_upstream(tmp: Path, n_calls=4, segs=3, parties=None, resign=()):
    """``resign``: indexes of box a's calls whose manifest is signed again afterwards
    without the personal fields in memory, as crash recovery signs one."""
    from recorder.evidence import keys
    priv, pub = keys.practice_keygen(tmp / "practice.key")
    pubkey = keys.load_practice_public(pub)
    a = make_box(tmp / "box-a", pubkey, device="dev-a")
    b = make_box(tmp / "box-b", pubkey, device="dev-b")
    parties = parties or [("inbound", N1, ""), ("outbound", None, N2), ("inbound", N2, ""),
                          ("inbound", N1, "")][:n_calls]
    ids_a = write_calls(a, n_calls=n_calls, segs=segs, parties=parties)
    for i in resign:
        box_writer(a, time.time()).write_manifest(a.store.call(ids_a[i]))
    ids_b = write_calls(b, n_calls=2, segs=1, seed=2,
                        parties=[("inbound", N1, ""), ("inbound", N2, "")])
    cmd_key, cmd_pub = write_command_key(tmp / "command.key")
    raw = {"database": {"url": f"sqlite:///{tmp / 'up' / 'upstream.db'}"},
           "objects": {"path": str(tmp / "up" / "objects")},
           "broker": {"host": "127.0.0.1", "port": 1},
           "commands": {"key": str(tmp / "command.key"), "resend_s": 1},
           "retention": {"interval_s": 1},
           "sites": {"site1": {"retention_days": 90,
                               "devices": {"dev-a": raw_public(a.identity.public_key()).hex()}},
                     "site2": {"retention_days": 90,
                               "devices": {"dev-b": raw_public(b.identity.public_key()).hex()}}}}
    (tmp / "up").mkdir(exist_ok=True)
    conf = tmp / "up" / "upstream.toml"
    conf.write_text(to_toml(raw))
    ucfg = upstream_config.load(str(conf))
    open_db(ucfg.db_url)
    feed(ucfg, a, "site1")
    feed(ucfg, b, "site2")
    return SimpleNamespace(conf=conf, ucfg=ucfg, raw=raw, priv=priv, pub=pub, box_a=a,
                           box_b=b, ids_a=ids_a, ids_b=ids_b, cmd_pub=cmd_pub)


class Server:
    """The portal app under uvicorn in a thread (in-process: tests read the same DB)."""

    def __init__(self, ucfg):
        import uvicorn

        from sync.upstream.portal.app import create_app
        self.port = free_port()
        self.app = create_app(ucfg)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="portal", daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("portal did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def add_users():
    from sync.upstream.portal import accounts
    accounts.init_tables()
    out = {}
    for name, site, role, totp in [("manager", "site1", "manager", False),
                                   ("staff", "site1", "staff", False),
                                   ("auditor", "site1", "auditor", False),
                                   ("totpuser", "site1", "staff", True),
                                   ("other", "site2", "manager", False)]:
        out[name] = accounts.add_user(name, site, role, PASSWORD, totp=totp)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("portal")
    e = build_upstream(tmp)
    e.users = add_users()
    e.enc_key = encrypted_copy(e.priv, tmp / "practice-enc.key", PASSPHRASE)
    e.server = Server(e.ucfg)
    from sync.upstream.portal.security import RateLimit
    # Every test signs in from 127.0.0.1: only the rate-limit test keeps the real limit.
    e.server.app.state.limit = RateLimit(n=10000)
    e.url = e.server.url
    yield e
    e.server.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    pw = pytest.importorskip("playwright.sync_api")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    yield ctx
    ctx.close()


def sign_in(page, url, name, password=PASSWORD, code=None):
    page.goto(url + "/login")
    page.get_by_label("Username", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    if code:
        page.get_by_label("One-time code", exact=True).fill(code)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state("networkidle")


def open_key(page, path, passphrase=""):
    page.get_by_label("Practice key", exact=True).set_input_files(str(path))
    if passphrase:
        page.get_by_label("Key passphrase", exact=True).fill(passphrase)
    page.get_by_role("button", name="Open key").click()
    page.locator("body[data-key-open='1'], #key-status.bad").first.wait_for(timeout=60000)


def wait_ready(page):
    """The calls page has loaded its list. (Waits use selectors: the CSP forbids the
    string evaluation behind Playwright's wait_for_function.)"""
    page.locator("body[data-ready='1']").wait_for()


def downloads(page, n, click) -> dict[str, bytes]:
    """Click, then collect ``n`` downloads as {suggested name: bytes}."""
    got = []

    def grab(d):
        got.append(d)
    page.on("download", grab)
    click()
    for _ in range(200):
        if len(got) >= n:
            break
        page.wait_for_timeout(100)
    page.remove_listener("download", grab)
    assert len(got) == n, f"{len(got)} downloads, {n} expected"
    return {d.suggested_filename: open(d.path(), "rb").read() for d in got}


def key_open_in_new_tab(context, url, key):
    """Open the practice key in a fresh tab of the signed-in ``context`` (nothing of the
    index left in the page); returns the page and its key status line."""
    page = context.new_page()
    page.goto(url + "/")
    wait_ready(page)
    open_key(page, key)
    return page, page.locator("#key-status").inner_text()
