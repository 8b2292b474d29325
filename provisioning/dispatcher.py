"""The box's side of provisioning: one request in, one reply frame out.

:class:`Dispatcher` is free of I/O on the serial line: :meth:`Dispatcher.handle_event`
takes a parsed event (a frame or a bad frame) and returns the bytes of exactly one
reply frame, so the fuzz tests can drive it in-process at full speed. Everything with
a side effect outside ``data_dir`` and the config folder (setting the clock, reboot,
stopping the recorder) is an injected callable.

Commands marked ``state=True`` change the box and are refused outside provisioning
mode (physical presence); the rest are read-only and work at any time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

import recorder
from provisioning import control_client, protocol, tlscert
from provisioning.presence import Presence
from recorder import audit, keys
from recorder import config as rconfig
from recorder.errors import ConfigError, KeyFileError, LinetapError, ProtocolError
from recorder.fsutil import atomic_write

log = logging.getLogger(__name__)

RESET_CODE_TTL_S = 120.0
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
    restart_recorder: Callable[[], None] = lambda: _systemctl(
        "try-restart", "linetap-recorder.service")
    stop_recorder: Callable[[], None] = lambda: _systemctl("stop", "linetap-recorder.service")
    model_path: Path = MODEL_PATH
    control_timeout_s: float = 5.0
    monotonic: Callable[[], float] = time.monotonic
    extra_write_roots: list[Path] = field(default_factory=list)


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


class Dispatcher:
    """Answers provisioning requests. Thread-safe: one request at a time."""

    def __init__(self, env: AgentEnv):
        self.env = env
        self._lock = threading.Lock()
        self._staged: tuple[str, rconfig.Config] | None = None
        self._reset_code: tuple[str, float] | None = None
        self._after_reply: Callable[[], None] | None = None
        self.commands: dict[str, tuple[Callable[[dict], dict], bool]] = {
            "hello": (self.cmd_hello, False),
            "status": (self.cmd_status, False),
            "config_get": (self.cmd_config_get, False),
            "config_check": (self.cmd_config_check, False),
            "line_test": (self.cmd_line_test, False),
            "config_stage": (self.cmd_config_stage, True),
            "config_commit": (self.cmd_config_commit, True),
            "set_config": (self.cmd_set_config, True),
            "install_key": (self.cmd_install_key, True),
            "tls_csr": (self.cmd_tls_csr, True),
            "install_cert": (self.cmd_install_cert, True),
            "set_clock": (self.cmd_set_clock, True),
            "audio_test": (self.cmd_audio_test, True),
            "factory_reset_begin": (self.cmd_factory_reset_begin, True),
            "factory_reset": (self.cmd_factory_reset, True),
            "reboot": (self.cmd_reboot, True),
        }

    # -- framing ---------------------------------------------------------------------

    def handle_event(self, event: protocol.Frame | protocol.BadFrame) -> bytes:
        """The reply frame for one parser event. Never raises."""
        if isinstance(event, protocol.BadFrame):
            return protocol.error_frame(event.seq or 0, event.code, event.message)
        if event.type != protocol.T_REQUEST:
            return protocol.error_frame(event.seq, protocol.E_BAD_TYPE,
                                        f"frame type {event.type} is not a request")
        try:
            obj = event.json()
        except ProtocolError as exc:
            return protocol.error_frame(event.seq, protocol.E_BAD_JSON, str(exc))
        return self.handle_request(event.seq, obj)

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
        handler, changes_state = entry
        if changes_state and not self.env.presence.active():
            raise ReplyError(protocol.E_PRESENCE,
                             f"'{cmd}' changes the box and needs provisioning mode: hold the "
                             "pause button for 5 s while powering the box on")
        with self._lock:
            return handler(args)

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
        return {"device_id": self._device_id(), "hardware": model or "unknown",
                "software": recorder.__version__, "protocol": protocol.VERSION,
                "max_payload": protocol.MAX_PAYLOAD, "identity": identity,
                "provisioning_mode": self._mode()}

    def _mode(self) -> dict:
        p = self.env.presence
        return {"active": p.active(), "remaining_s": round(p.remaining_s(), 1)}

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
        files = {
            "practice_public": cfg.recording.public_key, "command_key": cfg.sync.command_key,
            "broker_ca": cfg.sync.ca, "tls_key": cfg.sync.key, "tls_cert": cfg.sync.cert,
            "identity": str(keys.identity_path(self.env.data_dir)),
        }
        return {
            "device_id": rconfig.device_id(cfg),
            "provisioning_mode": self._mode(),
            "config": {"path": str(self.env.config_path),
                       "present": self.env.config_path.exists(),
                       "problems": cfg_problems, "site": cfg.device.site,
                       "lines": cfg.audio.lines, "rate": cfg.audio.rate,
                       "sync": {"enabled": cfg.sync.enabled, "host": cfg.sync.host,
                                "port": cfg.sync.port},
                       "retention_days": cfg.retention.days,
                       "staged": self._staged is not None},
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

    def cmd_line_test(self, args: dict) -> dict:
        rec = self._control({"cmd": "status"})
        return {"lines": rec.get("lines", []), "alarms": rec.get("alarms", [])}

    # -- state-changing commands -------------------------------------------------------

    def cmd_config_stage(self, args: dict) -> dict:
        text = _str_arg(args, "text")
        cfg = rconfig.loads(text, "config")
        self._staged = (text, cfg)
        return {"staged": True, "sha256": _sha256(text.encode())}

    def cmd_config_commit(self, args: dict) -> dict:
        if "text" in args:
            self.cmd_config_stage(args)
        if self._staged is None:
            raise ReplyError(protocol.E_BAD_ARGS, "no config staged: send config_stage first")
        text, _cfg = self._staged
        path = self.env.config_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            old = path.read_bytes()
        except FileNotFoundError:
            old = None
        new = text.encode("utf-8")
        if old is not None:
            atomic_write(path.with_name(path.name + ".prev"), old, mode=0o640)
        # The single atomic step that puts the new config in force.
        atomic_write(path, new, mode=0o640)
        self._staged = None
        self._audit("config_change", source="provisioning",
                    old_sha256=_sha256(old) if old is not None else None,
                    new_sha256=_sha256(new))
        restarted = True
        try:
            self.env.restart_recorder()
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not restart the recorder after a config change: %s", exc)
            restarted = False
        return {"applied": True, "path": str(path), "sha256": _sha256(new),
                "previous_kept": old is not None, "recorder_restarted": restarted}

    def cmd_set_config(self, args: dict) -> dict:
        self.cmd_config_stage(args)
        return self.cmd_config_commit({})

    def cmd_install_key(self, args: dict) -> dict:
        kind = _str_arg(args, "kind", max_len=40)
        pem = _str_arg(args, "pem").encode("utf-8")
        if kind not in KEY_KINDS:
            raise ReplyError(protocol.E_BAD_ARGS, f"unknown key kind {kind!r}; one of "
                             f"{', '.join(KEY_KINDS)}")
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
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, pem, mode=mode)
        self._audit("key_change", kind=kind, path=str(path), fingerprint=fp,
                    source="provisioning")
        return {"installed": kind, "path": str(path), "fingerprint": fp}

    def cmd_tls_csr(self, args: dict) -> dict:
        new_key = args.get("new_key", False)
        if not isinstance(new_key, bool):
            raise ReplyError(protocol.E_BAD_ARGS, "'new_key' must be true or false")
        cfg = self._effective()
        path = self._checked_path(cfg.sync.key, "TLS key")
        created = new_key or not path.exists()
        if not path.exists():
            kd = keys.keys_dir(self.env.data_dir)
            kd.mkdir(parents=True, exist_ok=True)
            os.chmod(kd, 0o700)
        key = tlscert.ensure_tls_key(path, new=new_key)
        csr = tlscert.make_csr(key, rconfig.device_id(cfg), cfg.device.site)
        self._audit("provision", op="tls_csr", key_created=created, path=str(path))
        return {"csr": csr.decode("ascii"), "key_created": created,
                "common_name": rconfig.device_id(cfg)}

    def cmd_install_cert(self, args: dict) -> dict:
        pem = _str_arg(args, "pem").encode("utf-8")
        cfg = self._effective()
        certs = tlscert.load_certs(pem, "device certificate")
        key = tlscert.load_private(self._checked_path(cfg.sync.key, "TLS key"))
        if not tlscert.cert_matches_key(certs[0], key):
            raise ReplyError(protocol.E_KEY, "certificate does not match the box's TLS key "
                             "(was it signed from this box's latest CSR?)")
        path = self._checked_path(cfg.sync.cert, "TLS certificate")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, pem, mode=0o644)
        fp = _sha256(certs[0].public_bytes(serialization.Encoding.DER))[:16]
        self._audit("key_change", kind="tls_cert", path=str(path), fingerprint=fp,
                    not_after=certs[0].not_valid_after_utc.isoformat(), source="provisioning")
        return {"installed": "tls_cert", "path": str(path), "fingerprint": fp,
                "not_after": certs[0].not_valid_after_utc.isoformat()}

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
        line = _int_arg(args, "line", 0, 0, rconfig.MAX_LINES - 1)
        hz = _num_arg(args, "hz", 1000.0, 100.0, 7900.0)  # the daemon checks rate/2
        seconds = _num_arg(args, "seconds", 1.0, 0.1, 10.0)
        dbfs = _num_arg(args, "dbfs", -12.0, -60.0, 0.0)
        rec = self._control({"cmd": "tone", "line": line, "hz": hz, "seconds": seconds,
                             "dbfs": dbfs}, timeout_s=seconds + self.env.control_timeout_s)
        self._audit("provision", op="audio_test", line=line, hz=hz, seconds=seconds)
        return {"line": line, "hz": hz, "played_dbfs": dbfs,
                "captured_dbfs": rec.get("captured_dbfs")}

    def cmd_factory_reset_begin(self, args: dict) -> dict:
        code = f"{secrets.randbelow(10**6):06d}"
        self._reset_code = (code, self.env.monotonic() + RESET_CODE_TTL_S)
        return {"code": code, "expires_s": RESET_CODE_TTL_S,
                "warning": "factory reset erases every recording, key and the config on "
                           "this box; send factory_reset with this code to proceed"}

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
        return self._factory_reset()

    def _factory_reset(self) -> dict:
        env = self.env
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
        self._staged = None
        # The old log is gone with the data; the fresh log starts with the reset,
        # naming the old log's last hash so the two can be tied together.
        self._audit("factory_reset", previous_log_last_hash=prev_hash,
                    previous_log_entries=len(entries), removed=removed, source="provisioning")
        return {"reset": True, "removed": removed, "previous_log_last_hash": prev_hash,
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
