"""The RAUC files in firmware/rauc/: the scripts pass shellcheck, the tryboot backend
refuses what it does not know, and make-bundle.sh refuses bad arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.raucrig import FW

SCRIPTS = [FW / "tryboot-backend", FW / "make-bundle.sh", FW / "post-install"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (make apt installs it)")
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize("args, match", [
    ([], "unknown command ''"),
    (["reboot"], "unknown command 'reboot'"),
    (["get-state", "C"], "unknown bootname 'C'"),
    (["set-state", "A", "so-so"], "set-state needs good or bad"),
])
def test_the_backend_names_bad_requests(args, match):
    r = subprocess.run([str(FW / "tryboot-backend"), *args], capture_output=True, text=True,
                       env={**os.environ, "LINETAP_AUTOBOOT_DEV": "/nonexistent"})
    assert r.returncode != 0 and match in r.stderr


@pytest.mark.parametrize("args, match", [
    ([], "--out is required"),
    (["--out", "x.raucb"], "--keys is required"),
    (["--out", "x.raucb", "--keys", "k", "--format", "zip"], "verity or plain"),
    (["--out", "x.raucb", "--keys", "k", "--rootfs", "/nonexistent"], "no such root"),
    (["--out", "x.raucb", "--keys", "k", "--version", "1 2"], "bad version"),
    (["--frobnicate"], "unknown argument"),
])
def test_make_bundle_refuses_bad_arguments(args, match, tmp_path: Path):
    r = subprocess.run([str(FW / "make-bundle.sh"), *args], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode != 0 and match in r.stderr
    assert not (tmp_path / "x.raucb").exists()
