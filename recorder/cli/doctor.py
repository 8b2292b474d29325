"""``linetap doctor``: check a box end to end and say what to fix.

One line per check: ``OK``, ``WARN`` or ``FAIL``, what was found and, when not OK, the
fix. The exit status is 0 when nothing FAILs. Every check is a function of its inputs
plus one injectable probe (opening ALSA, making a pin factory, a TLS connection, the
disk, the clock), so each is table-tested without the hardware.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hw.audio import probe_capture
from hw.gpio import make_factory
from recorder import config as rconfig
from recorder import configtxn
from recorder.errors import ConfigError, KeyFileError
from recorder.evidence import keys
from recorder.runtime import control_client

log = logging.getLogger(__name__)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
MODEL_PATH = Path("/proc/device-tree/model")
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
SWAPS_PATH = Path("/proc/swaps")
CERT_WARN_DAYS = 30
MIN_YEAR = 2024


@dataclass(frozen=True)
class Result:
    """One check's outcome. ``fix`` is empty when ``status`` is OK."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.name:<10} {self.detail}"
        return text + (f"\n      fix: {self.fix}" if self.fix else "")


# -- config and keys ---------------------------------------------------------------------

def check_config(path: str | Path | None,
                 load: Callable = rconfig.load) -> tuple[Result, rconfig.Config | None]:
    """Load the config the way the daemon does; FAIL lists every problem."""
    try:
        cfg = load(path)
    except ConfigError as exc:
        return Result("config", FAIL, f"{exc.source}: " + "; ".join(exc.problems),
                      "fix the file (`linetap config check FILE` shows each problem) or push "
                      "a good one with `linetap provision set-config`"), None
    where = path or rconfig.DEFAULT_PATH
    return Result("config", OK, f"{where}: {cfg.audio.lines} line(s) at {cfg.audio.rate} Hz, "
                  f"site {cfg.device.site or '(unset)'}, device {rconfig.device_id(cfg)}"), cfg


def check_practice_key(cfg: rconfig.Config) -> Result:
    path = cfg.recording.public_key
    try:
        key = keys.load_practice_public(path)
    except KeyFileError as exc:
        return Result("practice", FAIL, str(exc),
                      "install the practice public key (`linetap provision apply site.toml`); "
                      "without it nothing can be recorded")
    return Result("practice", OK, f"{path}: X25519, fingerprint "
                  f"{keys.fingerprint(keys.raw_public(key))}")


def check_identity(data_dir: str | Path) -> Result:
    path = keys.identity_path(data_dir)
    if not path.exists():
        return Result("identity", WARN, f"{path} does not exist yet",
                      "the recorder creates it on its first start; if it has run before, the "
                      "key was lost: the box needs a factory reset and re-provisioning")
    try:
        _raw, fp = keys.identity_public(data_dir)
    except KeyFileError as exc:
        return Result("identity", FAIL, str(exc),
                      "the identity key is damaged: factory-reset and re-provision the box")
    return Result("identity", OK, f"Ed25519, fingerprint {fp}")


def check_command_key(cfg: rconfig.Config) -> Result:
    if not cfg.sync.enabled:
        return Result("cmdkey", OK, "sync disabled: no upstream command key needed")
    try:
        key = keys.load_ed25519_public(cfg.sync.command_key)
    except KeyFileError as exc:
        return Result("cmdkey", FAIL, f"{cfg.sync.command_key}: {exc}",
                      "install the upstream command key (site.toml [keys] command_key)")
    return Result("cmdkey", OK, f"{cfg.sync.command_key}: fingerprint "
                  f"{keys.fingerprint(keys.raw_public(key))}")


# -- hardware ------------------------------------------------------------------------------

