"""Portal benchmark: number search over 20,000 calls in the browser, time to first
audio, and the server's call-list rate.

    .venv/bin/python -m bench.portal [--calls 20000] [--keep]

1. Fills an upstream store (SQLite + filesystem objects) with ``--calls`` synthetic
   calls: real sealed, signed manifests (HPKE to the practice key, Ed25519 by a box
   identity, 18 segments listed each: a 3-minute call) spread over 90 days, plus one
   10-minute call made by the real Writer (60 FLAC segments) and stored by the real
   ingest handler.
2. Serves it with ``linetap portal`` (a separate process) and drives Debian chromium:
   sign in, open the key, search by number. ``search_cold_s`` is the first key open
   ever (every manifest opened in the browser, then the sealed index stored);
   ``search_s`` is every later key open, in a fresh tab (the sealed index read back,
   only calls it does not cover opened): both from pressing "Open key" to the search
   results on screen. ``index_s`` is the part the page itself reports.
3. ``first_audio_s``: pressing Play on the 10-minute call until its first decoded
   segment is scheduled on the audio clock (manifest signature, chain and first
   segment's hash checked before that).
4. ``bare_hpke_s``: in the same page, a plain sequential loop of the same number of
   HPKE opens (@hpke/core, same key, same manifests, fetched beforehand); ``ratio`` is
   ``search_s / bare_hpke_s`` (``ratio_cold`` for the first open). ``x25519_only_s``:
   the X25519 step of the same opens alone (WebCrypto, all in flight): the floor of
   any first open that opens one manifest per call with the native path.
5. ``list_rps``: GET /api/calls (one page: the newest 200 calls' metadata and the total
   count, which is what every page load asks) from 4 keep-alive clients for 5 s;
   ``list_bytes`` is its size, ``keys_bytes`` the size of GET /api/calls/keys (every
   call's id and start time, which a key open reads instead of the whole list).

Last line: JSON with ``search_s``, ``first_audio_s``, ``ratio`` (design brief §5).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from recorder.evidence import keys
from tests.support.portalcalls import synthetic

ROOT = Path(__file__).resolve().parent.parent

SITE, DEVICE = "bench", "lt-bench"
NUMBER = "01632960999"
PASSWORD = "bench password 123"
CHROME = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync",
          "--autoplay-policy=no-user-gesture-required"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def long_call(tmp: Path, pub, ident_dir: Path) -> str:
    """One 10-minute call through the real Writer (60 FLAC segments of 10 s)."""
    from recorder.calls.jobs import CallInfo, CloseCall, OpenCall, WriteSegment
    from recorder.storage.store import Store
    from recorder.storage.writer import Writer
    from recorder.timebase import Timebase
    store = Store(ident_dir)
    ident = keys.ensure_identity(ident_dir, first_start=False)
    w = Writer(store, device=DEVICE, rate=8000, codec_name="flac", aead="chacha20poly1305",
               public_key=pub, identity=ident, timebase=Timebase(8000, time.time() - 7200),
               retention_s=90 * 86400)
    info = CallInfo(id="LONG-10min-L0", line=0, direction="inbound", offhook_sample=0,
                    caller_number="01632960500")
    w.handle(OpenCall(info))
    t = np.arange(80000) / 8000
    rng = np.random.default_rng(5)
    for s in range(60):
        pcm = 3000 * np.sin(2 * np.pi * (300 + 5 * s) * t) + rng.normal(0, 300, t.size)
        w.handle(WriteSegment(info.id, s, s * 80000, pcm.astype(np.int16)))
    info.end_sample = 60 * 80000
    info.end_reason = "hangup"
    w.handle(CloseCall(info))
    return store


def feed(ucfg, store) -> None:
    from sync import protocol
    from sync.upstream.ingest import Ingest
    ing = Ingest(ucfg)
    msgs = []
    for s in store.m.Segment.select():
        for p in protocol.split(store.abs(s.path).read_bytes()):
            msgs.append((protocol.seg_topic("linetap", SITE, DEVICE, s.call_id, s.seq), p))
    for c in store.m.Call.select().where(store.m.Call.manifest.is_null(False)):
        for p in protocol.split(store.abs(c.manifest).read_bytes()):
            msgs.append((protocol.man_topic("linetap", SITE, DEVICE, c.id), p))
    for k in range(0, len(msgs), 32):
        for r in ing.handle_batch(msgs[k:k + 32]):
            if isinstance(r, Exception):
                raise r


def list_rps(port: int, cookie: str, seconds: float = 5.0, clients: int = 4,
             path: str = "/api/calls"):
    counts, sizes = [0] * clients, [0]
    end = time.monotonic() + seconds

    def run(i):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < end:
            c.request("GET", path, headers={"cookie": cookie})
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"{path}: {r.status}")
            sizes[0] = len(body)
            counts[i] += 1
    t0 = time.monotonic()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - t0), sizes[0]


BARE = """async ([pem, limit]) => {
  const { openKey } = await import('/static/lt/keyfile.js');
  const { parseFile, concat } = await import('/static/lt/format.js');
  const { CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } =
    await import('/vendor/@hpke/core/esm/mod.js');
  const { Chacha20Poly1305 } = await import('/vendor/@hpke/chacha20poly1305/esm/mod.js');
  const kp = await openKey(pem, '');
  const suite = new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(),
                                  aead: new Chacha20Poly1305() });
  const items = [];
  for (let off = 0; ; off += 5000) {
    const r = await fetch(`/api/manifests?offset=${off}&limit=5000`);
    const b = new Uint8Array(await r.arrayBuffer());
    const dv = new DataView(b.buffer);
    let n = 0;
    for (let o = 0; o < b.length;) {
      const il = dv.getUint16(o); o += 2 + il;
      const bl = dv.getUint32(o); o += 4;
      items.push(parseFile(b.subarray(o, o + bl))); o += bl; n++;
    }
    if (n < 5000) break;
  }
  const info = new TextEncoder().encode('linetap-v1');
  const t0 = performance.now();
  let ok = 0;
  for (const p of items.slice(0, limit)) {
    await suite.open({ recipientKey: kp, enc: p.sealed.subarray(0, 32),
                       info: concat(info, p.preamble) }, p.sealed.subarray(32));
    ok++;
  }
  const s = (performance.now() - t0) / 1000;
  // The floor of the native path: only the X25519 step of each open (import the
  // ephemeral key, derive the shared secret), every one in flight at once, on
  // WebCrypto's one thread; no HKDF, no AEAD, no JSON.
  const t1 = performance.now();
  const pks = await Promise.all(items.slice(0, limit).map((p) => crypto.subtle.importKey(
    'raw', p.sealed.slice(0, 32), { name: 'X25519' }, true, [])));
  await Promise.all(pks.map((pk) => crypto.subtle.deriveBits({ name: 'X25519', public: pk },
                                                            kp.privateKey, 256)));
  return { s, n: ok, x25519_s: (performance.now() - t1) / 1000 };
}"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from sync.upstream import config as upstream_config
    from sync.upstream.objectstore import open_objects
    from sync.upstream.portal import accounts
    from sync.upstream.store import UCall, db, open_db

    tmp = Path(tempfile.mkdtemp(prefix="linetap-portal-bench-"))
    proc = None
    try:
        priv, pubp = keys.practice_keygen(tmp / "practice.key")
        pub = keys.load_practice_public(pubp)
        box = tmp / "box"
        box.mkdir()
        ident = keys.ensure_identity(box, first_start=True)
        conf = tmp / "upstream.toml"
        conf.write_text(f'[database]\nurl = "sqlite:///{tmp}/up.db"\n[objects]\n'
                        f'path = "{tmp}/objects"\n[sites.{SITE}]\nretention_days = 90\n'
                        f'devices = {{ "{DEVICE}" = '
                        f'"{keys.raw_public(ident.public_key()).hex()}" }}\n')
        ucfg = upstream_config.load(str(conf))
        open_db(ucfg.db_url)
        t = time.monotonic()
        rows = synthetic(args.calls - 1, ident, pub, open_objects(ucfg.objects),
                         np.random.default_rng(1), site=SITE, device=DEVICE, number=NUMBER)
        with db.atomic():
            for k in range(0, len(rows), 500):
                UCall.insert_many(rows[k:k + 500]).execute()
        feed(ucfg, long_call(tmp, pub, box))
        accounts.init_tables()
        accounts.add_user("bench", SITE, "staff", PASSWORD)
        n_match = sum(1 for r in range(args.calls - 1) if r % 997 == 0)
        print(f"store: {UCall.select().count()} calls in {time.monotonic() - t:.1f} s; "
              f"{n_match} with {NUMBER[:4]}*****{NUMBER[-2:]}", flush=True)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "recorder.cli", "portal", "--config",
                                 str(conf), "--bind", f"127.0.0.1:{port}"], cwd=ROOT,
                                stdout=subprocess.DEVNULL)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROME)
            ctx = b.new_context(viewport={"width": 1280, "height": 800})
            page = ctx.new_page()
            page.goto(url + "/login")
            page.get_by_label("Username", exact=True).fill("bench")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.locator("body[data-ready='1']").wait_for(timeout=120000)

            def open_and_search() -> tuple[float, float]:
                page.locator("body[data-ready='1']").wait_for(timeout=120000)
                page.get_by_label("Practice key", exact=True).set_input_files(str(priv))
                page.get_by_label("Number", exact=True).fill(NUMBER)
                t0 = time.monotonic()
                page.get_by_role("button", name="Open key").click()
                # Opening the key indexes, then runs the search already in the form.
                page.locator("body[data-key-open='1']").wait_for(timeout=600000)
                page.locator("body[data-results]").wait_for(timeout=60000)
                t = time.monotonic() - t0
                got = page.locator("body").get_attribute("data-results")
                if got != str(n_match):
                    raise SystemExit(f"search found {got} calls, {n_match} expected; page says "
                                     f"{page.locator('#key-status').inner_text()!r}")
                return (t,
                        float(page.locator("body").get_attribute("data-index-s")))
            # First key open ever: every manifest is opened (and the sealed index stored).
            cold_s, cold_index_s = open_and_search()
            print(f"first key open: search by number {cold_s:.2f} s ({n_match} matches; "
                  f"{cold_index_s:.2f} s in the page opening {args.calls} manifests)",
                  flush=True)
            # Every later key open (a new tab: nothing cached in the browser).
            page.close()
            page = ctx.new_page()
            page.goto(url + "/")
            search_s, index_s = open_and_search()
            print(f"later key opens: search by number {search_s:.2f} s from Open key "
                  f"(sealed index; {index_s:.2f} s in the page)", flush=True)
            page.get_by_label("Number", exact=True).fill("")
            page.get_by_role("button", name="Search").click()
            row = page.locator("#calls tbody tr[data-call='LONG-10min-L0']")
            t1 = time.monotonic()
            row.get_by_role("button", name="Play").click()
            page.locator("#player[data-scheduled]").wait_for(timeout=60000)
            first_audio_s = time.monotonic() - t1
            print(f"first audio of a 10-minute call: {first_audio_s:.3f} s", flush=True)
            bare = page.evaluate(BARE, [priv.read_text(), args.calls])
            print(f"bare loop of {bare['n']} HPKE opens: {bare['s']:.2f} s; their X25519 "
                  f"steps alone, all in flight: {bare['x25519_s']:.2f} s", flush=True)
            cookie = "; ".join(f"{c['name']}={c['value']}" for c in ctx.cookies())
            b.close()
        rps, size = list_rps(port, cookie)
        print(f"call list: {rps:.1f} requests/s ({size // 1024} KiB each: one page of "
              f"200 of {args.calls} calls)", flush=True)
        _rps, keys_size = list_rps(port, cookie, seconds=0.1, clients=1,
                                   path="/api/calls/keys")
        print(f"call keys for a key open: {keys_size // 1024} KiB", flush=True)
        print(json.dumps({"calls": args.calls, "search_s": round(search_s, 3),
                          "index_s": round(index_s, 3), "search_cold_s": round(cold_s, 3),
                          "ratio_cold": round(cold_s / bare["s"], 3),
                          "first_audio_s": round(first_audio_s, 3),
                          "bare_hpke_s": round(bare["s"], 3),
                          "x25519_only_s": round(bare["x25519_s"], 3),
                          "list_rps": round(rps, 2),
                          "list_bytes": size, "keys_bytes": keys_size,
                          "cpus": os.cpu_count(), "load_avg": round(os.getloadavg()[0], 1),
                          "date": dt.date.today().isoformat(),
                          "ratio": round(search_s / bare["s"], 3)}))
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
