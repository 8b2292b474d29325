"""Upstream configuration (TOML), validated all at once like the box's config.

Example (see docs/sync.md)::

    [database]
    url = "sqlite:////var/lib/linetap-upstream/meta.db"   # or postgresql://user@host/db

    [objects]
    path = "/var/lib/linetap-upstream/objects"
    partial_max_age_days = 7        # abandoned partial chunk uploads are removed after this
    # or, on S3 (sync/upstream/s3store.py): path = "s3://bucket/prefix" and, optionally,
    # s3_endpoint, s3_region, s3_access_key_id, s3_secret_access_key_file, s3_addressing

    [broker]
    host = "broker.example"
    port = 8883
    ca = "/etc/linetap-upstream/ca.pem"
    cert = "/etc/linetap-upstream/ingest.pem"
    key = "/etc/linetap-upstream/ingest.key"
    topic_prefix = "linetap"
    share_group = "ingest"

    [commands]
    key = "/etc/linetap-upstream/command.key"     # Ed25519 private key (PEM)
    lifetime_days = 7
    resend_s = 60

    [audit]
    key = "/etc/linetap-upstream/audit.key"       # Ed25519 private key (PEM): signs uaudit

    [fleet]                          # the fleet view's alerts (docs/fleet.md)
    offline_min = 15
    dead_line_hours = 2              # of working hours
    working_hours = "08:00-18:30"
    working_days = ["mon", "tue", "wed", "thu", "fri"]

    [alerts]                         # where alerts go: e-mail and/or a webhook
    smtp_host = "smtp.example"
    smtp_to = ["it@surgery.example"]
    webhook = "https://hooks.example/linetap"

    [updates]                        # staged RAUC rollouts (docs/updates.md)
    url = "https://updates.example:8443"   # what boxes fetch bundles from
    canary_share = 0.1
    max_failure_rate = 0.1

    [sites.surgery-1]
    retention_days = 90
    devices = { "lt-0a1b2c3d4e5f" = "9f2c...64 hex digits", "lt-abc" = "/etc/lt-abc.pub" }
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from recorder.errors import ConfigError, KeyFileError
from recorder.evidence.keys import load_ed25519_public
from sync.upstream import updates
from sync.upstream.fleet import ALERT_KEYS, FLEET_KEYS, FleetSettings, settings_from

SECTIONS = {
    "database": {"url": str},
    "objects": {"path": str, "partial_max_age_days": (int, float), "s3_endpoint": str,
                "s3_region": str, "s3_access_key_id": str, "s3_secret_access_key_file": str,
                "s3_addressing": str},
    "broker": {"host": str, "port": int, "ca": str, "cert": str, "key": str,
               "topic_prefix": str, "share_group": str, "client_id": str},
    "commands": {"key": str, "lifetime_days": (int, float), "resend_s": (int, float)},
    "retention": {"interval_s": (int, float)},
    "audit": {"key": str},
    "fleet": FLEET_KEYS,
    "alerts": ALERT_KEYS,
    "updates": updates.UPDATE_KEYS,
}
SITE_KEYS = {"retention_days": (int, float), "devices": dict}


@dataclass
class Site:
    name: str
    retention_days: float
    devices: dict            # device id -> Ed25519PublicKey


@dataclass
class UpstreamConfig:
    db_url: str = "sqlite:///linetap-upstream.db"
    objects: str = "objects"
    partial_max_age_s: float = 7 * 86400
    s3: dict = field(default_factory=dict)    # S3Options fields, for an s3:// objects path
    host: str = "localhost"
    port: int = 8883
    ca: str = ""
    cert: str = ""
    key: str = ""
    topic_prefix: str = "linetap"
    share_group: str = "ingest"
    client_id: str = ""
    command_key: str = ""
    command_lifetime_s: float = 7 * 86400
    command_resend_s: float = 60.0
    audit_key: str = ""          # signs every uaudit row (store.open_db); "" = unsigned
    retention_interval_s: float = 60.0
    sites: dict[str, Site] = field(default_factory=dict)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    updates: updates.UpdateSettings = field(default_factory=updates.UpdateSettings)

    def enrolled(self) -> dict[str, str]:
        """Every device in the config -> its site."""
        return {dev: s.name for s in self.sites.values() for dev in s.devices}

    def site_of(self, device: str) -> Site | None:
        for s in self.sites.values():
            if device in s.devices:
                return s
        return None


def first_verb(argv: list[str]) -> str | None:
    """The verb of a ``linetap upstream`` command line: the first word after the global
    options (``--config FILE``), or None."""
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--config":
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def _hint(k, choices) -> str:
    m = difflib.get_close_matches(k, list(choices), n=1)
    return f" (did you mean '{m[0]}'?)" if m else ""


def from_dict(raw: dict, source: str = "upstream config", base: Path | None = None
              ) -> UpstreamConfig:
    problems: list[str] = []
    cfg = UpstreamConfig()
    good: dict = {"sites": raw.get("sites") or {}}
    for sec, body in raw.items():
        if sec == "sites":
            continue
        if sec not in SECTIONS:
            problems.append(f"unknown section [{sec}]{_hint(sec, [*SECTIONS, 'sites'])}")
            continue
        if not isinstance(body, dict):
            problems.append(f"[{sec}] must be a table")
            continue
        good[sec] = {}
        for k, v in body.items():
            tp = SECTIONS[sec].get(k)
            if tp is None:
                problems.append(f"[{sec}] unknown key '{k}'{_hint(k, SECTIONS[sec])}")
            elif not isinstance(v, tp) or (isinstance(v, bool) and tp is not bool):
                problems.append(f"{sec}.{k}: wrong type {type(v).__name__}")
            else:
                good[sec][k] = v
    # Carry on with the well-typed values, so every problem in every section (sites
    # included) is reported at once, not only the first section's.
    raw = good
    g = raw.get
    db, ob, br, cm = g("database", {}), g("objects", {}), g("broker", {}), g("commands", {})
    cfg.db_url = db.get("url", cfg.db_url)
    cfg.objects = ob.get("path", cfg.objects)
    age = ob.get("partial_max_age_days", 7)
    if not 0.001 <= age <= 365:
        problems.append("objects.partial_max_age_days must be a number in 0.001..365")
    cfg.partial_max_age_s = float(age) * 86400
    cfg.s3 = {k[3:]: v for k, v in ob.items() if k.startswith("s3_")}
    if cfg.s3 and not cfg.objects.startswith("s3://"):
        problems.append("objects.s3_* settings are only for an s3:// objects.path")
    if cfg.s3.get("addressing", "path") not in ("path", "virtual"):
        problems.append("objects.s3_addressing must be \"path\" or \"virtual\"")
    sk = cfg.s3.get("secret_access_key_file")
    if sk and base is not None and not Path(sk).is_absolute():
        cfg.s3["secret_access_key_file"] = str(base / sk)
    for k in ("host", "port", "ca", "cert", "key", "topic_prefix", "share_group", "client_id"):
        if k in br:
            setattr(cfg, k, br[k])
    cfg.command_key = cm.get("key", "")
    cfg.command_lifetime_s = float(cm.get("lifetime_days", 7)) * 86400
    cfg.command_resend_s = float(cm.get("resend_s", 60))
    cfg.retention_interval_s = float(g("retention", {}).get("interval_s", 60))
    ak = g("audit", {}).get("key", "")
    cfg.audit_key = str(base / ak) if ak and base is not None and not Path(ak).is_absolute() \
        else ak
    try:
        cfg.fleet = settings_from(g("fleet", {}), g("alerts", {}))
    except ConfigError as exc:
        problems += exc.problems
    try:
        cfg.updates = updates.settings_from(g("updates", {}), base)
    except ConfigError as exc:
        problems += exc.problems
    seen: dict[str, str] = {}
    for name, s in (g("sites") or {}).items():
        for k in s:
            if k not in SITE_KEYS:
                problems.append(f"[sites.{name}] unknown key '{k}'{_hint(k, SITE_KEYS)}")
        days = s.get("retention_days")
        if not isinstance(days, (int, float)) or isinstance(days, bool) \
                or not 0.01 <= days <= 3650:
            problems.append(f"sites.{name}.retention_days must be a number in 0.01..3650")
            days = 90
        devs = {}
        for dev, keyref in (s.get("devices") or {}).items():
            if dev in seen:
                problems.append(f"device {dev} is in sites {seen[dev]} and {name}")
            seen[dev] = name
            try:
                if isinstance(keyref, str) and len(keyref) == 64 and all(
                        c in "0123456789abcdefABCDEF" for c in keyref):
                    devs[dev] = load_ed25519_public(bytes.fromhex(keyref))
                else:
                    p = Path(keyref)
                    devs[dev] = load_ed25519_public(p if p.is_absolute() or base is None
                                                    else base / p)
            except (KeyFileError, TypeError, ValueError) as exc:
                problems.append(f"sites.{name}.devices.{dev}: {exc}")
        cfg.sites[name] = Site(name, float(days), devs)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load(path: str) -> UpstreamConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"file not found: {p}"], str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(p)) from exc
    return from_dict(raw, str(p), p.parent)


class ConfigWatch:
    """Re-reads the upstream config when its file changes (``enrol``, ``pin`` and
    ``revoke`` rewrite it), so the workers follow the registered devices without a
    restart. Database, objects and broker settings still need one (they are in use)."""

    def __init__(self, path: str, current: UpstreamConfig):
        self.path, self.current = Path(path), current
        self._stamp = self._stat()

    def _stat(self):
        try:
            st = self.path.stat()
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def changed(self) -> UpstreamConfig | None:
        """The new config if the file changed and loads, else None (a config that does
        not load is logged and the old one kept: a worker must not die of a typo)."""
        import logging
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            new = load(str(self.path))
        except ConfigError as exc:
            logging.getLogger(__name__).error("%s changed but does not load; keeping the "
                                              "previous config: %s", self.path, exc)
            return None
        old = self.current
        for k in ("db_url", "objects", "host", "port", "ca", "cert", "key", "topic_prefix",
                  "share_group"):
            if getattr(old, k) != getattr(new, k):
                logging.getLogger(__name__).warning(
                    "%s: %s changed; restart the workers for that to take effect",
                    self.path, k)
                setattr(new, k, getattr(old, k))
        self.current = new
        return new
