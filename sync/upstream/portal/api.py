"""The portal's JSON and blob endpoints.

Everything here is scoped to the signed-in user's site: a call of another practice is
404, exactly like a call that does not exist. Blobs go out sealed as stored; metadata is
only what the upstream holds in clear (times, deadlines, hold, segment counts). Actions
the browser performs on opened data (search, play, download, export) are reported to
``/api/event`` with numbers already masked, and written to the hash-chained audit.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import secrets
import struct
import time

import peewee as pw
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from recorder.errors import CommandRejected, KeyFileError, LinetapError
from recorder.evidence.keys import raw_public
from recorder.timebase import iso, parse_iso
from sync.upstream import ops as upstream_ops
from sync.upstream.objectstore import open_objects
from sync.upstream.portal import accounts, decisions, paging
from sync.upstream.portal.accounts import PDecision
from sync.upstream.portal.security import MASKED, current
from sync.upstream.store import UAudit, UCall, USegment, audit, db

MAX_PAGE = 5000              # manifests per bundle request
EVENTS = {"search", "play", "download", "export", "subject_access_export", "bulk_export",
          "key_open", "verify_failed_play"}
KEEP_REASONS = ("part of the care record", "complaint")


def error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status)


def _who(request):
    """(session, user, must enrol first) for the request's cookie."""
    s, u = current(request)
    return s, u, u is not None and accounts.must_enrol(u)


def guard(perm: str, raw: bool = False):
    """Endpoint decorator: a live session (401), the role's permission (403) and, for
    anything but GET, the session's CSRF token in ``X-CSRF-Token`` (403). The body is
    parsed as a JSON object, or handed over as bytes with ``raw``."""
    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(request: Request):
            s, u, enrol = await run_in_threadpool(_who, request)
            if u is None:
                return error(401, "not signed in")
            if not accounts.can(u.role, perm):
                return error(403, f"the {u.role} role may not do this")
            if enrol:
                return error(403, "your practice requires one-time codes: enrol at /enrol")
            body = None
            if request.method != "GET":
                tok = request.headers.get("x-csrf-token", "")
                if not tok or not secrets.compare_digest(tok, s.csrf):
                    return error(403, "missing or wrong CSRF token")
                data = await request.body()
                if raw:
                    body = data
                else:
                    try:
                        body = json.loads(data or b"{}")
                    except ValueError:
                        return error(400, "body is not JSON")
                    if not isinstance(body, dict):
                        return error(400, "body is not a JSON object")
            try:
                return await run_in_threadpool(fn, request, u, body)
            except HTTPException as exc:
                return error(exc.status_code, exc.detail)
            except CommandRejected as exc:
                return error(409, str(exc))
            except KeyFileError as exc:
                return error(409, f"the upstream cannot sign commands: {exc}")
            except (LinetapError, ValueError) as exc:
                return error(400, str(exc))
        return wrapper
    return deco


def _objects(request):
    st = request.app.state
    if getattr(st, "objects", None) is None:
        st.objects = open_objects(st.ucfg)
    return st.objects


def _call(u, device: str, call: str, live: bool = True) -> UCall:
    q = UCall.select().where((UCall.device == device) & (UCall.call == call)
                             & (UCall.site == u.site))
    r = q.first()
    if r is None or (live and r.state != "live"):
        raise HTTPException(404, "no such call")
    return r


def _seg_counts(site: str) -> dict[tuple[str, str], int]:
    q = (USegment.select(USegment.device, USegment.call, pw.fn.COUNT(USegment.id).alias("n"))
         .join(UCall, on=((UCall.device == USegment.device) & (UCall.call == USegment.call)))
         .where((UCall.site == site) & (UCall.state == "live"))
         .group_by(USegment.device, USegment.call))
    return {(r.device, r.call): r.n for r in q.objects()}


def _decisions(site: str) -> dict[tuple[str, str], PDecision]:
    return {(d.device, d.call): d for d in PDecision.select().where(PDecision.site == site)}


def _summary(r: UCall, have: int, dec: PDecision | None) -> dict:
    exp = len(r.expected) if r.expected is not None else None
    return {"device": r.device, "call": r.call, "start": iso(r.start_time),
            "deadline": iso(r.deadline), "hold": bool(r.legal_hold),
            "segments": have, "expected": exp,
            "complete": r.manifest_key is not None and exp is not None and have >= exp,
            "decision": None if dec is None else {
                "kind": dec.kind, "reason": dec.reason, "until": iso(dec.until),
                "user": dec.user, "time": iso(dec.time)}}


