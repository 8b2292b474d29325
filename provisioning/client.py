"""``linetap-provision``: provision a box from an engineer's laptop over USB serial.

Finds the box by its USB id (the Linux g_serial defaults, 0525:a4a7, unless told
otherwise) or takes ``--port``, then sends one request per step and prints progress.
``apply site.toml`` does a whole installation in one command; the config is put in
force last, in one atomic step, so a cable pulled half-way leaves the old config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

from provisioning import protocol, sitefile, tlscert
from recorder.errors import ConfigError, LinetapError, ProtocolError

log = logging.getLogger(__name__)

USB_VID = 0x0525
USB_PID = 0xA4A7
DEFAULT_TIMEOUT_S = 15.0


class RemoteError(LinetapError, RuntimeError):
    """The box answered with an ERROR frame."""

    def __init__(self, code: str, message: str, problems: list | None = None):
        self.code = code
        self.message = message
        self.problems = list(problems or [])
        text = f"box refused ({code}): {message}"
        if self.problems:
            text += "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(text)


class BoxNotFound(LinetapError, LookupError):
    """No serial port with the box's USB id, or more than one."""


class Link:
    """Request/response over an open serial stream (pyserial ``Serial`` or alike)."""

    def __init__(self, stream, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 monotonic=time.monotonic):
        self.stream = stream
        self.timeout_s = timeout_s
        self.parser = protocol.FrameParser()
        self._seq = 0
        self._monotonic = monotonic

    def _next_seq(self) -> int:
        # seq 0 is what the box uses for errors it cannot tie to a request; skip it.
        self._seq = self._seq % 0xFFFF + 1
        return self._seq

    def call(self, cmd: str, timeout_s: float | None = None, **args) -> dict:
        """Send ``cmd`` and return the reply; :class:`RemoteError` on an ERROR frame,
        :class:`ProtocolError` if nothing answers within ``timeout_s`` seconds."""
        seq = self._next_seq()
        self.stream.write(protocol.encode_json(protocol.T_REQUEST, seq,
                                               {"cmd": cmd, "args": args}))
        self.stream.flush()
        deadline = self._monotonic() + (timeout_s or self.timeout_s)
        while self._monotonic() < deadline:
            data = self.stream.read(max(1, getattr(self.stream, "in_waiting", 0)))
            if not data:
                continue
            for ev in self.parser.feed(data):
                if isinstance(ev, protocol.BadFrame) or ev.seq != seq:
                    log.debug("ignoring %s", ev)
                    continue
                obj = ev.json()
                if ev.type == protocol.T_ERROR:
                    raise RemoteError(str(obj.get("code")), str(obj.get("message")),
                                      obj.get("problems"))
                return obj
        raise ProtocolError(f"no answer from the box to '{cmd}' within "
                            f"{timeout_s or self.timeout_s:.0f} s (cable? agent running?)")


def find_port(vid: int = USB_VID, pid: int = USB_PID, comports=None) -> str:
    """The one serial port with USB id ``vid:pid``. ``comports`` is injectable."""
    if comports is None:
        from serial.tools import list_ports
        comports = list_ports.comports
    found = [p.device for p in comports() if p.vid == vid and p.pid == pid]
    if not found:
        raise BoxNotFound(f"no Linetap box found (USB {vid:04x}:{pid:04x}); is the cable in "
                          "the box's USB-C port? Or pass --port")
    if len(found) > 1:
        raise BoxNotFound(f"several boxes found ({', '.join(found)}); pick one with --port")
    return found[0]


