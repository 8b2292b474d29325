"""``linetap`` command line: one console script, one subcommand per job.

Each subcommand's work lives in the module named for it; this file only parses
arguments and maps :class:`LinetapError` to a clear message and exit status 2.
Subcommands owned by other packages (provisioning, doctor, upstream, ingest) receive
their remaining arguments and parse them themselves.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from recorder import __version__
from recorder.errors import LinetapError
from recorder.logsetup import setup_logging

log = logging.getLogger(__name__)

# verb -> "module:function"; the function takes the remaining argv and returns an exit code.
DELEGATED = {
    "provision-agent": ("provisioning.agent:cli_main",
                        "serve the provisioning protocol on the USB serial gadget"),
    "provision": ("provisioning.client:cli_main",
                  "provision a box over USB serial from an engineer's laptop"),
    "doctor": ("recorder.cli.doctor:cli_main", "check a box end to end and say what to fix"),
    "ingest": ("sync.upstream.ingest:cli_main", "run an upstream ingest worker"),
    "upstream": ("sync.upstream.cli:cli_main",
                 "upstream store: calls, export, delete, hold, expiring, problems, audit"),
    "portal": ("sync.upstream.portal.cli:cli_main", "serve the practice portal; manage its users"),
    "update": ("recorder.cli.update:cli_main",
               "this box's A/B updates: the health gate after an update, the slot state"),
}


def _load(target: str):
    mod, func = target.split(":")
    return getattr(importlib.import_module(mod), func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linetap", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"linetap {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name, help_, **kw):
        return sub.add_parser(name, help=help_, description=help_, **kw)

    def cfg_opt(sp):
        sp.add_argument("--config", help="config file (default /etc/linetap/linetap.toml)")

    sp = add("run", "record on the configured hardware (the systemd service runs this)")
    cfg_opt(sp)
    sp.add_argument("--data-dir", help="override device.data_dir")

    sp = add("simulate", "run the real daemon against the simulated line")
    sp.add_argument("scenario", help="scenario JSON file")
    sp.add_argument("--data-dir", required=True)
    cfg_opt(sp)
    sp.add_argument("--public-key", help="practice public key (overrides the config)")
    sp.add_argument("--announcement", help="announcement WAV (overrides the config)")
    sp.add_argument("--realtime", action="store_true",
                    help="pace the line in real time, its sound card free-running as on "
                    "a Pi: audio the daemon is too late for is lost, counted and alarmed")
    sp.add_argument("--speed", type=float, default=0.0,
                    help="pace at this many times real time (0 = as fast as possible)")
    sp.add_argument("--until-synced", nargs="?", type=float, const=300.0, default=None,
                    metavar="TIMEOUT", help="then wait until the upstream has acked the "
                    "whole backlog (at most TIMEOUT s, default 300); exit 2 if not")

    sp = add("keygen", "create the practice key pair (private key 0600, public half .pub)")
    sp.add_argument("--out", required=True, help="private key path; public key goes to OUT.pub")
    sp.add_argument("--passphrase-file", help="read the passphrase that encrypts the private "
                    "key from this file (first line); default: ask at the terminal")

    sp = add("export", "decrypt, verify and write calls as WAV + JSON")
    sp.add_argument("--data-dir", required=True)
    sp.add_argument("--key", required=True, help="practice private key")
    sp.add_argument("--passphrase-file", help="the practice key's passphrase (first line); "
                    "default: ask at the terminal")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--call", action="append", default=[], help="call id (repeatable)")
    sp.add_argument("--number", help="every call to or from this number (subject access)")
    sp.add_argument("--identity-pub", help="the box's identity public key recorded at "
                    "provisioning (default: the key pinned in the store)")

    sp = add("calls", "list recorded calls (numbers masked)")
    sp.add_argument("--data-dir", required=True)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--number", help="only calls to or from this number (0..., +44 or "
                    "spaced; needs --key: numbers are kept only sealed)")
    sp.add_argument("--key", help="practice private key (to open the sealed numbers for "
                    "--number)")
    sp.add_argument("--passphrase-file", help="the practice key's passphrase (first line); "
                    "default: ask at the terminal")

    sp = add("verify", "verify hashes, chains and signatures (no practice key needed)")
    sp.add_argument("--data-dir", required=True)
    sp.add_argument("--call", action="append", default=[])
    sp.add_argument("--identity-pub", help="the box's identity public key recorded at "
                    "provisioning (default: the key pinned in the store)")

    sp = add("identity", "print the box's identity public key and fingerprint")
    sp.add_argument("--data-dir", help="override device.data_dir")
    cfg_opt(sp)

    sp = add("audit", "show the audit log")
    sp.add_argument("--data-dir", help="override device.data_dir")
    cfg_opt(sp)
    sp.add_argument("--verify", action="store_true", help="check the hash chain and the "
                    "signatures; exit 0 verified, 1 a bad entry (the first is named), "
                    "3 unverifiable or unsigned")
    sp.add_argument("--identity-pub", help="the box's identity public key recorded at "
                    "provisioning (default: the key pinned in the store)")
    sp.add_argument("--json", action="store_true")

    sp = add("status", "show line states, alarms, overruns and sync backlog")
    sp.add_argument("--data-dir", help="override device.data_dir")
    cfg_opt(sp)
    sp.add_argument("--json", action="store_true")

    sp = add("config", "check or show configuration")
    csub = sp.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate a config file and report every problem")
    c.add_argument("file")
    c = csub.add_parser("show", help="show the effective config (secrets masked)")
    c.add_argument("--config")
    c = csub.add_parser("reference", help="print the config reference as Markdown")

    for name, (_target, help_) in DELEGATED.items():
        sp = add(name, help_, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse's REMAINDER refuses a leading option ("doctor --json"), so delegated
    # commands get everything after their name untouched.
    words = [i for i, a in enumerate(argv) if not a.startswith("-")]
    if words and argv[words[0]] in DELEGATED:
        i = words[0]
        head = build_parser().parse_args(argv[:i])
        setup_logging(verbose=head.verbose, quiet=head.quiet)
        try:
            return int(_load(DELEGATED[argv[i]][0])(argv[i + 1:]) or 0)
        except LinetapError as exc:
            print(f"linetap {argv[i]}: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    if not args.cmd:
        parser.print_help()
        return 2
    if args.cmd in ("run", "simulate"):
        from recorder import lean_device_imports
        lean_device_imports()
    try:
        if args.cmd in DELEGATED:
            return int(_load(DELEGATED[args.cmd][0])(args.rest) or 0)
        return int(_load(f"recorder.cli.verbs:cmd_{args.cmd.replace('-', '_')}")(args) or 0)
    except LinetapError as exc:
        print(f"linetap {args.cmd}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130



