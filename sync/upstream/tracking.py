"""What happened to each command, and which problems are still open.

**Command states** (derived from the ``command`` row; nothing else to keep in step):

* ``queued``: signed and stored, not yet handed to the broker (no worker has sent it);
* ``delivered``: published to the box's ``cmd`` topic (QoS 1; the broker keeps it in the
  box's 7-day session if the box is away, and the workers resend it every
  ``commands.resend_s`` until the box reports, and at once when the box comes back);
* ``applied``: the box reported it applied;
* ``refused``: the box reported it rejected, with its reason (bad signature, expired,
  wrong device...);
* ``expired``: its lifetime passed with no report.

A hold shows as ``HOLD (pending: queued|delivered)`` in ``calls`` until the box applies
it, and ``HOLD REFUSED BY BOX: reason`` if the box refused it.

**Problems** are the ``problem`` rows (conflicts, rejected manifests) plus commands
refused or expired. Each is *open* until resolved: automatically (a valid manifest for
the call accepted later; a retried command applied) or by ``resolve`` with a note. Every
resolution and retry is audited.

    linetap upstream --config U.toml commands [--all] [--json]
    linetap upstream --config U.toml retry --command NONCE_PREFIX
    linetap upstream --config U.toml resolve (--problem ID | --command NONCE_PREFIX) --note TEXT
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import peewee as pw

from recorder.errors import LinetapError
from recorder.evidence import keys
from recorder.timebase import iso
from sync import signed_commands
from sync.upstream import config as upstream_config
from sync.upstream.ops import queue_command
from sync.upstream.store import Command, Problem, audit, db, open_db

log = logging.getLogger(__name__)

VERBS = ("commands", "retry", "resolve")
BACK_AFTER_S = 180.0     # no health for this long, then one: the box has come back


class TrackingError(LinetapError, ValueError):
    """No such command or problem, or one that cannot be retried (the message says)."""


# -- schema ----------------------------------------------------------------------------

# -- commands ----------------------------------------------------------------------------

def body_of(cmd: Command) -> dict:
    try:
        return signed_commands.parse(cmd.envelope.encode())[0]
    except LinetapError:
        return {}


def state_of(cmd: Command, now: float | None = None) -> str:
    now = time.time() if now is None else now
    if cmd.status == "applied":
        return "applied"
    if cmd.status == "rejected":
        return "refused"
    if cmd.expires <= now:
        return "expired"
    return "queued" if cmd.sent_time is None else "delivered"


def describe(cmd: Command, now: float | None = None) -> dict:
    b = body_of(cmd)
    args = {k: v for k, v in b.items()
            if k not in ("v", "kind", "device", "nonce", "issued", "expires")}
    return {"nonce": cmd.nonce, "device": cmd.device, "kind": cmd.kind, "args": args,
            "state": state_of(cmd, now), "reason": cmd.result if cmd.status == "rejected"
            else None, "created": iso(cmd.created),
            "sent": iso(cmd.sent_time) if cmd.sent_time else None,
            "resolved": iso(cmd.resolved_time) if cmd.resolved_time else None,
            "retried_as": cmd.retried_as}


def hold_states() -> dict[tuple[str, str], dict]:
    """(device, call) -> the latest hold command's description."""
    out: dict[tuple[str, str], dict] = {}
    for c in Command.select().where(Command.kind == "hold").order_by(Command.created):
        d = describe(c)
        call = d["args"].get("call")
        if call:
            out[(c.device, call)] = d
    return out


def hold_label(legal_hold: bool, d: dict | None) -> str:
    """What ``calls`` prints after a row: the hold as the box has (or has not) applied
    it."""
    if d is None:
        return "  HOLD" if legal_hold else ""
    want = "HOLD" if d["args"].get("on") else "hold release"
    if d["state"] == "applied":
        return "  HOLD" if legal_hold else ""
    if d["state"] == "refused":
        return f"  {want.upper()} REFUSED BY BOX: {d['reason']} (see problems; retry)"
    return f"  {want} (pending: {d['state']})"


