"""systemd units: `systemd-analyze verify` and the offline security exposure (<= 2.5)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted(p.name for p in (REPO / "systemd").glob("*.service"))
# The long-running daemons (notify, watchdog, restart).
DAEMONS = ["linetap-provision-agent.service", "linetap-recorder.service"]
EXPOSURE_GOAL = 2.5

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed (apt-get install systemd)")


def _system_units() -> Path:
    for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (d / "sysinit.target").exists():
            return d
    pytest.skip("no systemd unit directory with sysinit.target on this machine")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A scratch root with the distribution's units, ours, and a stub ExecStart binary.

    ``verify --root`` resolves ExecStart and every dependency inside the root, so the
    shipped unit files are checked unmodified.
    """
    r = tmp_path_factory.mktemp("sdroot")
    shutil.copytree(_system_units(), r / "usr/lib/systemd/system", symlinks=True)
    for exe in ("opt/linetap/venv/bin/linetap",):
        stub = r / exe
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    dest = r / "etc/systemd/system"
    dest.mkdir(parents=True)
    for u in UNITS:
        shutil.copy(REPO / "systemd" / u, dest / u)
    return r


def verify(root: Path, unit: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                           f"/etc/systemd/system/{unit}"],
                          capture_output=True, text=True, timeout=120)


def test_units_exist():
    assert UNITS == ["linetap-mark-good.service", "linetap-provision-agent.service",
                     "linetap-recorder.service"]


@pytest.mark.parametrize("unit", UNITS)
def test_verify(root, unit):
    r = verify(root, unit)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "linetap" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_verify_catches_mistakes(root):
    """The harness itself must notice a bad unit, or the test above proves nothing."""
    bad = root / "etc/systemd/system/linetap-broken.service"
    bad.write_text("[Service]\nExecStart=/opt/linetap/venv/bin/linetap run\nProtectSystm=strict\n"
                   "ExecStartPre=/opt/linetap/nope\n")
    try:
        r = verify(root, bad.name)
        out = r.stdout + r.stderr
        assert "ProtectSystm" in out and "nope" in out
    finally:
        bad.unlink()


def exposure(unit: str) -> float:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(REPO / "systemd" / unit)],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure(unit):
    level = exposure(unit)
    print(f"{unit}: exposure {level}")
    assert level <= EXPOSURE_GOAL


@pytest.mark.parametrize("unit", DAEMONS)
def test_hardening_promises(unit):
    """The properties docs/image.md promises, checked in the file itself."""
    text = (REPO / "systemd" / unit).read_text()
    for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "ProtectHome=yes", "DevicePolicy=closed", "Restart=on-failure",
                 "User=linetap", "Type=notify"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), f"{unit}: {line}"
    assert re.search(r"^StartLimitBurst=\d+$", text, re.M)
    assert re.search(r"^WatchdogSec=\d+$", text, re.M)
    if unit == "linetap-recorder.service":
        # soundfile's cffi callbacks need W+X pages (found booting the image).
        assert re.search(r"^MemoryDenyWriteExecute=no$", text, re.M)
        assert re.search(r"^CapabilityBoundingSet=$", text, re.M)
        assert "ReadWritePaths=/var/lib/linetap\n" in text
        assert "DeviceAllow=char-alsa rw" in text
    else:
        assert "CapabilityBoundingSet=CAP_SYS_TIME\n" in text
        assert re.search(r"^MemoryDenyWriteExecute=yes$", text, re.M)
        assert "BindsTo=dev-ttyGS0.device" in text and "WantedBy=dev-ttyGS0.device" in text
    assert re.search(r"^LimitCORE=0$", text, re.M)


def test_sysusers_groups():
    text = (REPO / "systemd" / "linetap.sysusers").read_text()
    for group in ("audio", "gpio", "dialout"):
        assert re.search(rf"^m linetap {group}$", text, re.M)
    # A fixed uid and gid: the data partition outlives the root slot that made the user.
    assert re.search(r"^u linetap 700:700 ", text, re.M)
    assert re.search(r"^g linetap 700$", text, re.M)
