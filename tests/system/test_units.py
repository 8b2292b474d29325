"""The defects a real boot would show, checked without a kernel (issue 21): the units'
sandbox lets lgpio and the clock check work, recovery is unattended, nothing plaintext
or wearing goes to the card, and the boot files say what docs/image.md says.

The units are parsed as systemd parses them (sections, repeated keys, continuation
lines); tests/provisioning/test_systemd.py runs `systemd-analyze verify` and the
exposure score on the same files. What needs a kernel (gpio-sim, snd-aloop, the
watchdog, a power cut) is in tests/system/test_boot.py under QEMU."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SD = REPO / "systemd"
FW = REPO / "firmware"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; an empty assignment resets the list, as in
    systemd."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        vals = out[section].setdefault(key.strip(), [])
        if value.strip() == "":
            vals.clear()
        else:
            vals.append(value.strip())
    return out


def words(unit: dict, section: str, key: str) -> list[str]:
    return [w for v in unit.get(section, {}).get(key, []) for w in v.split()]


def env(unit: dict) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words(unit, "Service", "Environment"))


@pytest.fixture(scope="module")
def recorder():
    return parse_unit(SD / "linetap-recorder.service")


@pytest.fixture(scope="module")
def agent():
    return parse_unit(SD / "linetap-provision-agent.service")


# --- GPIO under the sandbox -------------------------------------------------------------

def test_recorder_gpio_is_lgpio_in_a_writable_working_directory(recorder):
    s = recorder["Service"]
    e = env(recorder)
    # lgpio's Python side opens .lgd-nfyN in the cwd, its C side makes it in $LG_WD.
    assert s["RuntimeDirectory"] == ["linetap"]
    assert s["WorkingDirectory"] == ["/run/linetap"]
    assert e["LG_WD"] == "/run/linetap"
    assert e["GPIOZERO_PIN_FACTORY"] == "lgpio"
    # Any GPIO chip (gpiochip4 on a Pi 5's older kernels); no RPi.GPIO device.
    assert "char-gpiochip rw" in s["DeviceAllow"]
    assert not [d for d in s["DeviceAllow"] if "gpiomem" in d or "/dev/gpiochip" in d]
    assert s["DevicePolicy"] == ["closed"]


def test_pin_factory_lgpio_only():
    """RPi.GPIO is gone from the [pi] extra: its edge detection writes /sys/class/gpio,
    read-only under ProtectKernelTunables, and it does not run on a Pi 5."""
    import tomllib
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    pi = py["project"]["optional-dependencies"]["pi"]
    assert pi and all(r.lower().startswith("lgpio") for r in pi), pi
    from hw.gpio import make_factory
    with pytest.raises(ValueError, match="rpigpio"):
        make_factory("rpigpio")


def test_agent_reads_the_button_without_delaying_the_recorder(agent, recorder):
    """The agent watches the pause button for a press edge (docs/provisioning.md):
    through the recorder's control socket while it runs, else with gpiozero on lgpio in
    a writable working directory. The recorder is ordered after nothing of the agent's
    (its press window never delays recording); the agent starts after the recorder."""
    s = agent["Service"]
    assert "linetap-recorder.service" not in words(agent, "Unit", "Before")
    assert "linetap-recorder.service" in words(agent, "Unit", "After")
    assert "linetap-provision-agent.service" not in words(recorder, "Unit", "After")
    assert "linetap-provision-agent.service" not in words(recorder, "Unit", "Requires")
    assert env(agent)["GPIOZERO_PIN_FACTORY"] == "lgpio"
    assert s["WorkingDirectory"] == ["/run/linetap-agent"]
    assert env(agent)["LG_WD"] == "/run/linetap-agent"
    assert "char-gpiochip rw" in s["DeviceAllow"]
    assert not [d for d in s["DeviceAllow"] if "gpiomem" in d or "/dev/gpiochip" in d]
    assert s["ExecStart"] == ["/opt/linetap/venv/bin/linetap provision-agent"]


# --- the clock ----------------------------------------------------------------------------

def test_recorder_clock_check_does_not_need_adjtimex(recorder):
    """ProtectClock stays (it filters @clock, adjtimex included), so the recorder reads
    timesyncd's marker and the agent's clock-set marker instead (recorder/timebase.py)."""
    assert recorder["Service"]["ProtectClock"] == ["yes"]
    from recorder.timebase import TIMESYNCD_SYNCED, USB_CLOCK_SET
    assert str(TIMESYNCD_SYNCED) == "/run/systemd/timesync/synchronized"
    assert str(USB_CLOCK_SET).startswith("/run/linetap-agent/")


def test_clock_survives_power_cuts():
    conf = (FW / "rootfs/etc/systemd/timesyncd.conf.d/linetap.conf").read_text()
    assert re.search(r"^SaveIntervalSec=60$", conf, re.M)
    tmpfiles = (FW / "rootfs/usr/lib/tmpfiles.d/linetap.conf").read_text()
    assert re.search(r"^d /var/lib/linetap/timesync +0755 systemd-timesync ", tmpfiles, re.M)


# --- unattended recovery -----------------------------------------------------------------

def daemon_join_budget_s() -> float:
    """The daemon's shutdown joins, summed from recorder/runtime/daemon.py (seconds)."""
    text = (REPO / "recorder/runtime/daemon.py").read_text()
    body = text[text.index("    def shutdown"):]
    body = re.split(r"\n    def |\n(?=\S)", body[10:], maxsplit=1)[0]
    joins = [float(x) for x in re.findall(r"join_all\(.*?,\s*([0-9.]+)\)", body, re.S)]
    assert len(joins) >= 3, body
    return sum(joins)