def find_command(prefix: str) -> Command:
    if len(prefix) < 6:
        raise TrackingError("give at least 6 characters of the command's nonce")
    rows = list(Command.select().where(Command.nonce.startswith(prefix)))
    if not rows:
        raise TrackingError(f"no command {prefix}...")
    if len(rows) > 1:
        raise TrackingError(f"{prefix}... matches {len(rows)} commands; give more of it")
    return rows[0]


def retry(ucfg, prefix: str) -> str:
    """Sign the same command again (a new nonce, the current key) and queue it; the old
    one is kept, marked ``retried_as``, and resolved when the new one is applied."""
    old = find_command(prefix)
    st = state_of(old)
    if st not in ("refused", "expired"):
        raise TrackingError(f"command {old.nonce[:12]} is {st}: only a refused or expired "
                            "command is retried")
    if old.resolved_time is not None or old.retried_as:
        raise TrackingError(f"command {old.nonce[:12]} was already "
                            + (f"retried as {old.retried_as[:12]}" if old.retried_as
                               else "resolved") + ": retry that one if it failed too")
    args = describe(old)["args"]
    new = queue_command(ucfg, old.device, old.kind, **args)
    Command.update(retried_as=new).where(Command.nonce == old.nonce).execute()
    audit("command_retried", device=old.device, kind=old.kind, nonce=old.nonce,
          new_nonce=new, reason=old.result)
    return new


def on_report(nonce: str, status: str) -> None:
    """The box reported on ``nonce``: an applied retry resolves what it retried."""
    if status != "applied":
        return
    now = time.time()
    for old in Command.select().where(Command.retried_as == nonce):
        Command.update(resolved_time=now).where(Command.nonce == old.nonce).execute()
        audit("problem_resolved", command=old.nonce, device=old.device,
              resolution=f"retried as {nonce[:12]}, applied")
        on_report(old.nonce, "applied")      # a retry of a retry


def box_back(device: str, previous_health: float | None, now: float) -> int:
    """A box that was silent for ``BACK_AFTER_S`` has sent health again: resend its
    pending commands at the next tick rather than up to ``resend_s`` later."""
    if previous_health is not None and now - previous_health < BACK_AFTER_S:
        return 0
    return Command.update(sent_time=None).where(
        (Command.device == device) & (Command.status == "pending")
        & (Command.expires > now) & Command.sent_time.is_null(False)).execute()


# -- problems ---------------------------------------------------------------------------

def problems(include_resolved: bool = False) -> list[dict]:
    """Open problems (all with ``include_resolved``): ``problem`` rows, then refused or
    expired commands, oldest first."""
    now = time.time()
    out = []
    q = Problem.select().order_by(Problem.created, Problem.id)
    if not include_resolved:
        q = q.where(Problem.resolved_time.is_null())
    for p in q:
        out.append({"id": p.id, "kind": p.kind, "device": p.device, "call_id": p.call,
                    "seq": p.seq, "sha256": p.sha256, "key": p.key, "detail": p.detail,
                    "time": iso(p.created), "resolved": iso(p.resolved_time)
                    if p.resolved_time else None, "resolution": p.resolution})
    cq = Command.select().where((Command.status == "rejected")
                                | ((Command.status == "pending") & (Command.expires <= now)))
    if not include_resolved:
        cq = cq.where(Command.resolved_time.is_null())
    for c in cq.order_by(Command.created):
        d = describe(c, now)
        out.append({"id": None, "kind": f"command_{d['state']}", "device": c.device,
                    "call_id": d["args"].get("call"), "seq": None, "sha256": None,
                    "key": None, "nonce": c.nonce,
                    "detail": f"{c.kind} {json.dumps(d['args'], sort_keys=True)}: "
                              f"{d['reason'] or 'no report before it expired'}"
                              f"{'; retried as ' + c.retried_as[:12] if c.retried_as else ''}",
                    "time": iso(c.created), "resolved": d["resolved"],
                    "resolution": None})
    return out