def _say(out, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def apply_site(link: Link, site: sitefile.SiteFile, *, ca_cert: Path | None = None,
               ca_key: Path | None = None, set_clock: bool = True, out=None,
               now=None) -> dict:
    """Provision one box from ``site``; print progress to ``out``; return a summary.

    Order: check the box, set its clock, stage (validate) the config on the box,
    install the keys, get a CSR and install the signed certificate, and only then put
    the config in force. Raises on the first failure, with the old config in force.
    """
    now = now or (lambda: dt.datetime.now(dt.UTC))
    out = out or sys.stdout
    steps = 5 + len(site.keys)
    n = 0

    def step(text):
        nonlocal n
        n += 1
        _say(out, f"[{n}/{steps}] {text}")

    step("contacting the box")
    hello = link.call("hello")
    ident = hello.get("identity") or {}
    _say(out, f"      device {hello.get('device_id')}  hardware {hello.get('hardware')}  "
         f"software {hello.get('software')}  identity {ident.get('fingerprint', 'not yet')}")
    if not hello.get("provisioning_mode", {}).get("active"):
        raise RemoteError(protocol.E_PRESENCE, "the box is not in provisioning mode: power it "
                          "off, hold the pause button, power it on and keep holding 5 s")
    if set_clock:
        t = now().timestamp()
        link.call("set_clock", epoch_s=t)
        _say(out, f"      clock set to {now().isoformat(timespec='seconds')}")
    step("checking the config on the box")
    link.call("config_stage", text=site.config_text)
    for kind, path in sorted(site.keys.items()):
        step(f"installing {kind.replace('_', ' ')} from {path.name}")
        r = link.call("install_key", kind=kind, pem=path.read_text(encoding="utf-8"))
        _say(out, f"      {r.get('path')}  fingerprint {r.get('fingerprint')}")
    step("getting the box's TLS certificate request")
    csr = link.call("tls_csr", new_key=site.new_key)
    ca_cert = ca_cert or site.ca_cert
    ca_key = ca_key or site.ca_key
    cert_installed = False
    step("certificate")
    if ca_cert and ca_key:
        cert = tlscert.sign_csr(csr["csr"].encode(), Path(ca_cert).read_bytes(),
                                Path(ca_key).read_bytes(), days=site.days)
        r = link.call("install_cert", pem=cert.decode())
        cert_installed = True
        _say(out, f"      signed by {Path(ca_cert).name}, valid to {r.get('not_after')}")
    else:
        dest = Path(site.csr_out.format(device_id=csr.get("common_name", "box")))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(csr["csr"], encoding="ascii")
        _say(out, f"      no CA given: CSR written to {dest}; have it signed and run "
             "`linetap provision install-cert CERT`")
    step("putting the new config in force")
    r = link.call("config_commit")
    _say(out, f"      {r.get('path')} sha256 {str(r.get('sha256'))[:16]}  "
         f"(previous kept: {r.get('previous_kept')}, recorder restarted: "
         f"{r.get('recorder_restarted')})")
    _say(out, "done")
    return {"device_id": hello.get("device_id"), "cert_installed": cert_installed,
            "config_sha256": r.get("sha256")}


def _print(out, obj, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        return
    for k, v in obj.items():
        if k == "ok":
            continue
        out.write(f"{k}: {json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linetap-provision",
                                description="Provision a Linetap box over USB serial.")
    p.add_argument("--port", help="serial port (default: find the box by USB id)")
    p.add_argument("--vid", type=lambda s: int(s, 16), default=USB_VID,
                   help="USB vendor id in hex (default %(default)04x)")
    p.add_argument("--pid", type=lambda s: int(s, 16), default=USB_PID,
                   help="USB product id in hex (default %(default)04x)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds to wait for each answer (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print replies as JSON")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    sub.add_parser("hello", help="identify the box")
    sub.add_parser("status", help="recorder state, disk, config summary")
    s = sub.add_parser("apply", help="apply a site.toml in one go")
    s.add_argument("site", help="site file")
    s.add_argument("--ca-cert", help="provisioning CA certificate (signs the box's CSR)")
    s.add_argument("--ca-key", help="provisioning CA private key")
    s.add_argument("--no-set-clock", action="store_true", help="leave the box's clock alone")
    s.add_argument("--check", action="store_true", help="only check the site file")
    s = sub.add_parser("set-config", help="validate and put a config file in force")
    s.add_argument("file")
    sub.add_parser("get-config", help="print the effective config (secrets masked)")
    s = sub.add_parser("install-cert", help="install a signed TLS certificate")
    s.add_argument("file")
    sub.add_parser("line-test", help="live hook, ring and level per line")
    s = sub.add_parser("audio-test", help="play a tone into a line and report the level heard")
    s.add_argument("--line", type=int, default=0)
    s.add_argument("--hz", type=float, default=1000.0)
    s.add_argument("--seconds", type=float, default=1.0)
    s.add_argument("--dbfs", type=float, default=-12.0)
    s = sub.add_parser("set-clock", help="set the box's clock (default: this laptop's)")
    s.add_argument("--time", help="ISO 8601 time with zone, e.g. 2026-11-25T09:00:00Z")
    s = sub.add_parser("factory-reset", help="erase recordings, keys and config")
    s.add_argument("--yes", action="store_true", help="do not ask to type the code back")
    s.add_argument("--no-reboot", action="store_true")
    sub.add_parser("reboot", help="reboot the box")
    return p


def run(args, link: Link, out=None, inp=input) -> int:
    """Run one parsed subcommand over ``link``; returns the exit status."""
    out = out or sys.stdout
    c = args.cmd
    if c == "hello":
        _print(out, link.call("hello"), args.json)
    elif c == "status":
        _print(out, link.call("status"), args.json)
    elif c == "apply":
        apply_site(link, sitefile.load(args.site), ca_cert=args.ca_cert, ca_key=args.ca_key,
                   set_clock=not args.no_set_clock, out=out)
    elif c == "set-config":
        r = link.call("set_config", text=Path(args.file).read_text(encoding="utf-8"))
        _print(out, r, args.json)
    elif c == "get-config":
        out.write(link.call("config_get")["effective"])
    elif c == "install-cert":
        _print(out, link.call("install_cert", pem=Path(args.file).read_text()), args.json)
    elif c == "line-test":
        r = link.call("line_test")
        if args.json:
            _print(out, r, True)
        for ln in r.get("lines", []) if not args.json else []:
            _say(out, f"line {ln.get('line')}: hook {ln.get('hook')}  ringing "
                 f"{ln.get('ringing')}  level {ln.get('level_dbfs')} dBFS  {ln.get('state')}")
    elif c == "audio-test":
        r = link.call("audio_test", timeout_s=args.seconds + link.timeout_s, line=args.line,
                      hz=args.hz, seconds=args.seconds, dbfs=args.dbfs)
        _print(out, r, args.json)
    elif c == "set-clock":
        t = dt.datetime.fromisoformat(args.time) if args.time else dt.datetime.now(dt.UTC)
        if t.tzinfo is None:
            raise ProtocolError("--time needs a zone, e.g. Z or +00:00")
        _print(out, link.call("set_clock", epoch_s=t.timestamp()), args.json)
    elif c == "factory-reset":
        begin = link.call("factory_reset_begin")
        code = begin["code"]
        _say(out, f"WARNING: {begin.get('warning')}\nconfirmation code: {code}")
        if not args.yes:
            typed = inp("type the code to erase the box: ").strip()
            if typed != code:
                _say(out, "code does not match; nothing erased")
                return 1
        r = link.call("factory_reset", code=code, timeout_s=120.0)
        _say(out, f"erased {r.get('removed')} file(s)")
        if not args.no_reboot:
            link.call("reboot")
            _say(out, "rebooting")
    elif c == "reboot":
        _print(out, link.call("reboot"), args.json)
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    try:
        if args.cmd == "apply" and args.check:
            site = sitefile.load(args.site)
            print(f"{args.site}: OK ({len(site.keys)} key file(s), config "
                  f"{len(site.config_text)} bytes)")
            return 0
        import serial
        port = args.port or find_port(args.vid, args.pid)
        with serial.Serial(port, 115200, timeout=0.2) as ser:
            ser.reset_input_buffer()
            return run(args, Link(ser, timeout_s=args.timeout))
    except ConfigError as exc:
        print(f"linetap-provision: {exc}", file=sys.stderr)
        return 2
    except (LinetapError, OSError) as exc:
        print(f"linetap-provision {args.cmd}: {exc}", file=sys.stderr)
        return 2