def test_stop_timeout_outlasts_the_daemons_joins(recorder):
    stop = float(recorder["Service"]["TimeoutStopSec"][0])
    assert stop > daemon_join_budget_s()


def test_crash_loop_reboots_and_watchdogs_are_set(recorder):
    u, s = recorder["Unit"], recorder["Service"]
    assert u["StartLimitAction"] == ["reboot"]
    assert int(u["StartLimitBurst"][0]) >= 3
    assert int(s["WatchdogSec"][0]) > 0 and s["Restart"] == ["on-failure"]
    wd = parse_unit(FW / "rootfs/etc/systemd/system.conf.d/linetap-watchdog.conf")["Manager"]
    assert wd["RuntimeWatchdogSec"] == ["15s"]       # bcm2835-wdt's longest is ~15 s
    assert wd["RebootWatchdogSec"] == ["2min"]
    assert "dtparam=watchdog=on" in (FW / "boot/config.txt").read_text().splitlines()


def test_recorder_does_not_wait_for_the_network(recorder):
    ordering = words(recorder, "Unit", "After") + words(recorder, "Unit", "Wants") + \
        words(recorder, "Unit", "Requires")
    assert not [w for w in ordering if "network" in w]
    # time-sync.target must not wait for NTP either: time-wait-sync is masked.
    assert "systemd-time-wait-sync.service" in (FW / "install.sh").read_text()


# --- plaintext and wear ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linetap-recorder.service", "linetap-provision-agent.service"])
def test_no_core_dumps(name):
    assert parse_unit(SD / name)["Service"]["LimitCORE"] == ["0"]


def test_status_json_in_ram(recorder):
    """The daemon writes status.json into $RUNTIME_DIRECTORY (recorder/runpaths.py),
    which the unit makes a /run folder; the data folder stays its only writable path."""
    assert recorder["Service"]["ReadWritePaths"] == ["/var/lib/linetap"]
    from recorder.runtime import daemon
    src = Path(daemon.__file__).read_text()
    assert "atomic_write(self.data_dir / STATUS_FILE" not in src
    assert src.count("atomic_write(status_path(self.data_dir)") == 2


# --- audio --------------------------------------------------------------------------------

def test_no_onboard_or_hdmi_audio_card():
    lines = (FW / "boot/config.txt").read_text().splitlines()
    assert "dtparam=audio=off" in lines
    assert "noaudio" in (FW / "install.sh").read_text()


# --- the wheel set and the build recipes ----------------------------------------------------

