"""Reading what ``rauc`` prints (pure): the slots from ``rauc status`` JSON, and the
reason of a failed run."""

from __future__ import annotations

import json

import pytest

from recorder.errors import UpdateError
from sync.update.rauc import parse_status, why_failed


def status(booted="A", primary="rootfs.0", a="good", b="bad"):
    return json.dumps({"compatible": "linetap-pi", "booted": booted, "boot_primary": primary,
                       "slots": [{"rootfs.1": {"bootname": "B", "boot_status": b}},
                                 {"boot.0": {"bootname": None, "boot_status": None}},
                                 {"rootfs.0": {"bootname": "A", "boot_status": a}}]})


@pytest.mark.parametrize("text, booted, primary, other, trial", [
    (status(), "A", "A", "B", False),
    (status(primary="rootfs.1"), "A", "B", "B", False),            # B armed for a trial
    (status(booted="B", primary="rootfs.0"), "B", "A", "A", True),  # on trial in B
    (status(booted="B", primary="rootfs.1", a="bad", b="good"), "B", "B", "A", False),
    (status(booted=""), None, "A", None, False),
])
def test_parse_status(text, booted, primary, other, trial):
    s = parse_status(text)
    assert (s.booted, s.primary, s.other, s.trial) == (booted, primary, other, trial)


@pytest.mark.parametrize("text", ["", "not json", "{}", '{"slots": 3}'])
def test_parse_status_refuses_junk(text):
    with pytest.raises(UpdateError, match="rauc status"):
        parse_status(text)


@pytest.mark.parametrize("stdout, stderr, reason", [
    ("installing\n100% Installing failed.\nLastError: Bundle format 'plain' not allowed\n"
     "idle\nInstalling `/b.raucb` failed\n", "", "Bundle format 'plain' not allowed"),
    ("", "rauc-Message: 06:19:19: Reading bundle\nsignature verification failed: x\n",
     "signature verification failed: x"),
    ("", "", "no output"),
])
def test_why_failed(stdout, stderr, reason):
    assert why_failed(stdout, stderr) == reason
