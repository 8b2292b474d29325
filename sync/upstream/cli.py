"""``linetap upstream``: the practice's view of the upstream store.

    linetap upstream --config U.toml calls [--site S] [--all] [--json]
    linetap upstream --config U.toml calls --number N --key PRACTICE_KEY [--site S] [--json]
    linetap upstream --config U.toml export --key PRACTICE_KEY --out DIR [--call ID]...
    linetap upstream --config U.toml export --key PRACTICE_KEY --out DIR --number N
    linetap upstream --config U.toml delete --call ID [--device D]
    linetap upstream --config U.toml hold --call ID (--on | --off) [--device D]
    linetap upstream --config U.toml expiring [--days N]
    linetap upstream --config U.toml problems [--json]
    linetap upstream --config U.toml audit [--verify] [--json]

Numbers are never stored upstream in clear (they are inside each manifest's sealed
payload), so ``--number`` opens the manifests with the practice key to search them.

``delete`` and ``hold`` act upstream at once and queue a signed command that the
ingest workers deliver to the box (and resend until the box reports on it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from recorder.evidence import keys
from recorder.timebase import iso
from sync.upstream import config as upstream_config
from sync.upstream import ops as upstream_ops
from sync.upstream.objectstore import open_objects
from sync.upstream.store import (
    Problem,
    UAudit,
    UCall,
    USegment,
    expected_seqs,
    is_complete,
    open_db,
    verify_audit,
)


def _row(r: UCall) -> dict:
    have = USegment.select().where((USegment.device == r.device)
                                   & (USegment.call == r.call)).count()
    exp = len(expected_seqs(r)) if r.expected is not None else None
    return {"site": r.site, "device": r.device, "call_id": r.call, "state": r.state,
            "start": iso(r.start_time), "deadline": iso(r.deadline),
            "legal_hold": r.legal_hold, "segments": have, "expected": exp,
            "complete": is_complete(r) if r.state == "live" else False,
            "delete_reason": r.delete_reason}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="linetap upstream", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="upstream TOML (see docs/sync.md)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("calls", help="list calls")
    p.add_argument("--site")
    p.add_argument("--all", action="store_true", help="include deleted (tombstones)")
    p.add_argument("--number", help="only calls to or from this number (needs --key)")
    p.add_argument("--key", help="practice private key (to open manifests for --number)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="decrypt, verify and write WAV + JSON")
    p.add_argument("--key", required=True, help="practice private key")
    p.add_argument("--out", required=True)
    p.add_argument("--call", action="append", default=[])
    p.add_argument("--number", help="every call to or from this number (subject access)")
    p = sub.add_parser("delete", help="delete a call here and on the box")
    p.add_argument("--call", required=True)
    p.add_argument("--device")
    p = sub.add_parser("hold", help="set or release legal hold (here and on the box)")
    p.add_argument("--call", required=True)
    p.add_argument("--device")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--on", action="store_true")
    g.add_argument("--off", action="store_true")
    p = sub.add_parser("expiring", help="calls whose deadline falls within N days")
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("problems", help="conflicts and rejected manifests kept aside")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("audit", help="the upstream audit trail (hash-chained)")
    p.add_argument("--verify", action="store_true", help="check the chain; exit 1 if broken")
    p.add_argument("--json", action="store_true")
    return ap


def _problem(p: Problem) -> dict:
    return {"kind": p.kind, "device": p.device, "call_id": p.call, "seq": p.seq,
            "sha256": p.sha256, "key": p.key, "detail": p.detail, "time": iso(p.created)}


def _dump(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _print(rows, as_json) -> None:
    if as_json:
        json.dump(rows, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return
    for r in rows:
        print(f"{r['site']:<12} {r['device']:<16} {r['call_id']:<34} {r['state']:<7} "
              f"{r['start'] or '-':<24} segs {r['segments']}/{r['expected'] or '?'} "
              f"{'complete' if r['complete'] else 'partial':<8} deadline {r['deadline']}"
              f"{'  HOLD' if r['legal_hold'] else ''}")


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    ucfg = upstream_config.load(args.config)
    open_db(ucfg.db_url)
    if args.cmd == "calls" and args.number:
        if not args.key:
            print("calls --number needs --key PRACTICE_KEY: numbers are stored only "
                  "inside the sealed manifests", file=sys.stderr)
            return 2
        priv = keys.load_practice_private(args.key)
        rows, unreadable = upstream_ops.search_number(open_objects(ucfg), priv,
                                                      args.number, args.site)
        _print([_row(r) for r in rows], args.json)
        if unreadable:
            print(f"{unreadable} manifest(s) did not open with this key", file=sys.stderr)
        return 0
    if args.cmd == "calls":
        q = UCall.select().order_by(UCall.start_time)
        if args.site:
            q = q.where(UCall.site == args.site)
        if not args.all:
            q = q.where(UCall.state == "live")
        _print([_row(r) for r in q], args.json)
        return 0
    if args.cmd == "problems":
        rows = [_problem(p) for p in Problem.select().order_by(Problem.created, Problem.id)]
        if args.json:
            _dump(rows)
        else:
            for r in rows:
                what = "manifest" if r["seq"] is None else f"segment {r['seq']}"
                print(f"{r['time']}  {r['kind']:<9} {r['device']:<16} {r['call_id']} "
                      f"{what} {r['sha256'][:12]}  {r['detail']}")
            print(f"{len(rows)} problem(s)")
        return 0
    if args.cmd == "audit":
        if args.verify:
            n, problems = verify_audit()
            if args.json:
                _dump({"entries": n, "intact": not problems, "problems": problems})
            else:
                for p in problems:
                    print(f"BROKEN: {p}")
                print(f"upstream audit: {n} entr{'y' if n == 1 else 'ies'}, "
                      f"{'chain intact' if not problems else 'CHAIN BROKEN'}")
            return 1 if problems else 0
        rows = [{"seq": a.seq, "time": iso(a.time), "action": a.action, "detail": a.detail,
                 "hash": a.hash} for a in UAudit.select().order_by(UAudit.seq)]
        if args.json:
            _dump(rows)
        else:
            for r in rows:
                print(f"{r['seq']:>6} {r['time']} {r['action']:<20} "
                      f"{json.dumps(r['detail'], sort_keys=True)}")
        return 0
    if args.cmd == "expiring":
        end = time.time() + args.days * 86400
        q = UCall.select().where((UCall.state == "live") & (UCall.deadline <= end)) \
            .order_by(UCall.deadline)
        _print([_row(r) for r in q], args.json)
        return 0
    if args.cmd == "export":
        objects = open_objects(ucfg)
        priv = keys.load_practice_private(args.key)
        if args.number and args.call:
            print("export: give --call or --number, not both", file=sys.stderr)
            return 2
        if args.number:
            rows, _unreadable = upstream_ops.search_number(objects, priv, args.number)
        elif args.call:
            rows = [upstream_ops.find_call(c) for c in args.call]
        else:
            rows = [r for r in UCall.select().where(UCall.state == "live")
                    .order_by(UCall.start_time) if r.manifest_key]
        failed = 0
        for r in rows:
            d = upstream_ops.export_call(ucfg, objects, priv, args.out, r)
            failed += d["status"] != "verified"
            print(f"{d['call_id']}: {d['status']} ({d['duration_s']} s)")
        print(f"exported {len(rows)} call(s) to {args.out}; {failed} failed verification")
        return 1 if failed else 0
    if args.cmd == "delete":
        r = upstream_ops.user_delete(ucfg, open_objects(ucfg), args.call, args.device)
        print(f"deleted {r.call} upstream; delete command queued for {r.device}")
        return 0
    if args.cmd == "hold":
        r = upstream_ops.user_hold(ucfg, args.call, bool(args.on), args.device)
        print(f"legal hold {'on' if args.on else 'off'} for {r.call}; command queued for "
              f"{r.device}")
        return 0
    return 2
