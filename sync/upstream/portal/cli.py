"""``linetap portal``: serve the practice portal, and manage its accounts.

    linetap portal --config UPSTREAM.toml [--bind 127.0.0.1:8080]
    linetap portal --config UPSTREAM.toml user add NAME --site SITE --role ROLE
                                                [--password-file F] [--totp]
    linetap portal --config UPSTREAM.toml user list [--json]
    linetap portal --config UPSTREAM.toml user disable NAME [--enable]
    linetap portal --config UPSTREAM.toml user reset NAME [--password-file F]
                                                [--totp | --no-totp]

Serve it behind a TLS reverse proxy (docs/portal.md): its cookies are Secure.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from recorder.errors import ConfigError
from sync.upstream import config as upstream_config
from sync.upstream.portal import accounts
from sync.upstream.store import open_db


def _bind(v: str) -> tuple[str, int]:
    host, _, port = v.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not host or not 0 < p < 65536:
        raise argparse.ArgumentTypeError(f"--bind {v!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="linetap portal", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="upstream TOML (see docs/sync.md)")
    ap.add_argument("--bind", type=_bind, default=("127.0.0.1", 8080),
                    help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    sub = ap.add_subparsers(dest="cmd")
    u = sub.add_parser("user", help="portal accounts").add_subparsers(dest="ucmd",
                                                                      required=True)
    p = u.add_parser("add", help="add a user")
    p.add_argument("name")
    p.add_argument("--site", required=True)
    p.add_argument("--role", required=True, choices=accounts.ROLES)
    p.add_argument("--password-file", help="first line is the password (else prompted)")
    p.add_argument("--totp", action="store_true", help="give the user a TOTP secret")
    p = u.add_parser("list", help="list users")
    p.add_argument("--json", action="store_true")
    p = u.add_parser("disable", help="disable a user (ends their sessions)")
    p.add_argument("name")
    p.add_argument("--enable", action="store_true", help="enable again instead")
    p = u.add_parser("reset", help="new password and/or TOTP secret; clears a lock")
    p.add_argument("name")
    p.add_argument("--password-file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--totp", dest="totp", action="store_true", default=None,
                   help="issue a new TOTP secret")
    g.add_argument("--no-totp", dest="totp", action="store_false",
                   help="remove the user's TOTP secret")
    return ap


def _password(path: str | None, required: bool = True) -> str | None:
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError([f"password file {path}: {exc.strerror}"], "portal") from exc
        if not lines or not lines[0]:
            raise ConfigError([f"password file {path} is empty"], "portal")
        return lines[0]
    if not required:
        return None
    if not sys.stdin.isatty():
        raise ConfigError(["no terminal to ask for a password: give --password-file"],
                          "portal")
    a = getpass.getpass("New password: ")
    if a != getpass.getpass("Again: "):
        raise ConfigError(["the passwords differ"], "portal")
    return a


def _show_totp(u) -> None:
    if u.totp_secret:
        # Shown once, to the person setting the account up, for their authenticator app.
        print(f"TOTP for {u.name}: {accounts.totp_uri(u)}")


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    ucfg = upstream_config.load(args.config)
    if args.cmd is None:
        import uvicorn

        from sync.upstream.portal.app import create_app
        app = create_app(ucfg)
        host, port = args.bind
        print(f"linetap portal on http://{host}:{port}/ (put a TLS proxy in front)",
              flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=True,
                    server_header=False)
        return 0
    open_db(ucfg.db_url, ucfg.audit_key)
    accounts.init_tables()
    if args.ucmd == "add":
        if args.site not in ucfg.sites:
            raise ConfigError([f"site {args.site!r} is not in {args.config} "
                               f"(sites: {', '.join(ucfg.sites) or 'none'})"], "portal")
        u = accounts.add_user(args.name, args.site, args.role,
                              _password(args.password_file), totp=args.totp)
        print(f"user {u.name} added: {u.role} of {u.site}")
        _show_totp(u)
        return 0
    if args.ucmd == "list":
        rows = [{"name": u.name, "site": u.site, "role": u.role, "totp": bool(u.totp_secret),
                 "disabled": u.disabled, "locked": u.locked_until > __import__("time").time()}
                for u in accounts.PUser.select().order_by(accounts.PUser.site,
                                                          accounts.PUser.name)]
        if args.json:
            json.dump(rows, sys.stdout, indent=2)
            print()
        else:
            for r in rows:
                flags = [k for k in ("totp", "disabled", "locked") if r[k]]
                print(f"{r['name']:<24} {r['site']:<16} {r['role']:<9} {' '.join(flags)}")
        return 0
    if args.ucmd == "disable":
        u = accounts.set_disabled(args.name, not args.enable)
        print(f"user {u.name} {'disabled' if u.disabled else 'enabled'}")
        return 0
    if args.ucmd == "reset":
        pw = _password(args.password_file, required=args.totp is None)
        u = accounts.reset(args.name, pw, totp=args.totp)
        print(f"user {u.name} reset; sessions ended")
        if args.totp:
            _show_totp(u)
        return 0
    return 2
