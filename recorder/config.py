"""Typed configuration, loaded from TOML.

The schema is the set of frozen dataclasses below: each field's type, default and
``metadata`` (``doc``, ``range``, ``choices``, ``secret``) is the single source of truth
for validation, ``linetap config show`` and ``docs/configuration.md``.

Loading never stops at the first problem: every unknown key (with a "did you mean"),
wrong type and out-of-range value is collected and raised together in one
:class:`~recorder.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from hw.pins import DEFAULT as PINS
from recorder.errors import ConfigError
from recorder.maintenance import parse_window

DEFAULT_PATH = Path(os.environ.get("LINETAP_CONFIG", "/etc/linetap/linetap.toml"))
MAX_LINES = 4


def _f(default, doc, *, range=None, choices=None, secret=False, factory=None):  # noqa: A002
    meta = {"doc": doc, "range": range, "choices": choices, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _f("", "Device id used in segment headers and MQTT topics; empty = from "
                 "/etc/machine-id (first 12 hex digits, prefixed 'lt-').")
    data_dir: str = _f("/var/lib/linetap", "Where segments, the database and keys live.")
    site: str = _f("", "Site (practice) id this box belongs to, set at provisioning.")
    hardware: str = _f("pi", "'pi' for real GPIO and ALSA, 'sim' for the simulated line.",
                       choices=("pi", "sim"))


@dataclass(frozen=True)
class AudioConfig:
    rate: int = _f(8000, "Capture and playback rate in Hz.", choices=(8000, 16000))
    lines: int = _f(2, "Number of lines tapped (one capture channel each).",
                    range=(1, MAX_LINES))
    capture_device: str = _f("default", "ALSA PCM name for capture (all lines as channels).")
    playback_device: str = _f("default", "ALSA PCM name for playback into the lines.")
    period_frames: int = _f(160, "ALSA period in frames (160 = 20 ms at 8 kHz).",
                            range=(32, 8192))
    ring_s: float = _f(30.0, "Per-line ring buffer length in seconds.", range=(5.0, 600.0))
    playback_lead_frames: int = _f(1600, "How far ahead of capture playback is queued, in "
                                   "frames; the device treats playback frame p as heard at "
                                   "capture sample p.", range=(64, 32000))
    clip_dbfs: float = _f(-0.5, "Peak level (dBFS) counted as clipping.", range=(-20.0, 0.0))


@dataclass(frozen=True)
class TimingConfig:
    debounce_s: float = _f(0.025, "Hook debounce in seconds.", range=(0.005, 0.1))
    hangup_s: float = _f(0.5, "A hook break shorter than this is a flash or dial pulse, "
                         "not a hang-up (seconds).", range=(0.1, 5.0))
    preroll_s: float = _f(0.5, "Audio kept from before the off-hook edge (seconds).",
                          range=(0.0, 10.0))
    ring_window_s: float = _f(0.2, "Window in which ring pulses are counted (seconds).",
                              range=(0.05, 1.0))
    ring_min_pulses: int = _f(3, "Ring pulses needed in one window to count as ringing.",
                              range=(1, 20))
    ring_end_s: float = _f(6.0, "No ring pulses for this long ends an unanswered ring "
                           "(seconds; the UK cadence has 2 s gaps).", range=(2.5, 30.0))
    max_call_s: float = _f(14400.0, "A call longer than this raises the stuck-off-hook alarm "
                           "and rolls over into a linked call (seconds).",
                           range=(60.0, 86400.0))


@dataclass(frozen=True)
class RecordingConfig:
    segment_s: float = _f(10.0, "Segment length in seconds.", range=(1.0, 300.0))
    journal_s: float = _f(0.5, "Journal the segment in progress every this many seconds, "
                          "so a power cut loses at most about this plus 0.7 s (0 = no "
                          "journal: up to segment_s is lost).", range=(0.0, 60.0))
    codec: str = _f("flac", "Segment codec.", choices=("flac", "opus"))
    public_key: str = _f("/etc/linetap/practice.pub", "Practice X25519 public key (PEM).")
    aead: str = _f("chacha20poly1305", "HPKE AEAD; ChaCha20-Poly1305 is faster on a Pi 4, "
                   "which lacks AES instructions.", choices=("chacha20poly1305", "aes128gcm"))
    dtmf_mask: bool = _f(True, "Replace DTMF keyed during an answered call by silence.")
    callerid: str = _f("uk", "Caller-ID signalling to decode.",
                       choices=("uk", "etsi_dtmf", "bell202", "off"))


@dataclass(frozen=True)
class PauseConfig:
    max_s: float = _f(180.0, "A pause ends by itself after this long (seconds; 0 = never).",
                      range=(0.0, 3600.0))
    end_hold_s: float = _f(2.0, "Holding the button this long ends recording for the rest of "
                           "the call (seconds).", range=(0.5, 10.0))
    button_lines: list[int] = _f(None, "Lines the pause button acts on; empty = every "
                                 "active call.", factory=list)


@dataclass(frozen=True)
class AnnouncementConfig:
    file: str = _f("", "WAV played into the line on answer; empty = no announcement.")
    delay_s: float = _f(0.3, "Delay after answer before the announcement (seconds).",
                        range=(0.0, 10.0))
    outbound: bool = _f(True, "Also announce on outbound calls.")
    beep_interval_s: float = _f(0.0, "Periodic warning beep interval (seconds; 0 = off).",
                                range=(0.0, 600.0))
    beep_hz: float = _f(1400.0, "Warning beep frequency (Hz).", range=(300.0, 3400.0))
    beep_ms: float = _f(200.0, "Warning beep length (milliseconds).", range=(20.0, 2000.0))
    level_db: float = _f(-12.0, "Playback gain applied to the announcement and beep (dB).",
                         range=(-60.0, 0.0))


@dataclass(frozen=True)
class LineConfig:
    """Per-line overrides, from ``[[line]]`` tables."""

    index: int = _f(0, "Line number, 0-based.", range=(0, MAX_LINES - 1))
    record: bool = _f(True, "Record calls on this line (recording is optional per line).")
    announcement: str = _f("", "Announcement WAV for this line; empty = the global one.")
    label: str = _f("", "Name shown in listings, e.g. 'Reception 1'.")


@dataclass(frozen=True)
class PinsConfig:
    factory: str = _f("", "gpiozero pin factory: 'lgpio' (empty means lgpio; RPi.GPIO is "
                      "not supported). The simulator always uses 'mock'.")
    hook: list[int] = _f(None, "BCM pin of each line's hook opto.",
                         factory=lambda: list(PINS.hook))
    ring: list[int] = _f(None, "BCM pin of each line's ring opto.",
                         factory=lambda: list(PINS.ring))
    pause_button: int = _f(PINS.pause_button, "BCM pin of the pause button.", range=(0, 27))
    rec_led: list[int] = _f(None, "BCM pin of each line's recording LED.",
                            factory=lambda: list(PINS.rec_led))
    status_led: int = _f(PINS.status_led, "BCM pin of the status LED.", range=(0, 27))
    active_low: bool = _f(PINS.active_low, "Opto outputs pull the pin low when active.")


@dataclass(frozen=True)
class SyncConfig:
    enabled: bool = _f(False, "Upload segments to the upstream over MQTT.")
    host: str = _f("", "Broker host name.")
    port: int = _f(8883, "Broker port.", range=(1, 65535))
    ca: str = _f("/etc/linetap/broker-ca.pem", "CA that signed the broker's certificate.")
    cert: str = _f("/var/lib/linetap/keys/device-cert.pem", "Device TLS certificate.")
    key: str = _f("/var/lib/linetap/keys/device-tls.key", "Device TLS private key.")
    password: str = _f("", "Optional broker password.", secret=True)
    topic_prefix: str = _f("linetap", "Topic root; the device publishes under "
                           "<prefix>/<site>/<device>/.")
    command_key: str = _f("/etc/linetap/upstream-command.pub",
                          "Upstream Ed25519 key that signs commands to the box.")
    window: int = _f(64, "Segments in flight before waiting for acks.", range=(1, 1024))
    chunk_bytes: int = _f(131072, "Largest MQTT payload (bytes).", range=(1024, 131072))
    health_interval_s: float = _f(60.0, "Health message interval (seconds).",
                                  range=(5.0, 3600.0))
    unreachable_alarm_s: float = _f(120.0, "Raise broker_unreachable once the broker link "
                                    "has been down this long (seconds).",
                                    range=(10.0, 86400.0))
    ack_alarm_s: float = _f(120.0, "Raise sync_unacknowledged when uploads the broker "
                            "accepted get no ingest ack for this long while connected "
                            "(seconds; the ACL dropping them, or no ingest worker).",
                            range=(10.0, 86400.0))


@dataclass(frozen=True)
class RetentionConfig:
    days: float = _f(90.0, "Recordings are deleted this long after call start, unless on "
                     "legal hold (days). The upstream can push a new value.",
                     range=(0.01, 3650.0))
    keep_synced_days: float = _f(7.0, "Synced copies are kept on the box this long "
                                 "(days; never past the retention deadline).",
                                 range=(0.0, 3650.0))
    min_free_mb: float = _f(200.0, "Evict when free space falls below this (MB).",
                            range=(0.0, 100000.0))
    interval_s: float = _f(300.0, "How often retention runs (seconds).", range=(1.0, 86400.0))
    reserve_mb: float = _f(64.0, "Disk space kept in a preallocated file and released the "
                           "moment the disk is full, so recording, commits and recovery "
                           "go on while retention evicts (MB; 0 = none).",
                           range=(0.0, 10000.0))


@dataclass(frozen=True)
class UpdateConfig:
    window: str = _f("", "Maintenance window in which the box may reboot into an update, "
                     "local time 'HH:MM-HH:MM' (may span midnight, e.g. '22:00-05:00'); "
                     "empty = any time. It reboots only when every line is idle as well "
                     "(docs/updates.md).")
    countdown_s: float = _f(60.0, "Idle time before the reboot; a call that starts "
                            "during it cancels the reboot (seconds).", range=(5.0, 3600.0))
    gate_deadline_s: float = _f(600.0, "After booting an update, the health gate must pass "
                                "within this long or the box boots the old slot again "
                                "(seconds).", range=(60.0, 7200.0))


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    pause: PauseConfig = field(default_factory=PauseConfig)
    announcement: AnnouncementConfig = field(default_factory=AnnouncementConfig)
    line: list[LineConfig] = field(default_factory=list)
    pins: PinsConfig = field(default_factory=PinsConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)

    def line_config(self, index: int) -> LineConfig:
        """The overrides for line ``index`` (0-based), or defaults if none are given."""
        for lc in self.line:
            if lc.index == index:
                return lc
        return LineConfig(index=index)

    def replace(self, **sections) -> Config:
        """A copy with whole sections or ``section__key`` values replaced."""
        out = self
        for name, value in sections.items():
            if "__" in name:
                sec, key = name.split("__", 1)
                out = dataclasses.replace(
                    out, **{sec: dataclasses.replace(getattr(out, sec), **{key: value})})
            else:
                out = dataclasses.replace(out, **{name: value})
        return out


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is list:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return {str: "string", int: "integer", float: "number", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp, value, where, problems):
    """Check ``value`` against ``tp``; return the typed value or None after noting a problem."""
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{where}: expected {_type_name(tp)}, got {type(value).__name__}")
            return None
        out = [_coerce(inner, v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return None if any(v is None for v in out) else out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    problems.append(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} "
                    f"{value!r}")
    return None


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build_section(cls, raw, where, problems):
    if not isinstance(raw, dict):
        problems.append(f"[{where}]: expected a table, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            problems.append(f"[{where}] unknown key '{key}'{_suggest(key, fields)}")
            continue
        meta = fields[key].metadata
        typed = _coerce(hints[key], value, f"{where}.{key}", problems)
        if typed is None:
            continue
        rng, choices = meta.get("range"), meta.get("choices")
        if rng is not None and not (rng[0] <= typed <= rng[1]):
            problems.append(f"{where}.{key} = {typed!r} is out of range {rng[0]}..{rng[1]}")
            continue
        if choices is not None and typed not in choices:
            hint = _suggest(str(typed), map(str, choices))
            problems.append(f"{where}.{key} = {typed!r} is not one of "
                            f"{', '.join(map(repr, choices))}{hint}")
            continue
        kwargs[key] = typed
    return cls(**kwargs)


def _cross_checks(cfg: Config, problems: list[str]) -> None:
    """Rules that span keys: pin counts, duplicate pins, line indexes; the maintenance
    window's form."""
    try:
        parse_window(cfg.update.window)
    except ConfigError as exc:
        problems.append(f"update.window: {exc.problems[0]}")
    n = cfg.audio.lines
    for name in ("hook", "ring", "rec_led"):
        pins = getattr(cfg.pins, name)
        if len(pins) < n:
            problems.append(f"pins.{name} lists {len(pins)} pin(s) but audio.lines = {n}")
    used: dict[int, str] = {}
    for name in ("hook", "ring", "rec_led"):
        for i, p in enumerate(getattr(cfg.pins, name)[:n]):
            if p in used:
                problems.append(f"pins.{name}[{i}] = {p} is already used by {used[p]}")
            used[p] = f"pins.{name}[{i}]"
    for name in ("pause_button", "status_led"):
        p = getattr(cfg.pins, name)
        if p in used:
            problems.append(f"pins.{name} = {p} is already used by {used[p]}")
        used[p] = f"pins.{name}"
    seen = set()
    for lc in cfg.line:
        if lc.index >= n:
            problems.append(f"[[line]] index {lc.index} is not below audio.lines = {n}")
        if lc.index in seen:
            problems.append(f"[[line]] index {lc.index} appears twice")
        seen.add(lc.index)
    for i in cfg.pause.button_lines:
        if not 0 <= i < n:
            problems.append(f"pause.button_lines has line {i}, outside 0..{n - 1}")
    if cfg.timing.debounce_s >= cfg.timing.hangup_s:
        problems.append("timing.debounce_s must be shorter than timing.hangup_s")
    if cfg.recording.journal_s >= cfg.recording.segment_s:
        problems.append("recording.journal_s must be shorter than recording.segment_s "
                        "(or 0 for no journal)")


