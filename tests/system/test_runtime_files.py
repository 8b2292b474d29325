"""Files a sandboxed box relies on instead of syscalls and the SD card: the clock markers
(timesyncd's and the agent's USB clock set) and status.json in the unit's runtime
directory. Real files in tmp folders; the daemon path is run through `linetap simulate`
elsewhere (tests/recorder/runtime/test_alarms.py reads DATA/run/status.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from provisioning.dispatcher import _mark_clock_set
from recorder import runpaths
from recorder.timebase import TIME_ERROR, clock_synchronised

REPO = Path(__file__).resolve().parents[2]


def _denied():
    raise OSError(1, "adjtimex: Operation not permitted (ProtectClock)")


def test_timesyncd_marker_counts_when_adjtimex_is_denied(tmp_path):
    synced = tmp_path / "synchronized"
    assert clock_synchronised(adjtimex=_denied, markers=(synced,)) is False
    synced.touch()
    assert clock_synchronised(adjtimex=_denied, markers=(synced,)) is True


def test_no_marker_falls_back_to_the_kernel(tmp_path):
    missing = (tmp_path / "a", tmp_path / "b")
    assert clock_synchronised(adjtimex=lambda: 0, markers=missing) is True
    assert clock_synchronised(adjtimex=lambda: TIME_ERROR, markers=missing) is False


def test_usb_clock_set_marks_the_clock_for_the_recorder(tmp_path):
    agent_run = tmp_path / "linetap-agent"
    agent_run.mkdir()
    marker = agent_run / "clock-set"
    assert clock_synchronised(adjtimex=_denied, markers=(marker,)) is False
    _mark_clock_set(str(agent_run))
    assert marker.read_text() == "usb\n"
    assert clock_synchronised(adjtimex=_denied, markers=(marker,)) is True


def test_usb_clock_set_without_systemd_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    _mark_clock_set()
    assert list(tmp_path.iterdir()) == []


def test_default_markers_are_the_box_paths():
    defaults = clock_synchronised.__defaults__[1]
    assert [str(p) for p in defaults] == ["/run/systemd/timesync/synchronized",
                                          "/run/linetap-agent/clock-set"]
    unit = (REPO / "systemd" / "linetap-provision-agent.service").read_text()
    assert "RuntimeDirectory=linetap-agent\n" in unit
    assert "RuntimeDirectoryPreserve=yes\n" in unit


def test_status_path_follows_runtime_directory(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert runpaths.status_path(data) == data / "run" / "status.json"
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}/rt:/other")
    assert runpaths.status_path(data) == tmp_path / "rt" / "status.json"
    assert runpaths.status_candidates(data)[0] == tmp_path / "rt" / "status.json"
    assert runpaths.status_candidates(data)[-1] == data / "run" / "status.json"


def test_linetap_status_reads_the_runtime_directory(tmp_path):
    """`linetap status` run by hand (no RUNTIME_DIRECTORY of its own) on a box finds the
    file the unit wrote; here the unit's folder is given through the environment."""
    rt = tmp_path / "rt"
    rt.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "linetap.toml"
    cfg.write_text(f'[device]\nid = "box-1"\ndata_dir = "{data}"\n')
    (rt / "status.json").write_text(json.dumps({"running": True, "device": "from-run"}))
    r = subprocess.run([sys.executable, "-m", "recorder.cli", "status", "--config", str(cfg),
                        "--json"], capture_output=True, text=True, timeout=60,
                       cwd=REPO, env={"RUNTIME_DIRECTORY": str(rt), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["device"] == "from-run"
