"""The box's side of provisioning: one request in, one reply frame out.

:class:`Dispatcher` is free of I/O on the serial line: :meth:`Dispatcher.handle_event`
takes a parsed event (a frame or a bad frame) and returns the bytes of exactly one
reply frame, so the fuzz tests can drive it in-process at full speed. Everything with
a side effect outside ``data_dir`` and the config folder (setting the clock, reboot,
stopping the recorder) is an injected callable.

Each command has a class (see :data:`READ`, :data:`LIVE`, :data:`STATE`): read-only
commands work at any time and reveal no call activity; live commands (line test, audio
test, full status) need the provisioning window or the session that was opened in it;
state-changing commands need the window, the session lock, and, on a provisioned box,
a provisioning token for the protected operations (:mod:`sync.authz`). An
``apply`` is staged and committed as one durable step (:mod:`recorder.configtxn`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import shutil
import sqlite3
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

import recorder
from provisioning import evidence, protocol, tlscert
from provisioning.presence import ACTIVE, NONE, WAITING, Presence
from recorder import config as rconfig
from recorder import configtxn as txn
from recorder.errors import ConfigError, KeyFileError, LinetapError, ProtocolError
from recorder.evidence import audit, keys
from recorder.fsutil import atomic_write
from recorder.runtime import control_client
from sync import authz

log = logging.getLogger(__name__)

RESET_CODE_TTL_S = 120.0
SESSION_IDLE_S = 300.0
"""A session with no request for this long (seconds) is dropped, so a laptop that died
mid-apply does not keep the box busy."""
READ, LIVE, STATE = "read", "live", "state"
REPLAY_CACHE = 16
"""Replies kept for resends (requests; a reply is at most a few KiB but a CSR)."""
# kind of key file -> the token operation a different one needs
KEY_OPS = {"practice_public": "practice_key", "command_key": "command_key",
           "broker_ca": "broker"}
KEY_NAMES = {"practice_public": "the practice public key",
             "command_key": "the upstream command key", "broker_ca": "the broker CA"}
MODEL_PATH = Path("/proc/device-tree/model")
KEY_KINDS = {
    # kind -> (config attribute path, file mode)
    "practice_public": (("recording", "public_key"), 0o644),
    "command_key": (("sync", "command_key"), 0o644),
    "broker_ca": (("sync", "ca"), 0o644),
}


class ReplyError(LinetapError, RuntimeError):
    """Raised by a handler to answer with an ERROR frame (``code``, message, extras)."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def _systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], check=True, timeout=60)


def start_recorder_unit(unit: str = "linetap-recorder.service", run=subprocess.run) -> dict:
    """Really start the recorder after a config change, and say what happened.

    A unit that failed repeatedly is rate-limited by systemd (``start-limit-hit``) and
    ``try-restart`` does nothing to a stopped unit, so: ``reset-failed`` first, then
    ``restart``, then ask ``is-active``. Returns ``{"reset_failed", "restart",
    "active"}`` with systemctl's own words; never raises for a unit that will not start.
    """
    def sc(*a):
        r = run(["systemctl", *a, unit], capture_output=True, text=True, timeout=60)
        return r.returncode, (r.stdout or r.stderr or "").strip()[:200]

    rc_reset, _ = sc("reset-failed")
    rc, out = sc("restart")
    _rc, active = sc("is-active")
    return {"reset_failed": rc_reset == 0, "restart": "ok" if rc == 0 else out or f"rc {rc}",
            "active": active or "unknown"}


def _set_clock_real(epoch_s: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, epoch_s)
    _mark_clock_set()


def _mark_clock_set(runtime_dir: str | None = None) -> None:
    """Tell the recorder the clock was set by hand this boot (it then counts as
    synchronised: ``recorder.timebase.USB_CLOCK_SET``). Written to the agent's
    ``RuntimeDirectory`` (RAM, kept after the agent stops), so it never outlives a power
    cut; outside systemd there is no such folder and nothing is written."""
    folder = runtime_dir if runtime_dir is not None else \
        os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not folder:
        return
    try:
        atomic_write(Path(folder) / "clock-set", b"usb\n", mode=0o644, sync=False)
    except OSError as exc:
        log.warning("clock set, but the marker for the recorder was not written: %s", exc)


@dataclass
class AgentEnv:
    """Where the agent reads and writes, and its injectable side effects.

    ``config_path``: the box config (``/etc/linetap/linetap.toml``). ``data_dir``: the
    recorder's data folder. The callables default to the real thing on a Pi.
    """

    config_path: Path
    data_dir: Path
    presence: Presence
    set_clock: Callable[[float], None] = _set_clock_real
    reboot: Callable[[], None] = lambda: _systemctl("reboot")
    restart_recorder: Callable[[], dict] = lambda: start_recorder_unit()
    stop_recorder: Callable[[], None] = lambda: _systemctl("stop", "linetap-recorder.service")
    model_path: Path = MODEL_PATH
    control_timeout_s: float = 5.0
    monotonic: Callable[[], float] = time.monotonic
    extra_write_roots: list[Path] = field(default_factory=list)
    fault: Callable[[str], None] | None = None   # tests: simulate a cut inside commit
    now: Callable[[], float] = time.time         # wall clock for token expiry


def _str_arg(args: dict, name: str, *, required=True, max_len=protocol.MAX_PAYLOAD) -> str:
    v = args.get(name)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise ReplyError(protocol.E_BAD_ARGS, f"'{name}' must be a string")
    if len(v) > max_len:
        raise ReplyError(protocol.E_BAD_ARGS, f"'{name}' is longer than {max_len}")
    return v


