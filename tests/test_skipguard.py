"""Under ``CI=true`` a skipped test fails the run unless ``tests/skips_allowed.txt``
lists it with a reason (:mod:`tests.support.skipguard`), checked on small inner pytest
sessions."""

from __future__ import annotations

import pytest

from tests.support.skipguard import DEFAULT_LIST, load_allowed

TESTS = """
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("frobnicator is not installed")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    pytester.makepyfile(test_inner=TESTS)
    allow = pytester.path / "allowed.txt"
    monkeypatch.setenv("LINETAP_SKIPS_ALLOWED", str(allow))

    def run(ci: str | None, allowed: str = ""):
        allow.write_text(allowed)
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        return pytester.runpytest("-p", "tests.support.skipguard", "-p", "no:cacheprovider")
    return run


def test_a_skip_passes_outside_ci(inner):
    r = inner(None)
    r.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert r.ret == 0


@pytest.mark.parametrize("ci", ["true", "1"])
def test_an_unlisted_skip_fails_the_run_under_ci(inner, ci):
    r = inner(ci)
    r.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert r.ret == 1
    r.stdout.fnmatch_lines(["*skips not allowed under CI*",
                            "*test_inner.py::test_needs_a_tool: frobnicator is not installed"])


def test_a_listed_skip_passes_under_ci(inner):
    r = inner("true", "# why each skip is fine\n\n"
                      "test_inner.py::test_needs_* | frobnicator has no Debian package\n")
    r.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert r.ret == 0
    assert "skips not allowed" not in r.stdout.str()


def test_an_entry_for_another_test_does_not_cover_it(inner):
    r = inner("true", "test_inner.py::test_runs | not the skipped one\n")
    assert r.ret == 1


def test_an_entry_without_a_reason_is_refused(inner):
    r = inner(None, "test_inner.py::test_needs_a_tool\n")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*allowed.txt:1: an allowed skip needs 'test id | reason'*"])
    r = inner(None, "test_inner.py::test_needs_a_tool |   \n")
    assert r.ret == pytest.ExitCode.USAGE_ERROR


def test_a_failing_run_stays_failed(inner, pytester):
    pytester.makepyfile(test_more="def test_broken():\n    assert False\n")
    r = inner("true")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)


def test_the_repository_allow_list_reads():
    for pattern, reason in load_allowed(DEFAULT_LIST):
        assert pattern.startswith("tests/") and reason
