"""Run a reliability campaign as its own process and read its verdict (imported, not
collected).

The tests never import ``bench.campaigns``: they start ``python -m bench.campaigns.X
--quick ...`` from the repository root, exactly as ``make campaign-X QUICK=1`` does, and
check its exit status and the JSON line of headline figures it prints last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def need_mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")


def need_root(why: str = "mounts a small tmpfs") -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root ({why})")


def run_campaign(name: str, *args: str, timeout: float = 900.0) -> tuple[int, dict, str]:
    """``(exit status, summary, output)`` of ``python -m bench.campaigns.<name> --quick
    *args``. ``summary`` is the last line of standard output parsed as JSON; a run that
    printed none fails the test with the output's tail."""
    p = subprocess.run([sys.executable, "-m", f"bench.campaigns.{name}", "--quick", *args],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        pytest.fail(f"campaign {name} printed no JSON line (exit {p.returncode}):\n"
                    f"{out[-3000:]}")
    try:
        summary = json.loads(lines[-1])
    except ValueError:
        pytest.fail(f"campaign {name}: last JSON line unreadable: {lines[-1][:300]}")
    return p.returncode, summary, out
