"""``linetap-provision``: provision a box from an engineer's laptop over USB serial.

Finds the box by its USB id (the Linux g_serial defaults, 0525:a4a7, unless told
otherwise) or takes ``--port``, then sends one request per step and prints progress.
``apply site.toml`` does a whole installation in one command: everything is staged on
the box and committed as one durable step, so a cable pulled half-way leaves the old
state, complete.

Each invocation works inside a **session** on the box (a lock: a second laptop gets
"busy: session S from ..."). The session id is remembered per port in
``$XDG_STATE_HOME/linetap-provision/`` so the engineer's next command (``line-test``
after ``apply``) resumes it; ``end`` closes it and the provisioning window.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import os
import re
import secrets
import socket
import sys
import time
from pathlib import Path

from provisioning import protocol, sitecheck, sitefile, tlscert
from recorder.errors import ConfigError, LinetapError, ProtocolError
from recorder.fsutil import atomic_write

log = logging.getLogger(__name__)

USB_VID = 0x0525
USB_PID = 0xA4A7
DEFAULT_TIMEOUT_S = 15.0
RETRY_S = 3.0
"""Resend an unanswered request after this many seconds: longer than the agent's 2 s
partial-frame timeout, so a frame lost behind a half-sent one is sent again once the
agent has dropped the fragment."""


class RemoteError(LinetapError, RuntimeError):
    """The box answered with an ERROR frame."""

    def __init__(self, code: str, message: str, problems: list | None = None,
                 extra: dict | None = None):
        self.code = code
        self.message = message
        self.problems = list(problems or [])
        self.extra = dict(extra or {})
        text = f"box refused ({code}): {message}"
        if self.problems:
            text += "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(text)


class BoxNotFound(LinetapError, LookupError):
    """No serial port with the box's USB id, or more than one."""


class Link:
    """Request/response over an open serial stream (pyserial ``Serial`` or alike).

    Every request carries a sequence number; a request not answered within
    ``retry_s`` seconds (or answered by a garbage/CRC error frame) is sent again with the
    same number, and the box answers a repeat from its cache without running it twice.
    ``session``: the box session id, added to every request once known.
    """

    def __init__(self, stream, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retry_s: float = RETRY_S, monotonic=time.monotonic):
        self.stream = stream
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.parser = protocol.FrameParser()
        # A random start: two processes on one port do not send the same (seq, request),
        # which the box would answer from its resend cache.
        self._seq = secrets.randbelow(0xFFFF)
        self._monotonic = monotonic
        self.session: str | None = None
        self.resent = 0

    def _next_seq(self) -> int:
        # seq 0 is what the box uses for errors it cannot tie to a request; skip it.
        self._seq = self._seq % 0xFFFF + 1
        return self._seq

    def _send(self, frame: bytes) -> None:
        self.stream.write(frame)
        self.stream.flush()

    def call(self, cmd: str, timeout_s: float | None = None, **args) -> dict:
        """Send ``cmd`` and return the reply; :class:`RemoteError` on an ERROR frame,
        :class:`ProtocolError` if nothing answers within ``timeout_s`` seconds."""
        seq = self._next_seq()
        if self.session is not None:
            args["session"] = self.session
        frame = protocol.encode_json(protocol.T_REQUEST, seq, {"cmd": cmd, "args": args})
        self._send(frame)
        total = timeout_s or self.timeout_s
        now = self._monotonic()
        deadline, resend_at = now + total, now + self.retry_s
        while (now := self._monotonic()) < deadline:
            if now >= resend_at:
                log.debug("no answer to %s seq %d yet; resending", cmd, seq)
                self.resent += 1
                self._send(frame)
                resend_at = now + self.retry_s
            try:
                data = self.stream.read(max(1, getattr(self.stream, "in_waiting", 0)))
            except OSError as exc:
                # pyserial's "readiness to read but returned no data": another program
                # drained the port first.
                raise ProtocolError(f"the serial port failed while waiting for '{cmd}' "
                                    f"({exc}); is another linetap-provision using the same "
                                    "port? One client at a time") from exc
            if not data:
                continue
            for ev in self.parser.feed(data):
                if isinstance(ev, protocol.BadFrame):
                    continue
                if ev.type == protocol.T_ERROR and ev.seq in (0, seq):
                    obj = _json_or_empty(ev)
                    if obj.get("code") in (protocol.E_BAD_FRAME, protocol.E_BAD_CRC):
                        # Our frame was damaged or glued to a fragment: send it again now.
                        resend_at = now
                        continue
                if ev.seq != seq:
                    log.debug("ignoring reply seq %d (waiting for %d)", ev.seq, seq)
                    continue
                obj = ev.json()
                if ev.type == protocol.T_ERROR:
                    extra = {k: v for k, v in obj.items()
                             if k not in ("ok", "code", "message", "problems")}
                    raise RemoteError(str(obj.get("code")), str(obj.get("message")),
                                      obj.get("problems"), extra)
                return obj
        raise ProtocolError(f"no answer from the box to '{cmd}' within {total:.0f} s "
                            f"(sent {1 + self.resent} time(s); cable? agent running?)")