def from_dict(raw: dict, source: str = "config") -> Config:
    """Validate a parsed TOML document and build a :class:`Config`.

    Raises :class:`ConfigError` listing every problem found.
    """
    problems: list[str] = []
    sections = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            problems.append(f"unknown section [{key}]{_suggest(key, SECTIONS)}")
            continue
        tp = SECTIONS[key]
        if typing.get_origin(tp) is list:
            (inner,) = typing.get_args(tp)
            if not isinstance(value, list):
                problems.append(f"[[{key}]] must be an array of tables")
                continue
            sections[key] = [_build_section(inner, v, f"{key}[{i}]", problems)
                             for i, v in enumerate(value)]
        else:
            sections[key] = _build_section(tp, value, key, problems)
    cfg = Config(**sections)
    _cross_checks(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def loads(text: str, source: str = "config") -> Config:
    """Parse TOML text into a :class:`Config` (see :func:`from_dict`)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source) from exc
    except RecursionError:
        raise ConfigError(["not valid TOML: nested too deeply"], source) from None
    return from_dict(raw, source)


def load(path: str | os.PathLike | None = None, *, missing_ok: bool = False) -> Config:
    """Load the config file at ``path`` (default ``/etc/linetap/linetap.toml``).

    With ``missing_ok``, a missing file yields the defaults.
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return Config()
        raise ConfigError([f"file not found: {p}"], str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read: {exc}"], str(p)) from exc
    return loads(text, str(p))


def to_dict(cfg: Config, *, mask_secrets: bool = True) -> dict:
    """The config as plain data; secrets show as ``********`` unless ``mask_secrets`` is off."""
    out: dict = {}
    for sec in dataclasses.fields(cfg):
        value = getattr(cfg, sec.name)
        if isinstance(value, list):
            out[sec.name] = [_section_dict(v, mask_secrets) for v in value]
        else:
            out[sec.name] = _section_dict(value, mask_secrets)
    return out


def _section_dict(obj, mask):
    d = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if mask and f.metadata.get("secret") and v:
            v = "********"
        d[f.name] = v
    return d


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def dumps(cfg: Config, *, mask_secrets: bool = True) -> str:
    """Render the effective config as TOML (secrets masked by default)."""
    data = to_dict(cfg, mask_secrets=mask_secrets)
    lines: list[str] = []
    for sec, body in data.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{sec}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
            continue
        lines.append(f"[{sec}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        lines.append("")
    return "\n".join(lines)


def reference_markdown() -> str:
    """Every key with its type, default and meaning, for docs/configuration.md."""
    out = []
    for name, tp in SECTIONS.items():
        cls = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        header = f"[[{name}]]" if cls is not tp else f"[{name}]"
        out.append(f"### `{header}`\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        hints = typing.get_type_hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            meta = f.metadata
            extra = ""
            if meta.get("range"):
                extra = f" Range {meta['range'][0]}–{meta['range'][1]}."
            if meta.get("choices"):
                extra = " One of " + ", ".join(f"`{c}`" for c in meta["choices"]) + "."
            default = getattr(inst, f.name)
            out.append(f"| `{f.name}` | {_type_name(hints[f.name])} | "
                       f"`{_toml_value(default)}` | {meta.get('doc', '')}{extra} |")
        out.append("")
    return "\n".join(out)


def device_id(cfg: Config) -> str:
    """The configured device id, or one derived from /etc/machine-id."""
    if cfg.device.id:
        return cfg.device.id
    try:
        mid = Path("/etc/machine-id").read_text().strip()
    except OSError:
        mid = ""
    return "lt-" + (mid[:12] if mid else "unknown")


__all__ = [
    "Config", "DeviceConfig", "AudioConfig", "TimingConfig", "RecordingConfig",
    "PauseConfig", "AnnouncementConfig", "LineConfig", "PinsConfig", "SyncConfig",
    "RetentionConfig", "load", "loads", "from_dict", "dumps", "to_dict",
    "reference_markdown", "device_id", "DEFAULT_PATH",
]