def _time_arg(v: str | None, name: str) -> float | None:
    if not v:
        return None
    try:
        return parse_iso(v if "T" in v else v + "T00:00:00Z")
    except (ValueError, LinetapError) as exc:
        raise HTTPException(400, f"{name}: not an ISO 8601 date") from exc


_EPOCH = dt.datetime(1970, 1, 1)


def _iso_fast(t: float | None) -> str | None:
    """:func:`recorder.timebase.iso` (ms, Z), without building an aware datetime."""
    if t is None:
        return None
    return (_EPOCH + dt.timedelta(seconds=t)).isoformat(timespec="milliseconds") + "Z"


def _list_query(site: str):
    """The list's columns of a site's live calls, as plain tuples: device, call, start,
    deadline, hold, has a manifest, segments expected (peewee's per-column converters
    were most of this request's time, so rows are built by hand)."""
    n_expected = (pw.fn.json_array_length(UCall.expected)
                  if isinstance(UCall._meta.database.obj, pw.SqliteDatabase)
                  else pw.fn.json_array_length(UCall.expected.cast("json"))).coerce(False)
    return (UCall.select(UCall.device, UCall.call, UCall.start_time, UCall.deadline,
                         UCall.legal_hold, UCall.manifest_key.is_null(False), n_expected)
            .where((UCall.site == site) & (UCall.state == "live")))


def _rows(site: str, q) -> list[dict]:
    """The list rows of query ``q`` (:func:`_list_query`), with segment counts and
    decisions read for those calls only."""
    sql, params = q.sql()
    got = list(db.obj.execute_sql(sql, params))
    if not got:
        return []
    keys = {(r[0], r[1]) for r in got}
    devs, calls_ = sorted({r[0] for r in got}), sorted({r[1] for r in got})
    counts = {(r[0], r[1]): r[2] for r in
              USegment.select(USegment.device, USegment.call, pw.fn.COUNT(USegment.id))
              .where(USegment.device.in_(devs) & USegment.call.in_(calls_))
              .group_by(USegment.device, USegment.call).tuples() if (r[0], r[1]) in keys}
    decs = {(d.device, d.call): d for d in PDecision.select().where(
        (PDecision.site == site) & PDecision.call.in_(calls_))}
    rows = []
    for dev, call, start, deadline, hold, has_man, exp in got:
        have = counts.get((dev, call), 0)
        dec = decs.get((dev, call))
        row = {"device": dev, "call": call, "start": _iso_fast(start),
               "deadline": _iso_fast(deadline), "hold": bool(hold), "segments": have,
               "expected": exp, "complete": bool(has_man) and exp is not None and have >= exp}
        if dec is not None:
            row["decision"] = {"kind": dec.kind, "reason": dec.reason, "until": iso(dec.until),
                               "user": dec.user, "time": iso(dec.time)}
        rows.append(row)
    return rows


def _json(obj) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), media_type="application/json")


@guard("list")
def calls(request, u, _body):
    """One page of the site's live calls, newest first: metadata only.

    ``limit`` rows (default 200, at most 1000) after the cursor ``after`` (the ``next``
    of the page before), ``from``/``to`` dates (inclusive, UTC). ``total`` (the number
    of matching calls) is counted on the first page only."""
    qp = request.query_params
    limit = paging.page_limit(qp.get("limit"))
    q = _list_query(u.site)
    a = _time_arg(qp.get("from"), "from")
    b = _time_arg(qp.get("to"), "to")
    if a is not None:
        q = q.where(UCall.start_time >= a)
    if b is not None:
        q = q.where(UCall.start_time < b + (86400 if "T" not in qp["to"] else 0))
    total = q.count() if not qp.get("after") else None
    after = paging.decode_cursor(qp["after"]) if qp.get("after") else None
    want, rows = limit + 1, []
    if after is None or after[0] is not None:
        # Calls with a start time, newest first (the order the site/start index serves).
        dq = q.where(UCall.start_time.is_null(False))
        if after is not None:
            s0, d0, c0 = after
            dq = dq.where((UCall.start_time < s0) | (
                (UCall.start_time == s0) & ((UCall.device < d0)
                                            | ((UCall.device == d0) & (UCall.call < c0)))))
        rows = _rows(u.site, dq.order_by(UCall.start_time.desc(), UCall.device.desc(),
                                         UCall.call.desc()).limit(want))
    if len(rows) < want:
        # Then the calls whose start is not known yet.
        uq = q.where(UCall.start_time.is_null())
        if after is not None and after[0] is None:
            _s, d0, c0 = after
            uq = uq.where((UCall.device < d0) | ((UCall.device == d0) & (UCall.call < c0)))
        rows += _rows(u.site, uq.order_by(UCall.device.desc(), UCall.call.desc())
                      .limit(want - len(rows)))
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        # The exact stored start: the row shows it to the millisecond only.
        start = (UCall.select(UCall.start_time).where((UCall.device == last["device"])
                                                      & (UCall.call == last["call"]))
                 .scalar())
        nxt = paging.encode_cursor(start, last["device"], last["call"])
    return _json({"site": u.site, "role": u.role, "calls": rows, "next": nxt,
                  "total": total})