def _json_or_empty(ev) -> dict:
    try:
        return ev.json()
    except ProtocolError:
        return {}


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


# -- sessions -----------------------------------------------------------------------------

def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "linetap-provision"


def _session_file(port: str) -> Path:
    return _state_dir() / (re.sub(r"[^A-Za-z0-9_.-]", "_", port.strip("/")) + ".json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def client_name() -> str:
    """Who holds a session, as the box shows it to a second client."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def open_session(link: Link, port: str | None, out=None) -> dict:
    """Open (or resume this engineer's) session on the box and remember it for ``port``.

    A remembered session is resumed only if the process that last used it has ended,
    so two processes on one laptop are two clients and the second one gets "busy".
    """
    resume = link.session          # this process already holds one
    path = _session_file(port) if port else None
    if path is not None and resume is None:
        try:
            saved = json.loads(path.read_text())
            if not _pid_alive(int(saved.get("pid", 0))) or saved.get("pid") == os.getpid():
                resume = saved.get("session")
        except (OSError, ValueError, TypeError):
            pass
    link.session = None            # session_open itself carries no session
    r = link.call("session_open", client=client_name(), **({"resume": resume} if resume
                                                           else {}))
    link.session = r["session"]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"session": link.session, "pid": os.getpid()}).encode(),
                     mode=0o600, sync=False)
    return r


def forget_session(port: str | None) -> None:
    if port:
        _session_file(port).unlink(missing_ok=True)


def wait_for_presence(link: Link, out, timeout_s: float = 90.0, poll_s: float = 1.0,
                      sleep=time.sleep, monotonic=time.monotonic) -> dict:
    """``hello`` until the box is in provisioning mode; print what to do meanwhile.

    Raises :class:`RemoteError` as soon as the window is known not to come (no press,
    expired, ended) and :class:`ProtocolError` after ``timeout_s`` seconds.
    """
    deadline = monotonic() + timeout_s
    said = False
    while True:
        hello = link.call("hello")
        mode = hello.get("provisioning_mode") or {}
        st = mode.get("state", "active" if mode.get("active") else "none")
        if st == "active":
            return hello
        if st == "waiting_for_press":
            if not said:
                _say(out, f"      waiting for presence: press and hold the pause button for "
                     f"{mode.get('hold_s', 5):g} s now (the status LED is lit steadily)")
                said = True
            if monotonic() > deadline:
                raise ProtocolError(f"no presence within {timeout_s:.0f} s")
            sleep(poll_s)
            continue
        if st in ("expired", "ended"):
            raise RemoteError(protocol.E_PRESENCE_EXPIRED,
                              f"the provisioning window opened at {mode.get('opened_at')} "
                              f"is closed ({mode.get('reason')}, at {mode.get('closed_at')}): "
                              "re-plug the box and press the pause button again")
        raise RemoteError(protocol.E_PRESENCE, "the box is not in provisioning mode "
                          f"({mode.get('reason', 'not pressed')}): re-plug the box, wait for "
                          f"the status LED to light steadily, then press and hold the pause "
                          f"button for {mode.get('hold_s', 5):g} s")


# -- apply --------------------------------------------------------------------------------

def apply_site(link: Link, site: sitefile.SiteFile, *, ca_cert: Path | None = None,
               ca_key: Path | None = None, set_clock: bool = True, out=None,
               now=None, token: bytes | None = None, port: str | None = None,
               presence_timeout_s: float = 90.0, commit_timeout_s: float = 90.0) -> dict:
    """Provision one box from ``site``; print progress to ``out``; return a summary.

    Order: check the files (:mod:`provisioning.sitecheck`, before anything crosses the
    cable), wait for presence, open the session, present the token (if any), set the
    clock, stage the config, the keys and the certificate on the box, then commit them
    as one durable step; the box then starts the recorder and closes the window.
    Raises on the first failure, with the old state in force. ``presence_timeout_s``:
    how long to wait for the button press; ``commit_timeout_s``: for the commit's answer.
    """
    now = now or (lambda: dt.datetime.now(dt.UTC))
    out = out or sys.stdout
    ca_cert = Path(ca_cert) if ca_cert else site.ca_cert
    ca_key = Path(ca_key) if ca_key else site.ca_key
    sitecheck.check_or_raise(site, ca_cert=ca_cert, ca_key=ca_key)
    steps = 5 + len(site.keys)
    n = 0

    def step(text):
        nonlocal n
        n += 1
        _say(out, f"[{n}/{steps}] {text}")

    step("contacting the box")
    hello = wait_for_presence(link, out, presence_timeout_s)
    ident = hello.get("identity") or {}
    _say(out, f"      device {hello.get('device_id')}  hardware {hello.get('hardware')}  "
         f"software {hello.get('software')}  identity {ident.get('fingerprint', 'not yet')}")
    ses = open_session(link, port, out)
    mode = hello.get("provisioning_mode") or {}
    _say(out, f"      session {ses['session']}; provisioning window opened "
         f"{mode.get('opened_at')}, {mode.get('remaining_s', 0):.0f} s left")
    if token:
        r = link.call("authorise", token=token.decode())
        _say(out, f"      token accepted for {', '.join(r['authorised'])}")
    if set_clock:
        t = now().timestamp()
        link.call("set_clock", epoch_s=t)
        _say(out, f"      clock set to {now().isoformat(timespec='seconds')}")
    step("staging the config on the box")
    link.call("config_stage", text=site.config_text)
    for kind, path in sorted(site.keys.items()):
        step(f"staging {kind.replace('_', ' ')} from {path.name}")
        r = link.call("install_key", kind=kind, pem=path.read_text(encoding="utf-8"))
        _say(out, f"      {r.get('path')}  fingerprint {r.get('fingerprint')}")
    step("getting the box's TLS certificate request")
    csr = link.call("tls_csr", new_key=site.new_key)
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
             "`linetap-provision install-cert CERT`")
    step("committing everything in one step, then starting the recorder")
    # The commit restarts the recorder through systemd, which can take a while.
    r = link.call("config_commit", timeout_s=commit_timeout_s)
    rec = r.get("recorder") or {}
    _say(out, f"      {len(r.get('files') or [])} file(s) in force; config sha256 "
         f"{str(r.get('sha256'))[:16]} (previous kept: {r.get('previous_kept')})")
    if rec.get("managed") is False:
        _say(out, f"      recorder: {rec.get('active')}; the agent manages no recorder unit")
    else:
        _say(out, f"      recorder: {rec.get('active', 'unknown')} (reset-failed "
             f"{'done' if rec.get('reset_failed') else 'failed'}, restart "
             f"{rec.get('restart', rec.get('error', '?'))})")
    _say(out, "      provisioning window closed; live tests (line-test, audio-test) stay "
         "open to this session until `end` or 5 min idle")
    _say(out, "done" if recorder_ok(rec) else
         "done, but the recorder is NOT running: see `linetap-provision doctor`")
    return {"device_id": hello.get("device_id"), "cert_installed": cert_installed,
            "config_sha256": r.get("sha256"), "recorder": rec}


def recorder_ok(rec: dict) -> bool:
    """The recorder runs after apply, or the agent manages none (a bench)."""
    return rec.get("active") == "active" or rec.get("managed") is False


def _print(out, obj, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        return
    for k, v in obj.items():
        if k == "ok":
            continue
        out.write(f"{k}: {json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}\n")


def _common() -> argparse.ArgumentParser:
    """Options every command takes, accepted before or after the command word."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--port", default=argparse.SUPPRESS,
                   help="serial port (default: find the box by USB id)")
    c.add_argument("--vid", type=lambda s: int(s, 16), default=argparse.SUPPRESS,
                   help="USB vendor id in hex (default 0525)")
    c.add_argument("--pid", type=lambda s: int(s, 16), default=argparse.SUPPRESS,
                   help="USB product id in hex (default a4a7)")
    c.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                   help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})")
    c.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print replies as JSON")
    c.add_argument("--token", default=argparse.SUPPRESS,
                   help="provisioning token file (`linetap upstream authorise`), needed to "
                        "change keys, broker or device id, or to reset, a provisioned box")
    return c


