"""``linetap upstream update offer|status|pause|resume|serve``: the command line of the
staged rollouts in :mod:`sync.upstream.updates` (docs/updates.md, "Rollout from the
upstream")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sync.upstream import config as upstream_config
from sync.upstream.store import open_db
from sync.upstream.updates import (
    RANK,
    VERBS,
    RolloutError,
    find,
    offer,
    pause,
    resume,
    serve,
    status,
)

# -- command line --------------------------------------------------------------------------------

def handles(argv: list[str]) -> bool:
    return upstream_config.first_verb(argv) in VERBS


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="linetap upstream",
                                 description="staged rollouts of signed RAUC bundles")
    ap.add_argument("--config", required=True, help="upstream TOML (see docs/updates.md)")
    top = ap.add_subparsers(dest="cmd", required=True)
    up = top.add_parser("update", help="offer, watch, pause and resume updates")
    sub = up.add_subparsers(dest="action", required=True)
    p = sub.add_parser("offer", help="store a bundle and start a staged rollout")
    p.add_argument("bundle", help="signed RAUC bundle (.raucb; `make bundle` makes one)")
    p.add_argument("--version", required=True, help="the version the bundle installs")
    p.add_argument("--site", action="append", default=[], help="only this site's devices "
                   "(repeatable; default every enrolled device)")
    p.add_argument("--device", action="append", default=[], help="only this device "
                   "(repeatable)")
    p.add_argument("--canary-share", type=float, help="share offered first (0..1)")
    p.add_argument("--max-failure-rate", type=float, help="failure share that pauses (0..1)")
    p = sub.add_parser("status", help="rollouts and each device's stage")
    p.add_argument("--rollout", type=int)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("pause", help="offer the update to no more devices")
    p.add_argument("--rollout", type=int, help="default: the latest active one")
    p.add_argument("--reason", required=True)
    p = sub.add_parser("resume", help="carry on, accepting the failures so far")
    p.add_argument("--rollout", type=int, help="default: the latest paused one")
    p = sub.add_parser("serve", help="serve bundles to boxes over HTTPS (mutual TLS)")
    p.add_argument("--bind")
    p.add_argument("--port", type=int)
    return ap


def _print_status(rows: list[dict]) -> None:
    if not rows:
        print("no rollouts")
    for r in rows:
        st = ", ".join(f"{k} {v}" for k, v in sorted(r["stages"].items(),
                                                      key=lambda kv: RANK.get(kv[0], -1)))
        print(f"rollout {r['rollout']}  {r['version']}  {r['state']} ({r['phase']})  "
              f"{len(r['devices'])} device(s): {st}")
        if r["reason"]:
            print(f"  {r['reason']}")
        for d in r["devices"]:
            if d["stage"] in ("failed", "silent") or len(rows) == 1:
                why = f"  {d['reason']}" if d["reason"] else ""
                print(f"  {d['device']:<20} {d['phase']:<7} {d['stage']:<13}{why}")


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    ucfg = upstream_config.load(args.config)
    open_db(ucfg.db_url, ucfg.audit_key)
    try:
        if args.action == "offer":
            r = offer(ucfg, Path(args.bundle), args.version, sites=args.site,
                      devices=args.device, canary_share=args.canary_share,
                      max_failure_rate=args.max_failure_rate)
            _print_status(status(r.id))
        elif args.action == "status":
            rows = status(args.rollout)
            if args.json:
                json.dump(rows, sys.stdout, indent=2, sort_keys=True)
                sys.stdout.write("\n")
            else:
                _print_status(rows)
        elif args.action == "pause":
            r = pause(find(args.rollout).id, args.reason)
            print(f"rollout {r.id} paused")
        elif args.action == "resume":
            r = resume(ucfg, find(args.rollout).id)
            print(f"rollout {r.id} resumed ({r.phase})")
        elif args.action == "serve":
            return serve(ucfg, args.bind, args.port)
    except RolloutError as exc:
        print(f"linetap upstream update {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0