def _num_arg(args: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = args.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ReplyError(protocol.E_BAD_ARGS, f"'{name}' must be a number")
    if not lo <= v <= hi:
        raise ReplyError(protocol.E_BAD_ARGS, f"'{name}' = {v} is outside {lo}..{hi}")
    return float(v)


def _int_arg(args: dict, name: str, default: int, lo: int, hi: int) -> int:
    v = args.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ReplyError(protocol.E_BAD_ARGS, f"'{name}' must be an integer")
    if not lo <= v <= hi:
        raise ReplyError(protocol.E_BAD_ARGS, f"'{name}' = {v} is outside {lo}..{hi}")
    return v


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _iso_now(epoch_s: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


def tone_limit_hz(rate: int) -> float:
    """Highest test-tone frequency at ``rate`` Hz sampling: Nyquist minus a 100 Hz guard
    (the recorder's own check), e.g. 3900 Hz at 8000 Hz and 7900 Hz at 16000 Hz."""
    return rate / 2 - 100.0


class Dispatcher:
    """Answers provisioning requests. Thread-safe: one request at a time."""

    def __init__(self, env: AgentEnv):
        self.env = env
        self._lock = threading.Lock()
        self._staged: tuple[str, rconfig.Config] | None = None
        self._txn: txn.Transaction | None = None
        self._reset_code: tuple[str, float] | None = None
        self._after_reply: Callable[[], None] | None = None
        # (seq, request sha256) -> reply, for the last REPLAY_CACHE requests: a resend
        # is answered from here, even when another client's request came in between.
        self._replies: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self.session: dict | None = None
        self.grant: dict | None = None                      # a verified token's body
        self._sid = None                                    # session id of this request
        self.commands: dict[str, tuple[Callable[[dict], dict], str]] = {
            "hello": (self.cmd_hello, READ),
            "status": (self.cmd_status, READ),
            "config_get": (self.cmd_config_get, READ),
            "config_check": (self.cmd_config_check, READ),
            "doctor": (self.cmd_doctor, READ),
            "end": (self.cmd_end, READ),
            "line_test": (self.cmd_line_test, LIVE),
            "audio_test": (self.cmd_audio_test, LIVE),
            "session_open": (self.cmd_session_open, READ),
            "authorise": (self.cmd_authorise, STATE),
            "config_stage": (self.cmd_config_stage, STATE),
            "config_commit": (self.cmd_config_commit, STATE),
            "set_config": (self.cmd_set_config, STATE),
            "install_key": (self.cmd_install_key, STATE),
            "tls_csr": (self.cmd_tls_csr, STATE),
            "install_cert": (self.cmd_install_cert, STATE),
            "set_clock": (self.cmd_set_clock, STATE),
            "factory_reset_begin": (self.cmd_factory_reset_begin, STATE),
            "factory_reset": (self.cmd_factory_reset, STATE),
            "reboot": (self.cmd_reboot, STATE),
        }

    def recover(self) -> dict:
        """Complete an apply whose commit was cut short; run once at agent start, before
        serving. Returns ``{"rolled_forward": n}`` (0 when there was nothing to do)."""
        config_dir = self.env.config_path.parent
        n = txn.roll_forward(config_dir) if (config_dir / txn.JOURNAL).exists() else 0
        if n:
            self._audit("config_change", source="provisioning", recovered=True, files=n)
        return {"rolled_forward": n}

    # -- framing ---------------------------------------------------------------------

    def handle_event(self, event: protocol.Frame | protocol.BadFrame) -> bytes:
        """The reply frame for one parser event. Never raises.

        A request repeated with the same seq and payload (the client resends when an
        answer is late, e.g. when its frame was lost behind a half-sent one) gets the
        same reply again without running twice.
        """
        if isinstance(event, protocol.BadFrame):
            return protocol.error_frame(event.seq or 0, event.code, event.message)
        if event.type != protocol.T_REQUEST:
            return protocol.error_frame(event.seq, protocol.E_BAD_TYPE,
                                        f"frame type {event.type} is not a request")
        key = (event.seq, _sha256(event.payload))
        if event.seq and key in self._replies:
            return self._replies[key]
        try:
            obj = event.json()
        except ProtocolError as exc:
            return protocol.error_frame(event.seq, protocol.E_BAD_JSON, str(exc))
        reply = self.handle_request(event.seq, obj)
        self._replies[key] = reply
        while len(self._replies) > REPLAY_CACHE:
            self._replies.popitem(last=False)
        return reply

    def handle_request(self, seq: int, obj: dict) -> bytes:
        """The reply frame for one decoded request ``{"cmd": ..., "args": {...}}``."""
        try:
            reply = self._dispatch(obj)
            reply.setdefault("ok", True)
            try:
                return protocol.encode_json(protocol.T_RESPONSE, seq, reply)
            except ProtocolError as exc:
                return protocol.error_frame(seq, protocol.E_INTERNAL, str(exc))
        except ReplyError as exc:
            return protocol.error_frame(seq, exc.code, exc.message, **exc.extra)
        except ConfigError as exc:
            return protocol.error_frame(seq, protocol.E_CONFIG, "config is invalid",
                                        problems=exc.problems)
        except KeyFileError as exc:
            return protocol.error_frame(seq, protocol.E_KEY, str(exc))
        except OSError as exc:
            log.exception("provisioning request failed with an I/O error")
            return protocol.error_frame(seq, protocol.E_IO, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the event boundary: answer, never die
            log.exception("provisioning request failed")
            return protocol.error_frame(seq, protocol.E_INTERNAL,
                                        f"internal error ({type(exc).__name__})")

    def _dispatch(self, obj: dict) -> dict:
        cmd = obj.get("cmd")
        args = obj.get("args", {})
        if not isinstance(cmd, str):
            raise ReplyError(protocol.E_BAD_ARGS, "request has no 'cmd' string")
        if not isinstance(args, dict):
            raise ReplyError(protocol.E_BAD_ARGS, "'args' must be an object")
        entry = self.commands.get(cmd)
        if entry is None:
            raise ReplyError(protocol.E_UNKNOWN_COMMAND, f"unknown command {cmd[:40]!r}",
                             commands=sorted(self.commands))
        handler, klass = entry
        args = dict(args)
        sid = args.pop("session", None)
        with self._lock:
            self._expire_session()
            if klass == LIVE and not (self.env.presence.active() or self._own(sid)):
                self._refuse_presence(cmd)
            if klass == STATE:
                if not self.env.presence.active():
                    self._refuse_presence(cmd)
                if cmd != "session_open":
                    self._check_session(sid)
            if self.session is not None and sid == self.session["id"]:
                self.session["last"] = self.env.monotonic()
            self._sid = sid
            return handler(args)

    def _refuse_presence(self, cmd: str) -> None:
        st = self.env.presence.state()
        code = protocol.E_PRESENCE if st in (NONE, WAITING, ACTIVE) \
            else protocol.E_PRESENCE_EXPIRED
        raise ReplyError(code, self.env.presence.refusal(cmd), presence=st)

    # -- sessions ----------------------------------------------------------------------

    def _expire_session(self) -> None:
        s = self.session
        if s is not None and self.env.monotonic() - s["last"] > SESSION_IDLE_S:
            log.info("provisioning session %s idle for %.0f s; dropped", s["id"],
                     SESSION_IDLE_S)
            self._close_session("idle timeout")

    def _own(self, sid) -> bool:
        return self.session is not None and sid == self.session["id"]

    def _busy(self) -> ReplyError:
        s = self.session
        idle = self.env.monotonic() - s["last"]
        return ReplyError(protocol.E_BUSY, f"busy: session {s['id']} from {s['client']} "
                          f"(opened {s['opened_at']}, idle {idle:.0f} s); it ends with "
                          f"`end`, or after {SESSION_IDLE_S:.0f} s idle",
                          session=s["id"], client=s["client"])

    def _check_session(self, sid) -> None:
        """A state command must carry the open session's id; with no session open, a
        sessionless command is one step on its own (old clients, one-shot commands)."""
        if self.session is None:
            if sid is not None:
                raise ReplyError(protocol.E_BUSY, f"session {str(sid)[:16]} is not open "
                                 "(ended, idle timeout or agent restart): start again")
            return
        if sid != self.session["id"]:
            raise self._busy()

    def _close_session(self, why: str) -> None:
        if self._txn is not None:
            n = self._txn.discard()
            self._audit("provision", op="apply_discarded", reason=why, staged_files=n)
        self._txn, self._staged, self.grant, self.session = None, None, None, None

    def cmd_session_open(self, args: dict) -> dict:
        client = _str_arg(args, "client", required=False, max_len=120) or "unnamed client"
        resume = args.get("resume")
        if self.session is not None and resume == self.session["id"]:
            # The same engineer's next command (a new client process): keep the session,
            # even after the window closed, for live tests and `end`.
            self.session["client"], self.session["last"] = client, self.env.monotonic()
            return {"session": resume, "resumed": True, "idle_timeout_s": SESSION_IDLE_S}
        if self.session is not None:
            raise self._busy()
        if not self.env.presence.active():
            self._refuse_presence("session_open")
        sid = secrets.token_hex(4)
        self.session = {"id": sid, "client": client, "last": self.env.monotonic(),
                        "opened_at": _iso_now(self.env.now())}
        self._audit("provision", op="session_open", session=sid, client=client)
        return {"session": sid, "idle_timeout_s": SESSION_IDLE_S}

    def cmd_end(self, args: dict) -> dict:
        """Close the session (discarding anything staged) and the provisioning window."""
        if self.session is not None and not self._own(self._sid):
            raise self._busy()
        had = self.session is not None
        if had:
            self._audit("provision", op="session_end", session=self.session["id"])
            self._close_session("end")
        self.env.presence.end("ended by the engineer (end)")
        return {"ended": True, "session_closed": had,
                "provisioning_mode": self.env.presence.describe()}

    # -- authorisation -----------------------------------------------------------------

    def _pinned_key(self):
        cfg = self._config_in_force() or rconfig.Config()
        try:
            return authz.pinned_command_key(cfg.sync.command_key)
        except authz.AuthorisationError as exc:
            raise ReplyError(protocol.E_UNAUTHORISED, str(exc)) from exc

    def provisioned(self) -> bool:
        """True once the box pins an upstream command key (see :mod:`sync.authz`)."""
        return self._pinned_key() is not None

    def _require(self, op: str, cmd: str, what: str) -> None:
        """Refuse (and audit) ``cmd`` unless the box is fresh or the session's token
        allows ``op``."""
        if not self.provisioned():
            return
        if self.grant is not None and op in self.grant["ops"] \
                and float(self.grant["expires"]) > self.env.now():
            return
        reason = "no token" if self.grant is None else \
            f"token allows {', '.join(self.grant['ops'])}" \
            if float(self.grant["expires"]) > self.env.now() else "token expired"
        self._audit("provision_refused", cmd=cmd, op=op, reason=reason,
                    session=(self.session or {}).get("id"))
        dev = self._device_id()
        raise ReplyError(protocol.E_UNAUTHORISED,
                         f"'{cmd}' would change {what} on a provisioned box: it needs "
                         f"presence and a provisioning token for '{op}' ({reason}); fetch "
                         f"one with `linetap upstream authorise --device {dev} --op {op}` "
                         "and pass it with --token", op=op)

    def cmd_authorise(self, args: dict) -> dict:
        raw = _str_arg(args, "token", max_len=8192).encode()
        key = self._pinned_key()
        if key is None:
            raise ReplyError(protocol.E_BAD_ARGS, "this box pins no command key yet (factory "
                             "fresh): presence alone is enough, no token is needed")
        try:
            body = authz.verify(raw, key, self._device_id(), now=self.env.now())
            authz.NonceBook(self.env.data_dir / authz.NONCE_FILE).use(body, self.env.now())
        except authz.AuthorisationError as exc:
            self._audit("provision_refused", cmd="authorise", reason=str(exc),
                        session=(self.session or {}).get("id"))
            raise ReplyError(protocol.E_UNAUTHORISED, str(exc)) from exc
        self.grant = body
        self._audit("provision", op="authorised", ops=body["ops"], nonce=body["nonce"],
                    destroy_unsynced=body.get("destroy_unsynced", False),
                    expires=body["expires"], session=(self.session or {}).get("id"))
        return {"authorised": body["ops"], "expires": body["expires"],
                "destroy_unsynced": body.get("destroy_unsynced", False)}

    def _check_config_change(self, new: rconfig.Config, cmd: str) -> None:
        """Refuse a config whose protected fields differ from the config in force."""
        old = self._config_in_force()
        if old is None:
            return
        if rconfig.device_id(new) != rconfig.device_id(old):
            self._require("device_id", cmd, "device.id")
        o, n = old.sync, new.sync
        if (o.enabled, o.host, o.port, o.ca, o.cert, o.key) != \
                (n.enabled, n.host, n.port, n.ca, n.cert, n.key):
            self._require("broker", cmd, "the broker settings (sync.enabled/host/port/ca/"
                          "cert/key)")
        if o.command_key != n.command_key:
            self._require("command_key", cmd, "sync.command_key")
        if old.recording.public_key != new.recording.public_key:
            self._require("practice_key", cmd, "recording.public_key")

    # -- helpers ---------------------------------------------------------------------

    def _config_in_force(self) -> rconfig.Config | None:
        try:
            return rconfig.load(self.env.config_path, missing_ok=True)
        except ConfigError:
            return None

    def _effective(self) -> rconfig.Config:
        """The staged config if one is pending, else the one in force (or defaults)."""
        if self._staged is not None:
            return self._staged[1]
        return self._config_in_force() or rconfig.Config()

    def _write_roots(self) -> list[Path]:
        roots = [self.env.config_path.parent, keys.keys_dir(self.env.data_dir)]
        return [Path(os.path.realpath(r)) for r in roots + self.env.extra_write_roots]

    def _checked_path(self, raw: str, what: str) -> Path:
        """A path from the config that the agent may write: inside the config folder or
        the keys folder, so a crafted config cannot aim a write anywhere else."""
        p = Path(os.path.realpath(raw))
        if not raw or not any(p.is_relative_to(r) for r in self._write_roots()):
            raise ReplyError(protocol.E_BAD_ARGS,
                             f"{what} path {raw!r} is outside "
                             f"{', '.join(map(str, self._write_roots()))}")
        return p

    def _audit(self, action: str, **detail) -> None:
        audit.record(self.env.data_dir, action, **detail)

    def _device_id(self, cfg: rconfig.Config | None = None) -> str:
        return rconfig.device_id(cfg or self._config_in_force() or rconfig.Config())

    def _control(self, obj: dict, timeout_s: float | None = None) -> dict:
        try:
            reply = control_client.request(control_client.socket_path(self.env.data_dir), obj,
                                           timeout_s=timeout_s or self.env.control_timeout_s)
        except control_client.RecorderNotRunning as exc:
            raise ReplyError(protocol.E_NOT_RUNNING, "recorder not running: start "
                             "linetap-recorder.service for live tests") from exc
        except (ProtocolError, OSError) as exc:
            raise ReplyError(protocol.E_RECORDER, f"recorder control socket: {exc}") from exc
        if not reply.get("ok"):
            raise ReplyError(protocol.E_RECORDER,
                             f"recorder refused: {str(reply.get('error', 'no reason'))[:500]}")
        return reply

    # -- read-only commands ------------------------------------------------------------

    def cmd_hello(self, args: dict) -> dict:
        try:
            model = self.env.model_path.read_bytes().rstrip(b"\0").decode("utf-8", "replace")
        except OSError:
            model = "unknown"
        try:
            raw, fp = keys.identity_public(self.env.data_dir)
            identity = {"public_key": raw.hex(), "fingerprint": fp}
        except KeyFileError:
            identity = None
        try:
            provisioned = self.provisioned()
        except ReplyError:
            provisioned = True
        return {"device_id": self._device_id(), "hardware": model or "unknown",
                "software": recorder.__version__, "protocol": protocol.VERSION,
                "max_payload": protocol.MAX_PAYLOAD, "identity": identity,
                "provisioned": provisioned, "provisioning_mode": self._mode(),
                "session": self._session_info()}

    def _session_info(self) -> dict | None:
        s = self.session
        if s is None:
            return None
        return {"id": s["id"], "client": s["client"], "opened_at": s["opened_at"],
                "idle_s": round(self.env.monotonic() - s["last"], 1)}

    def _mode(self) -> dict:
        return self.env.presence.describe()

    def cmd_status(self, args: dict) -> dict:
        cfg_problems = None
        try:
            cfg = rconfig.load(self.env.config_path, missing_ok=True)
        except ConfigError as exc:
            cfg, cfg_problems = rconfig.Config(), exc.problems
        try:
            du = shutil.disk_usage(self.env.data_dir)
            disk = {"path": str(self.env.data_dir), "free_mb": round(du.free / 1e6, 1),
                    "total_mb": round(du.total / 1e6, 1),
                    "min_free_mb": cfg.retention.min_free_mb}
        except OSError as exc:
            disk = {"path": str(self.env.data_dir), "error": exc.strerror or str(exc)}
        try:
            rec = self._control({"cmd": "status"})
            rec["running"] = True
        except ReplyError as exc:
            rec = {"running": False, "error": exc.message}
        if not (self.env.presence.active() or self._own(self._sid)):
            # Without presence: whether it records and its alarms, never call activity
            # (hook, level, ringing, call ids, counters that move with calls).
            rec = {"running": rec.get("running", False), "error": rec.get("error"),
                   "alarms": sorted(rec.get("alarms") or {}), "version": rec.get("version"),
                   "detail": "live line state needs provisioning mode"}
        files = {
            "practice_public": cfg.recording.public_key, "command_key": cfg.sync.command_key,
            "broker_ca": cfg.sync.ca, "tls_key": cfg.sync.key, "tls_cert": cfg.sync.cert,
            "identity": str(keys.identity_path(self.env.data_dir)),
        }
        return {
            "device_id": rconfig.device_id(cfg),
            "provisioning_mode": self._mode(),
            "session": self._session_info(),
            "config": {"path": str(self.env.config_path),
                       "present": self.env.config_path.exists(),
                       "problems": cfg_problems, "site": cfg.device.site,
                       "lines": cfg.audio.lines, "rate": cfg.audio.rate,
                       "sync": {"enabled": cfg.sync.enabled, "host": cfg.sync.host,
                                "port": cfg.sync.port},
                       "retention_days": cfg.retention.days,
                       "staged": self._txn is not None},
            "staged_leftovers": None if self._txn is not None else
            txn.leftovers(self.env.config_path.parent),
            "files": {k: Path(v).exists() for k, v in files.items()},
            "disk": disk,
            "recorder": rec,
        }

    def cmd_config_get(self, args: dict) -> dict:
        try:
            text = self.env.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        cfg = rconfig.loads(text, str(self.env.config_path))
        return {"path": str(self.env.config_path), "effective": rconfig.dumps(cfg)}

    def cmd_config_check(self, args: dict) -> dict:
        text = _str_arg(args, "text")
        rconfig.loads(text, "config")
        return {"problems": []}

    def cmd_doctor(self, args: dict) -> dict:
        """``linetap doctor`` run on the box, for a box with no screen and no SSH."""
        from dataclasses import asdict

        from recorder.cli import doctor
        results = doctor.run_checks(str(self.env.config_path), str(self.env.data_dir),
                                    probes={"connect": self._broker_probe,
                                            "model_path": self.env.model_path})
        return {"results": [asdict(r) for r in results],
                "fail": sum(r.status == doctor.FAIL for r in results),
                "warn": sum(r.status == doctor.WARN for r in results)}

    def _broker_probe(self, host, port, ca, cert, key, timeout_s) -> str:
        # The agent runs without a network (PrivateNetwork=yes): the recorder's own
        # MQTT link is the honest answer to "does the box reach its broker".
        try:
            st = self._control({"cmd": "status"})
        except ReplyError as exc:
            raise OSError(f"not tried: {exc.message}; the provisioning agent has no network "
                          "of its own") from exc
        sync = st.get("sync") or {}
        if sync.get("link") != "online":
            raise OSError(f"the recorder's link is {sync.get('link')!r} "
                          f"({sync.get('detail') or 'no detail'})")
        return "link online (as the recorder reports it)"

    def cmd_line_test(self, args: dict) -> dict:
        rec = self._control({"cmd": "status"})
        return {"lines": rec.get("lines", []), "alarms": rec.get("alarms", [])}

    # -- state-changing commands -------------------------------------------------------

    def _begin(self) -> txn.Transaction:
        """The open apply transaction, starting one (and clearing any leftovers of an
        interrupted one) if needed."""
        if self._txn is None:
            config_dir = self.env.config_path.parent
            left = txn.leftovers(config_dir)
            if left and left["journal"]:
                self.recover()
            elif left:
                n = txn.discard_leftovers(config_dir)
                self._audit("provision", op="leftovers_discarded", staged_files=n,
                            session=left.get("session"))
            self._txn = txn.Transaction(config_dir, (self.session or {}).get("id") or "-",
                                        fault=self.env.fault)
        return self._txn

    def _put(self, path: Path, data: bytes, mode: int) -> None:
        """Stage ``data`` for ``path`` inside an apply, else write it in force at once."""
        if self._txn is not None:
            self._txn.stage(path, data, mode)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, mode=mode)

    def _current(self, path: Path) -> bytes | None:
        """The bytes ``path`` will have: staged in this apply, else on disk, else None."""
        if self._txn is not None:
            data = self._txn.staged_data(path)
            if data is not None:
                return data
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def cmd_config_stage(self, args: dict, cmd: str = "config_stage") -> dict:
        text = _str_arg(args, "text")
        cfg = rconfig.loads(text, "config")
        self._check_config_change(cfg, cmd)
        self._checked_path(str(self.env.config_path), "config")
        if self._txn is not None:
            # A config_stage starts an apply: nothing staged by an earlier, failed
            # attempt in this session may ride along into this one's commit.
            n = self._txn.discard()
            self._audit("provision", op="apply_discarded", reason="new apply",
                        staged_files=n)
            self._txn = None
        t = self._begin()
        t.stage(self.env.config_path, text.encode("utf-8"), 0o640)
        self._staged = (text, cfg)
        return {"staged": True, "sha256": _sha256(text.encode())}

    def cmd_config_commit(self, args: dict) -> dict:
        if "text" in args:
            self.cmd_config_stage(args)
        if self._staged is None or self._txn is None:
            raise ReplyError(protocol.E_BAD_ARGS, "no config staged: send config_stage first")
        text, _cfg = self._staged
        path = self.env.config_path
        try:
            old = path.read_bytes()
        except FileNotFoundError:
            old = None
        new = text.encode("utf-8")
        if old is not None:
            # Written before the journal: the old state stays whole whatever happens.
            atomic_write(path.with_name(path.name + ".prev"), old, mode=0o640)
        staged = dict(self._txn.files)
        try:
            dests = self._txn.commit()   # the one durable step (see recorder.configtxn)
        except txn.TransactionError as exc:
            raise ReplyError(protocol.E_TRANSACTION, str(exc)) from exc
        self._txn, self._staged = None, None
        self._audit("config_change", source="provisioning",
                    old_sha256=_sha256(old) if old is not None else None,
                    new_sha256=_sha256(new), files=len(dests),
                    file_sha256={d: e["sha256"][:16] for d, e in sorted(staged.items())})
        recorder_state = self._start_recorder()
        reply = {"applied": True, "path": str(path), "sha256": _sha256(new),
                 "previous_kept": old is not None, "files": dests,
                 "recorder": recorder_state,
                 "recorder_restarted": recorder_state.get("active") == "active"}
        if args.get("close_window", True):
            self.env.presence.end("apply completed")
            reply["provisioning_mode"] = self.env.presence.describe()
        return reply

    def _start_recorder(self) -> dict:
        try:
            r = self.env.restart_recorder()
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not start the recorder after a config change: %s", exc)
            return {"active": "unknown", "error": str(exc)}
        return r if isinstance(r, dict) else {"active": "unknown"}

    def cmd_set_config(self, args: dict) -> dict:
        self.cmd_config_stage(args, "set_config")
        return self.cmd_config_commit({"close_window": False})

    def cmd_install_key(self, args: dict) -> dict:
        kind = _str_arg(args, "kind", max_len=40)
        pem = _str_arg(args, "pem").encode("utf-8")
        if kind not in KEY_KINDS:
            raise ReplyError(protocol.E_BAD_ARGS, f"unknown key kind {kind!r}; one of "
                             f"{', '.join(KEY_KINDS)}")
        if b"PRIVATE KEY" in pem:
            raise ReplyError(protocol.E_KEY, f"{kind}: this is a PRIVATE key; only the public "
                             "half belongs on the box")
        (section, attr), mode = KEY_KINDS[kind]
        raw_path = getattr(getattr(self._effective(), section), attr)
        if kind == "practice_public":
            _check_x25519_public(pem)
            fp = keys.fingerprint(keys.raw_public(
                serialization.load_pem_public_key(pem)))
        elif kind == "command_key":
            fp = keys.fingerprint(keys.raw_public(keys.load_ed25519_public(pem)))
        else:
            certs = tlscert.check_ca_bundle(pem)
            fp = _sha256(certs[0].public_bytes(serialization.Encoding.DER))[:16]
        path = self._checked_path(raw_path, kind)
        in_force = self._in_force_key(kind)
        if in_force is not None and in_force != pem:
            self._require(KEY_OPS[kind], "install_key", KEY_NAMES[kind])
        self._put(path, pem, mode)
        self._audit("key_change", kind=kind, path=str(path), fingerprint=fp,
                    source="provisioning", staged=self._txn is not None)
        return {"installed": kind, "path": str(path), "fingerprint": fp,
                "staged": self._txn is not None}

    def _in_force_key(self, kind: str) -> bytes | None:
        """The key file of ``kind`` that the config in force names, or None."""
        cfg = self._config_in_force()
        if cfg is None:
            return None
        (section, attr), _mode = KEY_KINDS[kind]
        try:
            return Path(getattr(getattr(cfg, section), attr)).read_bytes()
        except OSError:
            return None

    def cmd_tls_csr(self, args: dict) -> dict:
        new_key = args.get("new_key", False)
        if not isinstance(new_key, bool):
            raise ReplyError(protocol.E_BAD_ARGS, "'new_key' must be true or false")
        cfg = self._effective()
        path = self._checked_path(cfg.sync.key, "TLS key")
        current = self._current(path)
        if new_key and current is not None:
            self._require("broker", "tls_csr", "the box's TLS key (new_key)")
        created = new_key or current is None
        if created:
            kd = keys.keys_dir(self.env.data_dir)
            kd.mkdir(parents=True, exist_ok=True)
            os.chmod(kd, 0o700)
            key = ec.generate_private_key(ec.SECP256R1())
            self._put(path, tlscert._pem_private(key), 0o600)
        else:
            try:
                key = serialization.load_pem_private_key(current, password=None)
            except (ValueError, TypeError) as exc:
                raise KeyFileError(f"TLS key {path} is not an unencrypted PEM private "
                                   "key") from exc
        csr = tlscert.make_csr(key, rconfig.device_id(cfg), cfg.device.site)
        self._audit("provision", op="tls_csr", key_created=created, path=str(path))
        return {"csr": csr.decode("ascii"), "key_created": created,
                "common_name": rconfig.device_id(cfg)}

    def cmd_install_cert(self, args: dict) -> dict:
        pem = _str_arg(args, "pem").encode("utf-8")
        cfg = self._effective()
        certs = tlscert.load_certs(pem, "device certificate")
        key_path = self._checked_path(cfg.sync.key, "TLS key")
        key_pem = self._current(key_path)
        if key_pem is None:
            raise ReplyError(protocol.E_KEY, "the box has no TLS key yet: send tls_csr first")
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not tlscert.cert_matches_key(certs[0], key):
            raise ReplyError(protocol.E_KEY, "certificate does not match the box's TLS key "
                             "(was it signed from this box's latest CSR?)")
        cn = tlscert.common_name(certs[0])
        if cn != rconfig.device_id(cfg):
            raise ReplyError(protocol.E_KEY, f"certificate CN {cn!r} is not this box's device "
                             f"id {rconfig.device_id(cfg)!r}")
        path = self._checked_path(cfg.sync.cert, "TLS certificate")
        self._put(path, pem, 0o644)
        fp = _sha256(certs[0].public_bytes(serialization.Encoding.DER))[:16]
        self._audit("key_change", kind="tls_cert", path=str(path), fingerprint=fp,
                    not_after=certs[0].not_valid_after_utc.isoformat(), source="provisioning",
                    staged=self._txn is not None)
        return {"installed": "tls_cert", "path": str(path), "fingerprint": fp,
                "not_after": certs[0].not_valid_after_utc.isoformat(),
                "staged": self._txn is not None}

    def cmd_set_clock(self, args: dict) -> dict:
        # 2020-01-01 .. 2100-01-01: anything outside is a client bug, not a clock.
        if "epoch_s" not in args:
            raise ReplyError(protocol.E_BAD_ARGS, "'epoch_s' (seconds since 1970, UTC) is "
                             "required")
        t = _num_arg(args, "epoch_s", 0.0, 1577836800.0, 4102444800.0)
        before = time.time()
        try:
            self.env.set_clock(t)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ReplyError(protocol.E_IO, f"cannot set the clock: {exc}") from exc
        self._audit("provision", op="set_clock", epoch_s=t, step_s=round(t - before, 3))
        return {"set": True, "epoch_s": t}

    def cmd_audio_test(self, args: dict) -> dict:
        cfg = self._config_in_force() or rconfig.Config()
        lines, rate = cfg.audio.lines, cfg.audio.rate
        line = _int_arg(args, "line", 0, 0, rconfig.MAX_LINES - 1)
        if line >= lines:
            raise ReplyError(protocol.E_BAD_ARGS, f"line {line} is out of range: this box has "
                             f"{lines} line(s), numbered 0..{lines - 1}")
        hz_max = tone_limit_hz(rate)
        v = args.get("hz", 1000.0)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
                and not 100.0 <= v <= hz_max:
            raise ReplyError(protocol.E_BAD_ARGS, f"frequency {v:g} Hz is outside 100..{hz_max:g}"
                             f" Hz, the limit at this box's {rate} Hz sampling rate")
        hz = _num_arg(args, "hz", 1000.0, 100.0, hz_max)
        seconds = _num_arg(args, "seconds", 1.0, 0.1, 10.0)
        dbfs = _num_arg(args, "dbfs", -12.0, -60.0, 0.0)
        rec = self._control({"cmd": "tone", "line": line, "hz": hz, "seconds": seconds,
                             "dbfs": dbfs}, timeout_s=seconds + self.env.control_timeout_s)
        self._audit("provision", op="audio_test", line=line, hz=hz, seconds=seconds)
        return {"line": line, "hz": hz, "played_dbfs": dbfs,
                "captured_dbfs": rec.get("captured_dbfs")}

    def _reset_guard(self, args: dict) -> tuple[int, bool]:
        """(unsynced calls, destroy allowed); refuses without the token (provisioned) or
        when un-uploaded calls would be lost without permission."""
        self._require("factory_reset", "factory_reset", "everything (factory reset)")
        try:
            n = evidence.unsynced_calls(self.env.data_dir)
            unreadable = None
        except sqlite3.Error as exc:
            n, unreadable = -1, str(exc)     # unknown: only "destroy unsynced" may go on
        if self.provisioned():
            allowed = bool(self.grant and self.grant.get("destroy_unsynced"))
            how = "fetch a token with `linetap upstream authorise --op factory_reset " \
                  "--destroy-unsynced`"
        else:
            allowed = args.get("destroy_unsynced") is True
            how = "pass --destroy-unsynced"
        if unreadable and not allowed:
            self._audit("provision_refused", cmd="factory_reset", op="factory_reset",
                        reason=f"store unreadable: {unreadable}")
            raise ReplyError(protocol.E_IO, f"cannot count un-uploaded calls ({unreadable}); "
                             "refusing to erase a store that cannot be read unless told to "
                             f"destroy what it holds: {how}")
        if n and not allowed:
            self._audit("provision_refused", cmd="factory_reset", op="factory_reset",
                        reason=f"{n} unsynced call(s)")
            raise ReplyError(protocol.E_UNSYNCED,
                             f"factory reset refused: {n} call(s) on this box are not yet "
                             f"uploaded and would be lost for good; let sync finish (see "
                             f"`status`), or, to destroy them knowingly, {how}",
                             unsynced_calls=n)
        return n, allowed

    def cmd_factory_reset_begin(self, args: dict) -> dict:
        n, _ok = self._reset_guard(args)
        code = f"{secrets.randbelow(10**6):06d}"
        self._reset_code = (code, self.env.monotonic() + RESET_CODE_TTL_S)
        lost = "; the store cannot be read: whatever it holds WILL BE LOST" if n < 0 else \
            f"; {n} call(s) not yet uploaded WILL BE LOST" if n else \
            "; every call on it has been uploaded"
        return {"code": code, "expires_s": RESET_CODE_TTL_S, "unsynced_calls": n,
                "warning": "factory reset erases every recording, key and the config on "
                           f"this box{lost}; send factory_reset with this code to proceed"}

    def cmd_factory_reset(self, args: dict) -> dict:
        code = args.get("code")
        pending, self._reset_code = self._reset_code, None  # one try per code
        if pending is None or self.env.monotonic() > pending[1]:
            raise ReplyError(protocol.E_CONFIRM, "no confirmation code pending or it expired: "
                             "send factory_reset_begin first")
        if not isinstance(code, str) or not secrets.compare_digest(code.encode("utf-8"),
                                                                pending[0].encode()):
            raise ReplyError(protocol.E_CONFIRM, "wrong confirmation code; start again with "
                             "factory_reset_begin")
        reboot = args.get("reboot", False)
        if not isinstance(reboot, bool):
            raise ReplyError(protocol.E_BAD_ARGS, "'reboot' must be true or false")
        n, _ok = self._reset_guard(args)
        return self._factory_reset(n, reboot)

    def _announce(self, detail: dict) -> dict:
        """Tell the upstream before erasing. Link up: the broker must acknowledge the
        notice or the reset is refused; link down or no recorder: say so, go on."""
        try:
            r = self._control({"cmd": "announce", "event": "factory_reset",
                               "detail": detail}, timeout_s=15.0)
        except ReplyError as exc:
            return {"delivered": False, "link": exc.message}
        if r.get("link") == "online" and not r.get("delivered"):
            raise ReplyError(protocol.E_RECORDER, "the upstream link is up but did not "
                             f"acknowledge the reset notice ({r.get('error') or 'timeout'}); "
                             "nothing erased, try again")
        return {"delivered": bool(r.get("delivered")), "link": r.get("link")}

    def _factory_reset(self, unsynced: int = 0, reboot: bool = False) -> dict:
        env = self.env
        entries = audit.read(env.data_dir)
        prev_hash = entries[-1]["hash"] if entries else audit.GENESIS
        nonce = (self.grant or {}).get("nonce")
        announced = self._announce({"unsynced_calls": unsynced, "token_nonce": nonce,
                                    "audit_last_hash": prev_hash,
                                    "audit_entries": len(entries)})
        self._audit("factory_reset_pending", unsynced_calls=unsynced, token_nonce=nonce,
                    announced_upstream=announced["delivered"])
        try:
            env.stop_recorder()
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not stop the recorder before reset: %s", exc)
        entries = audit.read(env.data_dir)
        prev_hash = entries[-1]["hash"] if entries else audit.GENESIS
        cfg = self._config_in_force() or rconfig.Config()
        config_root = Path(os.path.realpath(env.config_path.parent))
        removed = _wipe_dir(env.data_dir, {config_root})
        # Installed keys and the site config go too: the box forgets its site.
        for raw in (cfg.recording.public_key, cfg.sync.command_key, cfg.sync.ca,
                    str(env.config_path) + ".prev"):
            p = Path(os.path.realpath(raw))
            if p.is_relative_to(config_root) and p.is_file():
                p.unlink()
                removed += 1
        default = "" if str(env.data_dir) == rconfig.DeviceConfig().data_dir else \
            f'[device]\ndata_dir = "{env.data_dir}"\n'
        if env.config_path.parent.exists():
            atomic_write(env.config_path, default.encode(), mode=0o640)
        self._staged, self._txn = None, None
        # The old log is gone with the data; the fresh log starts with the reset,
        # naming the old log's last hash so the two can be tied together.
        self._audit("factory_reset", previous_log_last_hash=prev_hash,
                    previous_log_entries=len(entries), removed=removed, source="provisioning",
                    unsynced_calls_destroyed=unsynced, token_nonce=nonce,
                    announced_upstream=announced["delivered"], link=announced["link"])
        self.grant = None
        if self.session is not None:
            self._close_session("factory reset")
        env.presence.end("factory reset")
        if reboot:
            # Reply first; the agent reboots once the reply is on the wire.
            self._after_reply = env.reboot
        return {"reset": True, "rebooting": reboot, "removed": removed,
                "previous_log_last_hash": prev_hash,
                "unsynced_calls_destroyed": unsynced, "announced_upstream": announced,
                "next": "reboot the box to start the recorder with a fresh store"}

    def cmd_reboot(self, args: dict) -> dict:
        self._audit("provision", op="reboot")
        # Reply first; the agent calls reboot once the reply is on the wire.
        self._after_reply = self.env.reboot
        return {"rebooting": True}

    def pop_after_reply(self) -> Callable[[], None] | None:
        """An action to run after the last reply was sent (reboot), at most once."""
        action, self._after_reply = self._after_reply, None
        return action


def _check_x25519_public(pem: bytes) -> None:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise KeyFileError("practice public key is not a PEM public key") from exc
    if not isinstance(key, x25519.X25519PublicKey):
        raise KeyFileError("practice public key is not an X25519 key (make it with "
                           "`linetap keygen`)")


def _wipe_dir(root: Path, keep: set[Path]) -> int:
    """Delete everything under ``root`` except the folders in ``keep``; return files removed."""
    removed = 0
    if not root.exists():
        return 0
    for child in list(root.iterdir()):
        real = Path(os.path.realpath(child))
        if real in keep:
            continue
        if any(k.is_relative_to(real) for k in keep) and child.is_dir() \
                and not child.is_symlink():
            removed += _wipe_dir(child, keep)
            continue
        if child.is_dir() and not child.is_symlink():
            removed += sum(1 for p in child.rglob("*") if not p.is_dir())
            shutil.rmtree(child)
        else:
            child.unlink()
            removed += 1
    return removed
