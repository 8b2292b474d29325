"""Under ``CI=true`` a skipped test fails the run unless the allow-list names it.

A skip for a missing tool (mosquitto, multimon-ng, systemd-analyze ...) passes silently
on a laptop, which is what a developer wants; on CI it would hide a whole area going
untested. So with ``CI`` set to ``true`` (or ``1``/``yes``) every skipped test must match
a line of ``tests/skips_allowed.txt`` (or the file named by ``LINETAP_SKIPS_ALLOWED``);
any other skip is listed at the end of the run and the exit status becomes 1. An
expected failure (``xfail``) is not a skip.

The file holds one entry a line: a test id as pytest prints it (``fnmatch`` wildcards
allowed, e.g. ``tests/x/test_y.py::*``), a ``|`` and the reason the skip is acceptable.
A line without a reason is a usage error, so nobody adds an entry without saying why.
Blank lines and lines starting with ``#`` are ignored.

Registered by ``tests/conftest.py`` (``pytest_plugins``); ``tests/test_skipguard.py``
runs it on a small inner test session.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

DEFAULT_LIST = Path(__file__).resolve().parents[1] / "skips_allowed.txt"


def ci_enabled() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def load_allowed(path: Path) -> list[tuple[str, str]]:
    """``(pattern, reason)`` per entry of the allow-list at ``path`` (none if missing).

    Raises :class:`pytest.UsageError` naming the line when an entry has no reason."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition("|")
        if not sep or not pattern.strip() or not reason.strip():
            raise pytest.UsageError(
                f"{path}:{n}: an allowed skip needs 'test id | reason', got {line!r}")
        out.append((pattern.strip(), reason.strip()))
    return out


class SkipGuard:
    """Collects the run's skips; under CI fails the run on one the allow-list lacks."""

    def __init__(self, path: Path, enforce: bool):
        self.path = path
        self.allowed = load_allowed(path)
        self.enforce = enforce
        self.skips: list[tuple[str, str]] = []

    def unlisted(self) -> list[tuple[str, str]]:
        """Skips of this run no allow-list entry matches, as ``(test id, reason)``."""
        return [(nodeid, reason) for nodeid, reason in self.skips
                if not any(fnmatch.fnmatchcase(nodeid, pat) for pat, _ in self.allowed)]

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            lr = report.longrepr
            reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
            reason = reason.removeprefix("Skipped: ")
            self.skips.append((report.nodeid, reason))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        if self.enforce and self.unlisted() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        bad = self.unlisted()
        if not (self.enforce and bad):
            return
        tr = terminalreporter
        tr.section("skips not allowed under CI", red=True)
        tr.line(f"these tests were skipped but {self.path} does not list them:")
        for nodeid, reason in bad:
            tr.line(f"  {nodeid}: {reason}")
        tr.line("install what they need, or add 'test id | reason' to the allow-list")


def pytest_configure(config):
    path = Path(os.environ.get("LINETAP_SKIPS_ALLOWED") or DEFAULT_LIST)
    config.pluginmanager.register(SkipGuard(path, ci_enabled()), "linetap-skipguard")
