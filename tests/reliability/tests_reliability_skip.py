"""Skip helpers for the reliability tests (imported, not collected)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def need_mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts a small tmpfs)")