def _ids(body, most: int) -> list[tuple[str, str]]:
    ids = body.get("calls")
    if not isinstance(ids, list) or len(ids) > most or \
            not all(isinstance(i, str) and "/" in i for i in ids):
        raise HTTPException(400, f"calls: a list of at most {most} 'device/call' ids")
    return [tuple(i.split("/", 1)) for i in ids]


@guard("list")
def calls_select(request, u, body):
    """The list rows of the named calls (``{"calls": ["device/call", ...]}``, at most
    one page), in the order named; calls that are not this site's live calls are left
    out. For a page of search results the browser found in its index."""
    want = _ids(body, paging.MAX_PAGE)
    if not want:
        return _json({"calls": []})
    q = _list_query(u.site).where(UCall.device.in_(sorted({d for d, _c in want}))
                                  & UCall.call.in_(sorted({c for _d, c in want})))
    got = {(r["device"], r["call"]): r for r in _rows(u.site, q)}
    return _json({"calls": [got[k] for k in want if k in got]})


@guard("open")
def calls_keys(request, u, _body):
    """Every live call of the site that has a manifest: ``[device, call, start]``
    (start in epoch s, or null), for the browser's number index. Small next to the
    list: no deadlines, counts or decisions."""
    q = (UCall.select(UCall.device, UCall.call, UCall.start_time)
         .where((UCall.site == u.site) & (UCall.state == "live")
                & UCall.manifest_key.is_null(False)).tuples())
    return _json({"site": u.site, "calls": list(q)})


@guard("open")
def manifests(request, u, _body):
    """Sealed manifests of the site's live calls, in one binary bundle per page::

        repeated: u16 id length, id (UTF-8 "device/call"), u32 length, manifest file
    """
    try:
        offset = int(request.query_params.get("offset", 0))
        limit = min(int(request.query_params.get("limit", MAX_PAGE)), MAX_PAGE)
    except ValueError as exc:
        raise HTTPException(400, "offset and limit are integers") from exc
    objects = _objects(request)
    q = (UCall.select(UCall.device, UCall.call, UCall.manifest_key)
         .where((UCall.site == u.site) & (UCall.state == "live")
                & UCall.manifest_key.is_null(False))
         .order_by(UCall.start_time.desc(), UCall.device, UCall.call)
         .offset(max(0, offset)).limit(max(1, limit)))
    parts = []
    n = 0
    for r in q:
        try:
            blob = objects.get(r.manifest_key)
        except LinetapError:
            continue
        ident = f"{r.device}/{r.call}".encode()
        parts += [struct.pack(">H", len(ident)), ident, struct.pack(">I", len(blob)), blob]
        n += 1
    return Response(b"".join(parts), media_type="application/octet-stream",
                    headers={"x-count": str(n)})


def _bundle(objects, rows) -> tuple[bytes, int]:
    parts, n = [], 0
    for dev, call, key in rows:
        try:
            blob = objects.get(key)
        except LinetapError:
            continue
        ident = f"{dev}/{call}".encode()
        parts += [struct.pack(">H", len(ident)), ident, struct.pack(">I", len(blob)), blob]
        n += 1
    return b"".join(parts), n


