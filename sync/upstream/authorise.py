"""``linetap upstream authorise``: mint a provisioning token for one box.

    linetap upstream --config U.toml authorise --device D --op OP [--op OP ...]
                     [--ttl 1h] [--destroy-unsynced] [--out token.json]

The token is signed with the upstream command key (``[commands] key``), the key every
provisioned box already pins as ``sync.command_key``; its format and checks are in
:mod:`sync.authz`. Each token minted is recorded in the upstream audit trail
(device, ops, expiry, nonce, never the signature), so who was allowed to change which
box, and when, can be read back with ``linetap upstream audit``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from recorder.errors import ConfigError
from recorder.fsutil import atomic_write
from sync import authz

_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m`` or ``2h`` -> seconds; ValueError naming the value."""
    m = _TTL.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"--ttl {text!r}: give seconds, or a number with "
                                         "s, m or h (e.g. 15m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def add_parser(sub) -> None:
    p = sub.add_parser("authorise", help="mint a provisioning token for one box")
    p.add_argument("--device", required=True, help="the box's device id")
    p.add_argument("--op", action="append", required=True, choices=sorted(authz.OPS),
                   help="operation to allow (repeatable)")
    p.add_argument("--ttl", type=parse_ttl, default=authz.DEFAULT_TTL_S,
                   help="lifetime: seconds or 15m / 2h (default 1h, at most 24h)")
    p.add_argument("--destroy-unsynced", action="store_true",
                   help="with --op factory_reset: allow erasing recordings not yet uploaded")
    p.add_argument("--out", help="write the token here (default: standard output)")


def run(args, ucfg) -> int:
    """Mint, audit and write the token; exit status 0, or 2 with a message."""
    from sync.upstream.ops import load_command_key
    from sync.upstream.store import audit

    if not ucfg.command_key:
        raise ConfigError(["[commands] key is not set: the token is signed with the "
                           "upstream command key"], "upstream config")
    key = load_command_key(ucfg.command_key)
    token = authz.mint(key, args.device, args.op, ttl_s=args.ttl,
                       destroy_unsynced=args.destroy_unsynced)
    body, _raw, _sig = authz.commands.parse(token)
    audit("provision_authorised", device=args.device, ops=body["ops"],
          destroy_unsynced=body["destroy_unsynced"], expires=body["expires"],
          nonce=body["nonce"])
    if args.out:
        atomic_write(Path(args.out), token + b"\n", mode=0o600)
        print(f"token for {args.device} ({', '.join(body['ops'])}) written to {args.out}; "
              f"valid {args.ttl:.0f} s", file=sys.stderr)
    else:
        sys.stdout.write(token.decode() + "\n")
    return 0