def resolve_problem(problem_id: int, note: str) -> None:
    if not note.strip():
        raise TrackingError("--note: say how it was resolved (it goes in the audit trail)")
    p = Problem.get_or_none(Problem.id == problem_id)
    if p is None:
        raise TrackingError(f"no problem {problem_id}")
    Problem.update(resolved_time=time.time(), resolution=note).where(
        Problem.id == problem_id).execute()
    audit("problem_resolved", problem=problem_id, kind=p.kind, device=p.device,
          call=p.call, resolution=note)


def resolve_command(prefix: str, note: str) -> None:
    if not note.strip():
        raise TrackingError("--note: say how it was resolved (it goes in the audit trail)")
    c = find_command(prefix)
    Command.update(resolved_time=time.time()).where(Command.nonce == c.nonce).execute()
    audit("problem_resolved", command=c.nonce, device=c.device, kind=c.kind,
          resolution=note)


def manifest_accepted(device: str, call: str) -> None:
    """A valid manifest for (device, call) was stored: its earlier rejections are
    resolved (e.g. the identity was re-pinned and the box sent it again)."""
    n = Problem.update(resolved_time=time.time(),
                       resolution="a valid manifest for this call was accepted").where(
        (Problem.device == device) & (Problem.call == call) & (Problem.kind == "rejected")
        & Problem.seq.is_null() & Problem.resolved_time.is_null()).execute()
    if n:
        audit("problem_resolved", device=device, call=call, kind="rejected", count=n,
              resolution="a valid manifest for this call was accepted")


def explain_rejection(problems_: list[str], device: str, site, pinned) -> str:
    """The ingest's reason for refusing a manifest, pointing at the setting to fix when
    the signer is not the pinned identity."""
    text = "; ".join(problems_)
    if any("different device" in p or "signature" in p for p in problems_) and pinned:
        fp = keys.fingerprint(keys.raw_public(pinned))
        text += (f" (upstream.toml pins {device}'s identity {fp} under [sites.{site}] "
                 f"devices; if that is not the box's key, compare `linetap identity` on the "
                 f"box and re-pin it with `linetap upstream pin --device {device} "
                 "--identity-pub ...`)")
    return text


# -- command line -----------------------------------------------------------------------

def handles(argv: list[str]) -> bool:
    return upstream_config.first_verb(argv) in VERBS


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="linetap upstream")
    ap.add_argument("--config", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("commands", help="signed commands and what the box did with them")
    p.add_argument("--all", action="store_true", help="include applied commands")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("retry", help="sign a refused or expired command again")
    p.add_argument("--command", required=True, help="nonce (or its first 6+ characters)")
    p = sub.add_parser("resolve", help="mark a problem resolved, with a note")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--problem", type=int)
    g.add_argument("--command")
    p.add_argument("--note", required=True)
    args = ap.parse_args(argv)
    ucfg = upstream_config.load(args.config)
    open_db(ucfg.db_url, ucfg.audit_key)
    if args.cmd == "commands":
        rows = [describe(c) for c in Command.select().order_by(Command.created)]
        if not args.all:
            rows = [r for r in rows if r["state"] != "applied"]
        if args.json:
            json.dump(rows, sys.stdout, indent=2, sort_keys=True)
            sys.stdout.write("\n")
        else:
            for r in rows:
                print(f"{r['created']}  {r['nonce'][:12]}  {r['device']:<16} {r['kind']:<9} "
                      f"{r['state']:<9} {json.dumps(r['args'], sort_keys=True)}"
                      f"{'  ' + r['reason'] if r['reason'] else ''}")
            print(f"{len(rows)} command(s)")
        return 0
    # SQLite: the write lock from the start (a deferred transaction that reads first
    # fails at once, "database is locked", if a worker writes in between).
    with db.atomic(**({"lock_type": "IMMEDIATE"}
                      if isinstance(db.obj, pw.SqliteDatabase) else {})):
        if args.cmd == "retry":
            new = retry(ucfg, args.command)
            print(f"command {args.command} signed again as {new[:12]} and queued; it is "
                  "delivered when the box is connected (`commands` shows its state)")
        elif args.problem is not None:
            resolve_problem(args.problem, args.note)
            print(f"problem {args.problem} resolved")
        else:
            resolve_command(args.command, args.note)
            print(f"command {args.command} resolved")
    return 0