def check_alsa(cfg: rconfig.Config, recorder_running: bool,
               open_capture: Callable[[str, int, int, int], None] = probe_capture) -> Result:
    """Can the capture device be opened as the daemon opens it (channels, rate, period),
    and does the card give exactly that? The daemon's own probe (hw.audio)."""
    if cfg.device.hardware == "sim":
        return Result("alsa", OK, "simulated line (device.hardware = 'sim'): not checked")
    dev, n, rate = cfg.audio.capture_device, cfg.audio.lines, cfg.audio.rate
    try:
        open_capture(dev, n, rate, cfg.audio.period_frames)
    except ImportError:
        return Result("alsa", WARN, "pyalsaaudio is not installed: capture not checked",
                      "install the package's dependencies (pip install pyalsaaudio)")
    except Exception as exc:  # noqa: BLE001 - alsaaudio raises ALSAAudioError and OSError
        text = str(exc)
        if recorder_running and "busy" in text.lower():
            return Result("alsa", OK, f"{dev}: in use by the running recorder")
        return Result("alsa", FAIL, f"cannot open '{dev}' for {n} channel(s) at {rate} Hz: "
                      f"{text}", "check the HAT overlay in /boot/firmware/config.txt and "
                      "`arecord -l`; set audio.capture_device to the card's PCM name")
    return Result("alsa", OK, f"{dev}: capture opens with {n} channel(s) at {rate} Hz")


def make_pin_factory(name: str):
    """The pin factory the daemon would use (hw.gpio.make_factory), and its class name."""
    f = make_factory(name)
    return type(f).__name__, f


def check_pins(cfg: rconfig.Config, model_path: Path = MODEL_PATH,
               factory: Callable[[str], tuple] = make_pin_factory) -> Result:
    """Is this a Pi, and can a gpiozero pin factory be made?"""
    if cfg.device.hardware == "sim":
        return Result("pins", OK, "simulated line: the mock pin factory is used")
    try:
        model = model_path.read_bytes().rstrip(b"\0").decode("utf-8", "replace")
    except OSError:
        model = ""
    if "Raspberry Pi" not in model:
        return Result("pins", WARN, f"not a Pi ({model or 'no device-tree model'}): GPIO not "
                      "checked", "run doctor on the box, or set device.hardware = 'sim'")
    try:
        name, f = factory(cfg.pins.factory)
    except Exception as exc:  # noqa: BLE001 - report whatever the backend said
        return Result("pins", FAIL, f"{model}: no GPIO pin factory: {exc}",
                      "install lgpio (`pip install linetap[pi]`) and check "
                      "that the linetap user is in the gpio group")
    close = getattr(f, "close", None)
    if close:
        close()
    return Result("pins", OK, f"{model}: gpiozero '{name}' pin factory")


# -- broker TLS ----------------------------------------------------------------------------

