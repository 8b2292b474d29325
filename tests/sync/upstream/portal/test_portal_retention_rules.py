"""The rule for a retention period a manager may set (pure, table-tested)."""

from __future__ import annotations

import math

import pytest

from sync.upstream.portal.decisions import RetentionError, check_retention


@pytest.mark.parametrize("days, reason, want", [
    (30, "policy", (30.0, "policy")),
    (0.01, " trimmed ", (0.01, "trimmed")),
    (3650, "x" * 600, (3650.0, "x" * 500)),
    (90.5, "care record period", (90.5, "care record period")),
])
def test_accepted(days, reason, want):
    assert check_retention(days, reason) == want


@pytest.mark.parametrize("days, reason, words", [
    (0, "r", "0.01..3650"),
    (0.009, "r", "0.01..3650"),
    (3650.5, "r", "0.01..3650"),
    (-1, "r", "0.01..3650"),
    (math.nan, "r", "0.01..3650"),
    (math.inf, "r", "0.01..3650"),
    (True, "r", "0.01..3650"),
    ("30", "r", "0.01..3650"),
    (None, "r", "0.01..3650"),
    (30, "", "reason is required"),
    (30, "   ", "reason is required"),
    (30, None, "reason is required"),
    (30, 5, "reason is required"),
])
def test_refused_with_the_problem_named(days, reason, words):
    with pytest.raises(RetentionError, match=words.replace(".", r"\.")):
        check_retention(days, reason)