@guard("open")
def manifests_select(request, u, body):
    """The sealed manifests of the named calls (``{"calls": ["device/call", ...]}``),
    for a browser whose sealed index already covers the rest."""
    rows = []
    for dev, call in _ids(body, MAX_PAGE):
        r = (UCall.select(UCall.device, UCall.call, UCall.manifest_key)
             .where((UCall.device == dev) & (UCall.call == call) & (UCall.site == u.site)
                    & (UCall.state == "live") & UCall.manifest_key.is_null(False))
             .tuples().first())
        if r:
            rows.append(r)
    data, n = _bundle(_objects(request), rows)
    return Response(data, media_type="application/octet-stream", headers={"x-count": str(n)})


MAX_INDEX = 64 * 1024 * 1024      # bytes of one sealed index


def _index_key(site: str) -> str:
    return f"portal-index/{site}.bin"


@guard("open")
def index_get(request, u, _body):
    """The site's sealed number index (opaque: only the practice key opens it)."""
    objects = _objects(request)
    key = _index_key(u.site)
    if not objects.exists(key):
        raise HTTPException(404, "no index yet")
    return Response(objects.get(key), media_type="application/octet-stream")


@guard("open", raw=True)
def index_put(request, u, body):
    if not 28 <= len(body) <= MAX_INDEX:
        raise HTTPException(400, f"an index is 28..{MAX_INDEX} bytes")
    _objects(request).put(_index_key(u.site), body)
    audit("portal_index_stored", user=u.name, site=u.site, bytes=len(body))
    return JSONResponse({"ok": True})


@guard("open")
def call_detail(request, u, _body):
    p = request.path_params
    r = _call(u, p["device"], p["call"])
    site = request.app.state.ucfg.sites.get(u.site)
    dkey = site.devices.get(r.device) if site else None
    segs = [{"seq": s.seq, "size": s.size, "sha256": s.sha256} for s in
            USegment.select().where((USegment.device == r.device) & (USegment.call == r.call))
            .order_by(USegment.seq)]
    dec = PDecision.get_or_none((PDecision.device == r.device) & (PDecision.call == r.call))
    out = _summary(r, len(segs), dec)
    out.update(segment_list=segs, has_manifest=r.manifest_key is not None,
               device_key=raw_public(dkey).hex() if dkey is not None else None)
    return JSONResponse(out)


@guard("open")
def manifest_blob(request, u, _body):
    p = request.path_params
    r = _call(u, p["device"], p["call"])
    if r.manifest_key is None:
        raise HTTPException(404, "no manifest upstream yet")
    return Response(_objects(request).get(r.manifest_key),
                    media_type="application/octet-stream")


@guard("open")
def segment_blob(request, u, _body):
    p = request.path_params
    r = _call(u, p["device"], p["call"])
    try:
        seq = int(p["seq"])
    except ValueError as exc:
        raise HTTPException(404, "no such segment") from exc
    s = USegment.get_or_none((USegment.device == r.device) & (USegment.call == r.call)
                             & (USegment.seq == seq))
    if s is None:
        raise HTTPException(404, "no such segment")
    return Response(_objects(request).get(s.key), media_type="application/octet-stream")


@guard("open")
def devices(request, u, _body):
    site = request.app.state.ucfg.sites.get(u.site)
    keys = {d: raw_public(k).hex() for d, k in (site.devices.items() if site else [])}
    return JSONResponse({"site": u.site, "devices": keys})


def _masked(v) -> str | None:
    if v in (None, ""):
        return None
    if not isinstance(v, str) or not MASKED.match(v):
        raise HTTPException(400, "number must be sent masked (0163*****23)")
    return v


@guard("list")
def event(request, u, body):
    """The browser reports what it did with opened data; the audit keeps it."""
    action = body.get("action")
    if action not in EVENTS:
        raise HTTPException(400, f"unknown event {action!r}")
    if action != "search" and not accounts.can(u.role, "open"):
        raise HTTPException(403, f"the {u.role} role may not do this")
    detail = {"user": u.name, "site": u.site}
    calls_ = body.get("calls") or []
    if body.get("device") and body.get("call"):
        calls_ = [{"device": body["device"], "call": body["call"]}]
    if not isinstance(calls_, list) or len(calls_) > 100000:
        raise HTTPException(400, "calls must be a list")
    for c in calls_[:1]:
        if not isinstance(c, dict):
            raise HTTPException(400, "calls must be objects")
    if len(calls_) == 1:
        c = calls_[0]
        _call(u, str(c.get("device")), str(c.get("call")), live=False)
        detail.update(device=c.get("device"), call=c.get("call"))
    elif calls_:
        detail["calls"] = len(calls_)
    num = _masked(body.get("number"))
    if num:
        detail["number"] = num
    for k in ("from", "to", "status", "matches", "files"):
        v = body.get(k)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            detail[k] = v[:200] if isinstance(v, str) else v
    audit("portal_" + action, **detail)
    return JSONResponse({"ok": True})