DEFAULTS = {"port": None, "vid": USB_VID, "pid": USB_PID, "timeout": DEFAULT_TIMEOUT_S,
            "json": False, "token": None}


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="linetap-provision", parents=[common],
                                description="Provision a Linetap box over USB serial.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def add(name, help_):
        return sub.add_parser(name, help=help_, parents=[common])

    add("hello", "identify the box")
    add("status", "recorder state, disk, config summary, staged leftovers")
    add("doctor", "run `linetap doctor` on the box and print its results")
    s = add("apply", "apply a site.toml in one go")
    s.add_argument("site", help="site file")
    s.add_argument("--ca-cert", help="provisioning CA certificate (signs the box's CSR)")
    s.add_argument("--ca-key", help="provisioning CA private key")
    s.add_argument("--no-set-clock", action="store_true", help="leave the box's clock alone")
    s.add_argument("--check", action="store_true",
                   help="only check the site file and the files it names (no box needed)")
    s.add_argument("--presence-timeout", type=float, default=90.0,
                   help="seconds to wait for the button press (default %(default)s)")
    s = add("set-config", "validate and put a config file in force")
    s.add_argument("file")
    add("get-config", "print the effective config (secrets masked)")
    s = add("install-cert", "install a signed TLS certificate")
    s.add_argument("file")
    s = add("line-test", "live hook, ring and level per line")
    s.add_argument("--watch", action="store_true", help="keep streaming until Ctrl-C")
    s.add_argument("--interval", type=float, default=0.5,
                   help="seconds between readings with --watch (default %(default)s)")
    s.add_argument("--count", type=int, default=0,
                   help="with --watch: stop after this many readings (0 = until Ctrl-C)")
    s = add("audio-test", "play a tone into a line and report the level heard")
    s.add_argument("--line", type=int, default=0)
    s.add_argument("--hz", type=float, default=1000.0)
    s.add_argument("--seconds", type=float, default=1.0)
    s.add_argument("--dbfs", type=float, default=-12.0)
    s = add("set-clock", "set the box's clock (default: this laptop's)")
    s.add_argument("--time", help="ISO 8601 time with zone, e.g. 2026-11-25T09:00:00Z")
    s = add("factory-reset", "erase recordings, keys and config")
    s.add_argument("--yes", action="store_true", help="do not ask to type the code back")
    s.add_argument("--no-reboot", action="store_true")
    s.add_argument("--destroy-unsynced", action="store_true",
                   help="on a box with no command key: erase even calls not yet uploaded "
                        "(a provisioned box needs a token minted with --destroy-unsynced)")
    add("end", "close the session and the provisioning window")
    add("reboot", "reboot the box")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for k, v in DEFAULTS.items():
        if not hasattr(args, k):
            setattr(args, k, v)
    return args


