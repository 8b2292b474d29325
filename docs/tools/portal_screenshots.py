"""Take the screenshots in docs/portal.md from the demo's upstream, with headless
Debian chromium: ``make demo`` first, then ``.venv/bin/python docs/tools/portal_screenshots.py``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]


def main(demo: Path = ROOT / "demo-out", out: Path = ROOT / "docs" / "img") -> int:
    import socket

    import uvicorn
    from playwright.sync_api import sync_playwright

    from sync.upstream import config as upstream_config
    from sync.upstream.portal.app import create_app
    ucfg = upstream_config.load(str(demo / "upstream" / "upstream.toml"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ucfg), host="127.0.0.1", port=port,
                                           log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    password = (demo / "upstream" / "manager-password.txt").read_text().strip()
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for name, vp in (("desktop", {"width": 1280, "height": 800}),
                         ("tablet", {"width": 820, "height": 1180})):
            page = b.new_page(viewport=vp)
            page.goto(url + "/login")
            if name == "desktop":
                page.screenshot(path=str(out / "portal-signin.png"))
            page.get_by_label("Username", exact=True).fill("manager")
            page.get_by_label("Password", exact=True).fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.locator("body[data-ready='1']").wait_for()
            page.get_by_label("Practice key", exact=True).set_input_files(
                str(demo / "practice.key"))
            page.get_by_role("button", name="Open key").click()
            page.locator("body[data-key-open='1']").wait_for()
            rows = page.locator("#calls tbody tr")
            # The call with the most marks (pause, masked digits) makes the best picture.
            target = rows.nth(0)
            for i in range(rows.count()):
                if rows.nth(i).locator("td").nth(2).inner_text() == "outbound":
                    target = rows.nth(i)
                    break
            target.get_by_role("button", name="Play").click()
            page.locator("#player[data-state='playing']").wait_for()
            page.wait_for_timeout(1500)
            page.get_by_role("button", name="Pause").click()
            page.screenshot(path=str(out / f"portal-calls-{name}.png"), full_page=False)
            if name == "desktop":
                page.goto(url + "/manage")
                page.locator("body[data-ready='1']").wait_for()
                page.get_by_label("Expiring within (days)").fill("90")
                page.get_by_role("button", name="Show").click()
                page.wait_for_timeout(500)
                page.screenshot(path=str(out / "portal-retention.png"))
                page.goto(url + "/audit")
                page.screenshot(path=str(out / "portal-audit.png"))
                # A pending enrolment only: codes stay off until a first code confirms.
                page.goto(url + "/enrol")
                page.screenshot(path=str(out / "portal-enrol.png"))
            page.close()
        b.close()
    server.should_exit = True
    t.join(10)
    for f in sorted(out.glob("portal-*.png")):
        print(f"{f.relative_to(ROOT)}: {f.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(*(Path(a) for a in sys.argv[1:])))