def tls_connect(host: str, port: int, ca: str, cert: str, key: str, timeout_s: float) -> str:
    """TCP + TLS handshake with the client certificate; returns the TLS version."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    with socket.create_connection((host, port), timeout=timeout_s) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        return tls.version() or "TLS"


def check_broker(cfg: rconfig.Config, now: dt.datetime, *,
                 connect: Callable[..., str] = tls_connect, timeout_s: float = 5.0) -> Result:
    """When sync is on: CA, cert and key present; cert matches key and is in date; and a
    TLS connection to the broker succeeds."""
    s = cfg.sync
    if not s.enabled:
        return Result("broker", OK, "sync disabled")
    if not s.host:
        return Result("broker", FAIL, "sync.enabled but sync.host is empty",
                      "set sync.host in the config")
    missing = [p for p in (s.ca, s.cert, s.key) if not Path(p).is_file()]
    if missing:
        return Result("broker", FAIL, "missing: " + ", ".join(missing),
                      "run `linetap provision apply site.toml` (broker CA in [keys], the "
                      "device certificate from the CSR)")
    try:
        cert, key = _load_cert_and_key(s.cert, s.key, s.ca)
    except (ValueError, TypeError, OSError) as exc:
        return Result("broker", FAIL, str(exc), "re-install the certificate or CA")
    if _spki(cert.public_key()) != _spki(key.public_key()):
        return Result("broker", FAIL, f"{s.cert} does not match {s.key}",
                      "get a new CSR and certificate (`linetap provision apply`)")
    from cryptography.x509.oid import NameOID
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn, device = (cns[0].value if cns else ""), rconfig.device_id(cfg)
    if cn != device:
        # The broker's user name is the CN and its ACL only lets a device publish under
        # its own id: the TLS connection below would succeed and every upload vanish.
        return Result("broker", FAIL, f"device certificate CN '{cn}' is not the device id "
                      f"'{device}': the broker would drop every upload",
                      f"enrol the box as '{device}' (`linetap upstream enrol --device "
                      f"{device}`) or set device.id = \"{cn}\"")
    if cert.not_valid_after_utc <= now:
        return Result("broker", FAIL, f"device certificate expired "
                      f"{cert.not_valid_after_utc:%Y-%m-%d}", "renew it with a new CSR")
    if cert.not_valid_before_utc > now:
        return Result("broker", FAIL, f"device certificate not valid until "
                      f"{cert.not_valid_before_utc:%Y-%m-%d}: is the clock wrong?",
                      "set the clock (`linetap provision set-clock`)")
    try:
        version = connect(s.host, s.port, s.ca, s.cert, s.key, timeout_s)
    except (OSError, ssl.SSLError) as exc:
        return Result("broker", FAIL, f"cannot connect to {s.host}:{s.port}: {exc}",
                      "check the network, the broker address and that the broker trusts the "
                      "provisioning CA")
    days = (cert.not_valid_after_utc - now).days
    if days < CERT_WARN_DAYS:
        return Result("broker", WARN, f"{s.host}:{s.port} {version}; certificate expires in "
                      f"{days} day(s)", "renew the device certificate soon")
    return Result("broker", OK, f"{s.host}:{s.port} {version}; certificate valid "
                  f"{days} more day(s)")


def _spki(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_cert_and_key(cert_path: str, key_path: str, ca_path: str):
    """(device certificate, TLS private key); ValueError naming the bad file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    for path in (cert_path, ca_path):
        try:
            certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except ValueError:
            raise ValueError(f"{path} is not a PEM certificate") from None
        if path == cert_path:
            cert = certs[0]
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{key_path} is not an unencrypted PEM private key") from None
    return cert, key


# -- disk and clock ------------------------------------------------------------------------

def check_disk(cfg: rconfig.Config, data_dir: str | Path,
               usage: Callable = shutil.disk_usage) -> Result:
    """Free space on the data partition against retention.min_free_mb. A data folder
    not made yet (a fresh set-up: the recorder makes it at its first start) is measured
    at its nearest existing parent, which is where it will live."""
    probe, note = Path(data_dir), ""
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe != Path(data_dir):
        note = f" (not created yet; measured at {probe})"
    try:
        du = usage(probe)
    except OSError as exc:
        return Result("disk", FAIL, f"{data_dir}: {exc.strerror or exc}",
                      "is the data partition mounted?")
    free_mb, need = du.free / 1e6, cfg.retention.min_free_mb
    text = (f"{data_dir}: {free_mb:.0f} MB free of {du.total / 1e6:.0f} MB (min "
            f"{need:.0f} MB){note}")
    if free_mb < need:
        return Result("disk", FAIL, text, "retention is evicting: check sync is uploading, "
                      "or use a larger card")
    if free_mb < 2 * need:
        return Result("disk", WARN, text, "less than twice the minimum free: check sync")
    return Result("disk", OK, text)


def ntp_synchronised(flag: Path = TIMESYNC_FLAG) -> bool | None:
    """True/False from systemd-timesyncd or timedatectl; None if neither can tell."""
    if flag.exists():
        return True
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value)


def check_clock(now: dt.datetime, synced: bool | None) -> Result:
    """The clock stamps every call: NTP-synchronised is best; a year before 2024 is wrong."""
    stamp = f"{now:%Y-%m-%d %H:%M:%S} UTC"
    if now.year < MIN_YEAR:
        return Result("clock", FAIL, f"clock says {stamp}",
                      "set it: `linetap provision set-clock`, and give the box network time")
    if synced:
        return Result("clock", OK, f"{stamp}, NTP-synchronised")
    return Result("clock", WARN, f"{stamp}, not NTP-synchronised",
                  "give the box network access to an NTP server, or fit an RTC")