def test_wheel_lock_pins_every_dependency_with_hashes():
    import tomllib
    lock = (FW / "wheels.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M))
    norm = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for req in py["dependencies"] + py["optional-dependencies"]["pi"]:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-")
        assert name in norm, f"{name} is not in firmware/wheels.lock"
    # Every pin carries at least one sha256; binary packages one per architecture.
    blocks = re.split(r"\n(?=\S)", lock.split("\n\n", 1)[1].strip())
    for block in blocks:
        assert re.findall(r"--hash=sha256:[0-9a-f]{64}", block), block
    numpy = next(b for b in blocks if b.startswith("numpy=="))
    assert len(re.findall(r"sha256:", numpy)) == 2        # x86_64 and aarch64


def test_no_compilers_in_the_recipes():
    pkgs = (FW / "pi-gen/stage-linetap/00-install-linetap/00-packages").read_text().split()
    for bad in ("build-essential", "python3-dev", "libasound2-dev", "libffi-dev", "gcc"):
        assert bad not in pkgs
    text = (FW / "build-image.sh").read_text()
    pk = re.search(r'^PKGS="(.*?)"$', text, re.M | re.S).group(1)
    assert not re.search(r"build-essential|gcc|-dev\b", pk)
    run = (FW / "pi-gen/stage-linetap/00-install-linetap/01-run.sh").read_text()
    assert "--pip-wheel-dir /tmp/linetap-wheels" in run


def fake_pigen(tmp_path: Path, branch: str) -> Path:
    pg = tmp_path / "pi-gen"
    (pg / "stage2").mkdir(parents=True)
    (pg / "build-docker.sh").write_text("#!/bin/bash\n")
    git = ["git", "-C", str(pg), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", branch], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    return pg


def fake_wheels(tmp_path: Path) -> Path:
    w = tmp_path / "wheels"
    w.mkdir()
    (w / "lgpio-0.2.2.0-cp311-cp311-manylinux_2_34_aarch64.whl").write_bytes(b"PK")
    (w / "requirements.txt").write_text("lgpio==0.2.2.0 --hash=sha256:00\n")
    return w


def run_prepare(pg: Path, wheels: Path, password: str | None = "s3cret pass'x"):
    e = {"PATH": "/usr/bin:/bin"}
    if password is not None:
        e["LINETAP_ENGINEER_PASS"] = password
    return subprocess.run(["bash", str(FW / "pi-gen/prepare.sh"), str(pg), str(wheels)],
                          capture_output=True, text=True, timeout=120, env=e)


def test_pi_gen_prepare_puts_everything_inside_the_tree(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    pg = fake_pigen(tmp_path, "bookworm-arm64")
    r = run_prepare(pg, fake_wheels(tmp_path))
    assert r.returncode == 0, r.stderr
    config = (pg / "config").read_text()
    assert 'STAGE_LIST="stage0 stage1 stage2 stage-linetap"' in config
    assert "LINETAP_SRC" not in config and "${" not in config
    # The password is in the file, quoted for bash, and the file is private.
    out = subprocess.run(["bash", "-c", f"source {pg / 'config'}; printf %s \"$FIRST_USER_PASS\""],
                         capture_output=True, text=True, check=True).stdout
    assert out == "s3cret pass'x"
    assert (pg / "config").stat().st_mode & 0o077 == 0
    files = pg / "stage-linetap/00-install-linetap/files"
    assert (files / "linetap-src/firmware/install.sh").is_file()
    assert not (files / "linetap-src/.git").exists()
    assert (files / "wheels/requirements.txt").is_file()
    assert (pg / "stage-linetap/EXPORT_IMAGE").is_file()
    assert (pg / "stage2/SKIP_IMAGES").is_file()


def test_pi_gen_prepare_refuses_the_trixie_branch_and_no_password(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    pg = fake_pigen(tmp_path, "arm64")
    r = run_prepare(pg, fake_wheels(tmp_path))
    assert r.returncode != 0 and "checkout bookworm-arm64" in r.stderr
    (tmp_path / "b").mkdir()
    pg2 = fake_pigen(tmp_path / "b", "bookworm-arm64")
    r = run_prepare(pg2, fake_wheels(tmp_path / "b"), password=None)
    assert r.returncode != 0 and "LINETAP_ENGINEER_PASS" in r.stderr


@pytest.mark.parametrize("script", ["build-image.sh",
                                    "build-wheels.sh", "make-ab-image.sh", "chroot-lib.sh",
                                    "pi-gen/prepare.sh",
                                    "pi-gen/stage-linetap/00-install-linetap/02-run-chroot.sh"])
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    r = subprocess.run(["shellcheck", "-x", str(FW / script)], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
