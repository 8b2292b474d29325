"""``site.toml``: everything one box at one site needs, applied in one command.

Relative paths are relative to the site file. Every problem is reported at once, as
:class:`~recorder.errors.ConfigError`, before the box is touched. See
``docs/provisioning.md`` for an example.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from recorder import config as rconfig
from recorder.errors import ConfigError

TOP_KEYS = {"config", "box", "keys", "tls", "site"}
KEY_KEYS = {"practice_public", "command_key", "broker_ca"}
TLS_KEYS = {"ca_cert", "ca_key", "days", "csr_out", "new_key"}


@dataclass
class SiteFile:
    """A validated site file: the box config text and what to install."""

    source: Path
    config_text: str
    config: rconfig.Config
    keys: dict[str, Path] = field(default_factory=dict)  # kind -> PEM file
    ca_cert: Path | None = None
    ca_key: Path | None = None
    days: int = 825
    csr_out: str = "{device_id}.csr"
    new_key: bool = False
    name: str = ""


def _unknown(table: dict, allowed: set[str], where: str, problems: list[str]) -> None:
    for k in table:
        if k not in allowed:
            close = difflib.get_close_matches(k, sorted(allowed), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{where}unknown key '{k}'{hint}")


def load(path: str | Path) -> SiteFile:
    """Read and check ``path``; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    src = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], src) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"cannot read: {exc}"], src) from exc
    base = path.parent
    problems: list[str] = []
    _unknown(raw, TOP_KEYS, "", problems)

    config_text, cfg = "", rconfig.Config()
    if ("config" in raw) == ("box" in raw):
        problems.append("give the box config either as a [box] table or as config = "
                        "\"path\", not both and not neither")
    elif "config" in raw:
        if not isinstance(raw["config"], str):
            problems.append("config must be a path string")
        else:
            cpath = base / raw["config"]
            try:
                config_text = cpath.read_text(encoding="utf-8")
            except OSError as exc:
                problems.append(f"config = {raw['config']!r}: {exc.strerror or exc}")
    else:
        if not isinstance(raw["box"], dict):
            problems.append("[box] must be a table")
        else:
            try:
                cfg = rconfig.from_dict(raw["box"], f"{src} [box]")
                config_text = rconfig.dumps(cfg, mask_secrets=False)
            except ConfigError as exc:
                problems += [f"[box] {p}" for p in exc.problems]
    if config_text and "config" in raw:
        try:
            cfg = rconfig.loads(config_text, raw["config"])
        except ConfigError as exc:
            problems += [f"{raw['config']}: {p}" for p in exc.problems]

    site = SiteFile(source=path, config_text=config_text, config=cfg)
    keys_t = raw.get("keys", {})
    if not isinstance(keys_t, dict):
        problems.append("[keys] must be a table")
        keys_t = {}
    _unknown(keys_t, KEY_KEYS, "[keys] ", problems)
    for kind in sorted(KEY_KEYS & keys_t.keys()):
        v = keys_t[kind]
        if not isinstance(v, str):
            problems.append(f"keys.{kind} must be a path string")
            continue
        p = base / v
        if not p.is_file():
            problems.append(f"keys.{kind}: file not found: {p}")
        site.keys[kind] = p

    tls = raw.get("tls", {})
    if not isinstance(tls, dict):
        problems.append("[tls] must be a table")
        tls = {}
    _unknown(tls, TLS_KEYS, "[tls] ", problems)
    for name in ("ca_cert", "ca_key"):
        if name in tls:
            if not isinstance(tls[name], str):
                problems.append(f"tls.{name} must be a path string")
            else:
                p = base / tls[name]
                if not p.is_file():
                    problems.append(f"tls.{name}: file not found: {p}")
                setattr(site, name, p)
    if ("ca_cert" in tls) != ("ca_key" in tls):
        problems.append("tls.ca_cert and tls.ca_key go together")
    days = tls.get("days", 825)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        problems.append(f"tls.days = {days!r} must be an integer in 1..3650")
    else:
        site.days = days
    csr_out = tls.get("csr_out", site.csr_out)
    if not isinstance(csr_out, str) or not csr_out:
        problems.append("tls.csr_out must be a non-empty path string")
    else:
        site.csr_out = csr_out if Path(csr_out).is_absolute() else str(base / csr_out)
    new_key = tls.get("new_key", False)
    if not isinstance(new_key, bool):
        problems.append("tls.new_key must be true or false")
    else:
        site.new_key = new_key

    meta = raw.get("site", {})
    if isinstance(meta, dict):
        _unknown(meta, {"name"}, "[site] ", problems)
        site.name = str(meta.get("name", ""))
    else:
        problems.append("[site] must be a table")
    if problems:
        raise ConfigError(problems, src)
    return site
