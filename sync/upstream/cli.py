"""``linetap upstream``: the practice's view of the upstream store.

    linetap upstream --config U.toml calls [--site S] [--all] [--json]
    linetap upstream --config U.toml calls --number N --key PRACTICE_KEY [--passphrase-file F]
    linetap upstream --config U.toml export --key PRACTICE_KEY [--passphrase-file F] --out DIR
                                            [--call ID]... | --number N
    linetap upstream --config U.toml delete --call ID [--device D]
    linetap upstream --config U.toml hold --call ID (--on | --off) [--device D]
    linetap upstream --config U.toml expiring [--days N]
    linetap upstream --config U.toml problems [--json]
    linetap upstream --config U.toml audit [--verify [--audit-pub FILE]] [--json]
    linetap upstream --config U.toml update offer|status|pause|resume|serve ...
        (staged RAUC rollouts: sync/upstream/updates.py, docs/updates.md)
    linetap upstream --config U.toml authorise --device D --op OP [--ttl 1h]
        (an engineer's provisioning token: sync/upstream/authorise.py)

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

from recorder.evidence import auditchain
from recorder.evidence.keys import load_ed25519_public, open_practice_private
from recorder.evidence.trust import load_identity_pub
from recorder.timebase import iso
from sync.upstream import authorise, boxaudit, fleet, tracking
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
    load_audit_key,
    open_db,
    verify_audit,
)


def _row(r: UCall, holds: dict | None = None) -> dict:
    hold_cmd = (holds or {}).get((r.device, r.call))
    have = USegment.select().where((USegment.device == r.device)
                                   & (USegment.call == r.call)).count()
    exp = len(expected_seqs(r)) if r.expected is not None else None
    return {"site": r.site, "device": r.device, "call_id": r.call, "state": r.state,
            "start": iso(r.start_time), "deadline": iso(r.deadline),
            "legal_hold": r.legal_hold, "segments": have, "expected": exp,
            "complete": is_complete(r) if r.state == "live" else False,
            "delete_reason": r.delete_reason,
            "hold_command": None if hold_cmd is None else
            {k: hold_cmd[k] for k in ("state", "reason", "nonce")},
            "hold_label": tracking.hold_label(r.legal_hold, hold_cmd)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="linetap upstream", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="upstream TOML (see docs/sync.md)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("calls", help="list calls")
    p.add_argument("--site")
    p.add_argument("--all", action="store_true", help="include deleted (tombstones)")
    p.add_argument("--number", help="only calls to or from this number (needs --key)")
    p.add_argument("--key", help="practice private key (to open manifests for --number)")
    p.add_argument("--passphrase-file", help="the practice key's passphrase (first line); "
                   "default: ask at the terminal")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="decrypt, verify and write WAV + JSON")
    p.add_argument("--key", required=True, help="practice private key")
    p.add_argument("--passphrase-file", help="the practice key's passphrase (first line); "
                   "default: ask at the terminal")
    p.add_argument("--out", required=True)
    p.add_argument("--identity-pub", help="the box's identity public key (PEM, raw or hex); "
                   "default: the key registered for the device in the config")
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
    p.add_argument("--days", type=float, default=7.0, help="window in days (default 7)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("problems", help="open problems: conflicts, rejected manifests, "
                       "commands the box refused")
    p.add_argument("--all", action="store_true", help="include resolved problems")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("fleet", help="every box: version, last seen, disk, backlog, alerts")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("audit", help="the upstream audit trail (hash-chained, signed)")
    p.add_argument("--verify", action="store_true", help="check the chain and signatures; "
                   "exit 1 if a row is bad (the first is named), 3 if unverifiable")
    p.add_argument("--audit-pub", help="the upstream audit key's public half (PEM or 32 "
                   "raw bytes), kept apart from this machine; default: the public half of "
                   "[audit] key")
    p.add_argument("--json", action="store_true")
    authorise.add_parser(sub)
    return ap


def _audit_trust(ucfg, audit_pub: str | None):
    """(public key, where it came from) that uaudit signatures are checked against:
    ``--audit-pub``, else the public half of the configured audit key, else (None, why)."""
    if audit_pub:
        return load_ed25519_public(audit_pub), f"--audit-pub {audit_pub}"
    if ucfg.audit_key:
        return (load_audit_key(ucfg.audit_key).public_key(),
                f"public half of [audit] key {ucfg.audit_key}")
    return None, "no audit key: pass --audit-pub FILE or set [audit] key"


def _verify_audit(ucfg, args) -> int:
    """``audit --verify``: the upstream's own trail, then every box log it holds (each
    against the device's pinned identity). Exit: the worst of them (1 a bad row, entry
    or break; 3 unverifiable or unsigned; else 0)."""
    key, source = _audit_trust(ucfg, args.audit_pub)
    r = verify_audit(key)
    boxes = boxaudit.verify(ucfg)
    codes = [r.exit_code] + [auditchain.EXIT[b.status] for b in boxes]
    rc = 1 if 1 in codes else max(codes)
    if args.json:
        _dump({**r.as_dict(), "trusted_key": source,
               "boxes": [b.as_dict() for b in boxes]})
        return rc
    if r.first_bad is not None:
        print(f"FIRST BAD ROW: {r.first_bad}")
        for p in r.problems[1:]:
            print(f"  then: {p}")
    if r.unsigned_legacy:
        print(f"unsigned (legacy): the first {r.unsigned_legacy} row(s), written before "
              "the audit key; chained, but nothing proves who wrote them")
    if key is None:
        print(f"UNVERIFIABLE: {source}")
    print(f"upstream audit: {r.entries} entr{'y' if r.entries == 1 else 'ies'}, "
          f"{r.signed} with a verified signature: {r.status} (key: {source})")
    for b in boxes:
        for why in b.breaks:
            print(f"BOX LOG BREAK: {why}")
        for why in b.resolved:
            print(f"box log break, resolved: {why}")
        if b.report.first_bad is not None:
            print(f"FIRST BAD BOX ENTRY: {b.report.first_bad}")
        print(f"box {b.device}: {b.report.entries} entries held in {b.epochs} epoch(s), "
              f"{b.report.signed} with a verified signature (its pinned identity): "
              f"{b.status}")
    return rc


def _problem(p: Problem) -> dict:
    return {"kind": p.kind, "device": p.device, "call_id": p.call, "seq": p.seq,
            "sha256": p.sha256, "key": p.key, "detail": p.detail, "time": iso(p.created)}


def _unsearched(unreadable: int, found: int) -> str:
    return (f"INCOMPLETE SEARCH: {unreadable} manifest(s) did not open with this key, so "
            f"their calls were not searched ({found} match(es) among the rest). Is it the "
            "practice key for these calls? If the upstream holds other practices' calls, "
            "limit the search with --site")


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
              f"{r['hold_label']}")


def cli_main(argv: list[str]) -> int:
    from sync.upstream import setup as upstream_setup
    if upstream_setup.handles(argv):     # init, enrol, pin, revoke, check, serve
        return upstream_setup.cli_main(argv)
    from sync.upstream import tracking
    if tracking.handles(argv):           # commands, retry, resolve
        return tracking.cli_main(argv)
    from sync.upstream import update_cli
    if update_cli.handles(argv):         # update offer|status|pause|resume|serve
        return update_cli.cli_main(argv)
    args = build_parser().parse_args(argv)
    ucfg = upstream_config.load(args.config)
    open_db(ucfg.db_url, ucfg.audit_key)
    if args.cmd == "authorise":
        return authorise.run(args, ucfg)
    if args.cmd == "calls" and args.number:
        if not args.key:
            print("calls --number needs --key PRACTICE_KEY: numbers are stored only "
                  "inside the sealed manifests", file=sys.stderr)
            return 2
        priv = open_practice_private(args.key, args.passphrase_file)
        rows, unreadable = upstream_ops.search_number(open_objects(ucfg), priv,
                                                      args.number, args.site)
        _print([_row(r) for r in rows], args.json)
        if unreadable:
            # Never "0 matches" when part of the store was not searched: for a subject
            # access request that would read as "no calls for this person".
            print(_unsearched(unreadable, len(rows)), file=sys.stderr)
            return 1
        return 0
    if args.cmd == "calls":
        q = UCall.select().order_by(UCall.start_time)
        if args.site:
            q = q.where(UCall.site == args.site)
        if not args.all:
            q = q.where(UCall.state == "live")
        holds = tracking.hold_states()
        _print([_row(r, holds) for r in q], args.json)
        return 0
    if args.cmd == "problems":
        rows = tracking.problems(include_resolved=args.all)
        if args.json:
            _dump(rows)
        else:
            for r in rows:
                if r["kind"].startswith("command_"):
                    what = f"command {r['nonce'][:12]}"
                else:
                    kind = "audit entry" if r["call_id"] == boxaudit.CALL else "segment"
                    what = (f"#{r['id']} " + ("manifest" if r["seq"] is None
                                                  else f"{kind} {r['seq']}")
                            + f" {r['sha256'][:12]}")
                state = f"  [resolved {r['resolved']}: {r['resolution'] or ''}]" \
                    if r["resolved"] else ""
                print(f"{r['time']}  {r['kind']:<16} {r['device']:<16} {r['call_id']} "
                      f"{what}  {r['detail']}{state}")
            print(f"{len(rows)} {'problem(s)' if args.all else 'open problem(s)'}"
                  + ("" if args.all else " (--all shows resolved ones; `retry --command` "
                     "re-signs a refused command; `resolve` closes one with a note)"))
        return 0
    if args.cmd == "audit":
        if args.verify:
            return _verify_audit(ucfg, args)
        rows = [{"seq": a.seq, "time": iso(a.time), "action": a.action, "detail": a.detail,
                 "hash": a.hash} for a in UAudit.select().order_by(UAudit.seq)]
        if args.json:
            _dump(rows)
        else:
            for r in rows:
                print(f"{r['seq']:>6} {r['time']} {r['action']:<20} "
                      f"{json.dumps(r['detail'], sort_keys=True)}")
        return 0
    if args.cmd == "fleet":
        rows = fleet.table(time.time(), ucfg.enrolled())
        if args.json:
            _dump(rows)
            return 0
        for r in rows:
            seen = "never" if r["last_seen_s"] is None else f"{r['last_seen_s']} s ago"
            print(f"{r['site']:<12} {r['device']:<16} {r['state']:<10} "
                  f"v{r['version'] or '?':<8} seen {seen:<14} "
                  f"disk {r['disk_free_mb'] if r['disk_free_mb'] is not None else '?'} MB  "
                  f"backlog {r['backlog'] if r['backlog'] is not None else '?'}  "
                  f"lines {','.join(x or '?' for x in r['lines']) or '-'}  "
                  f"alerts {','.join(r['alerts']) or '-'}")
        return 0
    if args.cmd == "expiring":
        end = time.time() + args.days * 86400
        q = UCall.select().where((UCall.state == "live") & (UCall.deadline <= end)) \
            .order_by(UCall.deadline)
        rows = [_row(r) for r in q]
        _print(rows, args.json)
        if not args.json:
            print(f"{len(rows)} call(s) expire within {args.days:g} day(s)")
        return 0
    if args.cmd == "export":
        objects = open_objects(ucfg)
        priv = open_practice_private(args.key, args.passphrase_file)
        if args.number and args.call:
            print("export: give --call or --number, not both", file=sys.stderr)
            return 2
        if args.number:
            rows, unreadable = upstream_ops.search_number(objects, priv, args.number)
            if unreadable:
                print(_unsearched(unreadable, len(rows)) + "; nothing exported",
                      file=sys.stderr)
                return 1
        elif args.call:
            rows = [upstream_ops.find_call(c) for c in args.call]
        else:
            rows = [r for r in UCall.select().where(UCall.state == "live")
                    .order_by(UCall.start_time) if r.manifest_key]
        ident = load_identity_pub(args.identity_pub) if args.identity_pub else None
        failed = unverifiable = 0
        for r in rows:
            d = upstream_ops.export_call(ucfg, objects, priv, args.out, r, identity_key=ident)
            failed += d["status"] == "failed"
            unverifiable += d["status"] == "unverifiable"
            print(f"{d['call_id']}: {d['status']} ({d['duration_s']} s)")
        print(f"exported {len(rows)} call(s) to {args.out}; {failed} failed verification, "
              f"{unverifiable} unverifiable")
        return 1 if failed else 3 if unverifiable else 0
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