@guard("manage")
def delete(request, u, body):
    p = request.path_params
    r = _call(u, p["device"], p["call"])
    if body.get("confirm") != r.call:
        raise HTTPException(400, "confirm with the call id to delete it")
    reason = str(body.get("reason") or "deleted by the practice")[:500]
    ucfg = request.app.state.ucfg
    if not ucfg.command_key:
        raise HTTPException(409, "the upstream has no command key: it cannot tell the box")
    audit("portal_delete", user=u.name, site=u.site, device=r.device, call=r.call,
          reason=reason)
    upstream_ops.user_delete(ucfg, _objects(request), r.call, r.device)
    return JSONResponse({"ok": True, "deleted": r.call})


@guard("manage")
def hold(request, u, body):
    p = request.path_params
    r = _call(u, p["device"], p["call"])
    on = body.get("on")
    if not isinstance(on, bool):
        raise HTTPException(400, "on must be true or false")
    reason = str(body.get("reason") or "")[:500]
    ucfg = request.app.state.ucfg
    if not ucfg.command_key:
        raise HTTPException(409, "the upstream has no command key: it cannot tell the box")
    audit("portal_hold", user=u.name, site=u.site, device=r.device, call=r.call, on=on,
          reason=reason)
    upstream_ops.user_hold(ucfg, r.call, on, r.device)
    return JSONResponse({"ok": True, "hold": on})


@guard("manage")
def keep(request, u, body):
    """Keep a call past its deadline, with a reason and a new deadline."""
    p = request.path_params
    r = _call(u, p["device"], p["call"])
    reason = str(body.get("reason") or "").strip()
    if not reason:
        raise HTTPException(400, "a reason is required to keep a call")
    until = _time_arg(body.get("until"), "until")
    if until is None or until <= time.time():
        raise HTTPException(400, "until must be a date in the future")
    PDecision.delete().where((PDecision.device == r.device)
                             & (PDecision.call == r.call)).execute()
    PDecision.create(device=r.device, call=r.call, site=u.site, kind="keep",
                     reason=reason[:500], until=until, user=u.name)
    decisions.apply_keeps()
    audit("portal_keep", user=u.name, site=u.site, device=r.device, call=r.call,
          reason=reason[:500], until=iso(until))
    return JSONResponse({"ok": True})


@guard("manage")
def approve(request, u, body):
    """Approve a batch of calls for deletion at their deadline."""
    items = body.get("calls")
    reason = str(body.get("reason") or "appraised: no further value").strip()[:500]
    if not isinstance(items, list) or not items:
        raise HTTPException(400, "calls must be a non-empty list")
    rows = [_call(u, str(c.get("device")), str(c.get("call"))) for c in items
            if isinstance(c, dict)]
    for r in rows:
        PDecision.delete().where((PDecision.device == r.device)
                                 & (PDecision.call == r.call)).execute()
        PDecision.create(device=r.device, call=r.call, site=u.site, kind="approve",
                         reason=reason, user=u.name)
    audit("portal_approve", user=u.name, site=u.site, reason=reason,
          calls=[f"{r.device}/{r.call}" for r in rows][:1000])
    return JSONResponse({"ok": True, "approved": len(rows)})


@guard("manage")
def expiring(request, u, _body):
    try:
        days = float(request.query_params.get("days", 30))
    except ValueError as exc:
        raise HTTPException(400, "days is a number") from exc
    if not 0 <= days <= 3650:
        raise HTTPException(400, "days must be in 0..3650")
    end = time.time() + days * 86400
    q = (UCall.select().where((UCall.site == u.site) & (UCall.state == "live")
                              & (UCall.deadline <= end)).order_by(UCall.deadline))
    counts, decs = _seg_counts(u.site), _decisions(u.site)
    s = accounts.site_settings(u.site)
    decisions.apply_retention(request.app.state.ucfg)     # another process may have set it
    site = request.app.state.ucfg.sites.get(u.site)
    return JSONResponse({
        "days": days, "retention_days": site.retention_days if site else None,
        "settings": {"deletion": s.deletion, "remind_days": s.remind_days,
                     "escalate_days": s.escalate_days, "require_totp": s.require_totp},
        "calls": [_summary(r, counts.get((r.device, r.call), 0), decs.get((r.device, r.call)))
                  for r in q]})