def _line(ln: dict) -> str:
    call = f"  call {ln['call']}" if ln.get("call") else ""
    return (f"line {ln.get('line')}: hook {ln.get('hook')}  ringing {ln.get('ringing')}  "
            f"level {ln.get('level_dbfs')} dBFS  {ln.get('state')}{call}")


def line_test(link: Link, args, out, sleep=time.sleep) -> int:
    """One reading, or with ``--watch`` a reading every ``--interval`` s until Ctrl-C
    (or ``--count`` readings): lines and the alarms raised at that moment."""
    n = 0
    try:
        while True:
            r = link.call("line_test")
            n += 1
            if args.json:
                out.write(json.dumps(r, sort_keys=True) + "\n")
                out.flush()
            else:
                stamp = dt.datetime.now().strftime("%H:%M:%S") if args.watch else ""
                for ln in r.get("lines", []):
                    _say(out, f"{stamp + '  ' if stamp else ''}{_line(ln)}")
                alarms = r.get("alarms") or {}
                names = sorted(alarms) if isinstance(alarms, (dict, list)) else []
                _say(out, f"{stamp + '  ' if stamp else ''}alarms: "
                     f"{', '.join(names) if names else 'none'}")
            if not args.watch or (args.count and n >= args.count):
                return 0
            sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def doctor(link: Link, args, out) -> int:
    r = link.call("doctor", timeout_s=max(link.timeout_s, 60.0))
    if args.json:
        _print(out, r, True)
    else:
        for res in r["results"]:
            _say(out, f"{res['status']:<5} {res['name']:<10} {res['detail']}"
                 + (f"\n      fix: {res['fix']}" if res.get("fix") else ""))
        _say(out, f"{len(r['results'])} checks on the box: {r['fail']} FAIL, {r['warn']} WARN")
    return 1 if r["fail"] else 0


def _token(args) -> bytes | None:
    if not args.token:
        return None
    try:
        return Path(args.token).read_bytes().strip()
    except OSError as exc:
        raise ConfigError([f"--token {args.token}: {exc.strerror or exc}"], "command line") \
            from exc


def _state_session(link: Link, args) -> None:
    """Session (and token) for a state-changing command."""
    open_session(link, args.port)
    tok = _token(args)
    if tok:
        link.call("authorise", token=tok.decode())


