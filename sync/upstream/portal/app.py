"""The portal's Starlette application: pages, sign-in, sessions and static modules.

Server-rendered Jinja2 pages; the JSON and blob endpoints are in :mod:`sync.upstream.portal.api`.
The server never handles the practice key, audio or phone numbers: the pages carry
sealed blobs to the browser, which opens them (see docs/portal.md).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from pathlib import Path

import segno
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from sync.upstream import fleet
from sync.upstream.portal import accounts, api
from sync.upstream.portal.security import COOKIE, RateLimit, SecurityHeaders, current
from sync.upstream.store import audit, open_db

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
LOGIN_CSRF = "__Host-linetap-login"
templates = Jinja2Templates(directory=str(HERE / "templates"))

# Bare module names the vendored libraries import, and the file each one resolves to.
# Browsers need URLs; rewriting the import lines at serve time replaces both an import
# map (an inline script, which the CSP forbids) and a bundler.
VENDOR = {"@hpke/core": "@hpke/core/esm/mod.js",
          "@hpke/common": "@hpke/common/esm/mod.js",
          "@hpke/chacha20poly1305": "@hpke/chacha20poly1305/esm/mod.js",
          "fflate": "fflate/esm/browser.js"}
_BARE = re.compile(r'''((?:from|import)\s*)"(@hpke/[a-z0-9-]+|fflate)"''')


def node_modules() -> Path:
    return HERE / "node_modules"


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def gate(request: Request):
    """(session, user) of a page request, or the redirect it needs instead: to sign-in
    without a session, to enrolment while the practice requires one-time codes and the
    user has none (:func:`accounts.must_enrol`)."""
    s, u = current(request)
    if u is None:
        return RedirectResponse("/login", status_code=303)
    if accounts.must_enrol(u):
        return RedirectResponse("/enrol", status_code=303)
    return s, u


def page(request: Request, name: str, status: int = 200, **ctx) -> Response:
    g = gate(request) if name != "enrol.html" else current(request)
    if isinstance(g, Response):
        return g
    s, u = g
    ctx.update(user=u, csrf=s.csrf, can=lambda p: accounts.can(u.role, p),
               enrolling=accounts.must_enrol(u))
    return templates.TemplateResponse(request, name, ctx, status_code=status)


def login_form(request: Request, error: str = "", status: int = 200, name: str = ""):
    token = request.cookies.get(LOGIN_CSRF) or secrets.token_urlsafe(24)
    resp = templates.TemplateResponse(request, "login.html",
                                      {"error": error, "login_csrf": token, "name": name},
                                      status_code=status)
    resp.set_cookie(LOGIN_CSRF, token, httponly=True, secure=True, samesite="strict",
                    path="/", max_age=3600)
    return resp


async def login(request: Request):
    if request.method == "GET":
        return login_form(request)
    form = await request.form()
    sent = str(form.get("csrf", ""))
    if not sent or not secrets.compare_digest(sent, request.cookies.get(LOGIN_CSRF, "")):
        return login_form(request, "The form expired; please sign in again.", 400)
    if not request.app.state.limit.hit(_client(request)):
        return login_form(request, "Too many sign-in attempts from this address; wait a "
                          "minute and try again.", 429)
    name = str(form.get("username", "")).strip().lower()
    res = accounts.authenticate(name, str(form.get("password", "")),
                                str(form.get("code", "")))
    if res.user is None:
        audit("portal_signin_failed", user=name[:64], addr=_client(request))
        return login_form(request, res.error, 401, name=name)
    token, _s = accounts.new_session(res.user)
    audit("portal_signin", user=res.user.name, site=res.user.site, role=res.user.role,
          addr=_client(request), **({"enrol": True} if res.enrol else {}))
    resp = RedirectResponse("/enrol" if res.enrol else "/", status_code=303)
    resp.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="strict", path="/")
    resp.delete_cookie(LOGIN_CSRF, path="/", secure=True, httponly=True, samesite="strict")
    return resp


async def logout(request: Request):
    s, u = current(request)
    form = await request.form()
    if s is not None and secrets.compare_digest(str(form.get("csrf", "")), s.csrf):
        accounts.end_session(request.cookies.get(COOKIE))
        audit("portal_signout", user=u.name, site=u.site)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return resp


async def enrol(request: Request):
    """The user's own one-time-code enrolment: a pending secret shown as an
    ``otpauth://`` URI, a QR code and plain text; codes are switched on only after a
    first valid code (audited)."""
    s, u = current(request)
    if u is None:
        return RedirectResponse("/login", status_code=303)
    error = ""
    if request.method == "POST":
        form = await request.form()
        if not secrets.compare_digest(str(form.get("csrf", "")), s.csrf):
            raise HTTPException(403, "missing or wrong CSRF token")
        if u.totp_secret:
            return RedirectResponse("/enrol", status_code=303)
        if accounts.confirm_enrolment(u, str(form.get("code", ""))):
            audit("portal_totp_enrolled", user=u.name, site=u.site)
            return RedirectResponse("/", status_code=303)
        audit("portal_totp_enrol_failed", user=u.name, site=u.site)
        error = "That code is not right: check the time on your phone and enter the " \
                "code your authenticator shows now."
    if u.totp_secret:
        return page(request, "enrol.html", enrolled=True)
    secret = accounts.enrol_secret(u)
    uri = accounts.totp_uri(u, secret)
    return page(request, "enrol.html", 400 if error else 200, enrolled=False, error=error,
                uri=uri, secret=" ".join(secret[i:i + 4] for i in range(0, len(secret), 4)),
                qr=segno.make(uri, error="m").svg_data_uri(scale=5, border=2))


def calls_page(request: Request):
    _s, u = current(request)
    if u is not None and not accounts.can(u.role, "list"):
        return RedirectResponse("/fleet" if accounts.can(u.role, "fleet") else "/login",
                                status_code=303)
    return page(request, "calls.html")


def fleet_page(request: Request):
    """The operator's view: every box's last report and open alerts (no call, no
    number: the rows come from health reports, :mod:`sync.upstream.fleet`)."""
    g = gate(request)
    if isinstance(g, Response):
        return g
    _s, u = g
    if not accounts.can(u.role, "fleet"):
        raise HTTPException(403, "Only an operator sees the fleet.")
    ucfg = request.app.state.ucfg
    audit("portal_fleet_read", user=u.name)
    return page(request, "fleet.html", rows=fleet.table(time.time(), ucfg.enrolled()),
                alerts=fleet.open_alerts())


def audit_page(request: Request):
    g = gate(request)
    if isinstance(g, Response):
        return g
    _s, u = g
    if not accounts.can(u.role, "audit"):
        raise HTTPException(403, "Your role cannot read the audit trail.")
    from sync.upstream.store import audit_chain
    ucfg = request.app.state.ucfg
    chain = audit_chain(ucfg)
    audit("portal_audit_read", user=u.name, site=u.site)
    return page(request, "audit.html", entries=api.site_audit_rows(u, ucfg), chain=chain)


def manage_page(request: Request):
    s, u = current(request)
    if u is not None and not accounts.can(u.role, "manage"):
        raise HTTPException(403, "Only a practice manager can manage retention.")
    return page(request, "manage.html")


def vendor(request: Request):
    """A file of an npm package from the lockfile, import lines rewritten to URLs."""
    rel = request.path_params["path"]
    root = node_modules().resolve()
    p = (root / rel).resolve()
    if not rel.endswith(".js") or root not in p.parents or not p.is_file():
        raise HTTPException(404)
    text = p.read_text(encoding="utf-8")
    # Unknown names (the libraries' doc comments mention other packages) stay as they are.
    text = _BARE.sub(lambda m: f'{m.group(1)}"/vendor/{VENDOR[m.group(2)]}"'
                     if m.group(2) in VENDOR else m.group(0), text)
    return Response(text, media_type="text/javascript",
                    headers={"cache-control": "public, max-age=3600"})


async def http_error(request: Request, exc: HTTPException):
    if request.url.path.startswith("/api/"):
        return api.error(exc.status_code, exc.detail)
    return PlainTextResponse(f"{exc.status_code}: {exc.detail}", status_code=exc.status_code)


def create_app(ucfg) -> Starlette:
    """The ASGI app for one upstream config (opens its database)."""
    open_db(ucfg.db_url, ucfg.audit_key)
    accounts.init_tables()
    if not (node_modules() / VENDOR["@hpke/core"]).is_file():
        from recorder.errors import ConfigError
        raise ConfigError([f"browser libraries missing under {node_modules()}: run "
                           "`make setup` (npm ci from sync/upstream/portal/package-lock.json)"],
                          "portal")
    routes = [
        Route("/", calls_page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/enrol", enrol, methods=["GET", "POST"]),
        Route("/audit", audit_page),
        Route("/manage", manage_page),
        Route("/fleet", fleet_page),
        Route("/vendor/{path:path}", vendor),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        *api.routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.ucfg = ucfg
    app.state.limit = RateLimit()
    app.add_middleware(SecurityHeaders)
    return app