@guard("manage")
def settings(request, u, body):
    accounts.site_settings(u.site)            # the row exists before the update
    changes = {}
    if "deletion" in body:
        if body["deletion"] not in ("auto", "approval"):
            raise HTTPException(400, "deletion must be auto or approval")
        changes["deletion"] = body["deletion"]
    for k in ("remind_days", "escalate_days"):
        if k in body:
            v = body[k]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 365:
                raise HTTPException(400, f"{k} must be a number of days in 0..365")
            changes[k] = float(v)
    if "require_totp" in body:
        if not isinstance(body["require_totp"], bool):
            raise HTTPException(400, "require_totp must be true or false")
        changes["require_totp"] = body["require_totp"]
    if changes:
        accounts.PSite.update(**changes).where(accounts.PSite.site == u.site).execute()
        audit("portal_settings", user=u.name, site=u.site, **changes)
    return JSONResponse({"ok": True, **changes})


@guard("manage")
def retention(request, u, body):
    """Set the practice's retention period (days from each call's start, with a reason):
    the upstream's deadlines follow at once, and each of the practice's boxes gets a
    signed ``retention`` command through the workers."""
    ucfg = request.app.state.ucfg
    if not ucfg.command_key:
        raise HTTPException(409, "the upstream has no command key: it cannot tell the box")
    before = decisions.set_retention(ucfg, u.site, body.get("days"), body.get("reason"),
                                     u.name)
    upstream_ops.refresh_deadlines(ucfg)
    queued = upstream_ops.queue_retention(ucfg)
    end = time.time()
    past = UCall.select().where((UCall.site == u.site) & (UCall.state == "live")
                                & (UCall.deadline <= end)).count()
    return JSONResponse({"ok": True, "retention_days": ucfg.sites[u.site].retention_days,
                         "previous": before, "boxes_told": queued, "past_deadline": past})


def site_audit_rows(u, ucfg, limit: int = 2000) -> list[dict]:
    """The audit entries about this site: its users' actions and its devices' calls."""
    site = ucfg.sites.get(u.site)
    devs = set(site.devices) if site else set()
    out = []
    for a in UAudit.select().order_by(UAudit.seq.desc()).limit(50000):
        d = a.detail if isinstance(a.detail, dict) else {}
        if d.get("site") == u.site or d.get("device") in devs:
            out.append({"seq": a.seq, "time": iso(a.time), "action": a.action,
                        "user": d.get("user"), "call": d.get("call"),
                        "detail": {k: v for k, v in d.items()
                                   if k not in ("user", "call", "site")},
                        "hash": a.hash})
            if len(out) >= limit:
                break
    return out


@guard("audit")
def audit_list(request, u, _body):
    from sync.upstream.store import audit_chain
    ucfg = request.app.state.ucfg
    return JSONResponse({"entries": site_audit_rows(u, ucfg), "chain": audit_chain(ucfg)})


def routes() -> list[Route]:
    c = "/api/call/{device}/{call}"
    return [
        Route("/api/calls", calls),
        Route("/api/calls/select", calls_select, methods=["POST"]),
        Route("/api/calls/keys", calls_keys),
        Route("/api/manifests", manifests),
        Route("/api/manifests/select", manifests_select, methods=["POST"]),
        Route("/api/index", index_get),
        Route("/api/index", index_put, methods=["PUT"]),
        Route("/api/devices", devices),
        Route(c, call_detail),
        Route(c + "/manifest", manifest_blob),
        Route(c + "/seg/{seq}", segment_blob),
        Route(c + "/delete", delete, methods=["POST"]),
        Route(c + "/hold", hold, methods=["POST"]),
        Route(c + "/keep", keep, methods=["POST"]),
        Route("/api/approve", approve, methods=["POST"]),
        Route("/api/expiring", expiring),
        Route("/api/settings", settings, methods=["POST"]),
        Route("/api/retention", retention, methods=["POST"]),
        Route("/api/event", event, methods=["POST"]),
        Route("/api/audit", audit_list),
    ]