def run(args, link: Link, out=None, inp=input) -> int:
    """Run one parsed subcommand over ``link``; returns the exit status."""
    out = out or sys.stdout
    c = args.cmd
    if c in ("line-test", "audio-test", "status", "doctor"):
        try:
            open_session(link, args.port)   # resumes this engineer's session, if any
        except RemoteError as exc:
            if exc.code == protocol.E_BUSY:
                raise
            link.session = None             # no window: read-only view
    if c == "hello":
        _print(out, link.call("hello"), args.json)
    elif c == "status":
        _print(out, link.call("status"), args.json)
    elif c == "doctor":
        return doctor(link, args, out)
    elif c == "apply":
        r = apply_site(link, sitefile.load(args.site), ca_cert=args.ca_cert,
                       ca_key=args.ca_key, set_clock=not args.no_set_clock, out=out,
                       token=_token(args), port=args.port,
                       presence_timeout_s=args.presence_timeout)
        return 0 if recorder_ok(r.get("recorder") or {}) else 1
    elif c == "set-config":
        _state_session(link, args)
        r = link.call("set_config", text=Path(args.file).read_text(encoding="utf-8"))
        _print(out, r, args.json)
    elif c == "get-config":
        out.write(link.call("config_get")["effective"])
    elif c == "install-cert":
        pem = Path(args.file).read_text()
        sitecheck.check_cert_for_device(pem.encode(), link.call("hello")["device_id"])
        _state_session(link, args)
        _print(out, link.call("install_cert", pem=pem), args.json)
    elif c == "line-test":
        return line_test(link, args, out)
    elif c == "audio-test":
        r = link.call("audio_test", timeout_s=args.seconds + link.timeout_s, line=args.line,
                      hz=args.hz, seconds=args.seconds, dbfs=args.dbfs)
        _print(out, r, args.json)
    elif c == "set-clock":
        t = dt.datetime.fromisoformat(args.time) if args.time else dt.datetime.now(dt.UTC)
        if t.tzinfo is None:
            raise ProtocolError("--time needs a zone, e.g. Z or +00:00")
        _state_session(link, args)
        _print(out, link.call("set_clock", epoch_s=t.timestamp()), args.json)
    elif c == "factory-reset":
        _state_session(link, args)
        extra = {"destroy_unsynced": True} if args.destroy_unsynced else {}
        begin = link.call("factory_reset_begin", **extra)
        code = begin["code"]
        _say(out, f"WARNING: {begin.get('warning')}\nconfirmation code: {code}")
        if not args.yes:
            typed = inp("type the code to erase the box: ").strip()
            if typed != code:
                _say(out, "code does not match; nothing erased")
                return 1
        r = link.call("factory_reset", code=code, timeout_s=120.0,
                      reboot=not args.no_reboot, **extra)
        ann = r.get("announced_upstream") or {}
        _say(out, f"erased {r.get('removed')} file(s); {r.get('unsynced_calls_destroyed', 0)} "
             f"un-uploaded call(s) destroyed; upstream told first: "
             f"{'yes' if ann.get('delivered') else 'no (' + str(ann.get('link')) + ')'}")
        forget_session(args.port)
        if r.get("rebooting"):
            _say(out, "rebooting")
    elif c == "end":
        try:
            open_session(link, args.port)
        except RemoteError as exc:
            if exc.code == protocol.E_BUSY:
                raise
            link.session = None
        _print(out, link.call("end"), args.json)
        forget_session(args.port)
    elif c == "reboot":
        _state_session(link, args)
        _print(out, link.call("reboot"), args.json)
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    try:
        if args.cmd == "apply" and args.check:
            site = sitefile.load(args.site)
            notes = sitecheck.check_or_raise(site, ca_cert=args.ca_cert, ca_key=args.ca_key)
            for note in notes:
                print(f"note: {note}")
            print(f"{args.site}: OK ({len(site.keys)} key file(s) checked inside, config "
                  f"{len(site.config_text)} bytes, device {site.config.device.id})")
            return 0
        import serial
        port = args.port or find_port(args.vid, args.pid)
        args.port = port
        with serial.Serial(port, 115200, timeout=0.2) as ser:
            ser.reset_input_buffer()
            return run(args, Link(ser, timeout_s=args.timeout))
    except ConfigError as exc:
        print(f"linetap-provision: {exc}", file=sys.stderr)
        return 2
    except (LinetapError, OSError) as exc:
        print(f"linetap-provision {args.cmd}: {exc}", file=sys.stderr)
        return 2