def check_staged(config_path: str | Path | None) -> Result:
    """Leftovers of an interrupted provisioning apply (:mod:`recorder.configtxn`)."""
    left = configtxn.leftovers(Path(config_path or rconfig.DEFAULT_PATH).parent)
    if left is None:
        return Result("staged", OK, "no interrupted apply")
    if left["journal"]:
        return Result("staged", FAIL, "an apply was committed but not finished (journal "
                      "present)", "restart linetap-provision-agent (it completes the journal)"
                      " or re-run `linetap provision apply`")
    return Result("staged", WARN, f"{len(left['staged'])} staged file(s) of an interrupted "
                  "apply (not in force; the old config is)",
                  "re-run `linetap provision apply` (it discards them first)")


def read_swaps(path: Path = SWAPS_PATH) -> str | None:
    """The kernel's table of active swap areas, or None when it cannot be read."""
    try:
        return path.read_text()
    except OSError:
        return None


def check_swap(swaps: str | None) -> Result:
    """Swap on a disk or card would page the audio ring buffers (plaintext, seconds of
    every call) and the sealing path's keys out to storage that outlives the power. The
    image has none (``firmware/``); this confirms it. ``swaps`` is ``/proc/swaps``:
    a header line, then one line per active area. zram swap is compressed RAM, gone
    at power-off, so it is allowed."""
    if swaps is None:
        return Result("swap", WARN, "cannot read /proc/swaps",
                      "check by hand: `swapon --show` must list nothing but zram")
    areas = [line.split()[0] for line in swaps.splitlines()[1:] if line.strip()]
    disk = [a for a in areas if not a.startswith("/dev/zram")]
    if disk:
        return Result("swap", FAIL, "swap on storage: " + ", ".join(disk) + " (plaintext "
                      "audio and keys in memory can be written to it)",
                      "`sudo swapoff -a` and `sudo systemctl mask dphys-swapfile.service "
                      "swap.target` (firmware/install.sh does both), then reboot")
    if areas:
        return Result("swap", OK, f"only zram swap ({', '.join(areas)}): memory, not storage")
    return Result("swap", OK, "no swap: audio and keys in memory never reach storage")


# -- running it all ------------------------------------------------------------------------

def run_checks(config_path: str | None, data_dir: str | None, *,
               now: dt.datetime | None = None, probes: dict | None = None) -> list[Result]:
    """Every check in order. ``probes`` overrides the hardware probes by name
    (``open_capture``, ``factory``, ``connect``, ``usage``, ``synced``, ``model_path``,
    ``swaps``: the text of ``/proc/swaps``)."""
    p = probes or {}
    now = now or dt.datetime.now(dt.UTC)
    res, cfg = check_config(config_path)
    out = [res]
    if cfg is None:
        cfg = rconfig.Config()
    ddir = Path(data_dir or cfg.device.data_dir)
    running = control_client.socket_path(ddir).exists()
    out.append(check_practice_key(cfg))
    out.append(check_identity(ddir))
    out.append(check_command_key(cfg))
    out.append(check_alsa(cfg, running, **({"open_capture": p["open_capture"]}
                                           if "open_capture" in p else {})))
    out.append(check_pins(cfg, p.get("model_path", MODEL_PATH),
                          **({"factory": p["factory"]} if "factory" in p else {})))
    out.append(check_broker(cfg, now, **({"connect": p["connect"]} if "connect" in p else {})))
    out.append(check_disk(cfg, ddir, **({"usage": p["usage"]} if "usage" in p else {})))
    out.append(check_clock(now, p["synced"] if "synced" in p else ntp_synchronised()))
    out.append(check_swap(p["swaps"] if "swaps" in p else read_swaps()))
    out.append(check_staged(config_path))
    return out


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="linetap doctor", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="config file (default /etc/linetap/linetap.toml)")
    ap.add_argument("--data-dir", help="override device.data_dir")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    results = run_checks(args.config, args.data_dir)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            print(r.line())
        fails = sum(r.status == FAIL for r in results)
        warns = sum(r.status == WARN for r in results)
        print(f"{len(results)} checks: {fails} FAIL, {warns} WARN")
    return 1 if any(r.status == FAIL for r in results) else 0
